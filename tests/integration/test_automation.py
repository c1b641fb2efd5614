"""The whole chain with no human step, through a real Prefect server's automations and a worker:
a server that dies -> docker restarts it -> the restart fails on the page cache the first load left
(vLLM 0.10.1.1 on GB10 counts it as used): a crash loop -> the next health check says unhealthy ->
the deployment trigger of recover-vllm/sim runs it -> recovery drops the page cache -> serving; and
the same again minutes later: a second outage is a new incident (prefect.yaml's for_each), recovered too.

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
from deployments.setup import ensure_work_pool, pause_checks_of_unreachable, unreachable_reason
from deployments.targets import sim_target, spark_target
from flows.deploy import deploy_qwen
from flows.health import health_check
from sim.ports import free_port
from tasks.health.verdict import Verdict
from tests.integration.conftest import SESSION, messages_about, target_containers

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
    mine = [r for r in runs if r.parameters.get("target") == target_name and "recover" in (r.name or "")]
    return sorted(mine, key=lambda r: r.created, reverse=True)


def crash_into_a_loop(docker_client, name: str) -> None:
    """The server ends by itself; docker restarts it; the restart fails on the page cache the load left."""
    [server] = [c for c in target_containers(docker_client, name) if c.status == "running"]
    server.exec_run(["python3", "-c", "import os, signal; os.kill(1, signal.SIGTERM)"])
    restarts = server.attrs["RestartCount"]
    deadline = time.monotonic() + 60
    while True:
        server.reload()
        if server.attrs["RestartCount"] > restarts and server.attrs["State"]["Status"] != "running":
            return
        assert time.monotonic() < deadline, "docker did not restart the server"
        time.sleep(0.3)


def finished_recovery(name: str, count: int, timeout_s: float = 180):
    """The newest of ``count`` finished recover-vllm/sim runs for the target (the automation's, through the worker)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = recover_runs_for(name)
        if len(runs) >= count and runs[0].state and runs[0].state.is_final():
            return runs[0]
        assert time.monotonic() < deadline, f"{count} finished recover-vllm run(s) expected: {runs}"
        time.sleep(1)


def test_a_crash_loop_on_page_cache_is_recovered_by_the_automation(
    prefect_server, docker_client, sim_image, hub, hf_token_block, tmp_path, alerts
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
    # no scheduled checks of a Spark this machine cannot reach (the demo runs setup with --pause-unreachable)
    assert unreachable_reason(target) is None
    assert "is not on its docker host" in (unreachable_reason(spark_target()) or "")
    pause_checks_of_unreachable([spark_target(), target])
    with get_client(sync_client=True) as client:
        assert not any(s.active for s in client.read_deployment_by_name("health-check/spark").schedules)
        assert all(s.active for s in client.read_deployment_by_name("health-check/sim").schedules)
    worker = start_worker("spark-vllm", f"test-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log", env=env)
    try:
        assert deploy_qwen(target=name).status == "deployed"
        crash_into_a_loop(docker_client, name)
        report = health_check(target=name)
        assert report.verdict is Verdict.UNHEALTHY and report.layer.value == "container", report.reason
        opened = alerts.wait_for(lambda m: (m["json"] or {}).get("subject", "").startswith(f"[{name}]"), 30)["json"]
        assert opened["subject"].startswith(f"[{name}] OPENED: unhealthy: container: ")
        first = finished_recovery(name, count=1)
        assert first.state.is_completed(), first.state.message
        # a second outage minutes after the first, before any check saw the server healthy: a new
        # outage (a recovery served since the first began), so the trigger fires again
        crash_into_a_loop(docker_client, name)
        again = health_check(target=name)
        assert again.verdict is Verdict.UNHEALTHY and again.layer.value == "container", again.reason
        second = finished_recovery(name, count=2)
        assert second.state.is_completed(), second.state.message
        # serving again; the planner, having dropped the page cache for the same failure minutes ago, may
        # choose a lower utilization this time (degraded: a recovered spec), never nothing
        assert health_check(target=name).verdict in (Verdict.HEALTHY, Verdict.DEGRADED)
        # the operator was told twice: opened at the first check, resolved at this one, with both outages
        closed = alerts.wait_for(lambda m: "RESOLVED" in ((m["json"] or {}).get("subject") or ""), 30)["json"]
        assert closed["subject"].startswith(f"[{name}] RESOLVED after ")
        assert "fixed by recover-vllm (" in closed["body"] and "Outages in it: 2" in closed["body"], closed["body"]
        assert [m["subject"].split(":")[0].split(" after")[0] for m in messages_about(alerts, name)] == [
            f"[{name}] OPENED",
            f"[{name}] RESOLVED",
        ]
    finally:
        stop_worker(worker)
        for container in target_containers(docker_client, name):
            container.remove(force=True)
