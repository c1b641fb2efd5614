"""Startup failures and runtime faults of the imitation, as host processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from vllm_fixtures import MODEL, REPO_ROOT, hf_cache, ledger_dir, sim_env, start_sim  # noqa: F401

from sim.vllm.vllm_sim.ledger import Ledger
from sim.vllm.vllm_sim.testing import FakeCache

WEIGHTS_GIB = 34_322_434_048 / 1024**3  # the index's total_size: 31.97 GiB

ENGINE_FAILED = (
    "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore_0': 1}"
)


def failed_start(cache: FakeCache, ledger: Path, **kw: object) -> str:
    """Run the imitation until it exits; assert exit 1 and no readiness; return the output."""
    server = start_sim(cache, ledger, **kw)  # type: ignore[arg-type]
    rc = server.wait_exit(20)
    assert rc == 1, server.output[-3000:]
    assert "Application startup complete." not in server.output
    return server.output


# --- model files --------------------------------------------------------------


def test_offline_with_nothing_staged(tmp_path: Path, ledger_dir: Path) -> None:
    empty = FakeCache(tmp_path / "empty", MODEL, "0" * 40)
    out = failed_start(empty, ledger_dir)
    assert (
        "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for "
        "the specified revision on the local disk and outgoing traffic has been disabled."
    ) in out
    assert "(APIServer pid=" in out.splitlines()[-1]


def test_online_with_nothing_staged_is_a_network_error(tmp_path: Path, ledger_dir: Path) -> None:
    empty = FakeCache(tmp_path / "empty", MODEL, "0" * 40)
    out = failed_start(empty, ledger_dir, env_extra={"HF_HUB_OFFLINE": "0"})
    assert "Temporary failure in name resolution" in out
    assert "Please check your connection and try again or make sure your Internet connection is on." in out


def test_weights_missing_from_download_dir(hf_cache: FakeCache, tmp_path: Path, ledger_dir: Path) -> None:
    args = [MODEL, "--download-dir", str(tmp_path / "elsewhere"), "--max-model-len", "32000"]
    out = failed_start(hf_cache, ledger_dir, args=args)
    assert "(EngineCore_0 pid=" in out and "EngineCore failed to start." in out
    assert "LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder" in out
    assert out.rstrip().endswith(ENGINE_FAILED)


def test_truncated_shard_fails_the_load(hf_cache: FakeCache, ledger_dir: Path) -> None:
    hf_cache.truncate_shard(4, hf_cache.shard(4).stat().st_size - 4)  # an interrupted download
    out = failed_start(hf_cache, ledger_dir)
    assert "Loading safetensors checkpoint shards:  43% Completed | 3/7" in out
    assert "Loading safetensors checkpoint shards:  57% Completed" not in out
    assert (
        "safetensors_rust.SafetensorError: Error while deserializing header: incomplete metadata, file not fully "
        "covered" in out
    )
    assert out.rstrip().endswith(ENGINE_FAILED)


def test_missing_shard_names_the_path(hf_cache: FakeCache, ledger_dir: Path) -> None:
    hf_cache.remove_shard(7)
    out = failed_start(hf_cache, ledger_dir)
    assert f"FileNotFoundError: [Errno 2] No such file or directory: '{hf_cache.shard(7)}'" in out


def test_max_model_len_beyond_the_model(hf_cache: FakeCache, ledger_dir: Path) -> None:
    out = failed_start(
        hf_cache, ledger_dir, args=[MODEL, "--download-dir", str(hf_cache.root), "--max-model-len", "65536"]
    )
    assert "User-specified max_model_len (65536) is greater than the derived max_model_len" in out


# --- memory -------------------------------------------------------------------


def test_memory_held_by_another_server(hf_cache: FakeCache, ledger_dir: Path) -> None:
    (ledger_dir / "held").mkdir()
    (ledger_dir / "held" / "other-container.json").write_text(json.dumps({"gib": 50.0, "heartbeat": time.time() + 30}))
    out = failed_start(hf_cache, ledger_dir)
    assert (
        "ValueError: Free memory on device (66.7/119.7 GiB) on startup is less than desired GPU memory "
        "utilization (0.9, 107.73 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
        "processes."
    ) in out
    assert "[core.py:700] EngineCore failed to start." in out and out.rstrip().endswith(ENGINE_FAILED)


def test_page_cache_blocks_a_restart_until_drop_caches(hf_cache: FakeCache, ledger_dir: Path) -> None:
    first = start_sim(hf_cache, ledger_dir)
    first.wait_ready()
    assert first.stop() == 0
    out = failed_start(hf_cache, ledger_dir)
    assert "Free memory on device (84.73/119.7 GiB) on startup is less than desired" in out
    (ledger_dir / "drop_caches").write_text("3\n")
    again = start_sim(hf_cache, ledger_dir)
    again.wait_ready()
    assert again.stop() == 0


def test_kv_cache_too_small_for_max_model_len(hf_cache: FakeCache, ledger_dir: Path) -> None:
    """A warm start (the weights already in page cache: 0.4 x 119.7 fits beside them even on MemFree)."""
    Ledger(ledger_dir, "earlier-load").record_load(f"{MODEL}@{hf_cache.commit}", WEIGHTS_GIB)
    args = [MODEL, "--download-dir", str(hf_cache.root), "--max-model-len", "40960", "--gpu-memory-utilization", "0.4"]
    out = failed_start(hf_cache, ledger_dir, args=args)
    assert "Available KV cache memory: 6.57 GiB" in out
    assert (
        "ValueError: To serve at least one request with the models's max seq len (40960), (10.00 GiB KV cache is "
        "needed, which is larger than the available KV cache memory (6.57 GiB). Based on the available memory, "
        "the estimated maximum model length is 26880. Try increasing `gpu_memory_utilization` or decreasing "
        "`max_model_len` when initializing the engine."
    ) in out


def test_lower_utilization_starts_with_a_smaller_cache(hf_cache: FakeCache, ledger_dir: Path) -> None:
    server = start_sim(
        hf_cache,
        ledger_dir,
        args=[
            MODEL,
            "--download-dir",
            str(hf_cache.root),
            "--max-model-len",
            "32000",
            "--gpu-memory-utilization",
            "0.70",
        ],
    )
    server.wait_ready()
    assert server.stop() == 0
    line = next(ln for ln in server.output.splitlines() if "GPU KV cache size:" in ln)
    assert int(line.split("size: ")[1].split(" ")[0].replace(",", "")) < 271_360


def test_cuda_oom_fault(hf_cache: FakeCache, ledger_dir: Path) -> None:
    out = failed_start(hf_cache, ledger_dir, env_extra={"VLLM_SIM_FAULT_CUDA_OOM": "1"})
    assert (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 768.00 MiB. GPU 0 has a total capacity of "
        "119.70 GiB" in out
    )


# --- runtime faults -----------------------------------------------------------


def test_engine_death_turns_health_500_then_exits(hf_cache: FakeCache, ledger_dir: Path) -> None:
    server = start_sim(hf_cache, ledger_dir, env_extra={"VLLM_SIM_FAULT_DIE_AFTER_S": "0.3"})
    server.wait_ready()
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert server.wait_for("EngineCore encountered a fatal error.", 5)
    assert httpx.get(server.base_url + "/health").status_code == 500
    assert server.wait_exit(5) == 1
    assert "vllm.v1.engine.exceptions.EngineDeadError" in server.output
    assert not list((ledger_dir / "held").glob("*.json"))


def test_hang_keeps_the_port_open_but_answers_nothing(hf_cache: FakeCache, ledger_dir: Path) -> None:
    server = start_sim(hf_cache, ledger_dir, env_extra={"VLLM_SIM_FAULT_HANG_AFTER_S": "0.2"})
    try:
        server.wait_ready()
        time.sleep(0.4)
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(server.base_url + "/health", timeout=0.5)
    finally:
        assert server.stop() == 0


def test_engine_hang_with_lying_health(hf_cache: FakeCache, ledger_dir: Path) -> None:
    server = start_sim(
        hf_cache, ledger_dir, env_extra={"VLLM_SIM_FAULT_HANG_AFTER_S": "0.2", "VLLM_SIM_FAULT_HANG_SCOPE": "engine"}
    )
    try:
        server.wait_ready()
        time.sleep(0.4)
        assert httpx.get(server.base_url + "/health").status_code == 200
        assert httpx.get(server.base_url + "/v1/models").status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.base_url + "/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=0.5)
    finally:
        assert server.stop() == 0


def test_empty_output_fault(hf_cache: FakeCache, ledger_dir: Path) -> None:
    server = start_sim(hf_cache, ledger_dir, env_extra={"VLLM_SIM_FAULT_EMPTY_OUTPUT": "1"})
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
        resp = client.completions.create(model=MODEL, prompt="What is 12*17?", max_tokens=32)
        assert resp.choices[0].text == "" and resp.choices[0].finish_reason == "stop"
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content == ""
    finally:
        server.stop()


def test_sigterm_while_loading_exits_0_and_frees(hf_cache: FakeCache, ledger_dir: Path) -> None:
    server = start_sim(hf_cache, ledger_dir, env_extra={"VLLM_SIM_TIME_SCALE": "0.02"})
    assert server.wait_for("Loading safetensors checkpoint shards:  14%", 10)
    assert list((ledger_dir / "held").glob("*.json"))
    start = time.monotonic()
    assert server.stop() == 0 and time.monotonic() - start < 1.0
    assert not list((ledger_dir / "held").glob("*.json"))


def test_port_in_use_fails_at_startup(hf_cache: FakeCache, ledger_dir: Path) -> None:
    from vllm_fixtures import SimServer, runbook_args

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = SimServer(runbook_args(hf_cache.root), sim_env(hf_cache.root, ledger_dir), taken.getsockname()[1])
        assert server.wait_exit(20) == 1
    assert server.output.rstrip().endswith("OSError: [Errno 98] Address already in use")


def test_unknown_flag_exits_2_without_starting(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sim.vllm", "serve", MODEL, "--frobnicate"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "vllm: error: unrecognized arguments: --frobnicate"


def test_pressure_drives_the_service_levels_through_metrics(hf_cache: FakeCache, ledger_dir: Path) -> None:
    """The outside load (engine.Pressure): a KV cache held from outside, slow first tokens, stalled steps and
    forced preemptions, at start (VLLM_SIM_PRESSURE_*) and at run time (POST/DELETE /_sim/pressure)."""
    from tasks.vllm.metrics import histogram_quantile, parse_metrics

    server = start_sim(hf_cache, ledger_dir, env_extra={"VLLM_SIM_PRESSURE_KV_RESERVED": "0.97"})
    try:
        server.wait_ready()
        url = server.base_url

        def metrics():
            return parse_metrics(httpx.get(url + "/metrics").text, time.time())

        assert metrics().kv_cache_usage == pytest.approx(0.97, abs=0.001)  # held from outside, idle
        set_to = {"first_token_delay_s": 0.4, "token_delay_s": 0.2, "preemptions_per_s": 50}
        assert httpx.post(url + "/_sim/pressure", json=set_to).json() == {"kv_reserved": 0.0, **set_to}
        assert metrics().kv_cache_usage == 0.0
        before = metrics()
        started = time.monotonic()
        answer = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4})
        assert answer.status_code == 200 and time.monotonic() - started >= 0.4 + 3 * 0.2
        after = metrics()
        assert histogram_quantile(0.5, after.ttft_buckets, before.ttft_buckets) >= 0.4
        assert histogram_quantile(0.5, after.itl_buckets, before.itl_buckets) >= 0.2
        assert after.preemptions_total > before.preemptions_total  # and the answer still came
        bad = httpx.post(url + "/_sim/pressure", json={"kv_reserved": 2})
        assert bad.status_code == 400 and "kv_reserved must be a fraction" in bad.json()["detail"]
        assert httpx.delete(url + "/_sim/pressure").json()["first_token_delay_s"] == 0.0
    finally:
        server.stop()
