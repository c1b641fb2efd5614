"""tasks/prune.py: the scopes' filters (pure), the calls a system prune makes (a fake client), and
the prune against the real daemon: project scope removes only our stopped containers and networks
of one target; system scope removes the others too; a running container is never removed.

The system-scope test against the real daemon runs only with ``SPARK_VLLM_TEST_SYSTEM_PRUNE=1``:
it is ``docker system prune -f`` on the whole daemon, so on a shared one it would remove other
sessions' stopped containers (a failed start a test is still reading) and the build cache.
"""

from __future__ import annotations

import os
import uuid
from types import SimpleNamespace

import docker
import pytest
from docker.errors import NotFound
from prefect import flow
from prefect_docker.host import DockerHost

from blocks.shared import LABEL_MANAGED_BY, LABEL_TARGET, MANAGED_BY
from tasks.prune import PruneReport, human_bytes, prune_docker, prune_filters, prune_with
from tests.integration.conftest import SESSION_PREFIX, TEST_LABELS

SYSTEM_PRUNE_ALLOWED = os.environ.get("SPARK_VLLM_TEST_SYSTEM_PRUNE") == "1"
OURS = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


# ------------------------------------------------------------------------------ pure


def test_prune_filters_system_is_the_runbook():
    assert prune_filters("system") == {
        "containers": {},
        "networks": {},
        "images": {"dangling": True},
        "build_cache": {},
    }
    with pytest.raises(ValueError, match="scope='project'"):
        prune_filters("system", "spark")
    with pytest.raises(ValueError, match="unknown prune scope"):
        prune_filters("everything")  # type: ignore[arg-type]


def test_prune_filters_project_is_only_our_labels():
    assert prune_filters("project") == {
        "containers": {"label": [OURS]},
        "networks": {"label": [OURS]},
        "images": {"dangling": True, "label": [OURS]},
        "build_cache": None,
    }
    one = prune_filters("project", "spark")
    assert one["containers"] == {"label": [OURS, f"{LABEL_TARGET}=spark"]} == one["networks"]
    assert one["build_cache"] is None


class _Recorder:
    def __init__(self, calls: list, name: str, answer: dict) -> None:
        self.calls, self.name, self.answer = calls, name, answer

    def __call__(self, **kwargs):
        self.calls.append((self.name, kwargs))
        return self.answer


def _fake_client(calls: list) -> SimpleNamespace:
    def refuse(**kwargs):
        raise AssertionError("volumes are never pruned")

    return SimpleNamespace(
        containers=SimpleNamespace(
            list=lambda all, filters, ignore_removed=False: [SimpleNamespace(id="a" * 64, name="stopped-one")],
            prune=_Recorder(calls, "containers", {"ContainersDeleted": ["a" * 64, "b" * 64], "SpaceReclaimed": 10}),
        ),
        networks=SimpleNamespace(prune=_Recorder(calls, "networks", {"NetworksDeleted": ["net1"]})),
        images=SimpleNamespace(
            prune=_Recorder(
                calls,
                "images",
                {
                    "ImagesDeleted": [{"Untagged": "x:latest"}, {"Deleted": "sha256:1"}],
                    "SpaceReclaimed": 2000,
                },
            )
        ),
        api=SimpleNamespace(
            prune_builds=_Recorder(calls, "build_cache", {"CachesDeleted": ["c1", "c2"], "SpaceReclaimed": 3_000_000})
        ),
        volumes=SimpleNamespace(prune=refuse),
    )


def test_system_prune_makes_the_runbooks_four_calls_and_reports_them():
    calls: list = []
    report = prune_with(_fake_client(calls), "system")  # type: ignore[arg-type]
    assert calls == [
        ("containers", {"filters": None}),
        ("networks", {"filters": None}),
        ("images", {"filters": {"dangling": True}}),
        ("build_cache", {"filters": None}),
    ]
    assert report.containers == ["stopped-one", "b" * 12] and report.networks == ["net1"]
    assert report.images == ["sha256:1"] and report.build_cache_count == 2 and report.skipped == []
    assert report.total_bytes == 10 + 2000 + 3_000_000
    assert "3.0 MB of disk reclaimed (disk, not memory)" in report.summary
    assert PruneReport.model_validate_json(report.model_dump_json()).total_bytes == report.total_bytes


def test_project_prune_skips_the_build_cache():
    calls: list = []
    report = prune_with(_fake_client(calls), "project", "spark")  # type: ignore[arg-type]
    assert [name for name, _ in calls] == ["containers", "networks", "images"]
    assert report.skipped == ["build_cache"] and "build cache skipped" in report.summary
    assert "project prune (target spark)" in report.summary


def test_human_bytes():
    assert human_bytes(0) == "0 B" and human_bytes(12_300) == "12.3 kB" and human_bytes(1_200_000_000) == "1.2 GB"


