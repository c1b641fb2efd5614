"""tasks/vllm/logs.py: lines, milestones and phases from vLLM's exact texts (tests/data/logs/); tasks/secrets.py:
scrubbing those lines and logging where a secret came from. Failure classes: test_failures.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from packaging.version import Version

from tasks.secrets import load_secret, scrub
from tasks.vllm.logs import (
    GRAMMAR,
    PHASE_ORDER,
    EventKind,
    LineSplitter,
    Phase,
    StartupTracker,
    advance,
    is_cosmetic,
    is_exception,
    parse_line,
    phase_of,
    split_header,
    split_lines,
    strip_ansi,
    strip_prefix,
    summarize_startup,
)
from tasks.vllm.versions import Variant

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"


def log(name: str) -> list[str]:
    return (LOGS / name).read_text().splitlines()


# ------------------------------------------------------------------------------ lines


@pytest.mark.parametrize(
    "raw,expected",
    [
        (
            "(APIServer pid=1) INFO 11-07 10:15:05 [api_server.py:1805] vLLM API server version 0.10.1.1",
            "INFO 11-07 10:15:05 [api_server.py:1805] vLLM API server version 0.10.1.1",
        ),
        ("(EngineCore_0 pid=210) INFO x", "INFO x"),
        ("(EngineCore_DP0 pid=7) INFO x", "INFO x"),
        ("(EngineCore pid=7) INFO x", "INFO x"),
        ("2025-11-07T10:15:05.123456789Z (APIServer pid=1) INFO x\n", "INFO x"),
        ("\x1b[32mINFO\x1b[0m x", "INFO x"),
        (
            "Loading safetensors checkpoint shards:   0% Completed | 0/7\rLoading safetensors checkpoint shards:  "
            "14% Completed | 1/7",
            "Loading safetensors checkpoint shards:  14% Completed | 1/7",
        ),
        ("no prefix at all", "no prefix at all"),
    ],
)
def test_strip_prefix(raw, expected):
    assert strip_prefix(raw) == expected


def test_line_splitter_handles_partial_chunks_and_carriage_returns():
    splitter = LineSplitter()
    assert splitter.feed(b"(APIServer pid=1) INFO a\n(Engine") == ["(APIServer pid=1) INFO a"]
    assert splitter.feed("Core_0 pid=2) INFO b\r\nbar 1/7\rbar 2/7\r") == [
        "(EngineCore_0 pid=2) INFO b",
        "bar 1/7",
        "bar 2/7",
    ]
    assert splitter.feed("\ntail") == []
    assert splitter.flush() == ["tail"] and splitter.flush() == []
    assert split_lines(b"a\r\nb\rc\n\n") == ["a", "b", "c"]


# ------------------------------------------------------------------------------ milestones


@pytest.mark.parametrize(
    "line,kind,values",
    [
        (
            "INFO 11-07 10:15:01 [__init__.py:241] Automatically detected platform cuda.",
            EventKind.PLATFORM,
            {"platform": "cuda"},
        ),
        (
            "(APIServer pid=1) INFO 11-07 10:15:05 [api_server.py:1805] vLLM API server version 0.10.1.1",
            EventKind.VERSION,
            {"version": "0.10.1.1"},
        ),
        (
            "(APIServer pid=1) INFO 11-07 10:15:12 [__init__.py:711] Resolved architecture: Qwen3ForCausalLM",
            EventKind.ARCHITECTURE,
            {"architecture": "Qwen3ForCausalLM"},
        ),
        (
            "(APIServer pid=1) INFO 11-07 10:15:12 [__init__.py:1750] Using max model len 32000",
            EventKind.MAX_MODEL_LEN,
            {"max_model_len": 32000},
        ),
        (
            "(APIServer pid=1) INFO 11-07 10:15:13 [scheduler.py:222] Chunked prefill is enabled with "
            "max_num_batched_tokens=16384.",
            EventKind.CHUNKED_PREFILL,
            {"max_num_batched_tokens": 16384},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:15:22 [gpu_model_runner.py:1953] Starting to load model "
            "Qwen/Qwen3-32B-FP8...",
            EventKind.LOAD_START,
            {"model": "Qwen/Qwen3-32B-FP8"},
        ),
        (
            "Loading safetensors checkpoint shards: 100% Completed | 7/7 [03:24<00:00, 29.20s/it]",
            EventKind.SHARD_PROGRESS,
            {"percent": 100, "done": 7, "total": 7},
        ),
        (
            "Loading safetensors checkpoint shards:  43% Completed | 3/7 [01:27<01:56, 29.20s/it]",
            EventKind.SHARD_PROGRESS,
            {"percent": 43, "done": 3, "total": 7},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:18:48 [default_loader.py:262] Loading weights took 204.37 seconds",
            EventKind.WEIGHTS_LOADED,
            {"weights_load_seconds": 204.37},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:18:49 [gpu_model_runner.py:2007] Model loading took 32.1345 GiB "
            "and 205.612345 seconds",
            EventKind.MODEL_LOADED,
            {"model_gib": 32.1345, "model_load_seconds": 205.612345},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:19:06 [monitor.py:34] torch.compile takes 16.73 s in total",
            EventKind.COMPILE_DONE,
            {"compile_seconds": 16.73},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:19:08 [gpu_worker.py:276] Available KV cache memory: 66.25 GiB",
            EventKind.KV_CACHE_MEMORY,
            {"kv_cache_gib": 66.25},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:19:08 [kv_cache_utils.py:849] GPU KV cache size: 271,360 tokens",
            EventKind.KV_CACHE_TOKENS,
            {"kv_cache_tokens": 271360},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:19:08 [kv_cache_utils.py:853] Maximum concurrency for 32,000 "
            "tokens per request: 8.48x",
            EventKind.MAX_CONCURRENCY,
            {"concurrency_tokens": 32000, "max_concurrency": 8.48},
        ),
        (
            "(EngineCore pid=9) INFO 01-01 00:00:00 [kv_cache_utils.py:1] GPU KV cache size: 271,360 tokens, Maximum "
            "concurrency for 32,000 tokens per request: 8.48x",
            EventKind.KV_CACHE_TOKENS,
            {"kv_cache_tokens": 271360, "concurrency_tokens": 32000, "max_concurrency": 8.48},
        ),
        (
            "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|██████████| 67/67 [00:05<00:00, 12.93it/s]",
            EventKind.GRAPH_CAPTURE,
            {"graphs_percent": 100, "graphs_done": 67, "graphs_total": 67},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:19:14 [gpu_model_runner.py:2708] Graph capturing finished in 6 "
            "secs, took 0.53 GiB",
            EventKind.GRAPH_CAPTURED,
            {"graph_capture_seconds": 6, "graph_gib": 0.53},
        ),
        (
            "(EngineCore_0 pid=210) INFO 11-07 10:19:14 [core.py:214] init engine (profile, create kv cache, warmup "
            "model) took 25.31 seconds",
            EventKind.ENGINE_READY,
            {"init_engine_seconds": 25.31},
        ),
        (
            "(APIServer pid=1) INFO 11-07 10:19:16 [api_server.py:1880] Starting vLLM API server 0 on "
            "http://0.0.0.0:8000",
            EventKind.API_SERVER_START,
            {"url": "http://0.0.0.0:8000"},
        ),
        (
            "(APIServer pid=1) INFO 01-01 00:00:00 [api_server.py:1] Starting vLLM server on http://0.0.0.0:8000",
            EventKind.API_SERVER_START,
            {"url": "http://0.0.0.0:8000"},
        ),
        ("(APIServer pid=1) INFO:     Started server process [1]", EventKind.SERVER_PROCESS, {"server_pid": 1}),
        ("(APIServer pid=1) INFO:     Waiting for application startup.", EventKind.WAITING_STARTUP, {}),
        ("(APIServer pid=1) INFO:     Application startup complete.", EventKind.APP_STARTUP_COMPLETE, {}),
        (
            "(APIServer pid=1) INFO 11-07 10:19:27 [loggers.py:123] Engine 000: Avg prompt throughput: 1.4 tokens/s, "
            "Avg generation throughput: 6.6 tokens/s, Running: 1 reqs, Waiting: 0 reqs, GPU KV cache usage: 0.1%, "
            "Prefix cache hit rate: 0.0%",
            EventKind.ENGINE_STATS,
            {
                "engine": 0,
                "prompt_throughput": 1.4,
                "generation_throughput": 6.6,
                "running": 1,
                "waiting": 0,
                "kv_cache_usage_pct": 0.1,
                "prefix_cache_hit_rate_pct": 0.0,
            },
        ),
    ],
)
def test_parse_line_milestones(line, kind, values):
    event = parse_line(line)
    assert event is not None and event.kind is kind
    assert event.values == values


def test_parse_line_details():
    args = parse_line(
        "(APIServer pid=1) INFO 11-07 10:15:05 [utils.py:326] non-default args: {'model': 'Qwen/Qwen3-32B-FP8', "
        "'max_model_len': 32000, 'api_key': 'sk-secret'}"
    )
    assert args.kind is EventKind.ARGS
    assert args.values["non_default_args"] == {"model": "Qwen/Qwen3-32B-FP8", "max_model_len": 32000, "api_key": "***"}
    assert "sk-secret" not in args.line and "sk-secret" not in args.message
    init = parse_line(
        "(EngineCore_0 pid=210) INFO 11-07 10:15:20 [core.py:74] Initializing a V1 LLM engine "
        "(v0.10.1.1+381074ae.nv25.09) with config: model='Qwen/Qwen3-32B-FP8', speculative_config=None, "
        "download_dir='/root/.cache/huggingface', load_format=auto"
    )
    assert init.kind is EventKind.ENGINE_INIT
    assert init.values == {
        "version": "0.10.1.1+381074ae.nv25.09",
        "model": "Qwen/Qwen3-32B-FP8",
        "download_dir": "/root/.cache/huggingface",
    }
    assert init.level == "INFO" and init.source == "core.py:74"
    # not a stats line, although it starts the same way
    assert (
        parse_line(
            "(APIServer pid=1) INFO 11-07 10:19:16 [loggers.py:142] Engine 000: vllm cache_config_info with "
            "initialization after num_gpu_blocks is: 16960"
        )
        is None
    )
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
    assert summarize_startup(log("startup_success.log")) == stats


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
    load = parse_line(
        "(EngineCore_0 pid=210) INFO 11-07 10:15:22 [gpu_model_runner.py:1953] Starting to load model "
        "Qwen/Qwen3-32B-FP8..."
    )
    kv = parse_line(
        "(EngineCore_0 pid=210) INFO 11-07 10:19:08 [gpu_worker.py:276] Available KV cache memory: 66.25 GiB"
    )
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
    event = tracker.feed(
        "Loading safetensors checkpoint shards:   0% Completed | 0/7 [00:00<?, ?it/s]\rLoading safetensors checkpoint "
        "shards:  14% Completed | 1/7 [00:29<02:55, 29.19s/it]"
    )
    assert event.values["done"] == 1 and tracker.stats.shards_done == 1


# ------------------------------------------------------------------------------ secrets in lines (tasks.secrets)


def test_scrub():
    assert scrub("token hf_abcdefghijklmnop used") == "token hf_*** used"
    assert scrub("Authorization: Bearer sk-1") == "Authorization: Bearer ***"
    assert scrub("{'api_key': 'abc'}") == "{'api_key': '***'}"
    assert scrub("--api-key=abc") == "--api-key=***"
    assert scrub("value s3cr3t here", ["s3cr3t"]) == "value *** here"
    assert scrub("Authorization: Bearer sk-1", ["", "sk-1"]) == "Authorization: Bearer ***"  # empty values ignored


def test_parsed_lines_are_scrubbed():
    event = parse_line("(APIServer pid=1) ERROR 01-01 00:00:00 [x.py:1] ValueError: bad token hf_abcdefghijklmnop")
    assert event.kind is EventKind.ERROR and "hf_abcdefghijklmnop" not in event.line and "hf_***" in event.message


def test_line_helpers_for_the_failure_rules():
    assert strip_ansi("\x1b[31mERROR\x1b[0m x") == "ERROR x"
    assert split_header("ERROR 11-07 12:02:20 [core.py:700] EngineCore failed to start.") == (
        "ERROR",
        "core.py:700",
        "EngineCore failed to start.",
    )
    assert split_header("INFO:     Application startup complete.") == ("INFO", None, "Application startup complete.")
    assert split_header("Traceback (most recent call last):") == (None, None, "Traceback (most recent call last):")
    assert is_exception("torch.OutOfMemoryError: CUDA out of memory.") and is_exception("KeyboardInterrupt")
    assert not is_exception("EngineCore failed to start.")


def test_secrets_module_imports_no_log_parser_and_logs_no_failures():
    """tasks.secrets <- tasks.vllm.logs <- tasks.vllm.failures: one direction, so no import cycle."""
    import subprocess
    import sys

    code = (
        "import sys, tasks.secrets; assert 'tasks.vllm.logs' not in sys.modules and 'prefect' not in sys.modules;"
        "import tasks.vllm.logs; assert 'tasks.vllm.failures' not in sys.modules and 'prefect' not in sys.modules;"
        "import tasks.vllm.failures"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
    subprocess.run([sys.executable, "-c", "import tasks.vllm.failures, tasks.vllm.logs"], cwd=root, check=True)


def test_hf_token_names_and_dotenv():
    from tasks.secrets import DOTENV, HF_TOKEN_ENV_VARS

    assert HF_TOKEN_ENV_VARS == ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    assert DOTENV == Path(".env") and not DOTENV.is_absolute()


def test_load_secret_outside_a_run_logs_to_the_module_logger(monkeypatch, caplog):
    monkeypatch.setenv("SPARK_TEST_TOKEN", "hf_outsideabcdefgh")
    with caplog.at_level(logging.INFO, logger="tasks.secrets"):
        got = load_secret(None, ("SPARK_TEST_TOKEN",), None)
    assert got.get_secret_value() == "hf_outsideabcdefgh"
    records = [r for r in caplog.records if r.name == "tasks.secrets"]
    assert [r.getMessage() for r in records] == ["secret taken from environment variable SPARK_TEST_TOKEN"]
    assert "hf_outsideabcdefgh" not in caplog.text


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_load_secret_inside_a_run_logs_to_the_run_logger(prefect_server, monkeypatch, tmp_path):
    """The source of a secret shows in the run's log in the Prefect UI (its run logger), never its value."""
    from prefect import flow, task
    from prefect.context import get_run_context

    monkeypatch.setenv("SPARK_TEST_TOKEN", "hf_insideabcdefgh12")
    dotenv = tmp_path / ".env"
    dotenv.write_text("SPARK_TEST_KEY=sk-from-dotenv-123\n")

    @task
    def key_in_a_task() -> str:
        return load_secret(None, ("SPARK_TEST_KEY",), dotenv).get_secret_value()

    @flow
    def uses_secrets() -> tuple[str, str, str]:
        token = load_secret(None, ("SPARK_TEST_TOKEN",), None).get_secret_value()
        return token, key_in_a_task(), str(get_run_context().flow_run.id)

    handlers = {name: _Collect() for name in ("prefect.flow_runs", "prefect.task_runs", "tasks.secrets")}
    for name, handler in handlers.items():
        logging.getLogger(name).addHandler(handler)
    try:
        token, key, flow_run_id = uses_secrets()
    finally:
        for name, handler in handlers.items():
            logging.getLogger(name).removeHandler(handler)
    assert (token, key) == ("hf_insideabcdefgh12", "sk-from-dotenv-123")

    flow_lines = [r for r in handlers["prefect.flow_runs"].records if r.getMessage().startswith("secret taken")]
    assert [r.getMessage() for r in flow_lines] == ["secret taken from environment variable SPARK_TEST_TOKEN"]
    assert str(flow_lines[0].flow_run_id) == flow_run_id  # the run's metadata: it goes to the run's log
    task_lines = [r for r in handlers["prefect.task_runs"].records if r.getMessage().startswith("secret taken")]
    assert [r.getMessage() for r in task_lines] == [f"secret taken from {dotenv} (SPARK_TEST_KEY)"]
    assert handlers["tasks.secrets"].records == []  # not (also) the module logger
    everything = [r.getMessage() for h in handlers.values() for r in h.records]
    assert not any("hf_insideabcdefgh12" in m or "sk-from-dotenv-123" in m for m in everything)


