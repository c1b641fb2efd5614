"""The whole chain with no human step, through a real Prefect server's automations and a worker:
a server that dies -> docker restarts it -> the restart fails on the page cache the first load left
(vLLM 0.10.1.1 on GB10 counts it as used): a crash loop -> the next health check says unhealthy ->
the deployment trigger of recover-vllm/sim runs it -> recovery drops the page cache -> healthy.

The target is named sim-...: the trigger of recover-vllm/sim in prefect.yaml matches the resources
vllm.service.sim* and takes the target from the event's payload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

from deployments.dev.worker import start_worker, stop_worker
from deployments.setup import ensure_work_pool
from deployments.targets import sim_target
from flows.deploy import deploy_qwen
from flows.health import health_check
from sim.ports import free_port
from tasks.health.verdict import Verdict
from tests.integration.conftest import SESSION, target_containers

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def recover_runs_for(target_name: str) -> list:
    """recover-vllm/sim's flow runs for this target, newest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["sim"])),
            flow_run_filter=FlowRunFilter(),
            limit=50,
        )
    return [r for r in runs if r.parameters.get("target") == target_name and "recover" in (r.name or "")]


def test_a_crash_loop_on_page_cache_is_recovered_by_the_automation(
    prefect_server, docker_client, sim_image, hub, hf_token_block, tmp_path
):
    name = f"sim-t{SESSION}-{uuid.uuid4().hex[:6]}"
    target = sim_target(
        name,
        tmp_path / name,
        hub.url,
        free_port(),
        time_scale=0.01,
        hf_token_secret=hf_token_block,
        prune_scope="project",
    )
    target.save(name, overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    ensure_work_pool()
    subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=180
    )
    worker = start_worker("spark-vllm", f"test-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log", env=env)
    try:
        assert deploy_qwen(target=name).status == "deployed"
        [server] = target_containers(docker_client, name)
        server.exec_run(
            ["python3", "-c", "import os, signal; os.kill(1, signal.SIGTERM)"]
        )  # it ends by itself: docker restarts it
        deadline = time.monotonic() + 60
        while True:  # the restart fails on the page cache: docker keeps restarting it
            server.reload()
            if server.attrs["RestartCount"] >= 1 and server.attrs["State"]["Status"] != "running":
                break
            assert time.monotonic() < deadline, "docker did not restart the server"
            time.sleep(0.3)
        report = health_check(target=name)
        assert report.verdict is Verdict.UNHEALTHY and report.layer.value == "container", report.reason
        deadline = time.monotonic() + 180
        while True:  # the automation runs recover-vllm/sim through the worker
            runs = recover_runs_for(name)
            if runs and runs[0].state and runs[0].state.is_final():
                break
            assert time.monotonic() < deadline, f"no finished recover-vllm run: {runs}"
            time.sleep(1)
        assert runs[0].state.is_completed(), runs[0].state.message
        assert health_check(target=name).verdict is Verdict.HEALTHY
    finally:
        stop_worker(worker)
        for container in target_containers(docker_client, name):
            container.remove(force=True)
