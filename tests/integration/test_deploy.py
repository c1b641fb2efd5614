"""deploy-qwen and stop-qwen end to end: real docker, the imitation image, the Hub imitation,
a real Prefect server. Each test has its own target (port, cache, memory ledger)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
import pytest
from prefect import flow
from prefect.blocks.system import Secret
from prefect_docker.host import DockerHost

from blocks.shared import LABEL_SPEC_HASH
from flows.deploy import deploy_qwen
from flows.stop import stop_qwen
from sim.vllm.vllm_sim.ledger import Ledger
from tasks.memory import NotEnoughMemory, read_meminfo
from tasks.preflight import PreflightFailed
from tasks.readiness import ReadinessFailed, ReadinessTimeouts, wait_until_ready
from tasks.report import artifact_key
from tasks.serve import StartFailed
from tasks.state import last_healthy_record
from tasks.vllm.failures import FailureCause, FailureKind
from tasks.vllm.versions import RUNBOOK_VERSION
from tasks.vllm_version import learn_vllm_version
from tests.integration.conftest import TEST_API_KEY, TEST_LABELS, TEST_TOKEN, target_containers
from tests.integration.prefect_reads import flow_run_artifacts, flow_run_logs, flush_logs, latest_artifact

pytestmark = pytest.mark.integration


def run(flow, **params):
    """Run a flow in-process; return (state, flow_run_id)."""
    state = flow(return_state=True, **params)
    return state, state.state_details.flow_run_id


def test_deploy_then_noop_then_replace_then_stop(make_sim_target, docker_client):
    target = make_sim_target()
    state, _ = run(deploy_qwen, target=target.name)
    assert state.is_completed(), state.message
    first = state.result()
    assert first.status == "deployed"
    assert first.smoke_answer and "204" in first.smoke_answer
    assert first.kv_cache_tokens and 200_000 < first.kv_cache_tokens < 300_000
    # which vLLM: learnt before the start from the image, the server's word wins
    assert first.vllm_version == httpx.get(f"{first.endpoint}/version").json()["version"]
    report = latest_artifact(artifact_key("deploy", target.name)).data
    assert f"| vLLM | {first.vllm_version} (server) |" in report
    assert last_healthy_record(target.name).vllm_version == first.vllm_version
    models = httpx.get(f"{first.endpoint}/v1/models").json()
    assert models["data"][0]["id"] == "Qwen/Qwen3-32B-FP8"
    [container] = target_containers(docker_client, target.name)
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == "/root/.cache/huggingface"

    state, _ = run(deploy_qwen, target=target.name)
    second = state.result()
    assert second.status == "unchanged" and second.vllm_version == first.vllm_version  # GET /version
    [same] = target_containers(docker_client, target.name)
    assert same.id == container.id

    state, _ = run(deploy_qwen, target=target.name, overrides={"max_num_seqs": 32})
    third = state.result()
    assert third.status == "deployed" and third.spec_hash != first.spec_hash
    [replaced] = target_containers(docker_client, target.name)
    assert replaced.id != container.id
    assert replaced.labels[LABEL_SPEC_HASH] == third.spec_hash

    state, _ = run(stop_qwen, target=target.name, memory_timeout_s=15)
    stopped = state.result()
    assert stopped.removed == [replaced.name]
    assert target_containers(docker_client, target.name) == []
    assert stopped.memory_released is True
    assert stopped.page_cache_gib > 30  # the weights stay in page cache: deploy drops it before a start


def test_two_deploys_at_once_are_serialised(make_sim_target, docker_client):
    target = make_sim_target()
    seen_max = 0
    done = threading.Event()

    def watch():
        nonlocal seen_max
        while not done.is_set():
            running = [
                c
                for c in target_containers(docker_client, target.name)
                if c.status in ("created", "running", "restarting")
            ]
            seen_max = max(seen_max, len(running))
            done.wait(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results: list = []
    runs = [
        threading.Thread(target=lambda: results.append(deploy_qwen(target=target.name, return_state=True)))
        for _ in range(2)
    ]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=240)
    done.set()
    watcher.join()
    assert len(results) == 2 and all(s.is_completed() for s in results), [s.message for s in results]
    statuses = sorted(s.result().status for s in results)
    assert statuses == ["deployed", "unchanged"]
    assert seen_max == 1
    assert len(target_containers(docker_client, target.name)) == 1


def test_missing_model_files_fail_with_their_cause_and_leave_nothing(make_sim_target, docker_client):
    target = make_sim_target()
    state, _ = run(deploy_qwen, target=target.name, stage=False)
    assert state.is_failed()
    cause = _failure_cause(state)
    assert cause.kind is FailureKind.MISSING_MODEL_FILES
    assert any("LocalEntryNotFoundError" in line for line in cause.evidence)
    assert target_containers(docker_client, target.name) == []


def test_container_exiting_during_startup_is_classified_at_once(make_sim_target, docker_client):
    target = make_sim_target(extra_env={"VLLM_SIM_FAULT_CUDA_OOM": "1"})
    state, _ = run(deploy_qwen, target=target.name, recover=False)
    assert state.is_failed()
    cause = _failure_cause(state)
    assert cause.kind is FailureKind.CUDA_OOM
    assert any("CUDA out of memory" in line for line in cause.evidence)
    assert target_containers(docker_client, target.name) == []


def test_gate_passes_dockers_oom_killed_to_the_classifier(prefect_server, docker_client, sim_image):
    """A real kernel OOM kill (a 48 MiB memory limit, a 300 MiB allocation mid-load): the gate reads
    docker's State (exit 137, OOMKilled) and the cause says so, though the log has no vLLM error."""
    script = (
        "import time; print('INFO 12-01 10:00:00 [default_loader.py:262] Starting to load model Qwen/Qwen3-32B-FP8...',"
        " flush=True); time.sleep(1); x = bytearray(300 * 1024 * 1024); time.sleep(30)"
    )
    container = docker_client.containers.run(
        sim_image,
        ["-c", script],
        entrypoint=["python3"],
        detach=True,
        mem_limit="48m",
        memswap_limit="48m",
        labels=TEST_LABELS,
    )

    @flow
    def gate() -> None:
        wait_until_ready(
            DockerHost(),
            container.id,
            "http://127.0.0.1:9",
            "Qwen/Qwen3-32B-FP8",
            None,
            ReadinessTimeouts(),
            [],
            "test-gate-oom",
        )

    try:
        state = gate(return_state=True)
    finally:
        container.remove(force=True)
    assert state.is_failed()
    with pytest.raises(ReadinessFailed) as failed:
        state.result()
    assert failed.value.cause.kind is FailureKind.OOM_KILLED
    assert failed.value.cause.numbers == {"exit_code": 137.0, "oom_killed": 1.0}
    assert "OOMKilled" in failed.value.status


