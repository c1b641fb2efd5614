"""Unit tests of the vLLM imitation's pure parts: memory, roofline, answers, CLI, formats."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from vllm_fixtures import MODEL  # puts the repo on sys.path

from sim.vllm.vllm_sim import answers, cli, memory, model_files
from sim.vllm.vllm_sim.failures import StartupFailure
from sim.vllm.vllm_sim.knobs import GIB, Knobs
from sim.vllm.vllm_sim.ledger import Ledger
from sim.vllm.vllm_sim.logs import shard_bar, tqdm_bar
from sim.vllm.vllm_sim.metrics import LATENCY_BUCKETS, VllmMetrics, go_float
from sim.vllm.vllm_sim.model_files import ModelConfig
from sim.vllm.vllm_sim.testing import DEFAULT_TOTAL_SIZE, QWEN3_32B_FP8_CONFIG, build_hf_cache
from sim.vllm.vllm_sim.timing import Roofline, startup_timeline

CFG = ModelConfig.from_dict(QWEN3_32B_FP8_CONFIG)
KNOBS = Knobs.from_env({})


def free_memory_gib(total_gib: float, baseline_gib: float, others_held_gib: float, page_cache_gib: float) -> float:
    """What mem_get_info reports as free on a Spark: everything used by anyone is gone."""
    return max(0.0, total_gib - baseline_gib - others_held_gib - page_cache_gib)


def runbook_plan(total_size: int = DEFAULT_TOTAL_SIZE, util: float = 0.90, max_len: int = 32000) -> memory.KVPlan:
    return memory.plan_kv_cache(CFG, KNOBS.device_total_gib, util, total_size, max_len, 16384, 64, KNOBS.non_torch_gib)


# --- memory -------------------------------------------------------------------


def test_kv_cost_per_token_is_a_quarter_mib() -> None:
    assert CFG.kv_bytes_per_token == 64 * 8 * 128 * 2 * 2 == 256 * 1024


@pytest.mark.parametrize("total_size", [33_800_000_000, DEFAULT_TOTAL_SIZE, 34_800_000_000])
def test_runbook_settings_give_the_runbooks_kv_cache(total_size: int) -> None:
    plan = runbook_plan(total_size)
    memory.validate_plan(plan)
    assert abs(plan.num_tokens - 271_360) / 271_360 < 0.02
    assert plan.num_tokens % 16 == 0
    assert 29.5 < plan.weights_bytes / GIB < 32.5  # "Model loading took ~30 GiB"
    assert 64.5 < plan.available_gib < 68.0  # "Available KV cache memory: ~66 GiB"
    assert plan.max_concurrency == pytest.approx(plan.num_tokens / 32000, rel=1e-9)


def test_runbook_settings_land_on_271360_with_the_real_checkpoint_size() -> None:
    plan = runbook_plan()
    assert plan.num_tokens == 271_360
    assert f"{plan.max_concurrency:.2f}" == "8.48"


def test_lower_utilization_gives_fewer_tokens_and_070_still_starts() -> None:
    tokens = [runbook_plan(util=u).num_tokens for u in (0.90, 0.85, 0.80, 0.75, 0.70)]
    assert tokens == sorted(tokens, reverse=True) and len(set(tokens)) == 5
    low = runbook_plan(util=0.70)
    memory.validate_plan(low)
    memory.check_free_memory(KNOBS.device_total_gib - KNOBS.system_baseline_gib, KNOBS.device_total_gib, 0.70)


def test_free_memory_error_is_vllms_exact_text() -> None:
    with pytest.raises(StartupFailure) as exc:
        memory.check_free_memory(85.92, 121.69, 0.92)
    assert str(exc.value) == (
        "ValueError: Free memory on device (85.92/121.69 GiB) on startup is less than desired GPU memory "
        "utilization (0.92, 111.95 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
        "processes."
    )
    assert exc.value.in_engine


def test_free_memory_uses_round_not_format() -> None:
    """gpu_worker rounds: a 119.7 GiB device prints as 119.7, utilization 0.90 as 0.9."""
    with pytest.raises(StartupFailure) as exc:
        memory.check_free_memory(85.6, 119.7, 0.90)
    assert "(85.6/119.7 GiB)" in exc.value.message and "(0.9, 107.73 GiB)" in exc.value.message


def test_empty_machine_passes_the_runbook_free_memory_check() -> None:
    free = free_memory_gib(119.7, KNOBS.system_baseline_gib, 0.0, 0.0)
    memory.check_free_memory(free, 119.7, 0.90)


def test_page_cache_of_a_previous_load_fails_the_next_start() -> None:
    """vllm issue 35313 (measured on GB10 in unsloth PR 10704): on 0.10.x the weights left in page
    cache count as used."""
    free = free_memory_gib(119.7, KNOBS.system_baseline_gib, 0.0, DEFAULT_TOTAL_SIZE / GIB)
    with pytest.raises(StartupFailure):
        memory.check_free_memory(free, 119.7, 0.90)


def test_kv_too_small_error_is_vllms_exact_text_with_estimate() -> None:
    with pytest.raises(StartupFailure) as exc:
        memory.check_kv_fits(int(3.10 * GIB), CFG.kv_bytes_per_token, 32000)
    assert exc.value.message == (
        "To serve at least one request with the models's max seq len (32000), (7.81 GiB KV cache is needed, "
        "which is larger than the available KV cache memory (3.10 GiB). Based on the available memory, the "
        "estimated maximum model length is 12688. Try increasing `gpu_memory_utilization` or decreasing "
        "`max_model_len` when initializing the engine."
    )


def test_kv_estimate_fits_and_next_block_does_not() -> None:
    avail = int(20.3 * GIB)
    est = memory.max_len_that_fits(avail, CFG.kv_bytes_per_token, 10**6)
    memory.check_kv_fits(avail, CFG.kv_bytes_per_token, est)
    with pytest.raises(StartupFailure):
        memory.check_kv_fits(avail, CFG.kv_bytes_per_token, est + 16)


def test_no_room_for_kv_at_all() -> None:
    plan = runbook_plan(util=0.30)
    assert plan.available_bytes < 0
    with pytest.raises(StartupFailure) as exc:
        memory.validate_plan(plan)
    assert exc.value.message.startswith("No available memory for the cache blocks.")


def test_cuda_graph_sizes_follow_max_num_seqs() -> None:
    assert len(memory.cuda_graph_sizes(64)) == 19
    assert len(memory.cuda_graph_sizes(1024)) == 67


# --- ledger -------------------------------------------------------------------


def test_ledger_counts_live_others_only(tmp_path: Path) -> None:
    a, b = Ledger(tmp_path, "a"), Ledger(tmp_path, "b", stale_s=5.0)
    a.publish(40.0, "ready", MODEL)
    assert b.others_held_gib() == pytest.approx(40.0)
    assert a.others_held_gib() == 0.0
    assert b.others_held_gib(now=time.time() + 6) == 0.0  # stale heartbeat
    a.release()
    assert b.others_held_gib() == 0.0


def test_ledger_page_cache_counts_once_and_drops(tmp_path: Path) -> None:
    led = Ledger(tmp_path, "x")
    led.record_load("m@c", 10.0)
    led.record_load("m@c", 31.1)
    assert led.page_cache_gib() == pytest.approx(31.1)
    time.sleep(0.01)
    (tmp_path / "drop_caches").write_text("3\n")
    assert led.page_cache_gib() == 0.0
    (tmp_path / "drop_caches").write_text("2\n")  # slab only: page cache comes back into view
    assert led.page_cache_gib() == pytest.approx(31.1)


def test_ledger_falls_back_to_a_private_dir(tmp_path: Path) -> None:
    led = Ledger.open(str(tmp_path / "absent"), "x")
    assert led.root.is_dir() and led.root != tmp_path / "absent"


# --- timing -------------------------------------------------------------------


@pytest.mark.parametrize("total_size", [32_800_000_000, DEFAULT_TOTAL_SIZE])
def test_roofline_reproduces_the_runbook_figures(total_size: int) -> None:
    r = Roofline.from_knobs(KNOBS, total_size, CFG.kv_bytes_per_token, CFG.active_params)

    def ttft_seconds(prompt_tokens: int) -> float:  # idle server: one prefill step plus the frontend
        return r.step_seconds(prompt_tokens, prompt_tokens) + r.frontend_overhead_s

    assert 6.0 <= 1.0 / r.step_seconds(1, 256) <= 8.0  # single stream
    assert 300 <= 64 / r.step_seconds(64, 64 * 128) <= 500  # aggregate at concurrency 64, 128 tokens of context
    assert 0.2 <= ttft_seconds(30) <= 0.5
    assert ttft_seconds(2000) > ttft_seconds(30)


def test_startup_timeline_matches_the_runbook_and_scales() -> None:
    t = startup_timeline(KNOBS, DEFAULT_TOTAL_SIZE, 7)
    assert 180 <= t.per_shard_s * 7 <= 230  # ~3.4 min of shard loading
    slow = startup_timeline(
        Knobs.from_env({"VLLM_SIM_FAULT_SLOW_START": "3", "VLLM_SIM_TIME_SCALE": "0.5"}), DEFAULT_TOTAL_SIZE, 7
    )
    assert slow.per_shard_s == pytest.approx(t.per_shard_s * 1.5)


# --- answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("What is 12*17?", "204"),
        ("12 x 17", "204"),
        ("What is 1000 - 1?", "999"),
        ("7 + 5 =", "12"),
        ("What is 84 / 7?", "12"),
        ("10 divided by 4", "2.5"),
        ("What is 6 times 7?", "42"),
    ],
)
def test_arithmetic_answers(prompt: str, expected: str) -> None:
    out = answers.arithmetic(prompt)
    assert out is not None and out.endswith(f"= {expected}")


def test_chat_thinks_first_unless_disabled() -> None:
    msgs = [{"role": "user", "content": "What is 12*17?"}]
    thinking = answers.chat_output(msgs, True)
    assert thinking.startswith("<think>\n") and "</think>\n\n" in thinking and "204" in thinking.split("</think>")[1]
    plain = answers.chat_output(msgs, False)
    assert "<think>" not in plain and "204" in plain


def test_filler_is_deterministic_and_tokens_roundtrip() -> None:
    a, b = answers.filler("Explain quantum computing"), answers.filler("Explain quantum computing")
    assert a == b and 120 <= answers.count_tokens(a) <= 420
    text = answers.chat_output([{"role": "user", "content": "hello"}])
    assert "".join(answers.tokenize(text)) == text


# --- CLI ----------------------------------------------------------------------


def test_runbook_command_line_non_default_args() -> None:
    ns = cli.parse(
        ["serve"]
        + [
            MODEL,
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
    )
    assert ns.non_default == {
        "model_tag": MODEL,
        "model": MODEL,
        "trust_remote_code": True,
        "max_model_len": 32000,
        "download_dir": "/root/.cache/huggingface",
        "enable_prefix_caching": True,
        "max_num_batched_tokens": 16384,
        "max_num_seqs": 64,
    }
    args = cli.to_serve_args(ns)
    assert args.gpu_memory_utilization == 0.9 and args.served_names == [MODEL]


def test_unknown_flag_fails_like_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse(["serve", MODEL, "--no-such-flag", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vllm ") and "vllm: error: unrecognized arguments: --no-such-flag 1" in err


def test_flexible_flags_and_sizes() -> None:
    ns = cli.parse(
        [
            "serve",
            MODEL,
            "--max_model_len=16k",
            "--quantization",
            "fp8",
            "--served-model-name",
            "qwen",
            "--api-key",
            "k",
            "--revision",
            "main",
        ]
    )
    assert ns.max_model_len == 16000 and ns.quantization == "fp8" and ns.served_model_name == ["qwen"]
    assert cli.human_readable_int("1K") == 1024


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == "0.10.1.1+381074ae.nv25.09"


# --- model files --------------------------------------------------------------


def test_hub_cache_resolution_order(tmp_path: Path) -> None:
    assert model_files.hub_cache_dir({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}) == Path("/a")
    assert model_files.hub_cache_dir({"HF_HOME": "/b"}) == Path("/b/hub")
    assert str(model_files.hub_cache_dir({})).endswith(".cache/huggingface/hub")


def test_weights_and_config_resolve_through_refs(tmp_path: Path) -> None:
    cache = build_hf_cache(tmp_path)
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    cfg = model_files.load_config(MODEL, None, env)
    assert cfg.architecture == "Qwen3ForCausalLM" and cfg.quant_method == "fp8"
    w = model_files.locate_weights(MODEL, None, str(tmp_path), env)
    assert w.snapshot_dir == cache.snapshot and len(w.shard_names) == 7 and w.total_size == DEFAULT_TOTAL_SIZE
    for name in w.shard_names:
        model_files.check_shard(w.shard_path(name))


def test_config_comes_from_the_hub_cache_not_the_download_dir(tmp_path: Path) -> None:
    build_hf_cache(tmp_path / "dl")
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    with pytest.raises(StartupFailure) as exc:
        model_files.load_config(MODEL, None, env)
    assert exc.value.exc_type.endswith("LocalEntryNotFoundError")
    assert "outgoing traffic has been disabled" in exc.value.message


def test_missing_files_online_is_a_network_error(tmp_path: Path) -> None:
    with pytest.raises(StartupFailure) as exc:
        model_files.locate_weights(MODEL, None, str(tmp_path), {"HF_ENDPOINT": "http://hub.local:9000"})
    assert "Please check your internet connection" in exc.value.message
    assert "Failed to resolve 'hub.local'" in exc.value.cause_line


def test_damaged_shards_fail_like_safetensors(tmp_path: Path) -> None:
    cache = build_hf_cache(tmp_path)
    cache.truncate_shard(2, 40)
    with pytest.raises(StartupFailure) as exc:
        model_files.check_shard(cache.shard(2))
    assert str(exc.value) == "safetensors_rust.SafetensorError: Error while deserializing header: invalid header length"
    blob = cache.shard(3).resolve()
    blob.write_bytes(blob.read_bytes()[:-3])
    with pytest.raises(StartupFailure) as exc:
        model_files.check_shard(cache.shard(3))
    assert exc.value.message.endswith("incomplete metadata, file not fully covered")
    cache.truncate_shard(4, 5)
    with pytest.raises(StartupFailure, match="header too small"):
        model_files.check_shard(cache.shard(4))
    cache.remove_shard(5)
    with pytest.raises(StartupFailure) as exc:
        model_files.check_shard(cache.shard(5))
    assert str(exc.value) == f"FileNotFoundError: [Errno 2] No such file or directory: '{cache.shard(5)}'"


# --- log and metric formats ---------------------------------------------------


def test_shard_bar_is_vllms_tqdm_format() -> None:
    assert (
        shard_bar(3, 7, 87.0) == "Loading safetensors checkpoint shards:  43% Completed | 3/7 [01:27<01:56, 29.00s/it]"
    )
    assert shard_bar(0, 7, 0.0) == "Loading safetensors checkpoint shards:   0% Completed | 0/7 [00:00<?, ?it/s]"
    assert tqdm_bar("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE)", 19, 19, 4.1).endswith(
        "100%|██████████| 19/19 [00:04<00:00,  4.63it/s]"
    )


def test_go_float_matches_prometheus_client() -> None:
    from prometheus_client.utils import floatToGoString

    for v in (0.0, 1.0, 0.001, 2560.0, 1.7e9 + 0.123, float("inf"), 12345678.5):
        assert go_float(v) == floatToGoString(v)


def test_metrics_exposition_parses_with_vllm_names() -> None:
    m = VllmMetrics(MODEL, {"block_size": "16", "num_gpu_blocks": "16960"})
    m.prompt_tokens.inc(12)
    m.success.inc(1, "stop")
    m.ttft.observe(0.3)
    families = {f.name: f for f in text_string_to_metric_families(m.render())}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:cache_config_info",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:num_preemptions",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:request_success",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:time_per_output_token_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
    ):
        assert name in families, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    base = (("engine", "0"), ("model_name", MODEL))
    assert samples[("vllm:prompt_tokens_total", base)] == 12
    assert samples[("vllm:request_success_total", tuple(sorted(base + (("finished_reason", "stop"),))))] == 1
    assert samples[("vllm:request_success_total", tuple(sorted(base + (("finished_reason", "length"),))))] == 0
    assert samples[("vllm:time_to_first_token_seconds_count", base)] == 1
    assert ("vllm:prompt_tokens_created", base) in samples


def test_metrics_text_matches_prometheus_client_byte_for_byte() -> None:
    import prometheus_client as pc

    ours = VllmMetrics(MODEL, {})
    ours.generation_tokens.inc(5)
    ours.e2e.observe(1.2)
    reg = pc.CollectorRegistry()
    c = pc.Counter(
        "vllm:generation_tokens", "Number of generation tokens processed.", ["model_name", "engine"], registry=reg
    )
    c.labels(MODEL, "0").inc(5)
    h = pc.Histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        ["model_name", "engine"],
        buckets=list(LATENCY_BUCKETS),
        registry=reg,
    )
    h.labels(MODEL, "0").observe(1.2)
    theirs = pc.generate_latest(reg).decode()
    strip = lambda text: [ln for ln in text.splitlines() if "_created{" not in ln]  # noqa: E731 - timestamps differ
    ours_lines = strip("\n".join(ours.generation_tokens.render() + ours.e2e.render()))
    assert ours_lines == strip(theirs)
