"""tasks/logs.py: milestones, phases and failure classes from vLLM's exact texts (vllm.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.logs import (
    PHASE_ORDER,
    EventKind,
    FailureCause,
    FailureKind,
    LineSplitter,
    Phase,
    StartupTracker,
    advance,
    classify_failure,
    is_cosmetic,
    parse_line,
    phase_of,
    scrub,
    split_lines,
    strip_prefix,
    suggest_max_model_len,
    suggest_utilization,
    summarize_startup,
)

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"


def log(name: str) -> list[str]:
    return (LOGS / name).read_text().splitlines()


# ------------------------------------------------------------------------------ lines


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("(APIServer pid=1) INFO 11-07 10:15:05 [api_server.py:1805] vLLM API server version 0.10.1.1",
         "INFO 11-07 10:15:05 [api_server.py:1805] vLLM API server version 0.10.1.1"),
        ("(EngineCore_0 pid=210) INFO x", "INFO x"),
        ("(EngineCore_DP0 pid=7) INFO x", "INFO x"),
        ("(EngineCore pid=7) INFO x", "INFO x"),
        ("2025-11-07T10:15:05.123456789Z (APIServer pid=1) INFO x\n", "INFO x"),
        ("\x1b[32mINFO\x1b[0m x", "INFO x"),
        ("Loading safetensors checkpoint shards:   0% Completed | 0/7\rLoading safetensors checkpoint shards:  14% Completed | 1/7",
         "Loading safetensors checkpoint shards:  14% Completed | 1/7"),
        ("no prefix at all", "no prefix at all"),
    ],
)  # fmt: skip
def test_strip_prefix(raw, expected):
    assert strip_prefix(raw) == expected


def test_line_splitter_handles_partial_chunks_and_carriage_returns():
    splitter = LineSplitter()
    assert splitter.feed(b"(APIServer pid=1) INFO a\n(Engine") == ["(APIServer pid=1) INFO a"]
    assert splitter.feed("Core_0 pid=2) INFO b\r\nbar 1/7\rbar 2/7\r") == ["(EngineCore_0 pid=2) INFO b", "bar 1/7", "bar 2/7"]
    assert splitter.feed("\ntail") == []
    assert splitter.flush() == ["tail"] and splitter.flush() == []
    assert split_lines(b"a\r\nb\rc\n\n") == ["a", "b", "c"]


# ------------------------------------------------------------------------------ milestones


@pytest.mark.parametrize(
    "line,kind,values",
    [
        ("INFO 11-07 10:15:01 [__init__.py:241] Automatically detected platform cuda.", EventKind.PLATFORM, {"platform": "cuda"}),
        ("(APIServer pid=1) INFO 11-07 10:15:05 [api_server.py:1805] vLLM API server version 0.10.1.1", EventKind.VERSION, {"version": "0.10.1.1"}),
        ("(APIServer pid=1) INFO 11-07 10:15:12 [__init__.py:711] Resolved architecture: Qwen3ForCausalLM", EventKind.ARCHITECTURE, {"architecture": "Qwen3ForCausalLM"}),
        ("(APIServer pid=1) INFO 11-07 10:15:12 [__init__.py:1750] Using max model len 32000", EventKind.MAX_MODEL_LEN, {"max_model_len": 32000}),
        ("(APIServer pid=1) INFO 11-07 10:15:13 [scheduler.py:222] Chunked prefill is enabled with max_num_batched_tokens=16384.", EventKind.CHUNKED_PREFILL, {"max_num_batched_tokens": 16384}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:15:22 [gpu_model_runner.py:1953] Starting to load model Qwen/Qwen3-32B-FP8...", EventKind.LOAD_START, {"model": "Qwen/Qwen3-32B-FP8"}),
        ("Loading safetensors checkpoint shards: 100% Completed | 7/7 [03:24<00:00, 29.20s/it]", EventKind.SHARD_PROGRESS, {"percent": 100, "done": 7, "total": 7}),
        ("Loading safetensors checkpoint shards:  43% Completed | 3/7 [01:27<01:56, 29.20s/it]", EventKind.SHARD_PROGRESS, {"percent": 43, "done": 3, "total": 7}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:18:48 [default_loader.py:262] Loading weights took 204.37 seconds", EventKind.WEIGHTS_LOADED, {"weights_load_seconds": 204.37}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:18:49 [gpu_model_runner.py:2007] Model loading took 32.1345 GiB and 205.612345 seconds", EventKind.MODEL_LOADED, {"model_gib": 32.1345, "model_load_seconds": 205.612345}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:19:06 [monitor.py:34] torch.compile takes 16.73 s in total", EventKind.COMPILE_DONE, {"compile_seconds": 16.73}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:19:08 [gpu_worker.py:276] Available KV cache memory: 66.25 GiB", EventKind.KV_CACHE_MEMORY, {"kv_cache_gib": 66.25}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:19:08 [kv_cache_utils.py:849] GPU KV cache size: 271,360 tokens", EventKind.KV_CACHE_TOKENS, {"kv_cache_tokens": 271360}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:19:08 [kv_cache_utils.py:853] Maximum concurrency for 32,000 tokens per request: 8.48x", EventKind.MAX_CONCURRENCY, {"concurrency_tokens": 32000, "max_concurrency": 8.48}),
        ("(EngineCore pid=9) INFO 01-01 00:00:00 [kv_cache_utils.py:1] GPU KV cache size: 271,360 tokens, Maximum concurrency for 32,000 tokens per request: 8.48x",
         EventKind.KV_CACHE_TOKENS, {"kv_cache_tokens": 271360, "concurrency_tokens": 32000, "max_concurrency": 8.48}),
        ("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|██████████| 67/67 [00:05<00:00, 12.93it/s]", EventKind.GRAPH_CAPTURE, {"graphs_percent": 100, "graphs_done": 67, "graphs_total": 67}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:19:14 [gpu_model_runner.py:2708] Graph capturing finished in 6 secs, took 0.53 GiB", EventKind.GRAPH_CAPTURED, {"graph_capture_seconds": 6, "graph_gib": 0.53}),
        ("(EngineCore_0 pid=210) INFO 11-07 10:19:14 [core.py:214] init engine (profile, create kv cache, warmup model) took 25.31 seconds", EventKind.ENGINE_READY, {"init_engine_seconds": 25.31}),
        ("(APIServer pid=1) INFO 11-07 10:19:16 [api_server.py:1880] Starting vLLM API server 0 on http://0.0.0.0:8000", EventKind.API_SERVER_START, {"url": "http://0.0.0.0:8000"}),
        ("(APIServer pid=1) INFO 01-01 00:00:00 [api_server.py:1] Starting vLLM server on http://0.0.0.0:8000", EventKind.API_SERVER_START, {"url": "http://0.0.0.0:8000"}),
        ("(APIServer pid=1) INFO:     Started server process [1]", EventKind.SERVER_PROCESS, {"server_pid": 1}),
        ("(APIServer pid=1) INFO:     Waiting for application startup.", EventKind.WAITING_STARTUP, {}),
        ("(APIServer pid=1) INFO:     Application startup complete.", EventKind.APP_STARTUP_COMPLETE, {}),
        ("(APIServer pid=1) INFO 11-07 10:19:27 [loggers.py:123] Engine 000: Avg prompt throughput: 1.4 tokens/s, Avg generation throughput: 6.6 tokens/s, Running: 1 reqs, Waiting: 0 reqs, GPU KV cache usage: 0.1%, Prefix cache hit rate: 0.0%",
         EventKind.ENGINE_STATS,
         {"engine": 0, "prompt_throughput": 1.4, "generation_throughput": 6.6, "running": 1, "waiting": 0, "kv_cache_usage_pct": 0.1, "prefix_cache_hit_rate_pct": 0.0}),
    ],
)  # fmt: skip
def test_parse_line_milestones(line, kind, values):
    event = parse_line(line)
    assert event is not None and event.kind is kind
    assert event.values == values


def test_parse_line_details():
    args = parse_line("(APIServer pid=1) INFO 11-07 10:15:05 [utils.py:326] non-default args: {'model': 'Qwen/Qwen3-32B-FP8', 'max_model_len': 32000, 'api_key': 'sk-secret'}")
    assert args.kind is EventKind.ARGS
    assert args.values["non_default_args"] == {"model": "Qwen/Qwen3-32B-FP8", "max_model_len": 32000, "api_key": "***"}
    assert "sk-secret" not in args.line and "sk-secret" not in args.message
    init = parse_line("(EngineCore_0 pid=210) INFO 11-07 10:15:20 [core.py:74] Initializing a V1 LLM engine (v0.10.1.1+381074ae.nv25.09) with config: model='Qwen/Qwen3-32B-FP8', speculative_config=None, download_dir='/root/.cache/huggingface', load_format=auto")
    assert init.kind is EventKind.ENGINE_INIT
    assert init.values == {"version": "0.10.1.1+381074ae.nv25.09", "model": "Qwen/Qwen3-32B-FP8", "download_dir": "/root/.cache/huggingface"}
    assert init.level == "INFO" and init.source == "core.py:74"
    # not a stats line, although it starts the same way
    assert parse_line("(APIServer pid=1) INFO 11-07 10:19:16 [loggers.py:142] Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: 16960") is None
    assert parse_line("(APIServer pid=1) INFO 11-07 10:19:16 [launcher.py:37] Route: /health, Methods: GET") is None
    assert parse_line("") is None
    error = parse_line("(EngineCore_0 pid=210) ERROR 11-07 11:02:22 [core.py:700] EngineCore failed to start.")
    assert error.kind is EventKind.ERROR and phase_of(error) is None


@pytest.mark.parametrize(
    "line",
    [
        "WARNING: Found GPU0 NVIDIA GB10 which is of cuda capability 12.1",
        "Maximum cuda capability supported is 12.0",
        "    Found GPU0 NVIDIA GB10 which is of cuda capability 12.1.",
        "    Minimum and Maximum cuda capability supported by this version of PyTorch is",
        "    (8.0) - (12.0)",
    ],
)
def test_gb10_warning_is_cosmetic(line):
    assert is_cosmetic(line)
    event = parse_line(line)
    assert event.kind is EventKind.COSMETIC_WARNING and phase_of(event) is None


# ------------------------------------------------------------------------------ a full startup


def test_full_startup_log():
    tracker = StartupTracker()
    events = tracker.feed_all(log("startup_success.log"))
    kinds = [e.kind for e in events]
    for kind in (
        EventKind.PLATFORM, EventKind.VERSION, EventKind.ARGS, EventKind.ARCHITECTURE, EventKind.MAX_MODEL_LEN,
        EventKind.CHUNKED_PREFILL, EventKind.ENGINE_INIT, EventKind.LOAD_START, EventKind.WEIGHTS_FORMAT,
        EventKind.SHARD_PROGRESS, EventKind.WEIGHTS_LOADED, EventKind.MODEL_LOADED, EventKind.COMPILE_PROGRESS,
        EventKind.COMPILE_DONE, EventKind.KV_CACHE_MEMORY, EventKind.KV_CACHE_TOKENS, EventKind.MAX_CONCURRENCY,
        EventKind.GRAPH_CAPTURE, EventKind.GRAPH_CAPTURED, EventKind.ENGINE_READY, EventKind.API_SERVER_START,
        EventKind.SERVER_PROCESS, EventKind.WAITING_STARTUP, EventKind.APP_STARTUP_COMPLETE, EventKind.ENGINE_STATS,
        EventKind.COSMETIC_WARNING,
    ):  # fmt: skip
        assert kind in kinds, kind
    assert EventKind.ERROR not in kinds
    shards = [(e.values["done"], e.values["total"]) for e in events if e.kind is EventKind.SHARD_PROGRESS]
    assert shards[0] == (0, 7) and shards[-1] == (7, 7) and [d for d, _ in shards][:8] == list(range(8))
    stats = tracker.stats
    assert stats.version == "0.10.1.1+381074ae.nv25.09"
    assert stats.architecture == "Qwen3ForCausalLM" and stats.max_model_len == 32000
    assert (stats.shards_done, stats.shards_total) == (7, 7)
    assert stats.weights_load_seconds == 204.37 and stats.model_gib == 32.1345
    assert stats.compile_seconds == 16.73 and stats.kv_cache_gib == 66.25
    assert stats.kv_cache_tokens == 271_360 and stats.max_concurrency == 8.48 and stats.concurrency_tokens == 32000
    assert stats.graph_capture_seconds == 6 and stats.init_engine_seconds == 25.31
    assert stats.url == "http://0.0.0.0:8000" and stats.ready is True
    assert summarize_startup(log("startup_success.log")).as_dict() == stats.as_dict()


def test_phase_transitions_of_a_full_startup():
    tracker = StartupTracker()
    assert tracker.phase is Phase.STARTING
    tracker.feed_all(log("startup_success.log"))
    assert [(a, b) for a, b, _ in tracker.transitions] == [
        (Phase.STARTING, Phase.LOADING),
        (Phase.LOADING, Phase.COMPILING),
        (Phase.COMPILING, Phase.KV_CACHE),
        (Phase.KV_CACHE, Phase.SERVING),
        (Phase.SERVING, Phase.READY),
    ]
    lines = [line for _, _, line in tracker.transitions]
    assert "Starting to load model" in lines[0]
    assert "Model loading took" in lines[1]
    assert "torch.compile takes" in lines[2]
    assert "init engine" in lines[3]
    assert "Application startup complete." in lines[4]
    assert tracker.phase is Phase.READY
    assert list(PHASE_ORDER) == ["starting", "loading", "compiling", "kv_cache", "serving", "ready"]


def test_phase_of_and_advance():
    load = parse_line("(EngineCore_0 pid=210) INFO 11-07 10:15:22 [gpu_model_runner.py:1953] Starting to load model Qwen/Qwen3-32B-FP8...")
    kv = parse_line("(EngineCore_0 pid=210) INFO 11-07 10:19:08 [gpu_worker.py:276] Available KV cache memory: 66.25 GiB")
    ready = parse_line("(APIServer pid=1) INFO:     Application startup complete.")
    assert phase_of(load) is Phase.LOADING and phase_of(kv) is Phase.KV_CACHE and phase_of(ready) is Phase.READY
    assert phase_of(EventKind.MODEL_LOADED) is Phase.COMPILING
    assert advance(None, load) is Phase.LOADING
    assert advance(Phase.LOADING, kv) is Phase.KV_CACHE  # eager mode: no compile lines, phase skips ahead
    assert advance(Phase.KV_CACHE, load) is Phase.KV_CACHE  # never backwards
    assert advance("serving", ready) is Phase.READY
    assert advance(Phase.LOADING, None) is Phase.LOADING
    assert phase_of(load) == "loading" and f"{phase_of(load)}_s" == "loading_s"  # plain strings work too


def test_tracker_handles_tqdm_carriage_returns_in_one_docker_line():
    tracker = StartupTracker()
    event = tracker.feed("Loading safetensors checkpoint shards:   0% Completed | 0/7 [00:00<?, ?it/s]\rLoading safetensors checkpoint shards:  14% Completed | 1/7 [00:29<02:55, 29.19s/it]")
    assert event.values["done"] == 1 and tracker.stats.shards_done == 1


# ------------------------------------------------------------------------------ failures


def test_suggest_utilization():
    assert suggest_utilization(85.92, 121.69) == 0.65  # 0.706 - 0.02 -> 0.65
    assert suggest_utilization(100.0, 121.69) == 0.80  # 0.822 - 0.02 -> 0.80
    assert suggest_utilization(121.69, 121.69) == 0.95
    assert suggest_utilization(91.27, 121.69, margin=0.0) == 0.75  # exactly 0.75
    assert suggest_utilization(1.0, 121.69) == 0.0
    with pytest.raises(ValueError):
        suggest_utilization(1.0, 0.0)


def test_suggest_max_model_len():
    assert suggest_max_model_len(12688) == 12288
    assert suggest_max_model_len(32000) == 31744
    assert suggest_max_model_len(16384) == 16384
    assert suggest_max_model_len(900) == 0


def test_free_memory_0_10():
    cause = classify_failure(log("fail_free_memory.log"))
    assert cause.kind is FailureKind.FREE_MEMORY
    assert cause.numbers["free_gib"] == 85.92 and cause.numbers["total_gib"] == 121.69
    assert cause.numbers["requested_utilization"] == 0.92 and cause.numbers["requested_gib"] == 111.95
    assert cause.numbers["suggested_utilization"] == 0.65
    assert cause.suggested == {"gpu_memory_utilization": 0.65}
    assert "Free memory on device (85.92/121.69 GiB)" in cause.evidence[0]
    assert any("Engine core initialization failed" in e for e in cause.evidence)
    assert not any("cuda capability" in e for e in cause.evidence)  # the GB10 warning is cosmetic
    assert "drop_caches" in cause.fix and "page cache" in cause.fix
    assert "docker compose down" in cause.fix and "docker system prune -f" in cause.fix
    assert "0.65" in cause.fix


def test_free_memory_0_17_cuda0_form():
    cause = classify_failure(log("fail_free_memory_v017.log"))
    assert cause.kind is FailureKind.FREE_MEMORY
    assert cause.numbers["free_gib"] == 85.92 and cause.numbers["requested_gib"] == 112.0
    assert "cuda:0" in cause.summary


def test_kv_too_small():
    cause = classify_failure(log("fail_kv_too_small.log"))
    assert cause.kind is FailureKind.KV_TOO_SMALL
    assert cause.numbers == {
        "max_model_len": 32000, "needed_gib": 7.81, "available_gib": 3.10,
        "estimated_max_model_len": 12688, "suggested_max_model_len": 12288,
    }  # fmt: skip
    assert cause.suggested == {"max_model_len": 12288}
    assert "12288" in cause.fix and "gpu_memory_utilization" in cause.fix
    assert "models's max seq len (32000)" in cause.evidence[0]


def test_no_kv_memory():
    cause = classify_failure(log("fail_no_kv_memory.log"))
    assert cause.kind is FailureKind.NO_KV_MEMORY
    assert "No available memory for the cache blocks" in cause.evidence[0]


def test_cuda_oom():
    cause = classify_failure(log("fail_cuda_oom.log"))
    assert cause.kind is FailureKind.CUDA_OOM
    assert cause.numbers["tried_to_allocate_gib"] == 0.75
    assert cause.numbers["total_capacity_gib"] == 119.70
    assert cause.numbers["after_ready"] == 0.0
    assert "torch.OutOfMemoryError: CUDA out of memory" in cause.evidence[0]


@pytest.mark.parametrize("name", ["fail_missing_model.log", "fail_missing_shard.log"])
def test_missing_model_files(name):
    cause = classify_failure(log(name))
    assert cause.kind is FailureKind.MISSING_MODEL_FILES
    assert "staging" in cause.fix and "df -h /opt/hf" in cause.fix and ".incomplete" in cause.fix


@pytest.mark.parametrize(
    "line",
    [
        "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for the specified revision on the local disk and outgoing traffic has been disabled. ...",
        "FileNotFoundError: [Errno 2] No such file or directory: '/root/.cache/huggingface/models--Qwen--Qwen3-32B-FP8/snapshots/abc/model-00003-of-00007.safetensors'",
        "safetensors_rust.SafetensorError: Error while deserializing header: HeaderTooLarge",
        "RuntimeError: Cannot find any model weights with `Qwen/Qwen3-32B-FP8`",
        "OSError: Can't load tokenizer for 'Qwen/Qwen3-32B-FP8'. If you were trying to load it from 'https://huggingface.co/models', ...",
    ],
)
def test_missing_model_file_texts(line):
    assert classify_failure([line]).kind is FailureKind.MISSING_MODEL_FILES


def test_fp8_kernel_is_the_runbook_entry():
    cause = classify_failure(log("fail_fp8_kernel.log"))
    assert cause.kind is FailureKind.FP8_KERNEL
    assert any("cutlass_scaled_mm failed" in e for e in cause.evidence)
    assert any("RuntimeError: Error Internal" in e for e in cause.evidence)
    assert "Qwen/Qwen3-32B-FP8" in cause.fix and "--quantization fp8" in cause.fix


def test_gpu_runtime_missing():
    cause = classify_failure(log("fail_gpu_runtime.log"))
    assert cause.kind is FailureKind.GPU_RUNTIME_MISSING
    assert "NVIDIA Container Toolkit" in cause.fix
    assert classify_failure(["RuntimeError: Failed to infer device type"]).kind is FailureKind.GPU_RUNTIME_MISSING


def test_bad_arguments():
    cause = classify_failure(log("fail_bad_args.log"))
    assert cause.kind is FailureKind.BAD_ARGUMENTS
    assert cause.evidence == ["vllm serve: error: unrecognized arguments: --max-model-length 32000"]
    assert classify_failure(["api_server.py: error: argument --max-model-len: invalid int value: 'x'"]).kind is FailureKind.BAD_ARGUMENTS


def test_engine_dead_after_ready():
    cause = classify_failure(log("engine_dead.log"))
    assert cause.kind is FailureKind.ENGINE_DEAD
    assert cause.numbers["after_ready"] == 1.0
    assert any("EngineDeadError" in e for e in cause.evidence)
    assert any("illegal memory access" in e for e in cause.evidence)  # the root cause comes along


def test_unknown_and_the_cosmetic_warning_is_never_a_failure():
    lines = [
        "WARNING: Found GPU0 NVIDIA GB10 which is of cuda capability 12.1",
        "Maximum cuda capability supported is 12.0",
    ]
    cause = classify_failure(lines, exit_code=1)
    assert cause.kind is FailureKind.UNKNOWN
    assert cause.evidence == [] and cause.numbers == {"exit_code": 1.0}
    other = classify_failure(
        lines + ["(EngineCore_0 pid=2) ERROR 01-01 00:00:00 [core.py:1] EngineCore failed to start.", "(EngineCore_0 pid=2) ZeroDivisionError: division by zero"]
    )
    assert other.kind is FailureKind.UNKNOWN
    assert other.evidence == ["(EngineCore_0 pid=2) ZeroDivisionError: division by zero"]
    killed = classify_failure([], exit_code=137)
    assert killed.kind is FailureKind.UNKNOWN and "137" in killed.summary and "OOM" in killed.summary


def test_classify_accepts_one_text_and_scrubs_secrets():
    text = (LOGS / "fail_bad_args.log").read_text().replace("--max-model-length 32000", "--api-key sk-123456 hf_abcdefghijkl1234")
    cause = classify_failure(text, secrets=["sk-123456"])
    assert cause.kind is FailureKind.BAD_ARGUMENTS
    joined = "\n".join(cause.evidence)
    assert "sk-123456" not in joined and "hf_abcdefghijkl1234" not in joined


def test_failure_cause_is_serialisable_and_readable():
    cause = classify_failure(log("fail_kv_too_small.log"))
    assert isinstance(cause, FailureCause)
    dumped = cause.model_dump(mode="json")
    assert dumped["kind"] == "kv_too_small" and dumped["suggested"] == {"max_model_len": 12288}
    assert str(cause).startswith("kv_too_small: ")
    assert "**Fix:**" in cause.markdown() and "12288" in cause.markdown()


def test_scrub():
    assert scrub("token hf_abcdefghijklmnop used") == "token hf_*** used"
    assert scrub("Authorization: Bearer sk-1") == "Authorization: Bearer ***"
    assert scrub("{'api_key': 'abc'}") == "{'api_key': '***'}"
    assert scrub("--api-key=abc") == "--api-key=***"
    assert scrub("value s3cr3t here", ["s3cr3t"]) == "value *** here"
