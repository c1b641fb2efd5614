"""Fast restarts through real docker: the compile/kernel cache mounts exist on the host after a deploy,
keep what a server wrote across a container replacement, are left alone by stop-qwen and a prune,
and are emptied by clear_caches; the loader falls back when the image has no fastsafetensors, and a
pinned loader the image lacks fails before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from prefect_docker.host import DockerHost

from blocks.render import CACHE_MOUNTS
from flows.deploy import deploy_qwen
from flows.stop import stop_qwen
from tasks.prune import PruneReport, prune_docker
from tasks.report import artifact_key
from tasks.vllm.versions import select
from tests.integration.conftest import target_containers
from tests.integration.prefect_reads import latest_artifact

pytestmark = pytest.mark.integration

#: The imitation's knob that hides its fastsafetensors package (docs/imitations.md): set, so the
#: fallback is tested whether or not the imitation image has the package.
NO_FASTSAFETENSORS = {"VLLM_SIM_NO_FASTSAFETENSORS": "1"}
ENTRY = "torch_compile_cache/0123abcdef/rank_0_0/backbone/graph.py"


@flow(name="test-caches-prune")
def run_prune(target_name: str) -> PruneReport:
    return prune_docker(DockerHost(), "project", target_name)


def test_the_caches_outlive_containers_stops_and_prunes_and_clear_caches_empties_them(project_target, docker_client):
    target = project_target(extra_env=NO_FASTSAFETENSORS)
    first = deploy_qwen(target=target.name)
    root = Path(target.vllm_cache_dir)
    [server] = target_containers(docker_client, target.name)
    mounts = {m["Destination"]: m["Source"] for m in server.attrs["Mounts"]}
    for cache in CACHE_MOUNTS:
        assert (root / cache.subdir).is_dir(), cache.subdir
        assert mounts[select(cache.path, None)] == str(root / cache.subdir)
    # what the server writes into its compile cache lands on the host
    code, out = server.exec_run(
        ["sh", "-c", f"mkdir -p $(dirname /root/.cache/vllm/{ENTRY}) && echo graph > /root/.cache/vllm/{ENTRY}"]
    )
    assert code == 0, out
    on_host = root / "vllm" / ENTRY
    assert on_host.read_text() == "graph\n"
    # the loader: the runbook's vLLM without fastsafetensors has nothing faster than mmap; said in the report
    assert first.loader and first.loader.name == "mmap" and "no fastsafetensors" in first.loader.why
    assert first.caches and first.caches.directory == str(root) and first.caches.evicted == []
    report = latest_artifact(artifact_key("deploy", target.name)).data
    assert "mmap: auto: the image has no fastsafetensors package" in report and f"{root}: 0.00 GiB of 20 GiB" in report

    # a replacement (another spec) mounts the same directory: the new server finds the entry
    second = deploy_qwen(target=target.name, overrides={"max_num_seqs": 32})
    [replaced] = target_containers(docker_client, target.name)
    assert second.status == "deployed" and replaced.id != server.id
    assert replaced.exec_run(["cat", f"/root/.cache/vllm/{ENTRY}"]).output == b"graph\n"
    assert second.caches and second.caches.entries >= 1
    # the first start compiled and saved its graphs; the second (max_num_seqs is not in 0.10.1.1's compile
    # key, vllm/compilation/backends.py) read them from the mounted cache, as its log and its report say
    assert first.compile_cache and first.compile_cache.startswith("miss")
    assert second.compile_cache and second.compile_cache.startswith("hit")
    assert "| compile cache | hit:" in latest_artifact(artifact_key("deploy", target.name)).data

    # stop-qwen and a prune touch containers only
    stop_qwen(target=target.name, memory_timeout_s=15)
    run_prune(target.name)
    assert target_containers(docker_client, target.name) == [] and on_host.read_text() == "graph\n"

    # clear_caches: the caches are emptied before the start (the directories stay, mounted again)
    third = deploy_qwen(target=target.name, overrides={"max_num_seqs": 32}, clear_caches=True)
    assert third.caches and third.caches.cleared and third.caches.entries == 0
    assert not on_host.exists() and (root / "vllm").is_dir()


def test_a_pinned_loader_the_image_lacks_fails_before_the_start(make_sim_target, docker_client):
    target = make_sim_target(extra_env=NO_FASTSAFETENSORS)
    state = deploy_qwen(target=target.name, overrides={"loader": "fastsafetensors"}, stage=False, return_state=True)
    assert state.is_failed()
    assert "needs the fastsafetensors package inside the image" in state.message
    assert target_containers(docker_client, target.name) == []
