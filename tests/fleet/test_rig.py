"""The fleet rig works: a Prefect server on PostgreSQL that takes concurrent writers, and a second
docker daemon next to the first one, each serving published loopback ports, docker0 untouched."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import json
import subprocess
import threading
import time
import uuid

import docker
import httpx
import pytest
from prefect import flow

from deployments.targets import SIM_IMAGE
from sim.image import CONTENT_LABEL, sim_content_hash
from sim.ports import free_port
from tests.integration.conftest import SESSION_PREFIX, TEST_LABELS

from . import pg_cluster, rig

pytestmark = pytest.mark.integration

WRITERS = 10
RUNS_PER_WRITER = 3
VARIABLES_PER_WRITER = 3


@flow(name="fleet-rig-probe")
def probe() -> None:
    """Never run: the flow the rig's flow runs are created for."""


async def _fetch(url: str, query: str, *args):
    import asyncpg

    connection = await asyncpg.connect(pg_cluster.asyncpg_dsn(url), timeout=10)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


def fetch(url: str, query: str, *args):
    return asyncio.run(_fetch(url, query, *args))


# --- the fleet's Prefect server --------------------------------------------------------------


def test_fleet_server_is_backed_by_postgres(fleet_api: str, postgres_url: str) -> None:
    fleet_server = fleet_api
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    assert PREFECT_API_URL.value() == fleet_server
    assert httpx.get(f"{fleet_server}/health", timeout=5).status_code == 200
    name = f"rig-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == fleet_server
        run = client.create_flow_run(probe, name=name)
    rows = fetch(postgres_url, "SELECT name FROM flow_run WHERE id = $1", run.id)
    assert [r["name"] for r in rows] == [name]


def test_concurrent_writers_do_not_lock(fleet_api: str, postgres_url: str) -> None:
    """10 clients write at once (flow runs and variables): all succeed, all rows land in PostgreSQL.

    The same load on SQLite is what answers "database is locked" once several workers share a server.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate

    tag = f"rig-{uuid.uuid4().hex[:8]}"
    barrier = threading.Barrier(WRITERS)
    failures: list[BaseException] = []

    def write(index: int) -> None:
        try:
            with get_client(sync_client=True) as client:
                barrier.wait(30)
                for j in range(RUNS_PER_WRITER):
                    client.create_flow_run(probe, name=f"{tag}-{index}-{j}", tags=[tag])
                for j in range(VARIABLES_PER_WRITER):
                    client.create_variable(VariableCreate(name=f"{tag}-{index}-{j}", value={"writer": index, "j": j}))
        except BaseException as failure:  # noqa: BLE001 - reported by the main thread
            failures.append(failure)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(write, i)) for i in range(WRITERS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    took = time.monotonic() - began
    assert not failures, f"{len(failures)} writers failed, e.g. {failures[0]!r}"
    assert not any(t.is_alive() for t in threads), "a writer hung"
    runs = fetch(postgres_url, "SELECT count(*) AS n FROM flow_run WHERE name LIKE $1", f"{tag}-%")[0]["n"]
    variables = fetch(postgres_url, "SELECT count(*) AS n FROM variable WHERE name LIKE $1", f"{tag}-%")[0]["n"]
    assert (runs, variables) == (WRITERS * RUNS_PER_WRITER, WRITERS * VARIABLES_PER_WRITER), f"after {took:.1f} s"


# --- the two docker daemons ------------------------------------------------------------------


def _serve_and_reach(client: docker.DockerClient, network: str) -> None:
    """Run the sim image's python3 http.server with a published loopback port and GET it."""
    port = free_port()
    container = client.containers.run(
        SIM_IMAGE,
        ["python3", "-m", "http.server", "8000"],
        name=f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}",
        labels=TEST_LABELS,
        ports={"8000/tcp": ("127.0.0.1", port)},
        detach=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            container.reload()
            assert container.status in ("created", "running"), container.logs()[-2000:]
            assert time.monotonic() < deadline, f"127.0.0.1:{port} not reachable; {container.logs()[-2000:]!r}"
            time.sleep(0.2)
        container.reload()
        address = container.attrs["NetworkSettings"]["IPAddress"]
        assert ipaddress.ip_address(address) in ipaddress.ip_network(network), (address, network)
    finally:
        container.remove(force=True)


def test_second_daemon_runs_the_sim_image_on_its_own_bridge(second_docker: str) -> None:
    client = docker.DockerClient(base_url=second_docker)
    try:
        info = client.info()
        assert info["DockerRootDir"] == str(rig.DEFAULT_ROOT.absolute() / "data")
        image = client.images.get(SIM_IMAGE)
        assert image.labels.get(CONTENT_LABEL) == sim_content_hash()
        _serve_and_reach(client, str(ipaddress.ip_interface(rig.BRIDGE_CIDR).network))
    finally:
        client.close()


def test_first_daemon_and_docker0_untouched(second_docker: str) -> None:
    links = json.loads(
        subprocess.run(["ip", "-j", "addr", "show", "docker0"], capture_output=True, text=True, check=True).stdout
    )
    assert [f"{a['local']}/{a['prefixlen']}" for a in links[0]["addr_info"] if a["family"] == "inet"] == [
        "172.17.0.1/16"
    ]
    client = docker.from_env()
    try:
        assert client.info()["DockerRootDir"] != str(rig.DEFAULT_ROOT.absolute() / "data")
        bridge = client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"]
        assert bridge == "172.17.0.0/16"
        _serve_and_reach(client, bridge)
    finally:
        client.close()
