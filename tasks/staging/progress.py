"""Progress: a Prefect progress artifact (bytes done / total), a log line per file, a tqdm bar on a tty.

Worker threads only add to a counter (``add``); the task's own thread calls ``tick`` about twice a
second and pushes at most one artifact update per ``min_interval`` (1 s), so a 32 GB download makes
a few hundred API calls, not millions. The artifact is ``tasks.report.ProgressArtifact`` (the one
every flow uses): outside a Prefect run (tests calling ``task.fn``) it does nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from tasks.report import ProgressArtifact, in_prefect_run

from .models import FileOutcome
from .plan import binary_size


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
        return f"{o.path}: reused {binary_size(o.size)} already in the cache"
    if o.result == "waited":
        return f"{o.path}: written by another staging run meanwhile; verified and reused {binary_size(o.size)}"
    if o.result == "resumed":
        return (
            f"{o.path}: resumed at {binary_size(o.bytes_resumed)}, downloaded {binary_size(o.bytes_downloaded)}"
            f" in {o.duration_s:.1f}s{rate}, sha256 ok{tail}"
        )
    return f"{o.path}: downloaded {binary_size(o.bytes_downloaded)} in {o.duration_s:.1f}s{rate}, sha256 ok{tail}"


class Progress:
    """Bytes done of a staging run, shown as a progress artifact, a tqdm bar and per-file log lines.

    Args:
        total_bytes: the repo's bytes (the bar's 100 %).
        done_bytes: bytes already in the cache when the transfer starts (reused + kept partials).
        key: the progress artifact's key (``artifact_key("staging-progress", repo_id)``).
        description: what is staged (``repo@commit``); the artifact shows it with the byte counts.
        logger: where per-file lines go (the task's run logger).
        min_interval: seconds between two artifact updates (the bar updates on every tick).
        artifact: show the artifact; None = when inside a Prefect run.
        bar: show the tqdm bar; None = when stderr is a terminal.
    """

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
        enabled = in_prefect_run() if artifact is None else artifact
        self._artifact = ProgressArtifact(key, ndigits=2) if enabled else None
        self._last_push = 0.0
        self._bar_enabled = sys.stderr.isatty() if bar is None else bar
        self._bar = None
        self._bar_pos = done_bytes
        self.artifact_updates = 0

    # -- worker threads -------------------------------------------------------------------------
    def add(self, n: int) -> None:
        """Count ``n`` more bytes done (negative when a restart drops a prefix); any thread."""
        with self._lock:
            self.done += n

    # -- the task's thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Show the starting point at once (a resumed run starts above 0 %), and open the bar."""
        self._push()
        if self._bar_enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="staging",
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def percent(self) -> float:
        with self._lock:
            done = self.done
        if self.total <= 0:
            return 100.0
        return round(min(100.0, 100.0 * done / self.total), 2)

    def _text(self) -> str:
        with self._lock:
            done = self.done
        return f"{self.description}: {binary_size(done)} of {binary_size(self.total)}"

    def _push(self) -> None:
        if self._artifact is not None and self._artifact.update(self.percent(), self._text()):
            self.artifact_updates += 1
        self._last_push = time.monotonic()

    def tick(self, force: bool = False) -> None:
        """Move the bar; update the artifact when ``min_interval`` has passed (or ``force``)."""
        if self._bar is not None:
            with self._lock:
                done = self.done
            delta = done - self._bar_pos
            if delta:
                self._bar.update(delta)
                self._bar_pos = done
        if self._artifact is None:
            return
        if force or time.monotonic() - self._last_push >= self.min_interval:
            self._push()  # an unchanged value is skipped by ProgressArtifact itself

    def file_done(self, outcome: FileOutcome) -> None:
        self.logger.info(describe_outcome(outcome))

    def close(self) -> None:
        """Final artifact value and description (100 % on success), and close the bar."""
        self.tick(force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
