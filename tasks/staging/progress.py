"""Progress: a Prefect progress artifact (bytes done / total), a log line per file, a tqdm bar on a tty.

Worker threads only add to a counter (``add``); the task's own thread calls ``tick`` about twice a
second and pushes at most one artifact update per ``min_interval`` (1 s), so a 32 GB download makes
a few hundred API calls, not millions. Outside a Prefect run (tests calling ``task.fn``) the artifact
is skipped.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import Any

from .models import FileOutcome
from .plan import human_bytes


def artifact_key(prefix: str, repo_id: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", repo_id.lower()).strip("-")
    return f"{prefix}-{slug}"[:100]


def in_prefect_run() -> bool:
    try:
        from prefect.context import get_run_context

        get_run_context()
        return True
    except Exception:  # MissingContextError outside a flow/task run
        return False


def describe_outcome(o: FileOutcome) -> str:
    rate = ""
    if o.bytes_downloaded >= 1024 * 1024 and o.duration_s > 0:
        rate = f" at {o.bytes_downloaded / o.duration_s / 1e6:.1f} MB/s"
    extra = []
    if o.adopted:
        extra.append("huggingface_hub partial adopted")
    if o.retries:
        extra.append(f"{o.retries} retr{'y' if o.retries == 1 else 'ies'}")
    if o.restarts:
        extra.append(f"{o.restarts} restart(s)")
    tail = f" ({', '.join(extra)})" if extra else ""
    if o.result == "reused":
        return f"{o.path}: reused {human_bytes(o.size)} already in the cache"
    if o.result == "waited":
        return f"{o.path}: written by another staging run meanwhile; verified and reused {human_bytes(o.size)}"
    if o.result == "resumed":
        return (
            f"{o.path}: resumed at {human_bytes(o.bytes_resumed)}, downloaded {human_bytes(o.bytes_downloaded)}"
            f" in {o.duration_s:.1f}s{rate}, sha256 ok{tail}"
        )
    return f"{o.path}: downloaded {human_bytes(o.bytes_downloaded)} in {o.duration_s:.1f}s{rate}, sha256 ok{tail}"


class Progress:
    def __init__(
        self,
        *,
        total_bytes: int,
        done_bytes: int,
        key: str,
        description: str,
        logger: Any | None = None,
        min_interval: float = 1.0,
        artifact: bool | None = None,
        bar: bool | None = None,
    ) -> None:
        self.total = max(total_bytes, 0)
        self.done = done_bytes
        self.key = key
        self.description = description
        self.logger = logger or logging.getLogger(__name__)
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._artifact_enabled = in_prefect_run() if artifact is None else artifact
        self._artifact_id = None
        self._last_push = 0.0
        self._last_pct = -1.0
        self._bar_enabled = sys.stderr.isatty() if bar is None else bar
        self._bar = None
        self._bar_pos = done_bytes
        self.artifact_updates = 0

    # -- worker threads -------------------------------------------------------------------------
    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    # -- the task's thread ------------------------------------------------------------------------
    def start(self) -> None:
        if self._artifact_enabled:
            try:
                from prefect.artifacts import create_progress_artifact

                self._artifact_id = create_progress_artifact(
                    progress=self.percent(), key=self.key, description=self._text()
                )
                self._last_push = time.monotonic()
                self._last_pct = self.percent()
            except Exception as exc:  # the API being slow must never stop the bytes
                self.logger.warning("progress artifact unavailable: %s", type(exc).__name__)
                self._artifact_id = None
        if self._bar_enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, unit="B", unit_scale=True, unit_divisor=1024,
                             desc="staging", file=sys.stderr, dynamic_ncols=True)

    def percent(self) -> float:
        with self._lock:
            done = self.done
        if self.total <= 0:
            return 100.0
        return round(min(100.0, 100.0 * done / self.total), 2)

    def _text(self) -> str:
        with self._lock:
            done = self.done
        return f"{self.description}: {human_bytes(done)} of {human_bytes(self.total)}"

    def tick(self, force: bool = False) -> None:
        if self._bar is not None:
            with self._lock:
                done = self.done
            delta = done - self._bar_pos
            if delta:
                self._bar.update(delta)
                self._bar_pos = done
        if self._artifact_id is None:
            return
        now = time.monotonic()
        pct = self.percent()
        if not force and (now - self._last_push < self.min_interval or pct == self._last_pct):
            return
        if pct == self._last_pct and not force:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._artifact_id, progress=pct, description=self._text())
            self.artifact_updates += 1
        except Exception as exc:
            self.logger.debug("progress artifact update failed: %s", type(exc).__name__)
        self._last_push = now
        self._last_pct = pct

    def file_done(self, outcome: FileOutcome) -> None:
        self.logger.info(describe_outcome(outcome))

    def close(self) -> None:
        self.tick(force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