# ------------------------------------------------------------------------------ the real daemon


def _labels(target: str | None) -> dict[str, str]:
    if target is None:
        return dict(TEST_LABELS)
    return {**TEST_LABELS, LABEL_MANAGED_BY: MANAGED_BY, LABEL_TARGET: target}


def _stopped(client: docker.DockerClient, image: str, name: str, target: str | None):
    container = client.containers.run(
        image, ["true"], entrypoint=[], name=name, labels=_labels(target), detach=True, network_mode="none"
    )
    container.wait(timeout=60)
    return container


def _running(client: docker.DockerClient, image: str, name: str, target: str):
    return client.containers.run(
        image, ["sleep", "300"], entrypoint=[], name=name, labels=_labels(target), detach=True, network_mode="none"
    )


def _exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.containers.get(name)
    except NotFound:
        return False
    return True


def _network_exists(client: docker.DockerClient, name: str) -> bool:
    return bool(client.networks.list(names=[name]))


@flow(name="test-prune")
def run_prune(scope: str, target_name: str | None) -> PruneReport:
    return prune_docker(DockerHost(), scope, target_name)


def _consistent(report: PruneReport, removed_names: set[str]) -> None:
    assert removed_names <= set(report.containers)
    assert len(report.containers) == len(report.container_ids)
    assert min(report.containers_bytes, report.images_bytes, report.build_cache_bytes) >= 0
    assert report.total_bytes == report.containers_bytes + report.images_bytes + report.build_cache_bytes
    assert all(name in report.summary for name in removed_names)


@pytest.fixture
def leftovers(prefect_server, docker_client, sim_image):
    """Our stopped container and network for a test target, ours for another target, a stranger's
    stopped container and network (not labelled ours), and our running server."""
    tag = uuid.uuid4().hex[:6]
    target, other_target = f"{SESSION_PREFIX}prune-{tag}", f"{SESSION_PREFIX}prune-other-{tag}"
    names = SimpleNamespace(
        target=target,
        ours=f"{target}-stopped",
        ours_other_target=f"{other_target}-stopped",
        stranger=f"test-prune-stranger-{tag}",
        running=f"{target}-running",
        our_network=f"{target}-net",
        stranger_network=f"test-prune-stranger-net-{tag}",
    )
    try:
        _stopped(docker_client, sim_image, names.ours, target)
        _stopped(docker_client, sim_image, names.ours_other_target, other_target)
        _stopped(docker_client, sim_image, names.stranger, None)
        _running(docker_client, sim_image, names.running, target)
        docker_client.networks.create(names.our_network, labels=_labels(target))
        docker_client.networks.create(names.stranger_network, labels=_labels(None))
        yield names
    finally:
        for name in (names.running, names.ours, names.ours_other_target, names.stranger):
            if _exists(docker_client, name):
                docker_client.containers.get(name).remove(force=True)
        for name in (names.our_network, names.stranger_network):
            for network in docker_client.networks.list(names=[name]):
                network.remove()


@pytest.mark.integration
def test_project_prune_removes_only_our_stopped_containers_of_the_target(docker_client, leftovers):
    report = run_prune("project", leftovers.target)
    assert report.scope == "project" and report.target_name == leftovers.target
    assert not _exists(docker_client, leftovers.ours)
    assert not _network_exists(docker_client, leftovers.our_network)
    assert _exists(docker_client, leftovers.running)  # running: never removed
    assert _exists(docker_client, leftovers.ours_other_target)  # ours, but another target's
    assert _exists(docker_client, leftovers.stranger) and _network_exists(docker_client, leftovers.stranger_network)
    assert report.containers == [leftovers.ours] and report.networks == [leftovers.our_network]
    assert report.skipped == ["build_cache"] and report.build_cache_count == 0
    _consistent(report, {leftovers.ours})


@pytest.mark.integration
@pytest.mark.skipif(
    not SYSTEM_PRUNE_ALLOWED,
    reason="docker system prune -f on the whole daemon: "
    "set SPARK_VLLM_TEST_SYSTEM_PRUNE=1 where it is this test's alone",
)
def test_system_prune_removes_the_others_too_never_a_running_container(docker_client, sim_image, leftovers):
    first = run_prune("project", leftovers.target)
    assert _exists(docker_client, leftovers.stranger)
    _consistent(first, {leftovers.ours})

    report = run_prune("system", None)
    assert report.scope == "system" and report.skipped == []
    assert not _exists(docker_client, leftovers.stranger)
    assert not _exists(docker_client, leftovers.ours_other_target)
    assert not _network_exists(docker_client, leftovers.stranger_network)
    assert _exists(docker_client, leftovers.running)  # running: never removed
    assert docker_client.images.get(sim_image)  # tagged (and in use): a system prune keeps it
    _consistent(report, {leftovers.stranger, leftovers.ours_other_target})
    assert leftovers.stranger_network in report.networks
