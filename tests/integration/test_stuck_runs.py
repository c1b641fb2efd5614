"""Stuck, cancelled and crashed runs through a real worker and a real Prefect server: a deploy cancelled
while its server loads, or whose flow-run process is SIGKILLed, ends Cancelled / Crashed and its container
is gone (the on_cancellation / on_crashed hook, run by the worker: tasks/cleanup.py), and a killed run's GPU
slot is free at once; a run whose process is frozen (SIGSTOP) is marked Crashed by the zombie automation
(deployments/zombies.py), which runs clean-up-run (flows/cleanup.py) to remove its container.

The deployments are made here, one per test, of the real flow (no `prefect deploy --all`: seconds saved,
and nothing of the session's own deployments changed). Prefect's heartbeat is 30 s at least, so the zombie
test scales the automation's window down to `ZOMBIE_TEST_WINDOW_S` and freezes the process once its server
loads, before that window ends: what is tested is that silence marks the run Crashed and removes its
container through the server's own automation (the window's arithmetic is unit-tested).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import psutil
import pytest
from prefect import get_client
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, LogFilter, LogFilterFlowRunId
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from prefect.states import Cancelling

from blocks.shared import LABEL_FLOW_RUN, WORK_POOL
from deployments.dev.worker import Worker, start_worker, stop_worker
from deployments.setup import ensure_work_pool
from deployments.zombies import (
    CLEAN_UP_DEPLOYMENT,
    CLEAN_UP_PARAMETERS,
    HEARTBEAT_ENV,
    ZOMBIE_AUTOMATION,
    ensure_heartbeats,
    ensure_zombie_detection,
    zombie_automation,
    zombie_window_s,
)
from tasks.locks import gpu_lock
from tasks.preflight import preflight
from tasks.state import gpu_lease
from tests.integration.conftest import TEST_LABELS, target_containers

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
#: The zombie test's window: its run's server must be loading (and the run frozen) within it after the
#: first heartbeat (2-3 s here), and it must end before the second (30 s later), which would keep the run
#: alive. Prefect's proactive trigger marks the run Crashed some 4 s after the window ends.
ZOMBIE_TEST_WINDOW_S = 12


@pytest.fixture(scope="module")
def worker(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The pool with its heartbeat (what setup does), and a worker on it, from this checkout."""
    ensure_work_pool()
    ensure_heartbeats()
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    started = start_worker(WORK_POOL, f"stuck-{uuid.uuid4().hex[:6]}", log, env=env)
    yield started
    stop_worker(started)


def deployment_of(flow_name: str, entrypoint: str, name: str | None = None) -> UUID:
    """A deployment of the real flow on the pool, run from this checkout (as `prefect deploy` makes it)."""
    with get_client(sync_client=True) as client:
        return client.create_deployment(
            flow_id=client.create_flow_from_name(flow_name),
            name=name or f"stuck-{uuid.uuid4().hex[:6]}",
            entrypoint=entrypoint,
            work_pool_name=WORK_POOL,
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
        )


def run_deploy(target: str) -> UUID:
    deployment = deployment_of("deploy-qwen", "flows/deploy.py:deploy_qwen")
    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment, parameters={"target": target}).id


def state_of(run_id: UUID):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def wait_for(what: str, check, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.3)
    return found


def run_containers(docker_client, target: str, run_id: UUID) -> list:
    return [c for c in target_containers(docker_client, target) if c.labels.get(LABEL_FLOW_RUN) == str(run_id)]


def log_messages(run_id: UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]


def hook_lines(run_id: UUID) -> list[str]:
    """The run's log lines written by the cleanup hook (tasks/cleanup.py)."""
    return [m for m in log_messages(run_id) if "this run started" in m or "started no container" in m]


def heartbeats_of(run_id: UUID) -> int:
    """How many heartbeats of the run the server has stored (its event feed)."""
    wanted = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
    )
    response = httpx.post(
        f"{PREFECT_API_URL.value()}/events/filter", json={"filter": wanted.model_dump(mode="json"), "limit": 5}
    )
    response.raise_for_status()
    return len(response.json()["events"])


def flow_run_process(worker: Worker, run_id: UUID) -> psutil.Process | None:
    """The worker's child that runs ``run_id`` (the flow-run process: PREFECT__FLOW_RUN_ID in its environment)."""
    for child in psutil.Process(worker.pid).children(recursive=True):
        try:
            if child.environ().get("PREFECT__FLOW_RUN_ID") == str(run_id):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def loading_container(docker_client, target: str, run_id: UUID):
    """The run's server, once docker runs it (the imitation then loads for tens of seconds)."""
    return wait_for(
        "the run's container",
        lambda: [c for c in run_containers(docker_client, target, run_id) if c.status == "running"],
    )[0]