def test_every_form_names_its_groups_and_cites_its_source():
    """A form's groups are the event's values, so each is named; each form says where vLLM prints it."""
    for entry in GRAMMAR:
        assert entry.forms, entry.kind
        for form in entry.forms:
            assert form.value.groups == len(form.value.groupindex), (entry.kind, form.value.pattern)
            assert form.source, (entry.kind, form.value.pattern)
            if form.source != "uvicorn":
                assert re.search(r"(?:vllm/\S+\.py)?:\d+", form.source), (entry.kind, form.source)


# ------------------------------------------------------------------------------ every inspected vLLM

VERSIONS = ["0.10.1.1", "0.10.2", "0.11.1", "0.17.1", "0.20.1", "0.31.0"]
#: the engine core's process name: vllm/v1/engine/utils.py:119 (0.10.1.1 `EngineCore_{i}`, 0.10.2
#: `EngineCore_DP{i}`), :122 (0.17.1), :145 (0.20.1: `EngineCore` without data parallelism), :227 (0.31.0)
ENGINE = {"0.10.1.1": "EngineCore_0", "0.10.2": "EngineCore_DP0", "0.11.1": "EngineCore_DP0"}
ENGINE |= {"0.17.1": "EngineCore_DP0", "0.20.1": "EngineCore", "0.31.0": "EngineCore"}
#: the monochrome logo of log_version_and_model (vllm/entrypoints/utils.py:284-289 in 0.17.1,
#: vllm/entrypoints/serve/utils/api_utils.py:329-334 in 0.31.0), colours substituted by ""
LOGO = (
    "\n       █     █     █▄   ▄█\n ▄▄ ▄█ █     █     █ ▀▄▀ █  version %s\n"
    "  █▄█▀ █     █     █     █  model   %s\n   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀\n"
)


