"""The per-target records of tasks/state.py: what is stored is what is read back, typed; an
unreadable value reads as "none recorded". Variables are a dict here (the integration tests use
Prefect's own)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from blocks.engine import EngineSpec
from tasks import state
from tasks.health.verdict import Verdict


class _Variables:
    """Prefect's Variable.get/set, in memory; values go through JSON as the server's do (the writes go
    through tasks/api_retry.py's client in the product: the integration tests cover that path)."""

    values: dict[str, Any] = {}

    @classmethod
    def get(cls, name: str, default: Any = None) -> Any:
        return json.loads(cls.values[name]) if name in cls.values else default

    @classmethod
    def set(cls, name: str, value: Any, overwrite: bool = False) -> None:
        assert overwrite
        cls.values[name] = json.dumps(value)


@pytest.fixture(autouse=True)
def variables(monkeypatch):
    monkeypatch.setattr(_Variables, "values", {})
    monkeypatch.setattr(state, "_value", _Variables.get)
    monkeypatch.setattr(state, "_write", lambda name, value: _Variables.set(name, value, overwrite=True))
    monkeypatch.setattr(state, "_unset", lambda name: _Variables.values.pop(name, None))
    return _Variables.values


def test_the_last_healthy_spec_reads_back_typed_and_keeps_its_kv_cache_size_while_the_same_server_serves():
    assert state.last_healthy("a") is None and state.last_healthy_record("a").spec_hash is None
    spec = EngineSpec(max_num_seqs=32)
    state.record_healthy("a", spec, "h1", degraded="requested x, running y", kv_cache_tokens=1000)
    record = state.last_healthy_record("a")
    assert record.spec == spec and record.spec_hash == "h1" and record.kv_cache_tokens == 1000 and record.at
    assert state.desired_state("a") == "running"
    state.record_healthy("a", spec, "h1")  # kept: the same server
    assert state.last_healthy_record("a").kv_cache_tokens == 1000
    state.record_healthy("a", spec, "h2")
    assert state.last_healthy_record("a").kv_cache_tokens is None


def test_unreadable_values_read_as_none_recorded(variables):
    variables["vllm-last-healthy-a"] = json.dumps("not a record")
    variables["vllm-desired-a"] = json.dumps("sideways")
    variables["vllm-recover-runs-a"] = json.dumps({"no": "list"})
    variables["vllm-health-a"] = json.dumps({"verdict": "fine-ish"})
    assert state.last_healthy("a") is None and state.desired_state("a") is None
    assert state.recover_runs("a") == [] and state.health_state("a").verdict is None


def test_health_state_and_recover_runs_round_trip():
    state.save_health_state("a", state.HealthState(verdict=Verdict.HEALTHY, checked_at=5.0, restart_count=1))
    assert state.health_state("a").verdict == "healthy" and state.health_state("a").restart_count == 1
    state.record_recover_run("a", 10.0, ended_healthy=False)
    state.record_recover_run("a", 20.0, ended_healthy=True)
    assert state.recover_runs("a") == [(10.0, False), (20.0, True)] and state.recover_runs("a")[1].ended_healthy
    state.clear_recover_runs("a")
    assert state.recover_runs("a") == []
