"""health-check end to end: real docker, the imitations, a real Prefect server. Each test builds one
state of a target and checks the verdict, the deciding layer, and what was published."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from prefect.blocks.system import Secret

from flows.deploy import deploy_qwen
from flows.health import health_check
from flows.stop import stop_qwen
from tasks.health.verdict import Verdict
from tasks.state import health_history, health_state
from tests.integration.conftest import TEST_API_KEY, target_containers
from tests.integration.prefect_reads import flow_run_artifacts

pytestmark = pytest.mark.integration


def test_a_deployed_server_is_healthy_and_the_check_is_published(make_sim_target):
    target = make_sim_target()
    deploy_qwen(target=target.name)
    state = health_check(target=target.name, return_state=True)
    report = state.result()
    assert report.verdict is Verdict.HEALTHY, report.reason
    assert {layer.name.value for layer in report.layers} >= {
        "container",
        "liveness",
        "readiness",
        "function",
        "progress",
        "host",
    }
    artifacts = " ".join(flow_run_artifacts(state.state_details.flow_run_id))
    assert f"{target.name}: healthy" in artifacts and "deciding layer" in artifacts
    # which vLLM: the server's GET /version, in the verdict and the status artifact
    running = httpx.get(f"{target.endpoint}/version").json()["version"]
    assert report.vllm_version == running and f"| vLLM | {running} |" in artifacts
    for _ in range(13):  # past the point where a growing Variable hit Prefect's 5,000-character limit
        again = health_check(target=target.name)
        assert again.verdict is Verdict.HEALTHY
    kept = health_state(target.name)
    assert kept.verdict == "healthy" and kept.metrics
    assert len(health_history(target.name, f"health-history-{target.name}")) == 14
    # the host layer's floor is the target's host_memory_floor_gib (the start's memory guard's floor)
    target.host_memory_floor_gib = 100_000.0
    target.save(target.name, overwrite=True)
    short = health_check(target=target.name)
    assert (short.verdict, short.layer.value, short.condition.value) == ("degraded", "host", "low_headroom"), (
        short.reason
    )
    assert "100000.00 GiB (the target's host_memory_floor_gib)" in short.reason


def test_a_model_still_loading_is_starting_never_unhealthy(make_sim_target, docker_client):
    target = make_sim_target(time_scale=0.05)  # a start of about 12 s: long enough to look at it loading
    deploying = threading.Thread(target=lambda: deploy_qwen(target=target.name, return_state=True))
    deploying.start()
    try:
        deadline = time.monotonic() + 60
        while not [c for c in target_containers(docker_client, target.name) if c.status == "running"]:
            assert time.monotonic() < deadline, "the container never started"
            time.sleep(0.2)
        report = health_check(target=target.name)
        assert report.verdict is Verdict.STARTING, report.reason
    finally:
        deploying.join(timeout=240)


def test_a_target_stopped_on_purpose_is_stopped(make_sim_target):
    target = make_sim_target()
    deploy_qwen(target=target.name)
    stop_qwen(target=target.name, memory_timeout_s=10)
    report = health_check(target=target.name)
    assert report.verdict is Verdict.STOPPED and report.layer.value == "desired"


def test_a_wedged_engine_is_caught_by_the_progress_layer_while_health_says_200(make_sim_target):
    # the imitation's engine deadlocks 1 s after ready; /health, /v1/models and /metrics keep answering 200
    target = make_sim_target(extra_env={"VLLM_SIM_FAULT_HANG_AFTER_S": "1", "VLLM_SIM_FAULT_HANG_SCOPE": "engine"})
    deploy_qwen(target=target.name)
    time.sleep(1.5)
    assert httpx.get(f"{target.endpoint}/health").status_code == 200
    started = time.monotonic()
    report = health_check(target=target.name)  # the default limits: a first check, no previous snapshot
    took = time.monotonic() - started
    assert report.verdict is Verdict.UNHEALTHY
    assert report.layer.value == "progress" and report.condition.value == "wedged", report.reason
    assert re.match(r"no token for \d+(\.\d)? s, generation_tokens_total unchanged at", report.reason), report.reason
    # no token for first_token_stall_s (8 s) and no token generated for anyone: not the 60 s answer budget
    assert took < 20, f"the check took {took:.1f} s"


def test_a_server_with_an_api_key_is_checked_with_it(make_sim_target):
    Secret(value=TEST_API_KEY).save("vllm-api-key-health", overwrite=True)
    target = make_sim_target(api_key_secret="vllm-api-key-health")
    deploy_qwen(target=target.name)
    report = health_check(target=target.name)
    assert report.verdict is Verdict.HEALTHY, report.reason


def test_a_target_never_deployed_says_so_and_triggers_nothing(make_sim_target):
    target = make_sim_target()  # saved, never deployed: no desired state, no record, no container
    report = health_check(target=target.name)
    assert (report.verdict, report.condition.value) == (Verdict.STOPPED, "never_deployed"), report.reason
    assert report.reason.startswith("never deployed")
    assert health_state(target.name).verdict == "stopped"  # its event is vllm.service.stopped: no recovery
