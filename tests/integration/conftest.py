"""Integration rig: the real docker daemon, the imitation image, the Hub imitation, a Prefect server.

Every test target is named ``test-<pid>-<hex>``, the pid being the pytest session's. When a
session starts it removes the containers of sessions that are no longer alive (a restarted dockerd
brings back containers with a restart policy, and CI may reuse a machine where an earlier run was
killed), and never those of a session still running: two ``make test`` at once do not destroy each
other's servers. The demo's containers (target ``sim``) are never touched, so ``make test`` works
while ``make demo`` runs.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from blocks.render import label_filters
from blocks.shared import LABEL_MANAGED_BY, LABEL_TARGET, MANAGED_BY
from blocks.target import TargetMachine
from deployments.targets import SIM_LEDGER_MOUNT, sim_target
from sim.hub import HubServer, RepoSpec
from sim.image import ensure_sim_image
from sim.ports import free_port
from tests.integration.receiver import webhook_receiver  # noqa: F401 - the fixture, for every integration test

TEST_TOKEN = "hf_test_token_7f3a9c1e5b2d4f60"
TEST_API_KEY = "sk-test-api-key-0c9e8d7f6a5b"
TEST_TARGET_PREFIX = "test-"
SESSION = str(os.getpid())  # this pytest session: its containers' targets start with test-<pid>-
SESSION_PREFIX = f"{TEST_TARGET_PREFIX}{SESSION}-"
REPO = "Qwen/Qwen3-32B-FP8"


TEST_LABEL = "org.spark-vllm.test"  # on containers a test starts by hand (not through the flows)
TEST_LABELS = {TEST_LABEL: SESSION}  # value: the session's pid, as in target names


def target_containers(client: docker.DockerClient, target: str | None = None) -> list:
    """Containers of test targets (or of one target), and those tests started by hand."""
    found = client.containers.list(all=True, filters=label_filters(), ignore_removed=True)
    if target is not None:
        return [c for c in found if c.labels.get(LABEL_TARGET) == target]
    by_hand = client.containers.list(all=True, filters={"label": TEST_LABEL}, ignore_removed=True)
    return [c for c in found if c.labels.get(LABEL_TARGET, "").startswith(TEST_TARGET_PREFIX)] + by_hand


def session_of(container) -> str:
    """The pid of the pytest session that made a test container ('' when it carries none)."""
    labels = container.labels or {}
    if TEST_LABEL in labels:
        return labels[TEST_LABEL]
    return labels.get(LABEL_TARGET, "").removeprefix(TEST_TARGET_PREFIX).partition("-")[0]


def session_alive(session: str) -> bool:
    """A session is alive while its pid runs on this machine (the only machine tests use)."""
    if not session.isdigit():
        return False
    try:
        os.kill(int(session), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    client.ping()
    for stale in target_containers(client):
        if session_of(stale) != SESSION and not session_alive(session_of(stale)):
            stale.remove(force=True)
    yield client
    for leftover in target_containers(client):
        if session_of(leftover) == SESSION:
            leftover.remove(force=True)
    client.close()


@pytest.fixture(scope="session")
def sim_image(docker_client: docker.DockerClient) -> str:
    return ensure_sim_image(docker_client)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    spec = RepoSpec(repo_id=REPO, n_shards=7, shard_bytes=512 * 1024, seed=0)
    with HubServer(repos=[spec], data_dir=tmp_path_factory.mktemp("hub"), token=TEST_TOKEN) as server:
        yield server


@pytest.fixture(scope="session")
def hf_token_block(prefect_server: str) -> str:
    from prefect.blocks.system import Secret

    Secret(value=TEST_TOKEN).save("hf-token-test", overwrite=True)
    return "hf-token-test"


@pytest.fixture
def make_sim_target(
    prefect_server: str,
    docker_client: docker.DockerClient,
    sim_image: str,
    hub: HubServer,
    hf_token_block: str,
    tmp_path: Path,
) -> Iterator[Callable[..., TargetMachine]]:
    """Save a fresh sim TargetMachine block (own name, port, cache, ledger) and clean up after."""
    made: list[str] = []

    def make(**overrides) -> TargetMachine:
        name = f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}"
        root = tmp_path / name
        options = dict(time_scale=0.01, hf_token_secret=hf_token_block)
        options.update(overrides)
        target = sim_target(name, root, hub.url, options.pop("host_port", None) or free_port(), **options)
        target.save(name, overwrite=True)
        made.append(name)
        return target

    yield make
    for name in made:
        for container in target_containers(docker_client, name):
            container.remove(force=True)


@pytest.fixture
def holder(docker_client, sim_image):
    """Start processes that hold unified memory on a target's machine (another job, or a stale server)."""
    started = []

    def hold(target, gib: float, ours: bool = False):
        labels = dict(TEST_LABELS)
        if ours:  # a server of ours that an interrupted run left behind
            labels.update({LABEL_MANAGED_BY: MANAGED_BY, LABEL_TARGET: target.name})
        ledger = str(Path(target.drop_caches_path).parent)
        container = docker_client.containers.run(
            sim_image,
            ["python3", "-m", "vllm_sim", "hold", "--gib", str(gib)],
            detach=True,
            labels=labels,
            volumes={ledger: {"bind": SIM_LEDGER_MOUNT, "mode": "rw"}},
            network_mode="none",
            name=f"holder-{uuid.uuid4().hex[:8]}",
        )
        started.append(container)
        deadline = time.monotonic() + 30
        while b"holding" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b"holding" in container.logs(), container.logs()
        return container

    yield hold
    for container in started:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already removed by the test (a stale server of ours)
            pass


@pytest.fixture
def project_target(make_sim_target):
    """A sim target whose prune is limited to this project's things: a system prune on the test
    machine's shared daemon would remove other sessions' stopped containers."""
    return lambda **kw: make_sim_target(prune_scope="project", **kw)
