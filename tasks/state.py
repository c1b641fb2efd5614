"""What the flows remember per target between runs: typed records kept in Prefect Variables.

Variables, not the target block: this is state the flows write after every run, while the block is
the operator's configuration, edited in the UI (a flow that rewrote the block would race with
those edits). Variables show in the UI's Variables page, are JSON, and survive worker restarts.
Each record is a pydantic model here, read back validated (a record an older version wrote, or
one edited by hand into nonsense, reads as "none recorded", never as a half-filled dict). Every
name is defined here, once:

- `vllm-last-healthy-<target>` (`HealthyRecord`): the last spec that served (what a rollback
  returns to), its hash, how recovery degraded it, its KV cache size, the vLLM it ran (as the
  server said it: recover-vllm's rules for the same image, the fleet table);
- `vllm-recoveries-<target>` (`RecoveryStep`s): the recent recovery steps (the planner's history
  across runs);
- `vllm-desired-<target>` (`DesiredState`): "running" (deploy-qwen, recover-vllm) or "stopped"
  (stop-qwen): a stopped target is never recovered;
- `vllm-health-<target>` (`HealthState`): the health check's memory: the verdict and since when,
  the last /metrics snapshot (read after the check's smoke question: the wedge's reference and the
  start of the next service-level window) and restart count (progress, crash loops and service
  levels are judged between two checks), and since when each held service-level condition holds;
  the history itself is the `health-history-<target>` table artifact, read back with
  `health_history`;
- `vllm-recover-runs-<target>` (`RecoverRun`s): when recover-vllm ran and whether it ended healthy
  (the cap on recoveries that keep failing);
- `vllm-incident-<target>` (`tasks.incidents.machine.IncidentState`): the open incident and when the
  recent ones opened (tasks/incidents/track.py says why a Variable);
- `vllm-gpu-lease-<target>` (`GpuLease`): which flow run holds the target's GPU slot and its lease, while
  it holds it (tasks/locks.py): a run's cleanup hook frees the slot of its own run once its process is
  known gone, and never another run's;
- `vllm-router-draining-<fleet>` (a target name, unset when none): the target a rolling update took out of the
  fleet's router to replace it; no other flow adds it back meanwhile (tasks/router/membership.py).

Why every value stays small: Prefect refuses a Variable of more than 5,000 characters
(`prefect.types.MAX_VARIABLE_VALUE_LENGTH`), so what grows (the health history) lives in an
artifact, and the recovery steps keep only what the planner reads of them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypeVar, cast
from uuid import UUID

from prefect.artifacts import Artifact
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import BaseModel, TypeAdapter, ValidationError, field_validator

from blocks.engine import EngineSpec
from tasks.api_retry import prefect_client
from tasks.health.layers import Layer
from tasks.health.verdict import Verdict
from tasks.incidents.machine import IncidentState
from tasks.recovery.step import RecoveryStep
from tasks.report import table_rows
from tasks.vllm.metrics import MetricsSnapshot

LAST_HEALTHY_PREFIX = "vllm-last-healthy-"
RECOVERIES_PREFIX = "vllm-recoveries-"
DESIRED_PREFIX = "vllm-desired-"
HEALTH_PREFIX = "vllm-health-"
RECOVER_RUNS_PREFIX = "vllm-recover-runs-"
INCIDENT_PREFIX = "vllm-incident-"
GPU_LEASE_PREFIX = "vllm-gpu-lease-"
ROUTER_DRAINING_PREFIX = "vllm-router-draining-"
KEEP_RECOVERIES = 10
HEALTH_HISTORY = 48

DesiredState = Literal["running", "stopped"]


class HealthyRecord(BaseModel):
    """The last spec that served on a target (every field None: none recorded)."""

    spec: EngineSpec | None = None
    spec_hash: str | None = None
    degraded: str | None = None  # "requested X, running Y, because Z" when recovery changed the spec
    kv_cache_tokens: int | None = None  # logged when the server started (kept while the same server serves)
    vllm_version: str | None = None  # the vLLM it ran, as the server said it (0.10.1.1+381074ae.nv25.09)
    at: datetime | None = None

    def vllm_version_of(self, image: str) -> str | None:
        """The recorded vLLM when the recorded spec ran ``image`` (a version is a fact of an image)."""
        return self.vllm_version if self.spec is not None and self.spec.image == image else None

    @field_validator("spec", mode="wrap")
    @classmethod
    def _unreadable_spec_is_none(cls, value: Any, handler: Any) -> EngineSpec | None:
        """A spec that no longer validates (an older EngineSpec) is no spec to roll back to."""
        try:
            return handler(value)
        except ValidationError:
            return None


class HealthState(BaseModel):
    """The health check's memory of a target between two checks (every field None before the first)."""

    verdict: Verdict | None = None
    since: str | None = None  # ISO time the verdict started
    checked_at: float | None = None  # epoch seconds
    layer: Layer | None = None
    reason: str = ""
    metrics: MetricsSnapshot | None = None
    restart_count: int | None = None
    # since when each service-level condition with a hold time has held at every check (HealthReport.streaks)
    streaks: dict[str, float] = {}


