"""vLLM's container log, understood: lines, startup milestones, phases and numbers.

Pure functions and small pure classes only (no Prefect, no I/O), so the deploy/recover flows
can feed them line by line and the unit tests can feed them sample logs (tests/data/logs/).
Each pattern cites the vLLM file and line that prints its text, in vLLM 0.10.1.1 (the version in
`nvcr.io/nvidia/vllm:25.09-py3`; read from its wheel); later forms are noted where they differ.

    tracker = StartupTracker()
    for line in lines:                      # e.g. LineSplitter().feed(chunk) from docker logs
        event = tracker.feed(line)          # LogEvent | None
        ... tracker.phase, tracker.stats.shards_done, tracker.stats.kv_cache_tokens ...
    cause = classify_failure(tracker.recent, exit_code=1)   # tasks.vllm.failures: FailureCause

What a failed start's log *means* (the failure rules, their causes and fixes) is `tasks.vllm.failures`,
which builds on this module; hiding secrets in lines is `tasks.secrets.scrub`. This module imports
only `tasks.secrets` of the project, never `tasks.vllm.failures`, so there is no import cycle.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from packaging.version import Version

from tasks.secrets import scrub

# ============================================================================ lines

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_DOCKER_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d) ")
# `(APIServer pid=1) `, `(EngineCore_0 pid=210) ` (0.11-0.17 `EngineCore_DP0`, 0.24+ `EngineCore`),
# also workers of multi-GPU runs (`(VllmWorker TP0 pid=..)`).
_PROCESS_PREFIX = re.compile(r"^\((?P<process>[A-Za-z][\w.-]*(?: [\w.-]+)*) pid=(?P<pid>\d+)\)\s?")
# vLLM's format: `%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s`, date `%m-%d %H:%M:%S`.
_VLLM_HEADER = re.compile(
    r"^(?P<level>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL) "
    r"(?P<stamp>\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) \[(?P<source>[^\]]+)\] ?(?P<message>.*)$"
)
# uvicorn: `INFO:     Application startup complete.`; the runbook's warning form `WARNING: ...`.
_COLON_HEADER = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+(?P<message>.*)$")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


def strip_ansi(text: str) -> str:
    """The text without terminal colour codes (vLLM colours its level names when run in a tty)."""
    return _ANSI.sub("", text)


def strip_prefix(line: str) -> str:
    """The line without docker's timestamp, colour codes, vLLM's `(Process pid=N) ` prefix and
    the trailing newline. A tqdm line redrawn with `\\r` keeps only its last drawing."""
    text = strip_ansi(line)
    segments = [s for s in _LINE_BREAKS.split(text) if s.strip()]
    text = segments[-1] if segments else ""
    text = _DOCKER_TIMESTAMP.sub("", text)
    return _PROCESS_PREFIX.sub("", text).rstrip()


def split_lines(text: str | bytes) -> list[str]:
    """Split a log text into lines (`\\n`, `\\r\\n` and tqdm's `\\r`), dropping empty ones."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [line for line in _LINE_BREAKS.split(text) if line.strip()]


class LineSplitter:
    """Turn docker's log chunks (`container.logs(stream=True)`) into whole lines.

    Chunks need not end on a line break; `\\r` (tqdm redraws) also ends a line.
    """

    def __init__(self) -> None:
        self._partial = ""

    def feed(self, chunk: str | bytes) -> list[str]:
        if isinstance(chunk, bytes):
            chunk = chunk.decode("utf-8", errors="replace")
        text = self._partial + chunk
        parts = _LINE_BREAKS.split(text)
        self._partial = parts.pop()
        # a lone "\r" at the end may be the first half of "\r\n": keep nothing pending for it.
        return [p for p in parts if p.strip()]

    def flush(self) -> list[str]:
        rest, self._partial = self._partial, ""
        return [rest] if rest.strip() else []


# ============================================================================ phases and events


class Phase(StrEnum):
    """Where a starting server is, in order. Per-phase timeouts key on these."""

    STARTING = "starting"  # process up, config resolved, engine process starting
    LOADING = "loading"  # `Starting to load model` .. shards .. `Loading weights took`
    COMPILING = "compiling"  # after `Model loading took`: torch.compile (profiling run)
    KV_CACHE = "kv_cache"  # after `torch.compile takes`: KV cache sizing, CUDA graph capture
    SERVING = "serving"  # after `init engine ... took`: the API server starts
    READY = "ready"  # uvicorn `Application startup complete.`


PHASE_ORDER: tuple[Phase, ...] = tuple(Phase)


def phase_index(phase: Phase | str) -> int:
    return PHASE_ORDER.index(Phase(phase))


class EventKind(StrEnum):
    PLATFORM = "platform"
    VERSION = "version"
    ARGS = "args"
    ARCHITECTURE = "architecture"
    MAX_MODEL_LEN = "max_model_len"
    CHUNKED_PREFILL = "chunked_prefill"
    ENGINE_INIT = "engine_init"
    LOAD_START = "load_start"
    WEIGHTS_FORMAT = "weights_format"
    SHARD_PROGRESS = "shard_progress"
    WEIGHTS_LOADED = "weights_loaded"
    MODEL_LOADED = "model_loaded"
    COMPILE_PROGRESS = "compile_progress"
    COMPILE_DONE = "compile_done"
    KV_CACHE_MEMORY = "kv_cache_memory"
    KV_CACHE_TOKENS = "kv_cache_tokens"
    MAX_CONCURRENCY = "max_concurrency"
    GRAPH_CAPTURE = "graph_capture"
    GRAPH_CAPTURED = "graph_captured"
    ENGINE_READY = "engine_ready"
    API_SERVER_START = "api_server_start"
    SERVER_PROCESS = "server_process"
    WAITING_STARTUP = "waiting_startup"
    APP_STARTUP_COMPLETE = "app_startup_complete"
    ENGINE_STATS = "engine_stats"
    COSMETIC_WARNING = "cosmetic_warning"
    ERROR = "error"


#: The phase the server is in once this event has been seen (None: says nothing about phases).
EVENT_PHASE: dict[EventKind, Phase | None] = {
    EventKind.PLATFORM: Phase.STARTING,
    EventKind.VERSION: Phase.STARTING,
    EventKind.ARGS: Phase.STARTING,
    EventKind.ARCHITECTURE: Phase.STARTING,
    EventKind.MAX_MODEL_LEN: Phase.STARTING,
    EventKind.CHUNKED_PREFILL: Phase.STARTING,
    EventKind.ENGINE_INIT: Phase.STARTING,
    EventKind.LOAD_START: Phase.LOADING,
    EventKind.WEIGHTS_FORMAT: Phase.LOADING,
    EventKind.SHARD_PROGRESS: Phase.LOADING,
    EventKind.WEIGHTS_LOADED: Phase.LOADING,
    EventKind.MODEL_LOADED: Phase.COMPILING,
    EventKind.COMPILE_PROGRESS: Phase.COMPILING,
    EventKind.COMPILE_DONE: Phase.KV_CACHE,
    EventKind.KV_CACHE_MEMORY: Phase.KV_CACHE,
    EventKind.KV_CACHE_TOKENS: Phase.KV_CACHE,
    EventKind.MAX_CONCURRENCY: Phase.KV_CACHE,
    EventKind.GRAPH_CAPTURE: Phase.KV_CACHE,
    EventKind.GRAPH_CAPTURED: Phase.KV_CACHE,
    EventKind.ENGINE_READY: Phase.SERVING,
    EventKind.API_SERVER_START: Phase.SERVING,
    EventKind.SERVER_PROCESS: Phase.SERVING,
    EventKind.WAITING_STARTUP: Phase.SERVING,
    EventKind.APP_STARTUP_COMPLETE: Phase.READY,
    EventKind.ENGINE_STATS: Phase.READY,
    EventKind.COSMETIC_WARNING: None,
    EventKind.ERROR: None,
}


@dataclass(frozen=True)
class LogEvent:
    """One recognised log line: what it says (`kind`) and the numbers in it (`values`)."""

    kind: EventKind
    message: str  # the text after vLLM's `LEVEL date [file:line] ` header
    line: str  # the line without docker/process prefixes
    level: str | None = None
    source: str | None = None  # `file.py:123`
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def phase(self) -> Phase | None:
        return phase_of(self)


def phase_of(event: LogEvent | EventKind | str) -> Phase | None:
    """The phase a server is in once `event` has been logged (None for warnings and errors)."""
    kind = event.kind if isinstance(event, LogEvent) else EventKind(event)
    return EVENT_PHASE[kind]


def advance(current: Phase | str | None, event: LogEvent | None) -> Phase:
    """The phase after `event`: phases only move forward (a late line never moves one back)."""
    now = Phase(current) if current is not None else Phase.STARTING
    if event is None:
        return now
    new = phase_of(event)
    if new is None or phase_index(new) <= phase_index(now):
        return now
    return new


# ----------------------------------------------------------------------------- patterns

_NUM = r"(\d+(?:\.\d+)?)"
_INT_SEP = r"(\d[\d,]*)"


def _int(text: str) -> int:
    return int(text.replace(",", ""))


# PyTorch's, not vLLM's: torch/cuda/__init__.py `_check_capability` (GB10 is 12.1, the wheel's maximum 12.0).
_COSMETIC = [
    re.compile(r"Found GPU\d+ .*which is of cuda capability \d+\.\d+"),
    re.compile(r"[Mm]aximum cuda capability supported is \d+\.\d+"),
    re.compile(r"Minimum and Maximum cuda capability supported by this version of PyTorch"),
    re.compile(r"^\s*\(\d+\.\d+\) - \(\d+\.\d+\)\s*$"),
]


def is_cosmetic(line: str) -> bool:
    """The GB10 `cuda capability 12.1 ... Maximum cuda capability supported is 12.0` warning:
    cosmetic (runbook, "Compute Capability 12.1" Warning); never a failure."""
    text = strip_prefix(line)
    return any(p.search(text) for p in _COSMETIC)


# Sources below: vLLM 0.10.1.1, file:line of the logger call.
_SIMPLE: list[tuple[EventKind, re.Pattern[str], tuple[str, ...]]] = [
    # vllm/platforms/__init__.py:241
    (EventKind.PLATFORM, re.compile(r"Automatically detected platform (\w+)"), ("platform",)),
    # vllm/entrypoints/openai/api_server.py:1805 (0.31: `vLLM server version %s, serving model %s`)
    (EventKind.VERSION, re.compile(r"vLLM (?:API )?server version (\S+)"), ("version",)),
    # vllm/config/__init__.py:711
    (EventKind.ARCHITECTURE, re.compile(r"Resolved architecture: (\S+)"), ("architecture",)),
    # vllm/config/__init__.py:1750
    (EventKind.MAX_MODEL_LEN, re.compile(r"Using max model len (\d+)"), ("max_model_len",)),
    # vllm/config/scheduler.py:222
    (
        EventKind.CHUNKED_PREFILL,
        re.compile(r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)"),
        ("max_num_batched_tokens",),
    ),
    # vllm/v1/worker/gpu_model_runner.py:1953
    (EventKind.LOAD_START, re.compile(r"Starting to load model (\S+?)(?:\.\.\.)?$"), ("model",)),
    # vllm/model_executor/model_loader/weight_utils.py:296
    (EventKind.WEIGHTS_FORMAT, re.compile(r"Using model weights format (\[.*\])"), ("weights_format",)),
    # vllm/model_executor/model_loader/default_loader.py:262
    (EventKind.WEIGHTS_LOADED, re.compile(rf"Loading weights took {_NUM} seconds"), ("weights_load_seconds",)),
    # vllm/v1/worker/gpu_model_runner.py:2007
    (
        EventKind.MODEL_LOADED,
        re.compile(rf"Model loading took {_NUM} GiB(?: memory)? and {_NUM} seconds"),
        ("model_gib", "model_load_seconds"),
    ),
    # vllm/compilation/monitor.py:34 (0.31: `torch.compile took`, not matched)
    (EventKind.COMPILE_DONE, re.compile(rf"torch\.compile takes {_NUM} s in total"), ("compile_seconds",)),
    # vllm/compilation/backends.py:559
    (EventKind.COMPILE_PROGRESS, re.compile(rf"Dynamo bytecode transform time: {_NUM} s"), ("dynamo_seconds",)),
    # vllm/compilation/backends.py:215
    (
        EventKind.COMPILE_PROGRESS,
        re.compile(rf"Compiling a graph for dynamic shape takes {_NUM} s"),
        ("graph_compile_seconds",),
    ),
    # vllm/compilation/backends.py:161 and :165
    (EventKind.COMPILE_PROGRESS, re.compile(r"Directly load the compiled graph"), ()),
    # vllm/compilation/backends.py:548 (`Using cache directory: %s for vLLM's torch.compile`)
    (EventKind.COMPILE_PROGRESS, re.compile(r"for vLLM's torch\.compile"), ()),
    # vllm/v1/worker/gpu_worker.py:276
    (EventKind.KV_CACHE_MEMORY, re.compile(rf"Available KV cache memory: {_NUM} GiB"), ("kv_cache_gib",)),
    # vllm/v1/worker/gpu_model_runner.py:2708
    (
        EventKind.GRAPH_CAPTURED,
        re.compile(rf"Graph capturing finished in {_NUM} secs?, took (-?\d+(?:\.\d+)?) GiB"),
        ("graph_capture_seconds", "graph_gib"),
    ),
    # vllm/v1/engine/core.py:214 (0.31 adds `(compilation: %.2f s)` and says `s`, not matched)
    (
        EventKind.ENGINE_READY,
        re.compile(rf"init engine \(profile, create kv cache, warmup model\) took {_NUM} seconds"),
        ("init_engine_seconds",),
    ),
    # vllm/entrypoints/openai/api_server.py:1880 (0.24+: `Starting vLLM server on %s`)
    (EventKind.API_SERVER_START, re.compile(r"Starting vLLM (?:API )?server(?: \d+)? on (\S+)"), ("url",)),
    # uvicorn's, not vLLM's: uvicorn/server.py (`Started server process [%d]`), then uvicorn/lifespan/on.py
    (EventKind.SERVER_PROCESS, re.compile(r"Started server process \[(\d+)\]"), ("server_pid",)),
    (EventKind.WAITING_STARTUP, re.compile(r"Waiting for application startup\."), ()),
    (EventKind.APP_STARTUP_COMPLETE, re.compile(r"Application startup complete\."), ()),
]
# vllm/v1/engine/core.py:74
_ENGINE_INIT = re.compile(r"Initializing a V1 LLM engine \(v?([^)]+)\) with config: (.*)$")
# vllm/entrypoints/utils.py:326
_NON_DEFAULT_ARGS = re.compile(r"non-default args: (\{.*\})\s*$")
# tqdm, desc set at vllm/model_executor/model_loader/weight_utils.py:469 (printed without vLLM's header)
_SHARDS = re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)% Completed \| (\d+)/(\d+)")
# tqdm, desc set at vllm/v1/worker/gpu_model_runner.py:2723 (`Capturing CUDA graphs (mixed prefill-decode, ...)`)
_GRAPH_PROGRESS = re.compile(r"Capturing CUDA graph[^:]*:\s*(\d+)%.*?\| ?(\d+)/(\d+)")
# vllm/v1/core/kv_cache_utils.py:849 (`GPU KV cache size: %s tokens`) and :853 (0.33 joins both on one line)
_KV_TOKENS = re.compile(rf"KV cache size: {_INT_SEP} tokens")
_CONCURRENCY = re.compile(rf"Maximum concurrency for {_INT_SEP} tokens per request: {_NUM}x", re.IGNORECASE)
# vllm/v1/metrics/loggers.py:123 (`Engine %03d: Avg prompt throughput: ...`)
_ENGINE_STATS = re.compile(r"Engine (\d+): Avg prompt throughput: ")
_STATS_FIELDS = {
    "prompt_throughput": re.compile(rf"Avg prompt throughput: {_NUM} tokens/s"),
    "generation_throughput": re.compile(rf"Avg generation throughput: {_NUM} tokens/s"),
    "running": re.compile(r"Running: (\d+) reqs"),
    "waiting": re.compile(r"Waiting: (\d+) reqs"),
    "kv_cache_usage_pct": re.compile(rf"(?:GPU )?KV cache usage: {_NUM}%"),
    "prefix_cache_hit_rate_pct": re.compile(rf"Prefix cache hit rate: {_NUM}%"),
}
_CONFIG_FIELD = re.compile(r"(\w+)=('(?:[^']*)'|[^,]+)")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b(?::|$)")
_SECRET_ARG_KEYS = {"api_key", "hf_token"}
_TEXT_VALUES = {"platform", "version", "architecture", "model", "weights_format", "url"}


