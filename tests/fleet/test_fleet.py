"""The fleet end to end: two "machines" on this box, each a docker daemon of its own (the first, and
the rig's second with its own bridge), its own cache and memory ledger, its own worker polling its
own queue; a Prefect server on PostgreSQL; the deployments registered by deployments.fleet from a
targets file, as an operator does. The fleet flows run in this process and reach the machines only
through those deployments.

The fleet has its router (the real vllm-router, started by the operator's launcher
`python -m deployments.router serve`, tests/fleet/../deployments/dev/router.py), and the targets an
API key that clients send through it.

The tests share the module's fleet and run in order: deploy both, fail one, roll an update that
stops at a failing target then one that completes under client load, check the fleet's health,
restart the router, kill a target under load.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest
import yaml
from prefect import get_client
from prefect.blocks.system import Secret
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId
from prefect.client.schemas.sorting import FlowRunSort

from blocks.shared import LABEL_SPEC_HASH
from deployments.dev.router import RouterProcess, start_router, stop_router
from deployments.dev.worker import Worker, start_worker, stop_worker
from deployments.fleet import load_fleet_file, register
from deployments.targets import sim_target
from flows.fleet import deploy_fleet, health_check_fleet, rolling_update
from sim.ports import free_port
from tasks.fleet import read_outcome
from tests.fleet.load import SteadyLoad
from tests.integration.conftest import SESSION_PREFIX, TEST_TOKEN, target_containers
from tests.integration.prefect_reads import table_rows

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
#: A spec that cannot start on a Spark (the KV cache does not fit in 5% of the memory), no recovery.
BAD = {"overrides": {"gpu_memory_utilization": 0.05}, "recover": False}
#: The fleet's API key: the targets' and the one clients send through the router.
FLEET_KEY = f"fleet-key-{uuid.uuid4().hex}"
MODEL = "Qwen/Qwen3-32B-FP8"


@dataclass
class Fleet:
    name: str
    a: str  # on the first daemon
    b: str  # on the second daemon
    clients: dict[str, docker.DockerClient]
    workers: list[Worker]
    router: RouterProcess
    env: dict[str, str]

    @property
    def targets(self) -> list[str]:
        return [self.a, self.b]

    def container(self, target: str):
        [container] = target_containers(self.clients[target], target)
        return container


@pytest.fixture(scope="module")
def fleet(fleet_api, second_docker, docker_client, sim_image, hub, tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    a, b = (f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}" for _ in range(2))
    Secret(value=TEST_TOKEN).save("hf-token-fleet", overwrite=True)
    Secret(value=FLEET_KEY).save("vllm-key-fleet", overwrite=True)
    # decoding at 1/20 of a Spark's pace: a request lasts ~0.2 s, so a drain has requests to wait for
    common = dict(
        time_scale=0.01, decode_time_scale=0.05, hf_token_secret="hf-token-fleet", api_key_secret="vllm-key-fleet"
    )
    machines = {
        a: sim_target(a, root / a, hub.url, free_port(), **common),
        b: sim_target(b, root / b, hub.url, free_port(), docker_base_url=second_docker, **common),
    }
    router = {
        "host": "127.0.0.1",
        "port": free_port(),
        "metrics_port": free_port(),
        "api_key_secret": "vllm-key-fleet",
        "health_check_interval_s": 1,
    }
    name = f"fleet-{uuid.uuid4().hex[:6]}"
    path = root / "fleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "fleet": name,
                "targets": {
                    t: m.model_dump(mode="json", exclude={"name"}, exclude_none=True) for t, m in machines.items()
                },
                "router": router,
            }
        )
    )
    env = {**os.environ, "PREFECT_API_URL": fleet_api}
    register(load_fleet_file(path), env=env)
    workers = [
        start_worker("spark-vllm", f"{t}-worker", root / f"{t}-worker.log", env=env, cwd=ROOT, queues=[t])
        for t in (a, b)
    ]
    second = docker.DockerClient(base_url=second_docker)
    fleet = Fleet(name, a, b, {a: docker_client, b: second}, workers, start_router(name, root / "router.log", env), env)
    try:
        yield fleet
    finally:
        stop_router(fleet.router)
        for worker in workers:
            stop_worker(worker)
        for target, client in ((a, docker_client), (b, second)):
            for container in target_containers(client, target):
                container.remove(force=True)
        second.close()


def child_runs(parent_flow_run_id):
    """The deploy-qwen flow runs a fleet flow started (children of its run-on-target task runs)."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [parent_flow_run_id]}))
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks])),
            sort=FlowRunSort.START_TIME_ASC,
        )