class RecoverRun(NamedTuple):
    """One recover-vllm run: when (epoch seconds) and whether it ended healthy."""

    at: float
    ended_healthy: bool


_Model = TypeVar("_Model")


def _read(name: str, kind: type[_Model] | TypeAdapter[_Model], empty: _Model) -> _Model:
    """The Variable ``name`` validated as ``kind``; ``empty`` when unset or unreadable."""
    value = _value(name)
    if value is None:
        return empty
    adapter = kind if isinstance(kind, TypeAdapter) else TypeAdapter(kind)
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return empty


def _value(name: str) -> Any:
    """The Variable's value (None when unset), read through tasks/api_retry.py's client."""
    with prefect_client() as client:
        variable = client.read_variable_by_name(name)
    return None if variable is None else variable.value


def _write(name: str, value: Any) -> None:
    """Set the Variable ``name`` (created or replaced), as ``Variable.set(..., overwrite=True)`` does,
    through the client that retries a busy SQLite server in milliseconds (tasks/api_retry.py)."""
    with prefect_client() as client:
        if client.read_variable_by_name(name) is None:
            try:
                client.create_variable(VariableCreate(name=name, value=value))
                return
            except ObjectAlreadyExists:  # created meanwhile by a concurrent writer: replace it
                pass
        client.update_variable(VariableUpdate(name=name, value=value))


def _unset(name: str) -> None:
    with prefect_client() as client:
        try:
            client.delete_variable_by_name(name)
        except ObjectNotFound:
            pass


def last_healthy_record(target_name: str) -> HealthyRecord:
    """The record of the last healthy spec (an empty record when none)."""
    return _read(LAST_HEALTHY_PREFIX + target_name, HealthyRecord, HealthyRecord())


def last_healthy(target_name: str) -> EngineSpec | None:
    """The last spec that served on the target (None: none recorded, or it no longer validates)."""
    return last_healthy_record(target_name).spec


def record_healthy(
    target_name: str,
    spec: EngineSpec,
    spec_hash: str,
    degraded: str | None = None,
    kv_cache_tokens: int | None = None,
    vllm_version: str | None = None,
) -> None:
    """Record the spec that serves now (for a rollback; ``degraded``: "requested X, running Y,
    because Z" when recovery changed it; its KV cache size when this run started it, for the fleet
    view; the vLLM it runs), and that the target should be running."""
    previous = last_healthy_record(target_name)
    if previous.spec_hash == spec_hash:  # the same server, kept: what it logged at its start is unchanged
        kv_cache_tokens = kv_cache_tokens if kv_cache_tokens is not None else previous.kv_cache_tokens
        vllm_version = vllm_version or previous.vllm_version
    record = HealthyRecord(
        spec=spec,
        spec_hash=spec_hash,
        degraded=degraded,
        kv_cache_tokens=kv_cache_tokens,
        vllm_version=vllm_version,
        at=datetime.now(UTC),
    )
    value = record.model_dump(mode="json", exclude={"spec"})
    value["spec"] = spec.model_dump(mode="json", include=set(EngineSpec.model_fields))  # the fields, not the block's
    _write(LAST_HEALTHY_PREFIX + target_name, value)
    set_desired(target_name, "running")


def recent_recoveries(target_name: str) -> list[RecoveryStep]:
    """The target's recent recovery steps, oldest first (a step that no longer validates is skipped)."""
    value = _value(RECOVERIES_PREFIX + target_name)
    items: list[Any] = value if isinstance(value, list) else []
    steps = []
    for item in items:
        try:
            steps.append(RecoveryStep.model_validate(item))
        except ValueError:
            continue
    return steps


