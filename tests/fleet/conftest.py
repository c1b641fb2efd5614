"""Fleet rig: a Prefect server on PostgreSQL and a second docker daemon (a second "machine").

Session fixtures (request them by name; none is autouse):

- ``postgres_url``: a private PostgreSQL cluster (deployments/postgres.py) in a fresh /tmp
  directory on a free loopback port; yields ``postgresql+asyncpg://prefect:<pw>@127.0.0.1:<port>/prefect``
  (the value of PREFECT_SERVER_DATABASE_CONNECTION_URL). Stopped and deleted at session end; the
  clusters of killed sessions (/tmp/spark-vllm-pg-<dead pid>-*) are stopped and deleted at start.
- ``fleet_server``: a real ``prefect server start`` subprocess on that database (its own
  PREFECT_HOME, a free port on 127.0.0.1, UI and analytics off); yields its API URL
  (``http://127.0.0.1:<port>/api``) once ``/api/health`` answers and its tables exist in
  PostgreSQL. It sets no settings: ``fleet_api`` (module scope) points this process's clients,
  flows and events at it for one module (``flows_against``, which drains Prefect's per-process
  events worker on the way in and out, so no event of one server reaches the other); subprocesses
  get it explicitly: ``env={**os.environ, "PREFECT_API_URL": fleet_server}``. The fleet tests never
  request ``prefect_server`` (the SQLite harness of tests/conftest.py). The server dies with pytest
  (PDEATHSIG); its log is ``<basetemp>/fleet-prefect-home0/server.log``.
- ``second_docker``: a second dockerd (tests/fleet/rig.py: own bridge br-sv2, socket, data and
  exec roots under /var/lib/spark-vllm-d2), reused when one already answers, with the sim image
  loaded from the first daemon; yields ``unix:///var/lib/spark-vllm-d2/docker.sock``. The daemon
  stays up after the session (the next one reuses it); this session's test containers on it are
  removed, and those of dead sessions at start-up.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from deployments import postgres
from sim.image import ensure_sim_image
from sim.ports import free_port

from . import rig

PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_TIMEOUT_S = 90.0
#: Settings of the test process that would point the server elsewhere: not passed to it.
_SERVER_ENV_DROP = ("PREFECT_API_", "PREFECT_SERVER_", "PREFECT_PROFILE", "PREFECT_HOME", "PREFECT_UI_")


def _die_with_parent() -> None:
    """In the server's child: SIGTERM when pytest dies (even by SIGKILL), so no server outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    rig.remove_stale_clusters()
    data_dir = rig.pg_data_dir()
    try:
        cluster = postgres.start(data_dir, free_port())
        postgres.wait_ready(cluster.url)
        yield cluster.url
    finally:
        try:
            postgres.stop(data_dir)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _public_tables(url: str) -> set[str]:
    import asyncpg

    connection = await asyncpg.connect(postgres.asyncpg_dsn(url), timeout=10)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


def _stop_server(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="session")
def fleet_server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("fleet-prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVER_ENV_DROP)}
    env.update({
        "PREFECT_HOME": str(home),
        postgres.URL_ENV: postgres_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    })
    log_path = home / "server.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                   env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)

    def tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"prefect server exited ({process.returncode}) before answering; its log:\n{tail()}")
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server did not answer /api/health in {SERVER_START_TIMEOUT_S:.0f} s:\n{tail()}")
            time.sleep(0.25)
        # Really on PostgreSQL: its tables are in the prefect database, and no SQLite file was made.
        tables = asyncio.run(_public_tables(postgres_url))
        assert {"flow_run", "deployment", "variable"} <= tables, f"Prefect's tables missing in PostgreSQL: {tables}"
        assert not list(home.glob("*.db")), f"the server made a SQLite database in {home}"
        yield api_url
    finally:
        _stop_server(process)


@pytest.fixture(scope="module")
def fleet_api(fleet_server: str) -> Iterator[str]:
    """This module's flows, blocks, clients and events against the fleet server, and only this
    module's: Prefect keeps one events worker per process whatever the URL, so it is drained on the
    way in and out (`flows_against`), and the harness's server of other modules never gets the fleet's
    events, nor the fleet server theirs."""
    from bench.ui_screenshots import flows_against

    with flows_against(fleet_server):
        yield fleet_server


@pytest.fixture(scope="session")
def second_docker() -> Iterator[str]:
    url = rig.start_second_dockerd(rig.DEFAULT_ROOT)
    first = docker.from_env()
    second = docker.DockerClient(base_url=url)
    try:
        rig.copy_image(first, second, ensure_sim_image(first))
        rig.remove_stale_containers(second)
        yield url
        rig.remove_session_containers(second)
    finally:
        second.close()
        first.close()


# The imitations of tests/integration (the Hub, the image, the first daemon's client), shared.
from tests.integration.conftest import docker_client, hub, sim_image  # noqa: E402,F401