def _number(text: str) -> int | float:
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def split_header(text: str) -> tuple[str | None, str | None, str]:
    """``(level, source, message)`` of a line without prefixes: vLLM's ``LEVEL date [file:line] msg``
    or uvicorn's ``LEVEL:     msg``; ``(None, None, text)`` for anything else (tracebacks, tqdm).

    The message alone is what two printings of one error share (the engine's and the API server's).
    """
    match = _VLLM_HEADER.match(text)
    if match:
        return match["level"], match["source"], match["message"]
    match = _COLON_HEADER.match(text)
    if match:
        return match["level"], None, match["message"]
    return None, None, text


def is_exception(message: str) -> bool:
    """The message is a Python exception line (``ValueError: ...``, ``torch.OutOfMemoryError: ...``):
    the line of a traceback that names what went wrong."""
    return _EXCEPTION_LINE.match(message) is not None


def _literal_dict(text: str) -> dict[str, Any] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, dict):
        return None
    return {k: ("***" if str(k) in _SECRET_ARG_KEYS and v else v) for k, v in value.items()}


def parse_line(line: str, version: Version | None = None) -> LogEvent | None:
    """Recognise one vLLM startup/serving milestone (or the cosmetic GB10 warning, or an error
    line); None for everything else."""
    text = scrub(strip_prefix(line))
    if not text:
        return None
    level, source, message = split_header(text)

    def event(kind: EventKind, **values: Any) -> LogEvent:
        return LogEvent(kind, message, text, level, source, values)

    if any(p.search(text) for p in _COSMETIC):
        return event(EventKind.COSMETIC_WARNING)

    if match := _SHARDS.search(message):
        return event(
            EventKind.SHARD_PROGRESS,
            percent=int(match[1]),
            done=int(match[2]),
            total=int(match[3]),
        )
    if match := _GRAPH_PROGRESS.search(message):
        return event(
            EventKind.GRAPH_CAPTURE,
            graphs_percent=int(match[1]),
            graphs_done=int(match[2]),
            graphs_total=int(match[3]),
        )
    if match := _KV_TOKENS.search(message):
        values: dict[str, Any] = {"kv_cache_tokens": _int(match[1])}
        if conc := _CONCURRENCY.search(message):  # 0.33 joins both on one line
            values.update(concurrency_tokens=_int(conc[1]), max_concurrency=float(conc[2]))
        return event(EventKind.KV_CACHE_TOKENS, **values)
    if match := _CONCURRENCY.search(message):
        return event(EventKind.MAX_CONCURRENCY, concurrency_tokens=_int(match[1]), max_concurrency=float(match[2]))
    if match := _ENGINE_STATS.search(message):
        values = {"engine": int(match[1])}
        for name, pattern in _STATS_FIELDS.items():
            if found := pattern.search(message):
                values[name] = _number(found[1])
        return event(EventKind.ENGINE_STATS, **values)
    if match := _NON_DEFAULT_ARGS.search(message):
        return event(EventKind.ARGS, non_default_args=_literal_dict(match[1]) or {})
    if match := _ENGINE_INIT.search(message):
        config = {k: v.strip("'") for k, v in _CONFIG_FIELD.findall(match[2])}
        return event(
            EventKind.ENGINE_INIT,
            version=match[1],
            model=config.get("model"),
            download_dir=config.get("download_dir"),
        )
    for kind, pattern, names in _SIMPLE:
        if match := pattern.search(message):
            values = {}
            for name, raw in zip(names, match.groups(), strict=True):
                values[name] = raw if name in _TEXT_VALUES else _number(raw)
            return event(kind, **values)
    if (
        level in ("ERROR", "CRITICAL")
        or message.startswith("Traceback (most recent call last)")
        or _EXCEPTION_LINE.match(message)
    ):
        return event(EventKind.ERROR)
    return None


