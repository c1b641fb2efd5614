"""Memory recovery end to end: real docker, the imitations, a real Prefect server.

Each test sets up one memory situation on a fresh target (its own ledger: the machine's unified
memory) with a real process holding memory where the case needs one (the imitation's `hold`
command in a container, as another job on a Spark would be), then runs deploy-qwen or
recover-vllm and checks what an operator would: the classified cause, the one retry, the spec the
server runs with, what is left running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from deployments.dev.worker import start_worker, stop_worker
from deployments.setup import ensure_work_pool
from flows.deploy import DeployFailed, deploy_qwen
from flows.recover import recover_vllm
from flows.stop import stop_qwen
from tasks.readiness import ReadinessFailed
from tasks.recovery.kv_model import GIB
from tasks.recovery.sizing import fit_utilization
from tasks.recovery.step import RecoveryLimits
from tasks.serve import StartFailed
from tasks.state import last_healthy, record_recover_run
from tasks.vllm.failures import FailureKind
from tests.integration.conftest import messages_about, target_containers

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
TOTAL, BASELINE = 119.7, 3.0  # the imitation's Spark: CUDA's total and what the system holds


def served_max_model_len(endpoint: str) -> int:
    return httpx.get(f"{endpoint}/v1/models").json()["data"][0]["max_model_len"]


def test_memory_held_by_another_job_heals_in_one_retry_at_the_computed_utilization(
    project_target, holder, docker_client
):
    target = project_target()
    other = holder(target, 30)
    state = deploy_qwen(target=target.name, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    free = TOTAL - BASELINE - 30
    margin = RecoveryLimits().guarded(target.host_memory_floor_gib).margin_gib  # 5 GiB: above the guard's 4 GiB floor
    util = fit_utilization(free, TOTAL, margin)  # floor((86.7 - 5) / 119.7, 0.01) = 0.68
    assert result.attempts == 2 and util == 0.68
    assert f"requested gpu_memory_utilization 0.90, running gpu_memory_utilization {util}" in result.degraded
    assert result.spec_hash != result.requested_spec_hash
    # the KV cache is as large as that memory allows (the planner's KV model, within 1 %)
    expected = RecoveryLimits().kv_gib(util, TOTAL, 16384, 64) * GIB / RecoveryLimits().kv_bytes_per_token
    assert result.kv_cache_tokens == pytest.approx(expected, rel=0.01)
    other.reload()
    assert other.status == "running"  # not ours: never stopped, never pruned


def test_a_stale_server_of_ours_holding_memory_is_removed(project_target, holder, docker_client):
    target = project_target()
    stale = holder(target, 60, ours=True)
    state = deploy_qwen(target=target.name, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.degraded is None and result.attempts == 1  # the full runbook spec, first time
    assert stale.name not in [c.name for c in target_containers(docker_client, target.name)]


def test_kv_cache_too_small_heals_at_vllms_estimate(project_target, holder, docker_client):
    target = project_target()
    holder(target, 66)  # 50.7 GiB free: 0.38 starts (5.2 GiB left, above the guard's floor), no room to raise it
    state = deploy_qwen(target=target.name, overrides={"gpu_memory_utilization": 0.38}, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.attempts == 2 and "max_model_len" in result.degraded
    length = served_max_model_len(result.endpoint)
    assert length % 256 == 0 and 8192 <= length < 32000
    assert result.kv_cache_tokens >= length  # one request of the new max-model-len fits


def test_a_shortage_no_utilization_above_the_floor_fixes_fails_cleanly(project_target, holder, docker_client):
    target = project_target()
    holder(target, 80)  # 36.7 GiB free: floor((36.7 - 1) / 119.7) = 0.29 < the 0.50 floor
    state = deploy_qwen(target=target.name, return_state=True)
    assert state.is_failed()
    with pytest.raises(StartFailed) as failed:
        state.result()
    assert failed.value.cause.kind is FailureKind.FREE_MEMORY
    assert len(failed.value.attempts) == 1 and failed.value.steps[-1].give_up
    assert "36.7" in failed.value.next_step or "36.70" in str(failed.value)
    assert target_containers(docker_client, target.name) == []


def test_the_guard_stops_a_start_whose_profiling_overshoots(project_target, docker_client):
    target = project_target(extra_env={"VLLM_SIM_FAULT_PROFILE_OVERSHOOT_GIB": "20"})
    state = deploy_qwen(target=target.name, recover=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(ReadinessFailed) as failed:
        state.result()
    assert failed.value.cause.kind is FailureKind.HOST_MEMORY_GUARD
    assert failed.value.cause.numbers["available_gib"] < failed.value.cause.numbers["floor_gib"] == 4.0
    assert target_containers(docker_client, target.name) == []


def test_a_spec_that_cannot_start_rolls_back_to_the_last_healthy_one(project_target, docker_client):
    target = project_target()
    first = deploy_qwen(target=target.name)
    assert last_healthy(target.name).spec_hash(target) == first.spec_hash
    state = deploy_qwen(target=target.name, overrides={"extra_args": ["--no-such-flag"]}, return_state=True)
    assert state.is_failed()
    with pytest.raises(DeployFailed) as failed:
        state.result()
    assert str(failed.value).startswith(f"rolled back: {target.name} serves its last healthy spec {first.spec_hash}")
    [container] = target_containers(docker_client, target.name)
    assert container.labels["org.spark-vllm.spec-hash"] == first.spec_hash
    assert httpx.get(f"{first.endpoint}/health").status_code == 200


def test_when_the_rollback_fails_too_the_report_says_the_target_is_down(project_target, holder, docker_client, alerts):
    target = project_target()
    deploy_qwen(target=target.name)
    holder(target, 100)  # once the old server is gone, nothing fits
    state = deploy_qwen(target=target.name, overrides={"max_num_seqs": 32}, return_state=True)
    assert state.is_failed()
    with pytest.raises(DeployFailed) as failed:
        state.result()
    assert str(failed.value).startswith(f"TARGET {target.name} IS DOWN")
    assert target_containers(docker_client, target.name) == []
    # the operator is told once: the incident opens already escalated (the target is down)
    message = alerts.wait_for(lambda m: (m["json"] or {}).get("subject", "").startswith(f"[{target.name}]"), 30)
    assert message["json"]["subject"].startswith(f"[{target.name}] ESCALATED: target down: the new spec did not start")
    assert "the rollback failed too" in message["json"]["body"]
    assert "Fix: no server serves: fix the cause above and run deploy-qwen again" in message["json"]["body"]
    time.sleep(1)  # a second message would have come by now (~0.1 s from event to message)
    assert len(messages_about(alerts, target.name)) == 1, messages_about(alerts, target.name)


def test_recover_vllm_brings_back_a_removed_server(project_target, docker_client):
    target = project_target()
    deploy_qwen(target=target.name)
    [container] = target_containers(docker_client, target.name)
    container.remove(force=True)
    result = recover_vllm(target=target.name, reason="test: server removed")
    assert result.status == "recovered" and result.degraded is None
    assert httpx.get(f"{target.endpoint}/health").status_code == 200
    # the version came from the last healthy record (same image), and the server confirmed it
    assert result.vllm_version == httpx.get(f"{target.endpoint}/version").json()["version"]
    again = recover_vllm(target=target.name, reason="test: a second event for the same outage")
    assert again.status == "serving"  # nothing to do: it serves


def test_recover_vllm_through_a_worker(project_target, prefect_server, docker_client, tmp_path):
    target = project_target()
    deploy_qwen(target=target.name)
    for container in target_containers(docker_client, target.name):
        container.kill()  # docker's SIGKILL: exit 137, the engine never said anything
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    ensure_work_pool()
    subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=180
    )
    worker = start_worker("spark-vllm", f"test-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log", env=env)
    try:
        run = subprocess.run(
            [
                PREFECT,
                "deployment",
                "run",
                "recover-vllm/sim",
                "--param",
                f"target={target.name}",
                "--param",
                "reason=test: killed",
                "--watch",
                "--watch-timeout",
                "300",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=360,
        )
    finally:
        stop_worker(worker)
    assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "worker.log").read_text()[-3000:]
    assert "Completed" in run.stdout
    assert httpx.get(f"{target.endpoint}/health").status_code == 200


def test_memory_is_read_as_it_is_now_after_the_other_job_left(project_target, holder, docker_client):
    """The imitation's memory view is computed when read: once the other job stopped, the next deploy
    sees its memory back and starts the runbook's spec, with no stale numbers and no recovery."""
    target = project_target()
    other = holder(target, 40)
    other.stop(timeout=10)  # SIGTERM: the job releases its memory
    state = deploy_qwen(target=target.name, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.attempts == 1 and result.degraded is None


def test_a_target_stopped_on_purpose_is_never_recovered(project_target, docker_client):
    target = project_target()
    deploy_qwen(target=target.name)
    stop_qwen(target=target.name, memory_timeout_s=10)
    result = recover_vllm(target=target.name, reason="test: an unhealthy event after a stop")
    assert result.status == "stopped"
    assert target_containers(docker_client, target.name) == []


def test_after_three_failed_recoveries_within_the_hour_it_asks_for_a_person(project_target, docker_client):
    target = project_target()
    now = time.time()
    for minutes_ago in (50, 30, 10):  # three recoveries this hour that did not end healthy
        record_recover_run(target.name, now - 60 * minutes_ago, ended_healthy=False)
    result = recover_vllm(target=target.name, reason="test: a fourth outage")
    assert result.status == "needs-operator"
    assert target_containers(docker_client, target.name) == []  # it did nothing else
    deploy_qwen(target=target.name)  # a person deploys: the cap starts again
    [container] = target_containers(docker_client, target.name)
    container.remove(force=True)
    assert recover_vllm(target=target.name, reason="test: an outage after the deploy").status == "recovered"


def test_a_spec_that_serves_but_leaves_the_host_below_the_floor_is_stopped(project_target, holder, docker_client):
    """0.70 beside a 30 GiB job starts and becomes ready, but leaves 2.6 GiB MemAvailable: below the
    guard's 4 GiB floor for as long as it serves. The gate stops it at ready instead of declaring it."""
    target = project_target()
    holder(target, 30)
    state = deploy_qwen(
        target=target.name, overrides={"gpu_memory_utilization": 0.70}, recover=False, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ReadinessFailed) as failed:
        state.result()
    assert failed.value.cause.kind is FailureKind.HOST_MEMORY_GUARD
    assert failed.value.cause.numbers["available_gib"] < 4.0
    assert target_containers(docker_client, target.name) == []


def test_recover_vllm_restarts_a_wedged_engine_whose_health_says_200(project_target, docker_client):
    """The health that lies (vllm issue 39863): /health 200, no answer. recover-vllm asks the one tiny
    question too, and restarts the same spec."""
    target = project_target(extra_env={"VLLM_SIM_FAULT_HANG_AFTER_S": "1", "VLLM_SIM_FAULT_HANG_SCOPE": "engine"})
    deploy_qwen(target=target.name)
    time.sleep(1.5)
    assert httpx.get(f"{target.endpoint}/health").status_code == 200
    [wedged] = target_containers(docker_client, target.name)
    result = recover_vllm(target=target.name, reason="test: wedged", answer_timeout_s=3)
    assert result.status == "recovered" and result.classes == ["engine_died"] and result.degraded is None
    [fresh] = target_containers(docker_client, target.name)
    assert fresh.id != wedged.id