def logged(process: str, message: str, source: str = "x.py:1", level: str = "INFO") -> list[str]:
    """What vLLM writes for one logger call: the header on every line of the message (NewLineFormatter,
    vllm/logging_utils/formatter.py), rows joined by ``\\r\\n``, as docker's log hands them over."""
    head = f"({process} pid=7) {level} 12-05 10:00:00 [{source}] "
    return (head + message.replace("\n", "\r\n" + head)).split("\r\n")


# (versions, kind, the version's %-format string, its arguments, the values parse_line reads)
FORMS = [
    ("", EventKind.PLATFORM, "Automatically detected platform %s.", ("cuda",), {"platform": "cuda"}),
    ("<0.17.1", EventKind.VERSION, "vLLM API server version %s", ("0.10.1.1+381074ae.nv25.09",),
     {"version": "0.10.1.1+381074ae.nv25.09"}),
    (">=0.17.1", EventKind.VERSION, "vLLM server version %s, serving model %s", ("0.31.0", "Qwen/Qwen3-32B-FP8"),
     {"version": "0.31.0", "model": "Qwen/Qwen3-32B-FP8"}),
    ("", EventKind.ARCHITECTURE, "Resolved architecture: %s", ("Qwen3ForCausalLM",),
     {"architecture": "Qwen3ForCausalLM"}),
    ("", EventKind.MAX_MODEL_LEN, "Using max model len %s", (32000,), {"max_model_len": 32000}),
    ("", EventKind.CHUNKED_PREFILL, "Chunked prefill is enabled with max_num_batched_tokens=%d.", (16384,),
     {"max_num_batched_tokens": 16384}),
    ("", EventKind.LOAD_START, "Starting to load model %s...", ("Qwen/Qwen3-32B-FP8",),
     {"model": "Qwen/Qwen3-32B-FP8"}),
    ("", EventKind.WEIGHTS_LOADED, "Loading weights took %.2f seconds", (204.371,), {"weights_load_seconds": 204.37}),
    ("<0.11.1", EventKind.MODEL_LOADED, "Model loading took %.4f GiB and %.6f seconds", (32.13454, 205.6123451),
     {"model_gib": 32.1345, "model_load_seconds": 205.612345}),
    ("==0.11.1", EventKind.MODEL_LOADED, "Model loading took %.4f GiB memory and %.6f seconds", (32.13454, 205.6),
     {"model_gib": 32.1345, "model_load_seconds": 205.6}),
    (">=0.17.1", EventKind.MODEL_LOADED, "Model loading took %s GiB memory and %.6f seconds", ("32.13", 205.6),
     {"model_gib": 32.13, "model_load_seconds": 205.6}),
    ("", EventKind.COMPILE_PROGRESS, "Dynamo bytecode transform time: %.2f s", (9.12,), {"dynamo_seconds": 9.12}),
    ("<0.17.1", EventKind.COMPILE_PROGRESS, "Compiling a graph for dynamic shape takes %.2f s", (7.61,),
     {"graph_compile_seconds": 7.61}),
    (">=0.17.1", EventKind.COMPILE_PROGRESS, "Compiling a graph for compile range %s takes %.2f s",
     ("(1, 16384)", 7.61), {"graph_compile_seconds": 7.61}),
    ("<0.20.1", EventKind.COMPILE_DONE, "torch.compile takes %.2f s in total", (16.73,), {"compile_seconds": 16.73}),
    (">=0.20.1", EventKind.COMPILE_DONE, "torch.compile took %.2f s in total", (16.73,), {"compile_seconds": 16.73}),
    (">=0.20.1", EventKind.COMPILE_DONE, "torch.compile and initial profiling/warmup run together took %.2f s in total",
     (21.5,), {"compile_seconds": 21.5}),
    ("<0.17.1", EventKind.KV_CACHE_MEMORY, "Available KV cache memory: %.2f GiB", (-0.534,), {"kv_cache_gib": -0.53}),
    (">=0.17.1", EventKind.KV_CACHE_MEMORY, "Available KV cache memory: %s GiB", ("-0.53",), {"kv_cache_gib": -0.53}),
    (">=0.17.1", EventKind.KV_CACHE_MEMORY, "Available KV cache memory: %s GiB", ("66.25",), {"kv_cache_gib": 66.25}),
    ("<0.31", EventKind.KV_CACHE_TOKENS, "GPU KV cache size: %s tokens", ("271,360",), {"kv_cache_tokens": 271360}),
    ("<0.31", EventKind.MAX_CONCURRENCY, "Maximum concurrency for %s tokens per request: %.2fx", ("32,000", 8.48),
     {"concurrency_tokens": 32000, "max_concurrency": 8.48}),
    (">=0.31", EventKind.KV_CACHE_TOKENS, "%s KV cache size: %s tokens, Maximum concurrency for %s tokens per request: "
     "%.2fx", ("GPU", "271,360", "32,000", 8.48),
     {"kv_cache_tokens": 271360, "concurrency_tokens": 32000, "max_concurrency": 8.48}),
    ("", EventKind.GRAPH_CAPTURED, "Graph capturing finished in %.0f secs, took %.2f GiB", (6.2, 0.53),
     {"graph_capture_seconds": 6, "graph_gib": 0.53}),
    ("<0.20.1", EventKind.ENGINE_READY, "init engine (profile, create kv cache, warmup model) took %.2f seconds",
     (25.31,), {"init_engine_seconds": 25.31}),
    (">=0.20.1", EventKind.ENGINE_READY, "init engine (profile, create kv cache, warmup model) took %.2f s "
     "(compilation: %.2f s)", (25.31, 16.73), {"init_engine_seconds": 25.31, "compilation_seconds": 16.73}),
    (">=0.20.1", EventKind.ENGINE_READY, "init engine (profile, create kv cache, warmup model) took %.2f s", (9.5,),
     {"init_engine_seconds": 9.5}),
    ("<0.20.1", EventKind.API_SERVER_START, "Starting vLLM API server %d on %s", (0, "http://0.0.0.0:8000"),
     {"url": "http://0.0.0.0:8000"}),
    (">=0.20.1", EventKind.API_SERVER_START, "Starting vLLM server on %s", ("http://0.0.0.0:8000",),
     {"url": "http://0.0.0.0:8000"}),
    ("<0.31", EventKind.ENGINE_STATS, "Engine %03d: Avg prompt throughput: %.1f tokens/s, Avg generation throughput: "
     "%.1f tokens/s, Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%, Prefix cache hit rate: %.1f%%",
     (0, 1.4, 6.6, 1, 0, 0.1, 0.0), {"engine": 0, "prompt_throughput": 1.4, "generation_throughput": 6.6,
                                     "running": 1, "waiting": 0, "kv_cache_usage_pct": 0.1,
                                     "prefix_cache_hit_rate_pct": 0.0}),
    (">=0.31", EventKind.ENGINE_STATS, "Engine 000: Avg prompt throughput: %.1f tokens/s, Avg generation throughput: "
     "%.1f tokens/s, Running: %d reqs, Waiting: %d reqs, Preemptions: %d, %s KV cache usage: %.1f%%",
     (1.4, 6.6, 1, 0, 2, "GPU", 0.1), {"engine": 0, "prompt_throughput": 1.4, "generation_throughput": 6.6,
                                       "running": 1, "waiting": 0, "kv_cache_usage_pct": 0.1}),
]  # fmt: skip
#: forms whose text another range also prints: `GiB and` by the model runner v2 (vllm/v1/worker/gpu/model_runner.py
#: :258 in 0.17.1), `%.2f` and format_gib's `%s` print alike, and the stats line reads the same
SHARED_TEXT = {
    (EventKind.MODEL_LOADED, "<0.11.1"),
    (EventKind.MODEL_LOADED, "==0.11.1"),
    (EventKind.MODEL_LOADED, ">=0.17.1"),
}
SHARED_TEXT |= {(EventKind.KV_CACHE_MEMORY, "<0.17.1")}
SHARED_TEXT |= {
    (EventKind.KV_CACHE_MEMORY, ">=0.17.1"),
    (EventKind.ENGINE_STATS, "<0.31"),
    (EventKind.ENGINE_STATS, ">=0.31"),
}
CASES = [(v, *form) for v in VERSIONS for form in FORMS if Variant(form[0], None, "").holds_for(Version(v))]