def serves(fleet: Fleet, target: str) -> bool:
    from blocks.target import TargetMachine

    return httpx.get(f"{TargetMachine.load(target).endpoint}/health", timeout=5).status_code == 200


def router_url(fleet: Fleet) -> str:
    from blocks.router import FleetRouter

    return FleetRouter.named(fleet.name).url


def in_router(fleet: Fleet) -> set[str]:
    """The fleet's targets the router lists (by their endpoints)."""
    from blocks.target import TargetMachine

    urls = set(httpx.get(f"{router_url(fleet)}/list_workers", timeout=5).json()["urls"])
    return {t for t in fleet.targets if TargetMachine.load(t).endpoint in urls}


def endpoint_of(target: str) -> str:
    from blocks.target import TargetMachine

    return TargetMachine.load(target).endpoint


def wait_for_router(fleet: Fleet, ok, timeout_s: float) -> None:
    """Until ``ok(workers)`` holds for the router's {worker url: its own health probe's verdict}."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = httpx.get(f"{router_url(fleet)}/workers", timeout=5).json()["workers"]
        if ok({w["url"]: w["is_healthy"] for w in workers}):
            return
        time.sleep(0.2)
    raise AssertionError(f"the router's workers after {timeout_s} s: {workers}")


def ask(fleet: Fleet, key: str | None) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{router_url(fleet)}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_a_fleet_deploy_brings_both_machines_up_at_once(fleet):
    state = deploy_fleet(targets=fleet.targets, fleet=fleet.name, return_state=True)
    assert state.is_completed(), f"{state.message}\n" + "\n".join(w.log_tail() for w in fleet.workers)
    rows = {row["target"]: row for row in state.result()}
    for target in fleet.targets:
        assert rows[target]["verdict"] == "deployed", rows[target]
        assert rows[target]["model"] == "Qwen/Qwen3-32B-FP8" and rows[target]["kv_cache_tokens"] > 0
        assert serves(fleet, target)
        assert fleet.container(target).status == "running"  # each on its own daemon
    assert not target_containers(fleet.clients[fleet.a], fleet.b) and not target_containers(
        fleet.clients[fleet.b], fleet.a
    )
    runs = child_runs(state.state_details.flow_run_id)
    assert sorted(r.parameters["target"] for r in runs) == sorted(fleet.targets)
    assert max(r.start_time for r in runs) < min(r.end_time for r in runs), "the two deploys did not overlap"
    assert {row["target"] for row in table_rows(f"fleet-{fleet.name}")} == set(fleet.targets)
    # both passed the gate: both are in the router, which wants the fleet's key
    assert in_router(fleet) == set(fleet.targets) and all(rows[t]["router"] == "in" for t in fleet.targets)
    assert ask(fleet, FLEET_KEY).status_code == 200
    assert ask(fleet, None).status_code == 401 and ask(fleet, "wrong").status_code == 401


def test_one_target_failing_leaves_the_other_serving(fleet):
    before = {t: fleet.container(t).labels[LABEL_SPEC_HASH] for t in fleet.targets}
    state = deploy_fleet(targets=fleet.targets, fleet=fleet.name, per_target={fleet.b: BAD}, return_state=True)
    assert state.is_failed()
    assert f"1 of 2 targets did not deploy (the others did): {fleet.b}: FAILED" in state.message
    assert "rolled back" in state.message  # b's bad spec was replaced by its last healthy one
    table = {row["target"]: row for row in table_rows(f"fleet-{fleet.name}")}
    assert table[fleet.a]["verdict"] == "unchanged" and table[fleet.b]["verdict"].startswith("FAILED: rolled back")
    # each deploy said how it ended as data, published by its own run on its own machine
    runs = {r.parameters["target"]: r for r in child_runs(state.state_details.flow_run_id)}
    failed, kept = read_outcome(runs[fleet.b].id, fleet.b), read_outcome(runs[fleet.a].id, fleet.a)
    assert failed is not None and failed.verdict == "failed" and failed.message.startswith("rolled back")
    assert kept is not None and kept.verdict == "unchanged" and kept.spec_hash == before[fleet.a]
    for target in fleet.targets:
        assert serves(fleet, target)
        assert fleet.container(target).labels[LABEL_SPEC_HASH] == before[target]
    # b serves its last healthy spec again, gated again: it stays in the router
    assert in_router(fleet) == set(fleet.targets)
    assert table[fleet.b]["router"] == "in" and table[fleet.a]["router"] == "in"


def test_a_rolling_update_stops_at_the_failing_target_and_leaves_the_rest_on_the_old_spec(fleet):
    before = {t: fleet.container(t).labels[LABEL_SPEC_HASH] for t in fleet.targets}
    new = {"max_num_seqs": 32}
    state = rolling_update(
        targets=[fleet.b, fleet.a],
        fleet=fleet.name,
        overrides=new,
        per_target={fleet.b: {"overrides": {**new, **BAD["overrides"]}, "recover": False}},
        return_state=True,
    )
    assert state.is_failed() and f"stopped at {fleet.b}: deploy failed: rolled back" in state.message
    steps = {row["target"]: row for row in table_rows(f"rolling-update-{fleet.name}")}
    assert steps[fleet.a]["step"] == "not attempted: still on the old spec"
    assert [r.parameters["target"] for r in child_runs(state.state_details.flow_run_id)] == [fleet.b]  # a untouched
    for target in fleet.targets:
        assert serves(fleet, target) and fleet.container(target).labels[LABEL_SPEC_HASH] == before[target]

    assert in_router(fleet) == set(fleet.targets)  # b, rolled back, is back in after its drain

    with SteadyLoad(router_url(fleet), FLEET_KEY, MODEL) as load:
        state = rolling_update(targets=[fleet.a, fleet.b], fleet=fleet.name, overrides=new, return_state=True)
    assert state.is_completed(), state.message
    # clients of the router saw every request answered while each target was drained and replaced
    assert load.tally.ok > 20 and not load.tally.failed, load.tally.failures()
    rows = {row["target"]: row for row in state.result()}
    assert all(rows[t]["step"] == "updated" for t in fleet.targets)
    assert all(rows[t]["drain"].startswith("drained in") and rows[t]["router"] == "in" for t in fleet.targets)
    assert in_router(fleet) == set(fleet.targets)
    assert rows[fleet.a]["spec"] == rows[fleet.b]["spec"] and "seqs 32" in rows[fleet.a]["spec"]  # one spec, both
    runs = child_runs(state.state_details.flow_run_id)
    deploys = [r for r in runs if r.parameters.get("overrides")]
    assert [r.parameters["target"] for r in deploys] == [fleet.a, fleet.b]
    assert deploys[0].end_time < deploys[1].start_time  # one at a time, a healthy before b is touched
    for target in fleet.targets:
        assert fleet.container(target).labels[LABEL_SPEC_HASH] != before[target]


def test_a_fleet_health_check_reports_both(fleet):
    state = health_check_fleet(targets=fleet.targets, fleet=fleet.name, run_checks=True, return_state=True)
    assert state.is_completed(), state.message
    rows = {row["target"]: row for row in state.result()}
    for target in fleet.targets:
        assert rows[target]["last_health_check"].startswith("healthy ("), rows[target]
        assert "seqs 32" in rows[target]["spec"]
        assert rows[target]["router"] == "in"
    assert {row["target"] for row in table_rows(f"fleet-health-{fleet.name}")} == set(fleet.targets)
    # the router itself beside the targets: its /health, each worker it lists, the requests it sent there
    router, *workers = table_rows(f"fleet-router-{fleet.name}")
    assert router["target"] == "(the router)" and router["health"] == "ok" and int(router["requests"]) > 20
    assert {w["target"] for w in workers} == set(fleet.targets)
    assert all(w["health"] == "healthy" and int(w["requests"]) > 0 for w in workers), workers


def test_a_restarted_router_routes_to_every_healthy_target_again(fleet):
    stop_router(fleet.router)
    # a rolling update that cannot take a target out of the router touches nothing
    before = {t: fleet.container(t).labels[LABEL_SPEC_HASH] for t in fleet.targets}
    state = rolling_update(targets=fleet.targets, fleet=fleet.name, overrides={"max_num_seqs": 48}, return_state=True)
    assert state.is_failed() and f"stopped at {fleet.a}: not drained, not touched: the router at" in state.message
    assert child_runs(state.state_details.flow_run_id) == []
    assert {t: fleet.container(t).labels[LABEL_SPEC_HASH] for t in fleet.targets} == before
    fleet.router = start_router(fleet.name, fleet.router.log, fleet.env)  # starts empty; its launcher rebuilds it
    assert in_router(fleet) == set(fleet.targets)
    assert ask(fleet, FLEET_KEY).status_code == 200


def test_a_target_killed_under_load_leaves_the_router(fleet):
    with SteadyLoad(router_url(fleet), FLEET_KEY, MODEL) as load:
        time.sleep(1)
        killed = time.time()
        fleet.container(fleet.b).stop(timeout=0)  # the Spark is gone: no server, no restart
        # the router's own health check (every second, 3 failures in a row) stops sending there
        wait_for_router(fleet, lambda workers: workers.get(endpoint_of(fleet.b)) is False, 15)
        stopped_sending = time.time()
        print(f"the router stopped sending to the dead target {stopped_sending - killed:.1f} s after it died")
        state = health_check_fleet(targets=fleet.targets, fleet=fleet.name, run_checks=True, return_state=True)
        after = time.time()
        time.sleep(1)
    assert state.is_completed(), state.message
    rows = {row["target"]: row for row in state.result()}
    assert rows[fleet.b]["router"].startswith("out: health check: unhealthy"), rows[fleet.b]
    assert in_router(fleet) == {fleet.a}
    # the failures are the requests b held when it died and the few before the router stopped sending there
    failed = load.tally.failed
    assert len(failed) <= 8, load.tally.failures()
    assert all(killed - 5 < sent < stopped_sending for sent, _, _ in failed), failed
    assert not [r for r in load.tally.results if r[0] > after and r[2] != "200"]
    assert sum(1 for r in load.tally.results if r[0] > stopped_sending and r[2] == "200") > 10
    # b's unhealthy verdict also fired the fleet's automation: a health-check-fleet run of its own
    wait_until("the automation's health-check-fleet run", lambda: automation_runs(fleet, after=killed), 30)


def automation_runs(fleet: Fleet, after: float) -> list:
    """health-check-fleet/<fleet> runs created after ``after`` by the router's automation."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"health-check-fleet/{fleet.name}")
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id={"any_": [deployment.id]}), sort=FlowRunSort.START_TIME_ASC
        )
    return [r for r in runs if r.created.timestamp() > after and r.parameters.get("run_checks") is False]


def wait_until(what: str, check, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.5)
    return found


def test_no_secret_in_the_routers_log_nor_the_workers(fleet):
    logs = fleet.router.log_text() + "".join(w.log_tail(10_000_000) for w in fleet.workers)
    assert "Router ready" in logs
    assert FLEET_KEY not in logs and TEST_TOKEN not in logs