def test_a_cancelled_deploy_and_a_killed_one_each_remove_the_server_they_were_starting(
    worker, project_target, docker_client
):
    """Both at once, on two targets of one worker: one wait for loading servers serves both cases."""
    cancelled, killed = project_target(time_scale=0.2), project_target(time_scale=0.2)  # loads of about 40 s
    cancelled_run, killed_run = run_deploy(cancelled.name), run_deploy(killed.name)
    cancelled_container = loading_container(docker_client, cancelled.name, cancelled_run)
    killed_container = loading_container(docker_client, killed.name, killed_run)
    process = wait_for("the flow-run process", lambda: flow_run_process(worker, killed_run), 10)
    with get_client(sync_client=True) as client:  # what the UI's Cancel does
        client.set_flow_run_state(cancelled_run, Cancelling(message="cancelled by the test"))
    process.send_signal(signal.SIGKILL)

    final = wait_for("Cancelled", lambda: (s := state_of(cancelled_run)).is_final() and s)
    assert final.is_cancelled(), final
    wait_for("the container removed", lambda: not run_containers(docker_client, cancelled.name, cancelled_run), 30)
    assert cancelled_container.name not in [c.name for c in target_containers(docker_client, cancelled.name)]
    # the run's own cleanup (tasks/serve.py start_once removes a server that never served, on the worker's
    # SIGTERM too) usually wins; the worker's on_cancellation hook then finds nothing left, or removes it
    [line] = wait_for("the hook's log line", lambda: hook_lines(cancelled_run), 10)
    assert line in (
        f"Cancelling: this run had started no container on {cancelled.name}",
        f"Cancelling: removed {cancelled_container.name}, which this run started and which never served",
    )

    final = wait_for("Crashed", lambda: (s := state_of(killed_run)).is_final() and s)
    assert final.is_crashed() and "-9" in (final.message or ""), final
    # the worker runs the on_crashed hook in a process of its own: it removes what never served
    wait_for("the container removed", lambda: not run_containers(docker_client, killed.name, killed_run), 60)
    assert wait_for("the hook's log line", lambda: hook_lines(killed_run), 10) == [
        f"Crashed: removed {killed_container.name}, which this run started and which never served"
    ]
    # its process is known gone: the hook freed the run's GPU slot, not left to the lease's 300 s
    freed = f"Crashed: freed gpu:{killed.name}, which this run held (its process is gone)"
    wait_for("the slot freed", lambda: freed in log_messages(killed_run), 10)
    started = time.monotonic()
    with gpu_lock(killed.name, timeout_s=5):  # what the next deploy does first
        assert gpu_lease(killed.name) is not None
    assert time.monotonic() - started < 5 and gpu_lease(killed.name) is None


def clean_up_runs(deployment: UUID, run_id: UUID) -> list:
    """The runs of the clean-up deployment for ``run_id`` (what the automation's third action started)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment])))
    return [r for r in runs if r.parameters.get("flow_run_id") == str(run_id)]


def first_heartbeat_at(run_id: UUID) -> float:
    """When (epoch seconds) the run's first heartbeat occurred, as the server stored it."""
    wanted = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
    )
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=wanted, limit=5)
    return min(e.occurred for e in page.events).timestamp()