def remember_recoveries(target_name: str, steps: list[RecoveryStep]) -> None:
    """Append steps to the target's recent recoveries (the last KEEP_RECOVERIES are kept).

    Only what the planner reads of its history is kept (class, actions, give-up, time): a whole step
    with its reason is ~500 characters, and Prefect refuses a Variable of more than 5,000.
    """
    kept = [*recent_recoveries(target_name), *steps][-KEEP_RECOVERIES:]
    compact = [
        {
            "klass": s.klass.value,
            "actions": [a.value for a in s.actions],
            "give_up": s.give_up,
            "reason": "(kept: class, actions, outcome, time)",
            "at": s.at.isoformat() if s.at else None,
        }
        for s in kept
    ]
    _write(RECOVERIES_PREFIX + target_name, compact)


def desired_state(target_name: str) -> DesiredState | None:
    """What the operator last asked of the target: "running", "stopped", or None (never deployed)."""
    return _read(DESIRED_PREFIX + target_name, TypeAdapter(DesiredState | None), None)


def set_desired(target_name: str, state: DesiredState) -> None:
    _write(DESIRED_PREFIX + target_name, state)


def health_state(target_name: str) -> HealthState:
    """The health check's memory of the target (an empty state before the first check)."""
    return _read(HEALTH_PREFIX + target_name, HealthState, HealthState())


def save_health_state(target_name: str, state: HealthState) -> None:
    """Save the check's small state (no history: see `health_history`)."""
    _write(HEALTH_PREFIX + target_name, state.model_dump(mode="json"))


def health_history(target_name: str, key: str) -> list[dict[str, str]]:
    """The last checks, oldest first, from the latest version of the history table artifact ``key``."""
    artifact = cast(Artifact | None, Artifact.get(key))  # sync/async dual: sync here
    rows = table_rows(artifact.data) if artifact is not None else []
    return list(reversed(rows))[-HEALTH_HISTORY:]


_RUNS = TypeAdapter(list[RecoverRun])


def recover_runs(target_name: str) -> list[RecoverRun]:
    """The target's recent recover-vllm runs, oldest first."""
    return _read(RECOVER_RUNS_PREFIX + target_name, _RUNS, [])


def record_recover_run(target_name: str, at: float, ended_healthy: bool) -> None:
    kept = [*recover_runs(target_name), RecoverRun(at, ended_healthy)][-KEEP_RECOVERIES:]
    _write(RECOVER_RUNS_PREFIX + target_name, _RUNS.dump_python(kept, mode="json"))


def clear_recover_runs(target_name: str) -> None:
    """A person deployed: the cap on failing recoveries starts again."""
    _write(RECOVER_RUNS_PREFIX + target_name, [])


def incident_state(target_name: str) -> IncidentState:
    """The target's incident state (none open, none recent when unset or unreadable)."""
    return _read(INCIDENT_PREFIX + target_name, IncidentState, IncidentState())


def save_incident_state(target_name: str, state: IncidentState) -> None:
    _write(INCIDENT_PREFIX + target_name, state.model_dump(mode="json"))


class GpuLease(BaseModel):
    """The target's GPU slot, taken: by which flow run, under which lease of the ``gpu:<target>`` limit."""

    flow_run_id: str
    lease_id: UUID

    def held_by(self, flow_run_id: str) -> bool:
        """The slot is ``flow_run_id``'s (a lock taken outside a flow run, "", is nobody's to free)."""
        return bool(flow_run_id) and self.flow_run_id == flow_run_id


def gpu_lease(target_name: str) -> GpuLease | None:
    """Who holds the target's GPU slot (None: nobody recorded)."""
    return _read(GPU_LEASE_PREFIX + target_name, TypeAdapter(GpuLease | None), None)


def record_gpu_lease(target_name: str, lease: GpuLease) -> None:
    """Record the slot's holder; only the holder writes it (the slot has one holder at a time)."""
    _write(GPU_LEASE_PREFIX + target_name, lease.model_dump(mode="json"))


def forget_gpu_lease(target_name: str, flow_run_id: str) -> None:
    """Remove the record if it is ``flow_run_id``'s, before its lease is released: once released, the
    next holder records its own, which this must not remove."""
    lease = gpu_lease(target_name)
    if lease is not None and lease.flow_run_id == flow_run_id:  # "" too: the record of a lock outside a run
        _unset(GPU_LEASE_PREFIX + target_name)


def router_draining(fleet: str) -> str | None:
    """The target a rolling update of ``fleet`` is replacing (None: none)."""
    return _read(ROUTER_DRAINING_PREFIX + fleet, TypeAdapter(str | None), None)


def set_router_draining(fleet: str, target_name: str | None) -> None:
    """Mark ``target_name`` as being replaced (None: the update is done with it)."""
    if target_name is None:
        _unset(ROUTER_DRAINING_PREFIX + fleet)
    else:
        _write(ROUTER_DRAINING_PREFIX + fleet, target_name)
