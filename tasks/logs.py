"""vLLM's container log, understood: startup milestones, phases, and the cause of a failure.

Pure functions and small pure classes only (no Prefect, no I/O), so the deploy/recover flows
can feed them line by line and the unit tests can feed them the texts in
`../shared/notes/vllm.md` (vLLM 0.10.1.1, the version in `nvcr.io/nvidia/vllm:25.09-py3`; later
forms noted where they differ).

    tracker = StartupTracker()
    for line in lines:                      # e.g. LineSplitter().feed(chunk) from docker logs
        event = tracker.feed(line)          # LogEvent | None
        ... tracker.phase, tracker.stats.shards_done, tracker.stats.kv_cache_tokens ...
    cause = classify_failure(tracker.recent, exit_code=1)   # FailureCause
"""

from __future__ import annotations

import ast
import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from tasks.memory import suggest_utilization

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


def strip_prefix(line: str) -> str:
    """The line without docker's timestamp, colour codes, vLLM's `(Process pid=N) ` prefix and
    the trailing newline. A tqdm line redrawn with `\\r` keeps only its last drawing."""
    text = _ANSI.sub("", line)
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


# ============================================================================ secrets in logs

_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_API_KEY_ARG = re.compile(r"""(['"]?api[-_]key['"]?\s*[:=]\s*)(['"]?)[^'",\s}]+""", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


def scrub(line: str, secrets: Iterable[str] = ()) -> str:
    """Hide secrets in a log line: the given values, HF tokens, `api_key=...`, bearer tokens."""
    for secret in secrets:
        if secret:
            line = line.replace(secret, "***")
    line = _HF_TOKEN.sub("hf_***", line)
    line = _API_KEY_ARG.sub(lambda m: f"{m.group(1)}{m.group(2)}***", line)
    return _BEARER.sub(r"\1***", line)


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


_SIMPLE: list[tuple[EventKind, re.Pattern[str], tuple[str, ...]]] = [
    (EventKind.PLATFORM, re.compile(r"Automatically detected platform (\w+)"), ("platform",)),
    (EventKind.VERSION, re.compile(r"vLLM (?:API )?server version (\S+)"), ("version",)),
    (EventKind.ARCHITECTURE, re.compile(r"Resolved architecture: (\S+)"), ("architecture",)),
    (EventKind.MAX_MODEL_LEN, re.compile(r"Using max model len (\d+)"), ("max_model_len",)),
    (
        EventKind.CHUNKED_PREFILL,
        re.compile(r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)"),
        ("max_num_batched_tokens",),
    ),
    (EventKind.LOAD_START, re.compile(r"Starting to load model (\S+?)(?:\.\.\.)?$"), ("model",)),
    (EventKind.WEIGHTS_FORMAT, re.compile(r"Using model weights format (\[.*\])"), ("weights_format",)),
    (EventKind.WEIGHTS_LOADED, re.compile(rf"Loading weights took {_NUM} seconds"), ("weights_load_seconds",)),
    (
        EventKind.MODEL_LOADED,
        re.compile(rf"Model loading took {_NUM} GiB(?: memory)? and {_NUM} seconds"),
        ("model_gib", "model_load_seconds"),
    ),
    (EventKind.COMPILE_DONE, re.compile(rf"torch\.compile takes {_NUM} s in total"), ("compile_seconds",)),
    (EventKind.COMPILE_PROGRESS, re.compile(rf"Dynamo bytecode transform time: {_NUM} s"), ("dynamo_seconds",)),
    (
        EventKind.COMPILE_PROGRESS,
        re.compile(rf"Compiling a graph for dynamic shape takes {_NUM} s"),
        ("graph_compile_seconds",),
    ),
    (EventKind.COMPILE_PROGRESS, re.compile(r"Directly load the compiled graph"), ()),
    (EventKind.COMPILE_PROGRESS, re.compile(r"for vLLM's torch\.compile"), ()),
    (EventKind.KV_CACHE_MEMORY, re.compile(rf"Available KV cache memory: {_NUM} GiB"), ("kv_cache_gib",)),
    (
        EventKind.GRAPH_CAPTURED,
        re.compile(rf"Graph capturing finished in {_NUM} secs?, took (-?\d+(?:\.\d+)?) GiB"),
        ("graph_capture_seconds", "graph_gib"),
    ),
    (
        EventKind.ENGINE_READY,
        re.compile(rf"init engine \(profile, create kv cache, warmup model\) took {_NUM} seconds"),
        ("init_engine_seconds",),
    ),
    (EventKind.API_SERVER_START, re.compile(r"Starting vLLM (?:API )?server(?: \d+)? on (\S+)"), ("url",)),
    (EventKind.SERVER_PROCESS, re.compile(r"Started server process \[(\d+)\]"), ("server_pid",)),
    (EventKind.WAITING_STARTUP, re.compile(r"Waiting for application startup\."), ()),
    (EventKind.APP_STARTUP_COMPLETE, re.compile(r"Application startup complete\."), ()),
]
_ENGINE_INIT = re.compile(r"Initializing a V1 LLM engine \(v?([^)]+)\) with config: (.*)$")
_NON_DEFAULT_ARGS = re.compile(r"non-default args: (\{.*\})\s*$")
_SHARDS = re.compile(r"Loading safetensors checkpoint shards:\s*(\d+)% Completed \| (\d+)/(\d+)")
_GRAPH_PROGRESS = re.compile(r"Capturing CUDA graph[^:]*:\s*(\d+)%.*?\| ?(\d+)/(\d+)")
_KV_TOKENS = re.compile(rf"KV cache size: {_INT_SEP} tokens")
_CONCURRENCY = re.compile(rf"Maximum concurrency for {_INT_SEP} tokens per request: {_NUM}x", re.IGNORECASE)
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
_EXCEPTION_IN_MESSAGE = re.compile(
    r"(?:^|\] )(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)\b: "
)
_SECRET_ARG_KEYS = {"api_key", "hf_token"}
_TEXT_VALUES = {"platform", "version", "architecture", "model", "weights_format", "url"}


def _number(text: str) -> int | float:
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def _split_header(text: str) -> tuple[str | None, str | None, str]:
    match = _VLLM_HEADER.match(text)
    if match:
        return match["level"], match["source"], match["message"]
    match = _COLON_HEADER.match(text)
    if match:
        return match["level"], None, match["message"]
    return None, None, text


def _literal_dict(text: str) -> dict[str, Any] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, dict):
        return None
    return {k: ("***" if str(k) in _SECRET_ARG_KEYS and v else v) for k, v in value.items()}