def test_remote_docker_host_is_refused_in_preflight(make_sim_target, docker_client):
    target = make_sim_target(docker_base_url="ssh://operator@spark-2.example")
    state, _ = run(deploy_qwen, target=target.name)
    assert state.is_failed()
    assert "worker on that machine" in _preflight_problems(state)
    assert target_containers(docker_client, target.name) == []
    assert not any(Path(target.cache_dir).iterdir())  # refused before staging wrote a byte


def test_memory_held_by_another_process_fails_before_starting_without_recovery(make_sim_target, docker_client):
    target = make_sim_target()
    ledger = Path(target.drop_caches_path).parent
    # another "process" on the machine holds 40 GiB, with a live heartbeat
    other = Ledger(ledger, "someone-else", total_gib=119.7, baseline_gib=3.0)
    other.publish(40.0, "running", "another/model")
    state, _ = run(deploy_qwen, target=target.name, recover=False)
    assert state.is_failed()
    with pytest.raises(NotEnoughMemory) as failed:
        state.result()
    assert "gpu_memory_utilization" in str(failed.value)
    assert target_containers(docker_client, target.name) == []


def test_page_cache_from_an_earlier_load_is_dropped_before_a_start(make_sim_target, docker_client, sim_image):
    target = make_sim_target()
    ledger = Path(target.drop_caches_path).parent
    Ledger(ledger, "earlier", total_gib=119.7, baseline_gib=3.0).record_load("Qwen/Qwen3-32B-FP8@old", 31.97)
    assert read_meminfo(docker_client, target, sim_image).cached_gib > 30  # what the flow reads, as it reads it
    state, _ = run(deploy_qwen, target=target.name)
    assert state.is_completed(), state.message
    assert (ledger / "drop_caches").read_text().strip() == "3"


