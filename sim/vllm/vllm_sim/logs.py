"""vLLM's log format, the process prefixes and tqdm's bar texts.

Why: operators and the project's log classifier read `docker logs`; every line
must look like the real server's.  Format (vllm/logger.py):
`%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s`, date
`%m-%d %H:%M:%S`, each line prefixed `(APIServer pid=N) ` or
`(<engine process> pid=N) ` (`EngineCore_0` in 0.10.1.1, `EngineCore_DP0` from 0.10.2,
`EngineCore` in 0.31: versions.py).  Up to 0.2x the prefix comes from wrapping stdout and
stderr (decorate_logs), so tracebacks and uvicorn's lines carry it too; in 0.31 it is part
of the log format only (vllm/logger.py:27-31), so they do not.  Everything goes to stdout
with a flush per line so `docker logs -f` streams it live.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from typing import IO

API = "api"
ENGINE = "engine"
NONE = "none"


def format_interval(seconds: float) -> str:
    """tqdm.format_interval: MM:SS, or H:MM:SS past an hour."""
    mins, secs = divmod(int(seconds), 60)
    hours, mins = divmod(mins, 60)
    return f"{hours:d}:{mins:02d}:{secs:02d}" if hours else f"{mins:02d}:{secs:02d}"


def _rate_fmt(n: int, elapsed: float, unit: str = "it") -> str:
    """tqdm's rate: `29.14s/it` below one per second, ` 4.65it/s` above."""
    if n <= 0 or elapsed <= 0:
        return f"?{unit}/s"
    rate = n / elapsed
    inv = 1.0 / rate
    return f"{inv:5.2f}s/{unit}" if inv > 1 else f"{rate:5.2f}{unit}/s"


def _remaining(n: int, total: int, elapsed: float) -> str:
    if n <= 0 or elapsed <= 0:
        return "?"
    return format_interval((total - n) * elapsed / n)


def shard_bar(n: int, total: int, elapsed: float, desc: str = "Loading safetensors checkpoint shards") -> str:
    """vLLM's weight_utils bar: `{desc}: {percentage:3.0f}% Completed | n/total [elapsed<remaining, rate]`
    (the desc is the loader's, versions.py)."""
    pct = 100.0 * n / total if total else 100.0
    return (
        f"{desc}: {pct:3.0f}% Completed | {n}/{total} "
        f"[{format_interval(elapsed)}<{_remaining(n, total, elapsed)}, {_rate_fmt(n, elapsed)}]"
    )


def tqdm_bar(desc: str, n: int, total: int, elapsed: float, width: int = 10) -> str:
    """tqdm's default bar as printed without a terminal (10 cells wide)."""
    frac = n / total if total else 1.0
    full = int(frac * width)
    bar = "█" * full + (" " * (width - full))
    return (
        f"{desc}: {100 * frac:3.0f}%|{bar}| {n}/{total} "
        f"[{format_interval(elapsed)}<{_remaining(n, total, elapsed)}, {_rate_fmt(n, elapsed)}]"
    )


class VllmLog:
    """Thread-safe writer of vLLM-looking lines for the API server and EngineCore."""

    def __init__(
        self,
        api_pid: int,
        engine_pid: int,
        stream: IO[str] | None = None,
        engine_proc: str = "EngineCore_0",
        raw_prefixed: bool = True,
    ) -> None:
        self.api_pid = api_pid
        self.engine_pid = engine_pid
        self.engine_proc = engine_proc
        self.raw_prefixed = raw_prefixed
        self._stream = stream
        self._lock = threading.Lock()

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def prefix(self, proc: str) -> str:
        if proc == API:
            return f"(APIServer pid={self.api_pid}) "
        if proc == ENGINE:
            return f"({self.engine_proc} pid={self.engine_pid}) "
        return ""

    @staticmethod
    def header(level: str, where: str) -> str:
        return f"{level} {time.strftime('%m-%d %H:%M:%S')} [{where}] "

    def write_lines(self, lines: Iterable[str]) -> None:
        text = "".join(line + "\n" for line in lines)
        with self._lock:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed (e.g. a detached pipe): logging must never kill the server

    def log(self, proc: str, level: str, where: str, message: str) -> None:
        """One logger record; multi-line messages repeat the prefix+header like vLLM's formatter."""
        pre = self.prefix(proc) + self.header(level, where)
        self.write_lines(pre + part for part in message.split("\n"))

    def info(self, proc: str, where: str, message: str) -> None:
        self.log(proc, "INFO", where, message)

    def warning(self, proc: str, where: str, message: str) -> None:
        self.log(proc, "WARNING", where, message)

    def error(self, proc: str, where: str, message: str) -> None:
        self.log(proc, "ERROR", where, message)

    def raw(self, proc: str, text: str) -> None:
        """Lines not produced by the logger (tracebacks, warnings, uvicorn): prefixed while vLLM wraps
        the streams (up to 0.2x), bare in 0.31."""
        pre = self.prefix(proc) if self.raw_prefixed else ""
        self.write_lines(pre + part for part in text.split("\n"))

    def uvicorn(self, message: str) -> None:
        """uvicorn's `INFO:     ...` lines, which run inside the API server process."""
        self.raw(API, f"INFO:     {message}")

    def bar(self, text: str) -> None:
        """tqdm bars print without the process prefix (tqdm's \\r overwrites it on a terminal)."""
        self.write_lines([text])