def parse_line(line: str) -> LogEvent | None:
    """Recognise one vLLM startup/serving milestone (or the cosmetic GB10 warning, or an error
    line); None for everything else."""
    text = scrub(strip_prefix(line))
    if not text:
        return None
    level, source, message = _split_header(text)

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
            for name, raw in zip(names, match.groups()):
                values[name] = raw if name in _TEXT_VALUES else _number(raw)
            return event(kind, **values)
    if level in ("ERROR", "CRITICAL") or message.startswith("Traceback (most recent call last)") or _EXCEPTION_LINE.match(message):
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    `classify_failure`). Pure: the caller owns clocks and timeouts (per phase)."""

    def __init__(self, keep: int = 500) -> None:
        self.phase: Phase = Phase.STARTING
        self.stats = StartupStats()
        self.recent: deque[str] = deque(maxlen=keep)
        self.transitions: list[tuple[Phase, Phase, str]] = []  # (from, to, line)
        self.events = 0

    def feed(self, line: str) -> LogEvent | None:
        if line.strip():
            self.recent.append(line.rstrip("\r\n"))
        event = parse_line(line)
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


# ============================================================================ failures


class FailureKind(StrEnum):
    FREE_MEMORY = "free_memory"
    KV_TOO_SMALL = "kv_too_small"
    NO_KV_MEMORY = "no_kv_memory"
    CUDA_OOM = "cuda_oom"
    MISSING_MODEL_FILES = "missing_model_files"
    FP8_KERNEL = "fp8_kernel"
    GPU_RUNTIME_MISSING = "gpu_runtime_missing"
    BAD_ARGUMENTS = "bad_arguments"
    ENGINE_DEAD = "engine_dead"
    UNKNOWN = "unknown"


class FailureCause(BaseModel):
    """Why the server failed, in operator terms, with the log lines that show it."""

    kind: FailureKind
    summary: str
    fix: str
    evidence: list[str] = Field(default_factory=list)
    numbers: dict[str, float] = Field(default_factory=dict)
    #: engine spec overrides the numbers support (e.g. {"gpu_memory_utilization": 0.65}).
    suggested: dict[str, float | int] = Field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.summary}"

    def markdown(self) -> str:
        parts = [f"**Failure: `{self.kind.value}`** {self.summary}", "", f"**Fix:** {self.fix}"]
        if self.suggested:
            parts += ["", "**Suggested spec changes:** " + ", ".join(f"`{k}={v}`" for k, v in self.suggested.items())]
        if self.evidence:
            parts += ["", "```", *self.evidence, "```"]
        return "\n".join(parts)


def suggest_max_model_len(estimate: int) -> int:
    """vLLM's estimated maximum model length rounded down to a multiple of 1024 (12688 -> 12288);
    0 when the estimate is below 1024 (then only more memory helps)."""
    return max(0, (int(estimate) // 1024) * 1024)


_FREE_MEMORY = re.compile(
    r"Free memory on device(?: (?P<device>\S+))? \((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\) on startup "
    r"is less than desired GPU memory utilization \((?P<util>[\d.]+), (?P<req>[\d.]+) GiB\)"
)
_KV_TOO_SMALL = re.compile(
    r"To serve at least one request with the models?'s max seq len \((?P<len>\d+)\),\s*"
    r"\((?P<needed>[\d.]+) GiB KV cache is needed, which is larger than the available KV cache memory "
    r"\((?P<avail>[\d.]+) GiB\)\.\s*(?:Based on the available memory, the estimated maximum model "
    r"length is (?P<est>\d+)\.)?"
)
_CUDA_OOM_DETAIL = {
    "tried_to_allocate_gib": re.compile(r"Tried to allocate ([\d.]+) ([KMG]iB)"),
    "total_capacity_gib": re.compile(r"total capacity of ([\d.]+) ([KMG]iB)"),
    "free_gib": re.compile(r"of which ([\d.]+) ([KMG]iB) is free"),
}
_UNIT = {"KiB": 1 / (1024 * 1024), "MiB": 1 / 1024, "GiB": 1.0}

_PATTERNS: dict[FailureKind, list[re.Pattern[str]]] = {
    FailureKind.GPU_RUNTIME_MISSING: [
        re.compile(r'could not select device driver "nvidia"'),
        re.compile(r"could not select device driver \"\" with capabilities: \[\[gpu\]\]"),
        re.compile(r"nvidia-container-cli: initialization error"),
        re.compile(r"unknown or invalid runtime name: nvidia"),
        re.compile(r"Failed to infer device type"),
        re.compile(r"No CUDA GPUs are available"),
        re.compile(r"Found no NVIDIA driver on your system"),
    ],
    FailureKind.BAD_ARGUMENTS: [
        re.compile(r": error: unrecognized arguments: "),
        re.compile(r": error: argument \S+"),
        re.compile(r": error: the following arguments are required"),
        re.compile(r"\d+ validation errors? for \w*(?:Config|EngineArgs)\b"),
        re.compile(r"max_num_batched_tokens \(\d+\) is smaller than max_model_len"),
    ],
    FailureKind.FP8_KERNEL: [
        re.compile(r"cutlass_scaled_mm failed"),
        re.compile(r"RuntimeError: Error Internal"),
    ],
    FailureKind.FREE_MEMORY: [_FREE_MEMORY],
    FailureKind.KV_TOO_SMALL: [_KV_TOO_SMALL],
    FailureKind.NO_KV_MEMORY: [re.compile(r"No available memory for the cache blocks")],
    FailureKind.CUDA_OOM: [
        re.compile(r"CUDA out of memory"),
        re.compile(r"torch(?:\.cuda)?\.OutOfMemoryError"),
        re.compile(r"CUDA error: out of memory"),
    ],
    FailureKind.MISSING_MODEL_FILES: [
        re.compile(r"LocalEntryNotFoundError"),
        re.compile(r"Cannot find an appropriate cached snapshot"),
        re.compile(r"FileNotFoundError: .*\.safetensors"),
        re.compile(r"No such file or directory: .*(?:\.safetensors|config\.json|tokenizer)"),
        re.compile(r"SafetensorError: Error while deserializing header"),
        re.compile(r"does not appear to have a file named"),
        re.compile(r"Cannot find any model weights with"),
        re.compile(r"outgoing traffic has been disabled"),
        re.compile(r"Can't load tokenizer for"),
        re.compile(r"config file at .* is not a valid JSON file"),
        re.compile(r"JSONDecodeError: .*\.json"),
    ],
    FailureKind.ENGINE_DEAD: [
        re.compile(r"EngineDeadError"),
        re.compile(r"EngineCore encountered (?:a fatal error|an issue)"),
        re.compile(r"Engine core proc \S+ died unexpectedly"),
        re.compile(r"AsyncLLM output_handler failed"),
    ],
}
_CONTEXT = [
    re.compile(r"RuntimeError: Engine core initialization failed"),
]
_PRIORITY = [
    FailureKind.GPU_RUNTIME_MISSING,
    FailureKind.BAD_ARGUMENTS,
    FailureKind.FP8_KERNEL,
    FailureKind.FREE_MEMORY,
    FailureKind.KV_TOO_SMALL,
    FailureKind.NO_KV_MEMORY,
    FailureKind.CUDA_OOM,
    FailureKind.MISSING_MODEL_FILES,
    FailureKind.ENGINE_DEAD,
]
MAX_EVIDENCE = 6

_RUNBOOK_MEMORY_STEPS = (
    "the runbook's steps: stop the containers (`docker compose down`; the flows stop only their "
    "own), clean up (`docker system prune -f`)"
)


def _normalise(lines: Sequence[str] | str) -> list[str]:
    if isinstance(lines, (str, bytes)):
        lines = [lines]  # type: ignore[list-item]
    out: list[str] = []
    for item in lines:
        for line in split_lines(item):
            text = _ANSI.sub("", line).strip()
            if text and not is_cosmetic(text):
                out.append(text)
    return out


def _evidence(lines: list[str], patterns: list[re.Pattern[str]], secrets: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    picked: list[str] = []
    for line in lines:
        body = strip_prefix(line)
        if any(p.search(body) for p in patterns):
            key = _split_header(body)[2]
            if key not in seen:
                seen.add(key)
                picked.append(scrub(line, secrets))
    return picked[:MAX_EVIDENCE]


def _gib(value: str, unit: str) -> float:
    return round(float(value) * _UNIT[unit], 4)


def classify_failure(
    lines: Sequence[str] | str, *, exit_code: int | None = None, secrets: Iterable[str] = ()
) -> FailureCause:
    """Name the cause of a failed start (or a died server) from its log lines.

    `lines` may also hold docker's own error text (e.g. `str(APIError)` when the container could
    not start). `exit_code` (the container's) refines the unknown case; `secrets` are scrubbed
    from the evidence. The GB10 `cuda capability 12.1` warning is never a cause.
    """
    secrets = [s for s in secrets if s]
    text_lines = _normalise(lines)
    bodies = [strip_prefix(line) for line in text_lines]
    ready = any("Application startup complete." in body for body in bodies)

    for kind in _PRIORITY:
        patterns = _PATTERNS[kind]
        if not any(p.search(body) for body in bodies for p in patterns):
            continue
        if kind is FailureKind.ENGINE_DEAD:  # the death lines and the exceptions around them
            evidence = _evidence(text_lines, [*patterns, _EXCEPTION_IN_MESSAGE], secrets)
        else:
            evidence = _evidence(text_lines, patterns, secrets)
        context = _evidence(text_lines, _CONTEXT, secrets)
        evidence += [line for line in context if line not in evidence][: max(0, MAX_EVIDENCE - len(evidence))]
        first = next(body for body in bodies for p in patterns if p.search(body))
        return _BUILDERS[kind](first, evidence, ready)

    evidence = []
    for line, body in zip(text_lines, bodies):
        parsed = parse_line(body)
        if parsed is not None and parsed.kind is EventKind.ERROR:
            evidence.append(scrub(line, secrets))
    exceptions = [e for e in evidence if _EXCEPTION_LINE.match(_split_header(strip_prefix(e))[2])]
    evidence = (exceptions or evidence or [scrub(line, secrets) for line in text_lines])[-MAX_EVIDENCE:]
    if exit_code == 137:
        summary = (
            "the container was killed (exit code 137, SIGKILL) without a vLLM error: the kernel's "
            "OOM killer (host memory exhausted) or a `docker kill`"
        )
        fix = (
            "Check `dmesg` for the OOM killer. On the DGX Spark GPU and CPU share memory: drop the page "
            "cache, stop other memory users, and lower gpu_memory_utilization before retrying; "
            "do not retry in a loop (pushing memory on GB10 can hang the host)."
        )
    else:
        code = f" with exit code {exit_code}" if exit_code is not None else ""
        summary = f"the server stopped{code} and its log matches no known failure"
        fix = "Read the evidence and the full container log (`docker logs <container>`); the lines above the last error name the cause."
    numbers = {"exit_code": float(exit_code)} if exit_code is not None else {}
    return FailureCause(kind=FailureKind.UNKNOWN, summary=summary, fix=fix, evidence=evidence, numbers=numbers)


# ----------------------------------------------------------------------------- per-kind texts


def _free_memory(first: str, evidence: list[str], ready: bool) -> FailureCause:
    m = _FREE_MEMORY.search(first)
    assert m is not None
    free, total = float(m["free"]), float(m["total"])
    util, requested = float(m["util"]), float(m["req"])
    suggested_util = suggest_utilization(free, total)
    held = total - free
    device = f" {m['device']}" if m["device"] else ""
    numbers = {
        "free_gib": free,
        "total_gib": total,
        "held_gib": round(held, 2),
        "requested_utilization": util,
        "requested_gib": requested,
        "suggested_utilization": suggested_util,
    }
    summary = (
        f"vLLM found {free:.2f} of {total:.2f} GiB free on device{device} but gpu_memory_utilization "
        f"{util:.2f} asks for {requested:.2f} GiB; {held:.2f} GiB is held by something else"
    )
    lower = (
        f"lower gpu_memory_utilization to {suggested_util:.2f} (free/total {free / total:.3f} minus a "
        "0.02 margin, rounded down to 0.05), and max_model_len to 16384 if the KV cache then gets too small"
        if suggested_util > 0
        else "there is too little free memory for any utilization: free memory first"
    )
    fix = (
        "Find out what holds the memory before lowering anything. On the DGX Spark (GB10, unified "
        "memory) vLLM 0.10.1.1 counts the Linux page cache as used, and a previous load leaves the "
        "weights there: if the host's page cache (`Cached` in /proc/meminfo) is about that size, drop "
        "it (`sync; echo 3 > /proc/sys/vm/drop_caches`) and retry with the same utilization. If other "
        f"processes or containers hold it, follow {_RUNBOOK_MEMORY_STEPS}, and retry. Only if nothing "
        f"can be freed, {lower}."
    )
    suggested = {"gpu_memory_utilization": suggested_util} if 0 < suggested_util < util else {}
    return FailureCause(
        kind=FailureKind.FREE_MEMORY, summary=summary, fix=fix, evidence=evidence, numbers=numbers, suggested=suggested
    )


def _kv_too_small(first: str, evidence: list[str], ready: bool) -> FailureCause:
    m = _KV_TOO_SMALL.search(first)
    assert m is not None
    length, needed, available = int(m["len"]), float(m["needed"]), float(m["avail"])
    numbers: dict[str, float] = {"max_model_len": length, "needed_gib": needed, "available_gib": available}
    suggested: dict[str, float | int] = {}
    summary = (
        f"max_model_len {length} needs {needed:.2f} GiB of KV cache for one request, but only "
        f"{available:.2f} GiB is left for the KV cache"
    )
    if m["est"]:
        estimate = int(m["est"])
        new_len = suggest_max_model_len(estimate)
        numbers.update(estimated_max_model_len=estimate, suggested_max_model_len=new_len)
        summary += f" (vLLM estimates a maximum model length of {estimate})"
        if new_len:
            suggested["max_model_len"] = new_len
            lower = f"lower max_model_len to {new_len} (vLLM's estimate {estimate} rounded down to a multiple of 1024)"
        else:
            lower = "the estimate is below 1024 tokens: only more memory helps"
    else:
        lower = "lower max_model_len"
    fix = (
        f"Either {lower}, or raise gpu_memory_utilization so that about {needed - available:.2f} GiB more "
        "is left for the KV cache (if free memory allows; on the Spark drop the page cache first). "
        "The runbook's max-context preset keeps 32000 with max_num_seqs 32."
    )
    return FailureCause(
        kind=FailureKind.KV_TOO_SMALL, summary=summary, fix=fix, evidence=evidence, numbers=numbers, suggested=suggested
    )


def _no_kv_memory(first: str, evidence: list[str], ready: bool) -> FailureCause:
    return FailureCause(
        kind=FailureKind.NO_KV_MEMORY,
        summary="after loading the weights and profiling, no memory was left for the KV cache",
        fix=(
            "Raise gpu_memory_utilization if free memory allows (the ~32 GB of FP8 weights must fit with "
            "room to spare; the runbook uses 0.90), or lower max_num_batched_tokens / max_num_seqs to shrink "
            "the profiling peak. On the DGX Spark drop the page cache first "
            "(`sync; echo 3 > /proc/sys/vm/drop_caches`)."
        ),
        evidence=evidence,
    )


def _cuda_oom(first: str, evidence: list[str], ready: bool) -> FailureCause:
    joined = " ".join(strip_prefix(e) for e in evidence) + " " + first
    numbers: dict[str, float] = {}
    for name, pattern in _CUDA_OOM_DETAIL.items():
        if found := pattern.search(joined):
            numbers[name] = _gib(found[1], found[2])
    detail = ""
    if "tried_to_allocate_gib" in numbers:
        detail = f" (tried to allocate {numbers['tried_to_allocate_gib']:.2f} GiB"
        if "free_gib" in numbers and "total_capacity_gib" in numbers:
            detail += f" with {numbers['free_gib']:.2f} of {numbers['total_capacity_gib']:.2f} GiB free"
        detail += ")"
    when = "while serving" if ready else "during startup"
    numbers["after_ready"] = 1.0 if ready else 0.0
    return FailureCause(
        kind=FailureKind.CUDA_OOM,
        summary=f"PyTorch ran out of GPU memory {when}{detail}",
        fix=(
            "On GB10 the utilization is not a hard cap during profiling, so other memory users count: drop "
            "the page cache and stop other GPU containers, then retry once. If it repeats, lower "
            "max_num_batched_tokens or max_num_seqs (smaller activation peak) or gpu_memory_utilization. "
            "Do not retry in a loop: pushing memory on the Spark can hang the host."
        ),
        evidence=evidence,
        numbers=numbers,
    )


def _missing_model_files(first: str, evidence: list[str], ready: bool) -> FailureCause:
    return FailureCause(
        kind=FailureKind.MISSING_MODEL_FILES,
        summary="vLLM could not find or read the model files in the staged cache (it runs offline: HF_HUB_OFFLINE=1)",
        fix=(
            "Run the staging flow for this model and revision to download and verify it into the target's "
            "cache_dir, and check that cache_dir is the directory mounted at the spec's download_dir. "
            "Runbook 'Model Download Incomplete': check disk space (`df -h /opt/hf`), remove the "
            "`*.incomplete` files under models--<org>--<name>/, and restart."
        ),
        evidence=evidence,
    )


def _fp8_kernel(first: str, evidence: list[str], ready: bool) -> FailureCause:
    return FailureCause(
        kind=FailureKind.FP8_KERNEL,
        summary="the FP8 CUTLASS kernel failed (`cutlass_scaled_mm failed` / `RuntimeError: Error Internal`)",
        fix=(
            "Runbook 'FP8 Quantization Fails with On-the-Fly Quantization': use the pre-quantized model "
            "Qwen/Qwen3-32B-FP8 instead and clear the spec's quantization (no `--quantization fp8` with the "
            "base model). Use the image nvcr.io/nvidia/vllm:25.09-py3: vllm/vllm-openai:latest fails FP8 on GB10."
        ),
        evidence=evidence,
    )


def _gpu_runtime_missing(first: str, evidence: list[str], ready: bool) -> FailureCause:
    return FailureCause(
        kind=FailureKind.GPU_RUNTIME_MISSING,
        summary="the container gets no GPU: docker has no NVIDIA runtime (or the container sees no CUDA device)",
        fix=(
            "Install the NVIDIA Container Toolkit on the target (`nvidia-ctk runtime configure --runtime=docker`, "
            "then restart docker) and check `docker run --rm --gpus all nvcr.io/nvidia/vllm:25.09-py3 nvidia-smi`. "
            "For an imitation without GPUs set the target's gpus to none."
        ),
        evidence=evidence,
    )


def _bad_arguments(first: str, evidence: list[str], ready: bool) -> FailureCause:
    return FailureCause(
        kind=FailureKind.BAD_ARGUMENTS,
        summary="vllm serve rejected its command line",
        fix=(
            "Fix the flag named in the evidence in the engine spec (most often extra_args); the image runs "
            "vLLM 0.10.1.1, so check it against `vllm serve --help` in that image."
        ),
        evidence=evidence,
    )


def _engine_dead(first: str, evidence: list[str], ready: bool) -> FailureCause:
    when = "after the server was ready" if ready else "during startup"
    return FailureCause(
        kind=FailureKind.ENGINE_DEAD,
        summary=f"the engine core process died {when}; the API server stops serving (500 in 0.10.x, 503 in 0.11+) and exits",
        fix=(
            "Read the lines before the evidence for the root cause, then recover (restart the container: the "
            "recover flow). If it repeats under load, lower max_num_seqs or max_num_batched_tokens."
        ),
        evidence=evidence,
        numbers={"after_ready": 1.0 if ready else 0.0},
    )


_BUILDERS = {
    FailureKind.FREE_MEMORY: _free_memory,
    FailureKind.KV_TOO_SMALL: _kv_too_small,
    FailureKind.NO_KV_MEMORY: _no_kv_memory,
    FailureKind.CUDA_OOM: _cuda_oom,
    FailureKind.MISSING_MODEL_FILES: _missing_model_files,
    FailureKind.FP8_KERNEL: _fp8_kernel,
    FailureKind.GPU_RUNTIME_MISSING: _gpu_runtime_missing,
    FailureKind.BAD_ARGUMENTS: _bad_arguments,
    FailureKind.ENGINE_DEAD: _engine_dead,
}