def test_busy_port_fails_in_preflight(make_sim_target, docker_client):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        target = make_sim_target(host_port=port)
        state, _ = run(deploy_qwen, target=target.name)
    assert state.is_failed()
    assert f"port {port}" in _preflight_problems(state)
    assert target_containers(docker_client, target.name) == []


def test_missing_gpu_runtime_fails_in_preflight(make_sim_target, docker_client):
    target = make_sim_target(gpus="all")
    state, _ = run(deploy_qwen, target=target.name)
    assert state.is_failed()
    assert "NVIDIA Container Toolkit" in _preflight_problems(state)
    assert target_containers(docker_client, target.name) == []


def test_an_image_that_cannot_say_its_vllm_falls_back_to_the_ngc_tag_then_to_the_runbook_s(
    make_sim_target, docker_client
):
    """The probe in a throwaway container of an image without vllm (the imitations' base image) fails;
    under an NGC vLLM tag the release notes' table answers, under any other name the runbook's
    version is assumed, with the command that checks it. Nothing is left running."""
    target = make_sim_target()
    base = "spark-vllm/sim-base:bookworm"
    ngc_like = f"localhost/{target.name}/nvidia/vllm:26.10-py3"  # matches the NGC table, local only
    docker_client.images.get(base).tag(ngc_like)
    probe = flow(name="probe-vllm-version")(lambda image: learn_vllm_version(target, image))
    before = {c.id for c in docker_client.containers.list(all=True, filters={"ancestor": base})}
    try:
        tagged, assumed = probe(ngc_like), probe(base)
    finally:
        docker_client.images.remove(ngc_like, noprune=True)
    assert (tagged.source, tagged.version) == ("ngc-tag", "0.31.0") and "could not be read" in tagged.note
    assert (assumed.source, assumed.version) == ("assumed", str(RUNBOOK_VERSION))
    assert f"docker run --rm --entrypoint '' {base} python3 -c" in assumed.note
    assert "No module named 'vllm'" in assumed.note  # the probe's own stderr says why
    # no container of the probes is left (ancestor also matches the imitation's own image, built on base)
    assert {c.id for c in docker_client.containers.list(all=True, filters={"ancestor": base})} <= before


def test_secrets_never_reach_logs_or_artifacts(make_sim_target, docker_client):
    Secret(value=TEST_API_KEY).save("vllm-api-key-test", overwrite=True)
    target = make_sim_target(api_key_secret="vllm-api-key-test")
    state, run_id = run(deploy_qwen, target=target.name)
    assert state.is_completed(), state.message
    endpoint = state.result().endpoint
    assert httpx.get(f"{endpoint}/v1/models").status_code == 401
    assert httpx.get(f"{endpoint}/v1/models", headers={"Authorization": f"Bearer {TEST_API_KEY}"}).status_code == 200
    flush_logs()
    logs, artifacts = flow_run_logs(run_id), flow_run_artifacts(run_id)
    assert any("Application startup complete." in line for line in logs)
    assert artifacts
    for text in logs + artifacts:
        assert TEST_TOKEN not in text and TEST_API_KEY not in text
    [container] = target_containers(docker_client, target.name)
    assert TEST_API_KEY not in " ".join(container.attrs["Config"]["Cmd"])


def _failure_cause(state) -> FailureCause:
    """The classified cause of a deploy that failed in the readiness gate (or whose recovery gave up)."""
    with pytest.raises((ReadinessFailed, StartFailed)) as failed:
        state.result()
    return failed.value.cause


def _preflight_problems(state) -> str:
    """The problem list of a deploy that failed in preflight (and nowhere else)."""
    with pytest.raises(PreflightFailed) as failed:
        state.result()
    return str(failed.value)