# ----------------------------------------------------------------------------- accumulation


@dataclass
class StartupStats:
    """The numbers a startup log reveals, for the deploy report."""

    version: str | None = None
    architecture: str | None = None
    max_model_len: int | None = None
    url: str | None = None
    shards_done: int | None = None
    shards_total: int | None = None
    weights_load_seconds: float | None = None
    model_gib: float | None = None
    model_load_seconds: float | None = None
    compile_seconds: float | None = None
    kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    concurrency_tokens: int | None = None
    graph_capture_seconds: float | None = None
    graph_gib: float | None = None
    init_engine_seconds: float | None = None
    ready: bool = False

    def update(self, event: LogEvent) -> None:
        """Take the numbers of one event (its value names are this class's field names)."""
        values = event.values
        if event.kind is EventKind.SHARD_PROGRESS:
            self.shards_done, self.shards_total = values["done"], values["total"]
        elif event.kind is EventKind.APP_STARTUP_COMPLETE:
            self.ready = True
        elif event.kind is EventKind.ENGINE_INIT:
            self.version = self.version or values.get("version")
        elif event.kind in _STATS_KINDS:
            for name, value in values.items():
                if name in _STATS_FIELD_NAMES:
                    setattr(self, name, value)


_STATS_FIELD_NAMES = {f for f in StartupStats.__dataclass_fields__ if f != "ready"}
_STATS_KINDS = {
    EventKind.VERSION,
    EventKind.ARCHITECTURE,
    EventKind.MAX_MODEL_LEN,
    EventKind.WEIGHTS_LOADED,
    EventKind.MODEL_LOADED,
    EventKind.COMPILE_DONE,
    EventKind.KV_CACHE_MEMORY,
    EventKind.KV_CACHE_TOKENS,
    EventKind.MAX_CONCURRENCY,
    EventKind.GRAPH_CAPTURED,
    EventKind.ENGINE_READY,
    EventKind.API_SERVER_START,
}


