"""Fleet rig: a Prefect server on PostgreSQL and a second docker daemon (a second "machine").

Session fixtures (request them by name; none is autouse). Their start-up code is in rig.py
(`start_postgres`, `start_prefect_server`, `prepare_second_docker`), which bench/fleet.py reuses:

- ``postgres_url``: a private PostgreSQL cluster (tests/fleet/pg_cluster.py) in a fresh /tmp
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
  loaded from the first daemon; yields ``unix:///var/lib/spark-vllm-d2/docker.sock``. This
  session's test containers on it are removed, and those of dead sessions at start-up. At the end
  of the session the daemon is stopped and its bridge removed (an operator's Spark keeps no second
  dockerd), unless ``SPARK_VLLM_KEEP_RIG=1`` keeps both for the next session or another live
  session still has containers on it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import docker
import pytest

from . import rig

#: Kept for importers of the old names: the start-up code lives in rig.py (bench/fleet.py reuses it).
PREFECT = rig.PREFECT
SERVER_START_TIMEOUT_S = rig.SERVER_START_TIMEOUT_S


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    data_dir, url = rig.start_postgres()
    try:
        yield url
    finally:
        rig.stop_postgres(data_dir)


@pytest.fixture(scope="session")
def fleet_server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("fleet-prefect-home")
    try:
        server = rig.start_prefect_server(postgres_url, home, timeout_s=SERVER_START_TIMEOUT_S)
    except rig.RigError as failure:
        pytest.fail(str(failure))
    try:
        # Really on PostgreSQL: its tables are in the prefect database, and no SQLite file was made.
        tables = asyncio.run(rig.public_tables(postgres_url))
        assert {"flow_run", "deployment", "variable"} <= tables, f"Prefect's tables missing in PostgreSQL: {tables}"
        assert not list(home.glob("*.db")), f"the server made a SQLite database in {home}"
        yield server.api_url
    finally:
        rig.stop_prefect_server(server.process)


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
    first = docker.from_env()
    try:
        url = rig.prepare_second_docker(first, rig.DEFAULT_ROOT)
        second = docker.DockerClient(base_url=url)
        try:
            yield url
            rig.remove_session_containers(second)
            others = rig.test_containers(second)  # only live sessions' are left: dead ones' went at start-up
        finally:
            second.close()
        if os.environ.get("SPARK_VLLM_KEEP_RIG") != "1" and not others:
            rig.stop_second_dockerd(rig.DEFAULT_ROOT)
            rig.remove_bridge()
    finally:
        first.close()


# The imitations of tests/integration (the Hub, the image, the first daemon's client), shared.
from tests.integration.conftest import docker_client, hub, sim_image  # noqa: E402,F401
