"""The vLLM imitation, run through docker exactly as the NVIDIA image would be, over a cache that
huggingface_hub itself filled from the Hub imitation: it must start and answer, and fail with
vLLM's exact texts when a shard is missing or memory is short. Plain docker-py here, not the
flows: this proves the test equipment, not the product."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import snapshot_download

from blocks.engine import EngineSpec
from sim.ports import free_port
from sim.vllm.vllm_sim.ledger import Ledger
from tests.integration.conftest import REPO, TEST_LABELS, TEST_TOKEN

pytestmark = pytest.mark.integration
RUNBOOK_COMMAND = [
    "vllm",
    "serve",
    "Qwen/Qwen3-32B-FP8",
    "--download-dir",
    "/root/.cache/huggingface",
    "--max-model-len",
    "32000",
    "--gpu-memory-utilization",
    "0.90",
    "--max-num-batched-tokens",
    "16384",
    "--max-num-seqs",
    "64",
    "--enable-prefix-caching",
    "--trust-remote-code",
]


@pytest.fixture(scope="module")
def hf_filled_cache(hub, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf-by-huggingface-hub")
    snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, token=TEST_TOKEN)
    return cache


def run_imitation(docker_client, sim_image: str, cache: Path, ledger: Path, port: int):
    ledger.mkdir(parents=True, exist_ok=True)
    return docker_client.containers.run(
        sim_image,
        RUNBOOK_COMMAND,
        detach=True,
        ports={"8000/tcp": ("127.0.0.1", port)},
        volumes={
            str(cache): {"bind": "/root/.cache/huggingface", "mode": "rw"},
            str(ledger): {"bind": "/var/lib/vllm-sim", "mode": "rw"},
        },
        # instant decoding: these tests prove the start over the cache, not decode speed; at the Spark's
        # roofline (the default) a 20-token answer takes ~3.5 s, which a loaded 2-core machine
        # stretched past the client's 10 s timeout (a flake seen on a fresh clone)
        environment={
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": "/root/.cache/huggingface",
            "VLLM_SIM_TIME_SCALE": "0.01",
            "VLLM_SIM_DECODE_TIME_SCALE": "0",
        },
        labels=TEST_LABELS,
    )


def wait_for(container, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = container.logs().decode()
        container.reload()
        if needle in logs or container.status == "exited":
            return logs
        time.sleep(0.2)
    raise TimeoutError(f"{needle!r} not seen in {timeout} s")


def test_runbook_command_line_is_the_engine_specs():
    assert EngineSpec().vllm_command() == RUNBOOK_COMMAND


def test_starts_over_a_cache_filled_by_huggingface_hub_and_answers(docker_client, sim_image, hf_filled_cache, tmp_path):
    port = free_port()
    container = run_imitation(docker_client, sim_image, hf_filled_cache, tmp_path / "ledger", port)
    try:
        logs = wait_for(container, "Application startup complete.")
        assert "Application startup complete." in logs, logs[-2000:]
        assert "GPU KV cache size: 271,360 tokens" in logs
        assert "Loading safetensors checkpoint shards: 100% Completed | 7/7" in logs
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
        assert models["data"][0]["id"] == "Qwen/Qwen3-32B-FP8"
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            timeout=10,
            json={"model": "Qwen/Qwen3-32B-FP8", "prompt": "What is 12*17?", "max_tokens": 20},
        ).json()
        assert "204" in answer["choices"][0]["text"]
    finally:
        container.remove(force=True)


def test_missing_shard_fails_like_vllm(docker_client, sim_image, hf_filled_cache, tmp_path):
    import shutil

    cache = tmp_path / "hf"
    shutil.copytree(hf_filled_cache, cache, symlinks=True)
    snapshot = next((cache / "models--Qwen--Qwen3-32B-FP8" / "snapshots").iterdir())
    (snapshot / "model-00003-of-00007.safetensors").resolve().unlink()
    container = run_imitation(docker_client, sim_image, cache, tmp_path / "ledger", free_port())
    try:
        assert container.wait(timeout=60)["StatusCode"] == 1
        logs = container.logs().decode()
        assert "FileNotFoundError: [Errno 2] No such file or directory:" in logs
        assert "model-00003-of-00007.safetensors" in logs
        assert (
            "RuntimeError: Engine core initialization failed. See root "
            "cause above. Failed core proc(s): {'EngineCore_0': 1}" in logs
        )
    finally:
        container.remove(force=True)


def test_memory_short_fails_with_vllms_exact_text(docker_client, sim_image, hf_filled_cache, tmp_path):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    other = Ledger(ledger, "another-server", total_gib=119.7, baseline_gib=3.0)
    alive = threading.Event()

    def heartbeat():  # another server that keeps running holds 30 GiB
        while not alive.wait(0.5):
            other.publish(30.0, "running", "x")

    other.publish(30.0, "running", "x")
    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    container = run_imitation(docker_client, sim_image, hf_filled_cache, ledger, free_port())
    try:
        assert container.wait(timeout=60)["StatusCode"] == 1
        logs = container.logs().decode()
        assert re.search(
            r"ValueError: Free memory on device \(86\.7/119\.7 GiB\) on startup is less than desired GPU memory"
            r" utilization \(0\.9, 107\.73 GiB\)\. Decrease GPU memory utilization or reduce GPU memory used by"
            r" other processes\.",
            logs,
        ), logs[-2000:]
    finally:
        alive.set()
        container.remove(force=True)