def test_a_frozen_run_is_marked_crashed_and_its_container_removed(
    worker, project_target, webhook_receiver, docker_client
):
    target = project_target(time_scale=0.2)  # a load of about 40 s: it never passes the gate in the test
    deployment = deployment_of("deploy-qwen", "flows/deploy.py:deploy_qwen")
    clean_up = deployment_of("clean-up-run", "flows/cleanup.py:clean_up_run")
    # a block of its own: the session's vllm-alerts (if any) is left alone
    block = CustomWebhookNotificationBlock(
        name="zombie-test", url=webhook_receiver.url, json_data={"s": "{{subject}}", "b": "{{body}}"}
    )
    block_id = block.save(f"zombie-test-{uuid.uuid4().hex[:6]}")
    window = ZOMBIE_TEST_WINDOW_S
    with get_client(sync_client=True) as client:
        automation = client.create_automation(
            zombie_automation([deployment], window, block_id, PREFECT_UI_URL.value(), clean_up)
        )
        run_id = client.create_flow_run_from_deployment(deployment, parameters={"target": target.name}).id
    try:
        # the trigger judges a run it heard beat once: its first heartbeat opens a window of `window` s
        wait_for("a heartbeat", lambda: heartbeats_of(run_id), 20)
        container = loading_container(docker_client, target.name, run_id)
        process = wait_for("the flow-run process", lambda: flow_run_process(worker, run_id), 10)
        assert process.environ().get(HEARTBEAT_ENV) == "30"  # from the pool's base job template
        process.send_signal(signal.SIGSTOP)  # frozen: no heartbeat, no state, its worker alive
        frozen_after = time.time() - first_heartbeat_at(run_id)
        print(f"frozen {frozen_after:.1f} s after the first heartbeat")
        assert frozen_after < window - 2, f"the server started {frozen_after:.0f} s after the first heartbeat"
        crashed = wait_for("Crashed", lambda: (s := state_of(run_id)).is_crashed() and s, window + 20)
        print(f"Crashed {crashed.timestamp.timestamp() - first_heartbeat_at(run_id):.1f} s after the first heartbeat")
        assert f"no heartbeat for {window} s" in (crashed.message or ""), crashed
        message = webhook_receiver.wait_for(lambda m: m["json"] is not None, 20)["json"]
        assert f"target {target.name}) sent no heartbeat for {window} s" in message["b"], message
        assert "deploy-qwen/stuck-" in message["s"] and "is stuck: marked Crashed" in message["s"], message
        assert f"/runs/flow-run/{run_id}" in message["b"], message
        # the frozen process runs no hook: the automation's clean-up-run removes what never served
        t0 = time.monotonic()
        wait_for("the container removed", lambda: not run_containers(docker_client, target.name, run_id), 30)
        print(f"container removed {time.monotonic() - t0:.1f} s after Crashed was seen")
        [cleaner] = clean_up_runs(clean_up, run_id)
        assert cleaner.parameters == {"target": target.name, "flow_run_id": str(run_id)}
        wait_for("clean-up-run Completed", lambda: state_of(cleaner.id).is_completed(), 20)
        line = f"flow run {run_id}: removed {container.name}, which this run started and which never served"
        wait_for("clean-up-run's log line", lambda: line in log_messages(cleaner.id), 10)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation)
        if (process := flow_run_process(worker, run_id)) is not None:
            process.send_signal(signal.SIGKILL)  # a stopped process dies of SIGKILL too: nothing leaks
            process.wait(10)
    assert state_of(run_id).is_crashed()


def test_setup_creates_one_zombie_automation_for_the_pools_deployments(worker):
    deployment = deployment_of("stop-qwen", "flows/stop.py:stop_qwen")
    flow_name, name = CLEAN_UP_DEPLOYMENT.split("/")
    clean_up = deployment_of(flow_name, "flows/cleanup.py:clean_up_run", name)  # as prefect.yaml's
    try:
        ensure_zombie_detection()
        ensure_zombie_detection()  # a re-run replaces it
        with get_client(sync_client=True) as client:
            [automation] = client.read_automations_by_name(ZOMBIE_AUTOMATION)
            pool = client.read_work_pool(WORK_POOL).base_job_template
        watched = automation.trigger.match_related["prefect.resource.id"]
        assert f"prefect.deployment.{deployment}" in watched
        assert f"prefect.deployment.{clean_up}" not in watched  # a clean-up is never judged
        [run] = [a for a in automation.actions if a.type == "run-deployment"]
        assert run.deployment_id == clean_up and run.parameters == CLEAN_UP_PARAMETERS
        assert automation.trigger.within.total_seconds() == zombie_window_s() == 90
        assert pool["variables"]["properties"]["env"]["default"][HEARTBEAT_ENV] == "30"
    finally:
        with get_client(sync_client=True) as client:  # the session's other runs are not judged by it
            for automation in client.read_automations_by_name(ZOMBIE_AUTOMATION):
                client.delete_automation(automation.id)


def test_preflight_warns_of_a_host_without_oom_guard_until_one_runs(project_target, docker_client, sim_image):
    target = project_target()
    [warning] = [w for w in preflight(target, sim_image) if "OOM guard" in w]
    assert "vllm issue 46307" in warning and "systemctl enable --now earlyoom" in warning
    # any process named earlyoom on the docker host counts (the helper sees the host's processes)
    guard = docker_client.containers.run(
        sim_image,
        ["sh", "-c", "cp /bin/sleep /tmp/earlyoom && exec /tmp/earlyoom 60"],
        entrypoint=[],
        detach=True,
        remove=True,
        network_mode="none",
        labels=TEST_LABELS,
    )
    try:
        wait_for("earlyoom running", lambda: "earlyoom" in guard.top()["Processes"][0][-1], 10)
        assert not [w for w in preflight(target, sim_image) if "OOM guard" in w]
    finally:
        guard.remove(force=True)
