"""vLLM's container log, understood: lines, startup milestones, phases and numbers.

Pure functions and small pure classes only (no Prefect, no I/O), so the deploy/recover flows
can feed them line by line and the unit tests can feed them sample logs (tests/data/logs/).
The grammar is one table, `GRAMMAR`: each milestone with its forms, each form a `Variant` holding the
vLLM versions that print it and the file:line of the logger call in each inspected version (0.10.1.1 of
`nvcr.io/nvidia/vllm:25.09-py3` to 0.31.0 of 26.10, read from their wheels). A parser given the server's
version tries only that version's forms; without one it tries them all.

    tracker = StartupTracker(version=Version("0.31.0"))
    for line in lines:                      # e.g. LineSplitter().feed(chunk) from docker logs
        event = tracker.feed(line)          # LogEvent | None
        ... tracker.phase, tracker.stats.shards_done, tracker.stats.kv_cache_tokens ...
    cause = classify_failure(tracker.recent, exit_code=1)   # tasks.vllm.failures: FailureCause

What a failed start's log *means* (the failure rules, their causes and fixes) is `tasks.vllm.failures`,
which builds on this module; hiding secrets in lines is `tasks.secrets.scrub`. This module imports
only `tasks.secrets` and `tasks.vllm.versions` of the project, never `tasks.vllm.failures`, so there is no import cycle.
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
from tasks.vllm.versions import Variant, variants_for

# ============================================================================ lines

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_DOCKER_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d) ")
# `(APIServer pid=1) `, `(EngineCore_0 pid=210) `, workers of multi-GPU runs (`(VllmWorker TP0 pid=..)`); one
# form in every version, printed by: _add_prefix on the process's stdout/stderr, vllm/utils/__init__.py:3350
# (0.10.1.1), :3392 (0.10.2), vllm/utils/system_utils.py:143 (0.11.1), :196 (0.17.1), :201 (0.20.1); vLLM's log
# format itself in 0.31.0 (vllm/logger.py:27-31, `(%(vllm_process_name)s pid=%(process)d) `; tqdm and uvicorn
# lines then come without it). The engine is `EngineCore_0` (vllm/v1/engine/utils.py:119, 0.10.1.1),
# `EngineCore_DP0` (:119 in 0.10.2, :122 in 0.17.1), `EngineCore` without data parallelism (:145 in 0.20.1,
# :227 in 0.31.0).
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
    COMPILE_CACHE_HIT = "compile_cache_hit"
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
    EventKind.COMPILE_CACHE_HIT: Phase.COMPILING,
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


def _num(name: str) -> str:
    """A named number group; signed, because vLLM prints a negative KV budget
    (``Available KV cache memory: -0.53 GiB`` just before ``No available memory for the cache blocks``)."""
    return rf"(?P<{name}>-?\d+(?:\.\d+)?)"


def _count(name: str) -> str:
    """A named integer with thousands separators (``271,360``)."""
    return rf"(?P<{name}>\d[\d,]*)"


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


@dataclass(frozen=True)
class LinePattern:
    """One milestone of the grammar: its kind and its forms, each for the vLLM versions that print it.

    A form's named groups are the event's values (the names of `StartupStats` fields where the
    tracker keeps them); `parse_line` tries the forms of the server's version (every form when the
    version is unknown).
    """

    kind: EventKind
    forms: tuple[Variant[re.Pattern[str]], ...]


def _line(kind: EventKind, *forms: Variant[re.Pattern[str]]) -> LinePattern:
    return LinePattern(kind, forms)


def _form(versions: str, pattern: str, source: str) -> Variant[re.Pattern[str]]:
    return Variant(versions, re.compile(pattern), source)


_ALL = ""  # every version

#: vLLM's startup and serving lines, tried in this order on the message (the text after vLLM's header).
#: Each form cites the file:line of the logger call in every inspected version (0.10.1.1, 0.10.2,
#: 0.11.1, 0.17.1, 0.20.1, 0.31.0); a range starts at the first version that prints the form.
GRAMMAR: tuple[LinePattern, ...] = (
    # tqdm bars, printed without vLLM's header
    _line(
        EventKind.SHARD_PROGRESS,
        _form(
            _ALL,
            r"Loading safetensors checkpoint shards(?: \(eager\))?:\s*(?P<percent>\d+)% Completed \| "
            r"(?P<done>\d+)/(?P<total>\d+)",
            "desc at vllm/model_executor/model_loader/weight_utils.py:469 (0.10.1.1), :525 (0.10.2), "
            ":594 (0.11.1), :714 (0.17.1), :890 (0.20.1), :1049 (0.31.0); ` (eager)` added with "
            "--safetensors-load-strategy eager: :526-527 (0.10.2), :1050-1051 (0.31.0)",
        ),
        _form(
            "<0.31",
            r"Loading safetensors using Fastsafetensor loader:\s*(?P<percent>\d+)% Completed \| "
            r"(?P<done>\d+)/(?P<total>\d+)",
            "--load-format fastsafetensors: desc at vllm/model_executor/model_loader/weight_utils.py:520 "
            "(0.10.1.1), :617 (0.10.2), :728 (0.11.1), :864 (0.17.1), :1112 (0.20.1)",
        ),
        _form(
            ">=0.31",
            r"Loading fastsafetensors checkpoint shards:\s*(?P<percent>\d+)% Completed \| "
            r"(?P<done>\d+)/(?P<total>\d+)",
            "--load-format fastsafetensors in 0.31.0: vllm/model_executor/model_loader/weight_utils.py:1249 hands "
            "the files to fastsafetensors' ParallelLoader, whose bar this is (fastsafetensors/parallel_loader.py)",
        ),
    ),
    _line(
        EventKind.GRAPH_CAPTURE,
        _form(
            _ALL,
            r"Capturing CUDA graph[^:]*:\s*(?P<graphs_percent>\d+)%.*?\| ?"
            r"(?P<graphs_done>\d+)/(?P<graphs_total>\d+)",
            "desc `Capturing CUDA graphs ({}, {})` at vllm/v1/worker/gpu_model_runner.py:2723 (0.10.1.1), :3134 "
            "(0.10.2), :4264 (0.11.1), :5423 (0.17.1), :6195 (0.20.1), :6930 (0.31.0)",
        ),
    ),
    # the 0.31 form first: read with no version, the joined line keeps its concurrency
    _line(
        EventKind.KV_CACHE_TOKENS,
        _form(
            ">=0.31",
            rf"\w+ KV cache size: {_count('kv_cache_tokens')} tokens, Maximum concurrency for "
            rf"{_count('concurrency_tokens')} tokens per request: {_num('max_concurrency')}x",
            "vllm/v1/core/kv_cache_utils.py:2464-2470 (update_kv_cache_capacity: `%s KV cache size: %s tokens, "
            "Maximum concurrency for %s tokens per request: %.2fx`) in 0.31.0",
        ),
        _form(
            "<0.31",
            rf"GPU KV cache size: {_count('kv_cache_tokens')} tokens",
            "vllm/v1/core/kv_cache_utils.py:849 (0.10.1.1), :864 (0.10.2), :1229 (0.11.1), :1314 (0.17.1), "
            ":1708 (0.20.1)",
        ),
    ),
    _line(
        EventKind.MAX_CONCURRENCY,
        _form(
            "<0.31",
            rf"Maximum concurrency for {_count('concurrency_tokens')} tokens per request: "
            rf"{_num('max_concurrency')}x",
            "vllm/v1/core/kv_cache_utils.py:853 (0.10.1.1), :868 (0.10.2), :1235 (0.11.1), :1320 (0.17.1), "
            ":1710 (0.20.1)",
        ),
    ),
    _line(
        EventKind.ENGINE_STATS,
        _form(
            _ALL,
            r"Engine (?P<engine>\d+): Avg prompt throughput: ",
            "vllm/v1/metrics/loggers.py:123 (0.10.1.1) and :123 (0.10.2), one format string; from 0.11.1 "
            "the prefix `Engine {:03d}: ` (loggers.py:138 in 0.11.1, :154 in 0.17.1, :158 in 0.20.1, :169 in "
            "0.31.0) and the parts joined by `, ` (loggers.py:197 in 0.11.1, :220 in 0.17.1, :224 in 0.20.1, "
            ":275 in 0.31.0)",
        ),
    ),
    _line(
        EventKind.ARGS,
        _form(
            _ALL,
            r"non-default args: (?P<non_default_args>\{.*\})\s*$",
            "vllm/entrypoints/utils.py:326 (0.10.1.1), :328 (0.10.2), :253 (0.11.1), :238 (0.17.1), :233 (0.20.1); "
            "vllm/entrypoints/serve/utils/api_utils.py:286 (0.31.0, redacted)",
        ),
    ),
    _line(
        EventKind.ENGINE_INIT,
        _form(
            _ALL,
            r"Initializing a V1 LLM engine \(v?(?P<version>[^)]+)\) with config: (?P<config>.*)$",
            "vllm/v1/engine/core.py:74 (0.10.1.1), :76 (0.10.2), :94 (0.11.1), :102 (0.17.1), :110 (0.20.1), "
            ":130 (0.31.0)",
        ),
    ),
    _line(
        EventKind.PLATFORM,
        _form(
            _ALL,
            r"Automatically detected platform (?P<platform>\w+)",
            "vllm/platforms/__init__.py:241 (0.10.1.1), :216 (0.10.2), :226 (0.11.1), :221 (0.17.1), "
            ":247 (0.20.1), :288 (0.31.0)",
        ),
    ),
    _line(
        EventKind.VERSION,
        _form(
            "<0.17.1",
            r"vLLM API server version (?P<version>\S+)",
            "vllm/entrypoints/openai/api_server.py:1805 (0.10.1.1), :1896 (0.10.2), :1977 (0.11.1)",
        ),
        # log_version_and_model: without vLLM's formatter (or VLLM_DISABLE_LOG_LOGO) one line ...
        _form(
            ">=0.17.1",
            r"vLLM server version (?P<version>\S+), serving model (?P<model>\S+)",
            "vllm/entrypoints/utils.py:282 (0.17.1), :279 (0.20.1); "
            "vllm/entrypoints/serve/utils/api_utils.py:327 (0.31.0)",
        ),
        # ... else an ASCII logo, one logged line per row, `version %s` beside its second row: monochrome
        # under docker without a tty (the `newline` formatter), with ANSI colours (stripped) under a tty
        _form(
            ">=0.17.1",
            r"^[\s█▀▄]+version (?P<version>\S+)$",
            "logo_template at vllm/entrypoints/utils.py:284-289, logged at :302 (0.17.1); :281-286 and :299 "
            "(0.20.1); vllm/entrypoints/serve/utils/api_utils.py:329-334 and :347 (0.31.0); each row carries the "
            "header (NewLineFormatter, vllm/logging_utils/formatter.py)",
        ),
    ),
    _line(
        EventKind.ARCHITECTURE,
        _form(
            _ALL,
            r"Resolved architecture: (?P<architecture>\S+)",
            "vllm/config/__init__.py:711 (0.10.1.1), :742 (0.10.2); vllm/config/model.py:631 (0.11.1), "
            ":531 (0.17.1), :555 (0.20.1), :699 (0.31.0)",
        ),
    ),
    _line(
        EventKind.MAX_MODEL_LEN,
        _form(
            _ALL,
            r"Using max model len (?P<max_model_len>\d+)",
            "vllm/config/__init__.py:1750 (0.10.1.1), :1815 (0.10.2); vllm/config/model.py:1745 (0.11.1), :1554 "
            "(0.17.1), :1680 (0.20.1), :2109 (0.31.0)",
        ),
    ),
    _line(
        EventKind.CHUNKED_PREFILL,
        _form(
            _ALL,
            r"Chunked prefill is enabled with max_num_batched_tokens=(?P<max_num_batched_tokens>\d+)",
            "vllm/config/scheduler.py:223 (0.10.1.1, 0.10.2), :217 (0.11.1), :232 (0.17.1), :240 (0.20.1), "
            ":309 (0.31.0)",
        ),
    ),
    _line(
        EventKind.LOAD_START,
        _form(
            _ALL,
            r"Starting to load model (?P<model>\S+?)(?:\.\.\.)?$",
            "vllm/v1/worker/gpu_model_runner.py:1953 (0.10.1.1), :2338 (0.10.2), :3256 (0.11.1), :4282 (0.17.1), "
            ":4778 (0.20.1), :5256 (0.31.0)",
        ),
    ),
    _line(
        EventKind.WEIGHTS_FORMAT,
        _form(
            _ALL,
            r"Using model weights format (?P<weights_format>\[.*\])",
            "vllm/model_executor/model_loader/weight_utils.py:296 (0.10.1.1), :348 (0.10.2); logger.debug "
            "from 0.11.1 (shown only with VLLM_LOGGING_LEVEL=DEBUG): :420 (0.11.1), :537 (0.17.1), :591 (0.20.1), "
            ":499 (0.31.0)",
        ),
    ),
    _line(
        EventKind.WEIGHTS_LOADED,
        _form(
            _ALL,
            rf"Loading weights took {_num('weights_load_seconds')} seconds",
            "vllm/model_executor/model_loader/default_loader.py:263 (0.10.1.1), :269 (0.10.2), :315 (0.11.1), "
            ":294 (0.17.1), :385 (0.20.1), :485 (0.31.0)",
        ),
    ),
    _line(
        EventKind.MODEL_LOADED,
        _form(
            "<0.11.1",
            rf"Model loading took {_num('model_gib')} GiB and {_num('model_load_seconds')} seconds",
            "vllm/v1/worker/gpu_model_runner.py:2007 (0.10.1.1), :2392 (0.10.2)",
        ),
        _form(
            ">=0.11.1",
            rf"Model loading took {_num('model_gib')} GiB(?: memory)? and {_num('model_load_seconds')} seconds",
            "`GiB memory and`: vllm/v1/worker/gpu_model_runner.py:3335 (0.11.1), :4365 (0.17.1), :4880 (0.20.1), "
            ":5355 (0.31.0); the model runner v2 says `GiB and` (vllm/v1/worker/gpu/model_runner.py:258 in 0.17.1, "
            ":291 in 0.20.1) and `GiB memory and` (:408 in 0.31.0)",
        ),
    ),
    _line(
        EventKind.COMPILE_DONE,
        _form(
            "<0.20.1",
            rf"torch\.compile takes {_num('compile_seconds')} s in total",
            "vllm/compilation/monitor.py:34 (0.10.1.1, 0.10.2), :35 (0.11.1), :36 (0.17.1)",
        ),
        _form(
            ">=0.20.1",
            rf"torch\.compile (?:and initial profiling/warmup run together )?took {_num('compile_seconds')} "
            r"s in total",
            "vllm/compilation/monitor.py:20 (the default message, logged at :53) in 0.20.1 and 0.31.0; without AOT "
            "compile `torch.compile and initial profiling/warmup run together took`: "
            "vllm/compilation/decorators.py:634-635 (0.20.1), :683-684 (0.31.0)",
        ),
    ),
    _line(
        EventKind.COMPILE_PROGRESS,
        _form(
            _ALL,
            rf"Dynamo bytecode transform time: {_num('dynamo_seconds')} s",
            "vllm/compilation/backends.py:559 (0.10.1.1), :550 (0.10.2), :648 (0.11.1), :977 (0.17.1), "
            ":1129 (0.20.1), :1152 (0.31.0)",
        ),
        _form(
            "<0.17.1",
            rf"Compiling a graph for dynamic shape takes {_num('graph_compile_seconds')} s",
            "vllm/compilation/backends.py:215 (0.10.1.1, 0.10.2), :283 (0.11.1)",
        ),
        _form(
            ">=0.17.1",
            rf"Compiling a graph for compile range \(\d+, \d+\) takes {_num('graph_compile_seconds')} s",
            "vllm/compilation/backends.py:367 (0.17.1), :392 (0.20.1, 0.31.0); the range prints `(start, end)` "
            "(vllm/config/utils.py Range.__str__)",
        ),
        _form(
            _ALL,
            r"for vLLM's torch\.compile",
            "`Using cache directory: %s for vLLM's torch.compile`: vllm/compilation/backends.py:548 (0.10.1.1), "
            ":539 (0.10.2), :632 (0.11.1), :917 (0.17.1), :1070 (0.20.1), :1091 (0.31.0)",
        ),
    ),
    # the compile cache of an earlier start with the same config: torch.compile is skipped
    _line(
        EventKind.COMPILE_CACHE_HIT,
        _form(
            _ALL,
            r"Directly load the compiled graph",
            "vllm/compilation/backends.py:162 and :166 (0.10.1.1, 0.10.2), :211 and :217 (0.11.1), `for compile "
            "range %s` :267 (0.17.1), :291 (0.20.1, 0.31.0)",
        ),
        _form(
            ">=0.31",
            r"Directly load AOT compilation from path",
            "vllm/compilation/decorators.py:313 (0.31.0)",
        ),
    ),
    _line(
        EventKind.KV_CACHE_MEMORY,
        _form(
            _ALL,
            rf"Available KV cache memory: {_num('kv_cache_gib')} GiB",
            "`%.2f GiB`: vllm/v1/worker/gpu_worker.py:276 (0.10.1.1), :298 (0.10.2), :360 (0.11.1); `%s GiB` "
            "(format_gib): :425 (0.17.1), :441 (0.20.1), :693 (0.31.0)",
        ),
    ),
    _line(
        EventKind.GRAPH_CAPTURED,
        _form(
            _ALL,
            rf"Graph capturing finished in {_num('graph_capture_seconds')} secs?, took {_num('graph_gib')} GiB",
            "vllm/v1/worker/gpu_model_runner.py:2708 (0.10.1.1), :3118 (0.10.2), :4241 (0.11.1), :5387 (0.17.1), "
            ":6134 (0.20.1), :6855 (0.31.0)",
        ),
    ),
    _line(
        EventKind.ENGINE_READY,
        _form(
            "<0.20.1",
            rf"init engine \(profile, create kv cache, warmup model\) took {_num('init_engine_seconds')} seconds",
            "vllm/v1/engine/core.py:214 (0.10.1.1), :218 (0.10.2), :251 (0.11.1), :283 (0.17.1)",
        ),
        _form(
            ">=0.20.1",
            rf"init engine \(profile, create kv cache, warmup model\) took {_num('init_engine_seconds')} s\b"
            rf"(?: \(compilation: {_num('compilation_seconds')} s)?",
            "vllm/v1/engine/core.py:290 (with the encoder's share), :300 (`(compilation: %.2f s)`), :307 (none "
            "compiled) in 0.20.1; :364, :374, :381 in 0.31.0",
        ),
    ),
    _line(
        EventKind.API_SERVER_START,
        _form(
            "<0.20.1",
            r"Starting vLLM API server \d+ on (?P<url>\S+)",
            "vllm/entrypoints/openai/api_server.py:1880 (0.10.1.1), :1971 (0.10.2), :2053 (0.11.1), :501 (0.17.1)",
        ),
        _form(
            ">=0.20.1",
            r"Starting vLLM server on (?P<url>\S+)",
            "vllm/entrypoints/openai/api_server.py:602 and :647 (0.20.1); "
            "vllm/entrypoints/launchers/api_server/entry.py:136 (0.31.0)",
        ),
    ),
    # uvicorn's, not vLLM's: uvicorn/server.py (`Started server process [%d]`), then uvicorn/lifespan/on.py
    LinePattern(EventKind.SERVER_PROCESS, (_form(_ALL, r"Started server process \[(?P<server_pid>\d+)\]", "uvicorn"),)),
    LinePattern(EventKind.WAITING_STARTUP, (_form(_ALL, r"Waiting for application startup\.", "uvicorn"),)),
    LinePattern(EventKind.APP_STARTUP_COMPLETE, (_form(_ALL, r"Application startup complete\.", "uvicorn"),)),
)

# The stats line's parts, found anywhere in it (0.11.1+ adds `Preemptions: %d` and, 0.31, `Deferred: %d
# reqs`; 0.31 names the device, `%s KV cache usage`, and drops the hit rate while nothing was cached).
_STATS_FIELDS = {
    "prompt_throughput": re.compile(r"Avg prompt throughput: (-?\d+(?:\.\d+)?) tokens/s"),
    "generation_throughput": re.compile(r"Avg generation throughput: (-?\d+(?:\.\d+)?) tokens/s"),
    "running": re.compile(r"Running: (\d+) reqs"),
    "waiting": re.compile(r"Waiting: (\d+) reqs"),
    "kv_cache_usage_pct": re.compile(r"(?:\w+ )?KV cache usage: (\d+(?:\.\d+)?)%"),
    "prefix_cache_hit_rate_pct": re.compile(r"Prefix cache hit rate: (\d+(?:\.\d+)?)%"),
}
_CONFIG_FIELD = re.compile(r"(\w+)=('(?:[^']*)'|[^,]+)")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b(?::|$)")
_SECRET_ARG_KEYS = {"api_key", "hf_token"}
_TEXT_VALUES = {"platform", "version", "architecture", "model", "weights_format", "url"}


def _number(text: str) -> int | float:
    text = text.replace(",", "")
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


def _values(kind: EventKind, match: re.Match[str], message: str) -> dict[str, Any]:
    """The event's values from a form's named groups; the three lines with structure get their own reading."""
    groups = {name: raw for name, raw in match.groupdict().items() if raw is not None}
    if kind is EventKind.ARGS:
        return {"non_default_args": _literal_dict(groups["non_default_args"]) or {}}
    if kind is EventKind.ENGINE_INIT:
        config = {k: v.strip("'") for k, v in _CONFIG_FIELD.findall(groups["config"])}
        return {"version": groups["version"], "model": config.get("model"), "download_dir": config.get("download_dir")}
    values: dict[str, Any] = {k: v if k in _TEXT_VALUES else _number(v) for k, v in groups.items()}
    if kind is EventKind.ENGINE_STATS:
        for name, pattern in _STATS_FIELDS.items():
            if found := pattern.search(message):
                values[name] = _number(found[1])
    return values


def parse_line(line: str, version: Version | None = None) -> LogEvent | None:
    """Recognise one vLLM startup/serving milestone (or the cosmetic GB10 warning, or an error
    line); None for everything else.

    Args:
        line: one log line, with or without docker's and vLLM's prefixes.
        version: the vLLM that printed it: only its forms of `GRAMMAR` are tried (None: every form,
            for a log read before the version is known).
    """
    text = scrub(strip_prefix(line))
    if not text:
        return None
    level, source, message = split_header(text)

    if any(p.search(text) for p in _COSMETIC):
        return LogEvent(EventKind.COSMETIC_WARNING, message, text, level, source)
    for entry in GRAMMAR:
        for pattern in variants_for(entry.forms, version):
            if match := pattern.search(message):
                return LogEvent(entry.kind, message, text, level, source, _values(entry.kind, match, message))
    if (
        level in ("ERROR", "CRITICAL")
        or message.startswith("Traceback (most recent call last)")
        or _EXCEPTION_LINE.match(message)
    ):
        return LogEvent(EventKind.ERROR, message, text, level, source)
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
    #: the engine's own total of compilation (`init engine ... (compilation: %.2f s)`, 0.20.1+).
    compilation_seconds: float | None = None
    kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    concurrency_tokens: int | None = None
    graph_capture_seconds: float | None = None
    graph_gib: float | None = None
    init_engine_seconds: float | None = None
    #: the start read an earlier start's torch.compile cache (a mounted cache directory survives the container).
    compile_cache_hit: bool = False
    ready: bool = False

    def update(self, event: LogEvent) -> None:
        """Take the numbers of one event (its value names are this class's field names)."""
        values = event.values
        if event.kind is EventKind.SHARD_PROGRESS:
            self.shards_done, self.shards_total = values["done"], values["total"]
        elif event.kind is EventKind.APP_STARTUP_COMPLETE:
            self.ready = True
        elif event.kind is EventKind.COMPILE_CACHE_HIT:
            self.compile_cache_hit = True
        elif event.kind is EventKind.ENGINE_INIT:
            self.version = self.version or values.get("version")
        elif event.kind in _STATS_KINDS:
            for name, value in values.items():
                if name in _STATS_FIELD_NAMES:
                    setattr(self, name, value)


_STATS_FIELD_NAMES = {f for f in StartupStats.__dataclass_fields__ if f not in ("ready", "compile_cache_hit")}
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


def summarize_startup(lines: Iterable[str], version: Version | None = None) -> StartupStats:
    """The startup numbers of a whole log (read with ``version``'s forms; every form when None)."""
    tracker = StartupTracker(version=version)
    tracker.feed_all(lines)
    return tracker.stats