class StartupTracker:
    """Feed log lines; keeps the phase, the startup numbers and the recent lines (for
    `tasks.vllm.failures.classify_failure`). Pure: the caller owns clocks and timeouts (per phase)."""

    def __init__(self, keep: int = 500, version: Version | None = None) -> None:
        self.version = version  # the vLLM the server runs (None: unknown, every version's forms)
        self.phase: Phase = Phase.STARTING
        self.stats = StartupStats()
        self.recent: deque[str] = deque(maxlen=keep)
        self.transitions: list[tuple[Phase, Phase, str]] = []  # (from, to, line)
        self.events = 0

    def feed(self, line: str) -> LogEvent | None:
        if line.strip():
            self.recent.append(line.rstrip("\r\n"))
        event = parse_line(line, self.version)
        if event is None:
            return None
        self.events += 1
        self.stats.update(event)
        new = advance(self.phase, event)
        if new != self.phase:
            self.transitions.append((self.phase, new, event.line))
            self.phase = new
        return event

    def feed_all(self, lines: Iterable[str]) -> list[LogEvent]:
        return [e for e in (self.feed(line) for line in lines) if e is not None]


def summarize_startup(lines: Iterable[str]) -> StartupStats:
    tracker = StartupTracker()
    tracker.feed_all(lines)
    return tracker.stats