@pytest.mark.parametrize("version,spec,kind,fmt,args,values", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_each_version_s_lines_parse_with_their_numbers(version, spec, kind, fmt, args, values):
    """Each line built from the version's own format string, read with that version, and with none known."""
    process = "APIServer" if kind in (EventKind.VERSION, EventKind.API_SERVER_START) else ENGINE[version]
    (line,) = logged(process, fmt % args)
    for known in (Version(version), None):
        event = parse_line(line, known)
        assert event is not None and event.kind is kind, (known, line)
        assert event.values == values, known


@pytest.mark.parametrize("version", VERSIONS)
def test_a_form_of_another_version_is_not_read_as_this_version_s(version):
    """The version picks the forms: a line only another range prints gives this version no milestone values."""
    for spec, kind, fmt, args, values in FORMS:
        if spec and (kind, spec) not in SHARED_TEXT and not Variant(spec, None, "").holds_for(Version(version)):
            event = parse_line(logged("APIServer", fmt % args)[0], Version(version))
            assert event is None or (event.kind, event.values) != (kind, values), (version, fmt)


@pytest.mark.parametrize("version", ["0.17.1", "0.20.1", "0.31.0"])
def test_the_version_logo_gives_the_version(version):
    lines = logged("APIServer", LOGO % (f"{version}+nv", "Qwen/Qwen3-32B-FP8"), "api_utils.py:347")
    assert len(lines) == 6  # one logged row per line of the logo, each with its header
    events = [e for e in (parse_line(line, Version(version)) for line in lines) if e is not None]
    assert [(e.kind, e.values) for e in events] == [(EventKind.VERSION, {"version": f"{version}+nv"})]
    coloured = lines[2].replace("version ", "version \x1b[1m") + "\x1b[0m"  # the colour formatter's logo
    assert parse_line(coloured).values == {"version": f"{version}+nv"}
    assert parse_line(lines[2], Version("0.10.1.1")) is None  # no logo before 0.17.1


@pytest.mark.parametrize("version", VERSIONS)
def test_each_version_s_process_prefix_is_stripped(version):
    (line,) = logged(ENGINE[version], "Loading weights took 1.00 seconds")
    assert strip_prefix(line).endswith("[x.py:1] Loading weights took 1.00 seconds")
    assert split_header(strip_prefix(line))[2] == "Loading weights took 1.00 seconds"


def test_a_0_31_startup_is_tracked_to_ready_with_its_figures():
    tracker = StartupTracker(version=Version("0.31.0"))
    events = tracker.feed_all(log("startup_success_v031.log"))
    assert EventKind.ERROR not in [e.kind for e in events]
    stats = tracker.stats
    assert stats.version == "0.31.0+nv26.10" and stats.ready is True and tracker.phase is Phase.READY
    assert stats.compile_seconds == 16.73 and stats.compilation_seconds == 16.73 and stats.init_engine_seconds == 25.31
    assert stats.kv_cache_tokens == 271_360 and stats.max_concurrency == 8.48 and stats.concurrency_tokens == 32000
    assert stats.model_gib == 32.13 and stats.kv_cache_gib == 66.25 and stats.url == "http://0.0.0.0:8000"
    assert (stats.shards_done, stats.shards_total) == (7, 7) and stats.architecture == "Qwen3ForCausalLM"
    assert [b for _, b, _ in tracker.transitions] == [
        Phase.LOADING, Phase.COMPILING, Phase.KV_CACHE, Phase.SERVING, Phase.READY
    ]  # fmt: skip
    assert "torch.compile took" in tracker.transitions[2][2]
    unknown = StartupTracker()  # the version not known yet: every form is read, with the same figures
    unknown.feed_all(log("startup_success_v031.log"))
    assert unknown.stats == stats
    old = StartupTracker(version=Version("0.10.1.1"))  # read with the wrong version's grammar, the figures go
    old.feed_all(log("startup_success_v031.log"))
    assert old.stats.version == "0.31.0+nv26.10"  # the engine's line is the same in every version
    assert old.stats.compile_seconds is None and old.stats.max_concurrency is None


def test_a_negative_kv_budget_parses():
    line = "(EngineCore_0 pid=210) INFO 11-07 12:04:07 [gpu_worker.py:276] Available KV cache memory: -0.53 GiB"
    assert parse_line(line).values == {"kv_cache_gib": -0.53}
    tracker = StartupTracker(version=Version("0.10.1.1"))
    tracker.feed(line)
    assert tracker.stats.kv_cache_gib == -0.53


@pytest.mark.parametrize(
    "version,bar",
    [
        ("0.10.2", "Loading safetensors checkpoint shards (eager)"),  # --safetensors-load-strategy eager
        ("0.31.0", "Loading safetensors checkpoint shards (eager)"),
        ("0.10.1.1", "Loading safetensors using Fastsafetensor loader"),  # --load-format fastsafetensors
        ("0.20.1", "Loading safetensors using Fastsafetensor loader"),
        ("0.31.0", "Loading fastsafetensors checkpoint shards"),  # fastsafetensors' own ParallelLoader bar
    ],
)
def test_every_loaders_shard_bar_is_the_loading_phase(version, bar):
    tracker = StartupTracker(version=Version(version))
    event = tracker.feed(f"{bar}:  43% Completed | 3/7 [00:10<00:14,  3.30s/it]")
    assert event is not None and event.kind is EventKind.SHARD_PROGRESS and event.values["done"] == 3
    assert tracker.phase is Phase.LOADING and (tracker.stats.shards_done, tracker.stats.shards_total) == (3, 7)


@pytest.mark.parametrize(
    "version,line",
    [
        ("0.10.1.1", "[backends.py:161] Directly load the compiled graph(s) for dynamic shape from the cache, "
         "took 1.800 s"),
        ("0.31.0", "[backends.py:291] Directly load the compiled graph(s) for compile range (1, 16384) from the cache, "
         "took 1.800 s"),
        ("0.31.0", "[decorators.py:313] Directly load AOT compilation from path /root/.cache/vllm/torch_compile_cache/"
         "torch_aot_compile/ab/rank_0_0/model"),
    ],
)  # fmt: skip
def test_a_compile_cache_hit_is_seen_by_the_tracker(version, line):
    tracker = StartupTracker(version=Version(version))
    event = tracker.feed(f"(EngineCore pid=9) INFO 12-05 10:00:00 {line}")
    assert event is not None and event.kind is EventKind.COMPILE_CACHE_HIT and tracker.stats.compile_cache_hit
    assert not StartupTracker(version=Version(version)).stats.compile_cache_hit
