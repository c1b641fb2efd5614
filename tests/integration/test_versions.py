"""The flows on a newer vLLM, end to end: real docker, a real Prefect server, the imitation image of
each version (deployments/targets.py `SIM_IMAGES`; the image itself says its version, as an NGC image
does). The runbook's 0.10.1.1 is what every other integration test runs; here 0.31.0 (NGC 26.10) runs
the main path once (deploy with one memory failure healed, the health check, a short bench) and 0.11.1
(NGC 25.12/26.01) the switch of memory semantics (docs/versions.md)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from deployments.targets import SIM_IMAGES
from flows.bench import bench_qwen
from flows.deploy import deploy_qwen
from flows.health import health_check
from sim.vllm.vllm_sim.ledger import Ledger
from tasks.health.verdict import Verdict
from tasks.loadtest.load import Workload
from tasks.recovery.kv_model import GIB, QWEN3_32B_FP8_WEIGHTS_GIB
from tasks.recovery.sizing import fit_utilization
from tasks.recovery.step import RecoveryClass, RecoveryLimits
from tasks.state import health_state, recent_recoveries
from tests.integration.prefect_reads import flow_run_artifacts

pytestmark = pytest.mark.integration
TOTAL, BASELINE = 119.7, 3.0  # the imitation's Spark: CUDA's total and what the system holds
V0_31, V0_11 = "0.31.0", "0.11.1"


def test_on_0_31_a_memory_failure_heals_in_one_retry_and_every_report_names_the_version(project_target, holder):
    target = project_target(image=SIM_IMAGES[V0_31], decode_time_scale=0.05)
    holder(target, 30)  # another job's memory: MemAvailable does not count it free either
    state = deploy_qwen(target=target.name, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.vllm_version == V0_31 == httpx.get(f"{result.endpoint}/version").json()["version"]
    margin = RecoveryLimits().guarded(target.host_memory_floor_gib).margin_gib
    util = fit_utilization(TOTAL - BASELINE - 30, TOTAL, margin)
    assert result.attempts == 2 and f"running gpu_memory_utilization {util}" in result.degraded
    # 0.31's one-line "KV cache size: N tokens, Maximum concurrency ..." read, and the KV model holds
    expected = RecoveryLimits().kv_gib(util, TOTAL, 16384, 64) * GIB / RecoveryLimits().kv_bytes_per_token
    assert result.kv_cache_tokens == pytest.approx(expected, rel=0.01) and result.max_concurrency
    [step] = recent_recoveries(target.name)
    assert step.klass is RecoveryClass.HELD_BY_OTHERS and "drop_page_cache" not in step.actions
    artifacts = " ".join(flow_run_artifacts(state.state_details.flow_run_id))
    assert f"| vLLM | {V0_31} (server) |" in artifacts  # learnt from the image, confirmed by the server

    report = health_check(target=target.name)
    # serving, on the spec recovery chose: degraded (not the requested spec), decided by no layer of the server
    assert (report.verdict, report.layer.value) == (Verdict.DEGRADED, "desired"), report.reason
    assert report.condition.value.startswith("recovered") and report.vllm_version == V0_31
    snapshot = health_state(target.name).metrics  # /metrics read by 0.31's names (no gpu_cache_usage_perc)
    assert snapshot is not None and snapshot.kv_cache_usage is not None and snapshot.generation_tokens_total

    workload = Workload(input_len=32, output_len=8, num_prompts=4)
    [bench] = bench_qwen(target=target.name, concurrencies=[2], workload=workload, slos={"ttft_ms": 60_000})
    [level] = bench.levels
    assert (level.metrics.completed, level.metrics.failed) == (4, 0)
    assert level.token_check is None, level.token_check  # 0.31's counters read by their 0.31 names
    assert bench.series.endswith(f", vLLM {V0_31}")


def test_page_cache_blocks_a_start_on_0_10_and_not_on_0_11(make_sim_target):
    """An earlier load's weights in the page cache: 0.10.1.1's check reads MemFree, so deploy-qwen drops
    the cache first (tests/integration/test_deploy.py); 0.11.1's reads MemAvailable, so nothing is
    dropped, the next weight read stays warm, and the runbook's spec starts the first time."""
    target = make_sim_target(image=SIM_IMAGES[V0_11])
    ledger = Path(target.drop_caches_path).parent
    Ledger(ledger, "earlier", total_gib=TOTAL, baseline_gib=BASELINE).record_load(
        "Qwen/Qwen3-32B-FP8@old", QWEN3_32B_FP8_WEIGHTS_GIB
    )
    state = deploy_qwen(target=target.name, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.vllm_version == V0_11 and result.attempts == 1 and result.degraded is None
    assert (ledger / "drop_caches").read_text().strip() == ""  # never written: no drop


def test_memory_released_while_vllm_profiles_is_waited_out_and_the_same_spec_retried(project_target):
    target = project_target(extra_env={"VLLM_SIM_FAULT_PROFILING_RELEASE_GIB": "40"})  # the first start only
    state = deploy_qwen(target=target.name, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.attempts == 2 and result.degraded is None  # the runbook's spec, unchanged
    [step] = recent_recoveries(target.name)
    assert step.klass is RecoveryClass.UNSTEADY_MEMORY and step.actions == ["wait_for_steady_memory"]


def test_on_0_10_a_cold_retry_charged_for_its_page_cache_still_holds_the_planners_spec(project_target, holder):
    """Where 0.10.1.1 charges the page cache its own weight reads fill as non-torch memory (vllm issue
    35920; the imitation charging all of it: VLLM_SIM_COLD_LOAD_CHARGE=1), a retry that reads the weights
    cold gets the weights' size less KV cache: the KV model with the same charge predicts it, and the
    spec the planner chose (calibrated on the runbook's start, which showed no charge) still serves its
    max_model_len."""
    target = project_target(extra_env={"VLLM_SIM_COLD_LOAD_CHARGE": "1"})
    holder(target, 30)  # the first start is refused before it reads a weight: the retry reads them cold
    state = deploy_qwen(target=target.name, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    margin = RecoveryLimits().guarded(target.host_memory_floor_gib).margin_gib
    util = fit_utilization(TOTAL - BASELINE - 30, TOTAL, margin)
    assert result.attempts == 2 and f"running gpu_memory_utilization {util}" in result.degraded
    cold, warm = RecoveryLimits(cold_load_charge=1.0).cold(), RecoveryLimits()
    predicted = cold.kv_gib(util, TOTAL, 16384, 64) * GIB / cold.kv_bytes_per_token
    assert result.kv_cache_tokens == pytest.approx(predicted, rel=0.02)
    assert result.kv_cache_tokens < warm.kv_gib(util, TOTAL, 16384, 64) * GIB / warm.kv_bytes_per_token / 2
    assert result.kv_cache_tokens >= httpx.get(f"{result.endpoint}/v1/models").json()["data"][0]["max_model_len"]
