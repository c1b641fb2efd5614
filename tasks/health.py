"""Readiness gate: poll /health while following the container's log and state at the same time.

Why not docker's HEALTHCHECK or a plain poll loop: a 30 s healthcheck interval (or the playbook's
10 s) adds that much to every deploy, and a loop that only polls waits out its whole timeout when
the server has already died. Here three signals are merged: log lines (milestones, progress and the
failure text), the container's state (exit or restart ends the wait at once), and /health at a
short interval, polled at once when the log says the API server is up.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from docker.models.containers import Container
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.container import container_exited, exit_summary
from tasks.logs import EventKind, FailureCause, LineSplitter, StartupStats, StartupTracker, classify_failure, scrub

_EOF = object()


class ReadinessTimeouts(BaseModel):
    """Per-phase limits, generous against the runbook's timings (3.4 min of shard loading, ~17 s
    torch.compile, ~6 s KV and graphs, 3-4 min to ready from a warm cache)."""

    starting_s: float = Field(900, description="container start to the first load line (includes a download when not staged)")
    loading_s: float = Field(1200, description="shard loading")
    compiling_s: float = Field(600, description="torch.compile, KV cache, CUDA graphs")
    kv_cache_s: float = Field(600, description="KV cache sizing and CUDA graph capture")
    serving_s: float = Field(300, description="API server start to /health 200 and /v1/models")
    poll_interval_s: float = Field(0.2, gt=0, le=5, description="/health poll interval")

    def limit_for(self, phase: str) -> float:
        """The limit of a phase; 'ready' (log says up, /health not yet 200) counts as serving."""
        return getattr(self, f"{phase}_s", self.serving_s)


class ReadinessFailed(RuntimeError):
    """The server will not become ready; ``cause`` says why and what to do."""

    def __init__(self, cause: FailureCause, status: str) -> None:
        self.cause = cause
        self.status = status
        self.detected_at = time.time()  # wall clock, to compare with docker's own event times
        evidence = "\n".join(f"    {line}" for line in cause.evidence[-12:])
        super().__init__(f"vLLM did not become ready ({status}): {cause.summary}\nFix: {cause.fix}\nLog:\n{evidence}")


@dataclass
class Readiness:
    """What the gate learned on the way: the flow's report reads it."""

    started_at: float
    ready_at: float = 0.0
    ready_wall: float = 0.0  # time.time() at ready, to compare with the server's own log timestamps
    phase_seconds: dict[str, float] = field(default_factory=dict)
    stats: StartupStats = field(default_factory=StartupStats)

    @property
    def time_to_ready_s(self) -> float:
        return self.ready_at - self.started_at


def endpoint_ready(base_url: str, served_name: str, api_key: str | None = None, timeout: float = 2.0) -> bool:
    """Ready = /health answers 200 and /v1/models lists the served model."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base_url, timeout=timeout, headers=headers) as client:
        return _healthy(client, served_name)


def _follow_logs(container: Container, sink: queue.Queue) -> None:
    """Push the container's log lines into ``sink`` as they come; _EOF when the stream ends."""
    splitter = LineSplitter()
    try:
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            for line in splitter.feed(chunk.decode("utf-8", "replace")):
                sink.put(line)
    except Exception:  # the stream dies with the container; the state check says why
        pass
    for line in splitter.flush():
        sink.put(line)
    sink.put(_EOF)


class _LoadProgress:
    """A Prefect progress artifact fed by 'Loading safetensors checkpoint shards: x/y'."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.artifact_id = None
        self.last = -1.0

    def update(self, done: int, total: int) -> None:
        percent = round(100.0 * done / max(total, 1), 1)
        if percent == self.last:
            return
        self.last = percent
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(
                progress=percent, key=self.key, description=f"Loading safetensors checkpoint shards ({total})"
            )
        else:
            update_progress_artifact(self.artifact_id, progress=percent)


@task(name="wait-until-ready", cache_policy=NO_CACHE)
def wait_until_ready(
    container: Container,
    base_url: str,
    served_name: str,
    api_key: str | None,
    timeouts: ReadinessTimeouts,
    secrets: list[str],
    progress_key: str,
) -> Readiness:
    """Block until the server is ready; fail fast with the classified cause when it cannot be."""
    logger = get_run_logger()
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_follow_logs, args=(container, lines), daemon=True, name="vllm-logs").start()
    restarts_before = container.attrs.get("RestartCount", 0)
    readiness = Readiness(started_at=time.monotonic())
    tracker = StartupTracker()
    progress = _LoadProgress(progress_key)
    phase_started = readiness.started_at
    next_state_check = 0.0
    stream_ended = False
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def take(line: str) -> None:
        nonlocal phase_started
        line = scrub(line, secrets)
        logger.info("%s", line)
        before = tracker.phase
        event = tracker.feed(line)
        if event is not None and event.kind is EventKind.SHARD_PROGRESS:
            progress.update(event.values["done"], event.values["total"])
        if tracker.phase != before:
            now = time.monotonic()
            readiness.phase_seconds[before.value] = round(now - phase_started, 3)
            phase_started = now

    def fail(status: str) -> ReadinessFailed:
        return ReadinessFailed(classify_failure(list(tracker.recent), secrets=secrets), status)

    with httpx.Client(base_url=base_url, timeout=max(timeouts.poll_interval_s, 1.0), headers=headers) as http:
        while True:
            # a new line wakes the loop at once, so /health is asked right after the server says it is up
            for line in _drain(lines, timeouts.poll_interval_s):
                if line is _EOF:
                    stream_ended = True
                else:
                    take(line)
            now = time.monotonic()
            if stream_ended or now >= next_state_check:
                next_state_check = now + 1.0
                if container_exited(container, restarts_before) or (
                    stream_ended and _exits_soon(container, restarts_before)
                ):
                    # the follower may still hold the traceback's tail: take it until the stream's end
                    while not stream_ended:
                        line = next(iter(_drain(lines, 0.5)), _EOF)
                        if line is _EOF:
                            stream_ended = True
                        else:
                            take(line)
                    raise fail(exit_summary(container))
                if stream_ended:
                    raise fail("log stream ended while the container still runs")
            if _healthy(http, served_name):
                readiness.ready_at, readiness.ready_wall = time.monotonic(), time.time()
                readiness.phase_seconds[tracker.phase.value] = round(readiness.ready_at - phase_started, 3)
                readiness.stats = tracker.stats
                logger.info("vLLM is ready: /health 200 and /v1/models lists %s", served_name)
                return readiness
            limit = timeouts.limit_for(tracker.phase.value)
            if now - phase_started > limit:
                raise fail(f"timed out after {limit:.0f} s in phase {tracker.phase.value!r}")


def _exits_soon(container: Container, restarts_before: int, grace_s: float = 2.0) -> bool:
    """The log stream ended: docker may not have recorded the exit yet; give it a moment."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if container_exited(container, restarts_before):
            return True
    return False


def _drain(lines: queue.Queue, wait_s: float) -> Iterable[object]:
    """Yield every queued line, waiting up to ``wait_s`` for the first one."""
    try:
        yield lines.get(timeout=wait_s)
    except queue.Empty:
        return
    while True:
        try:
            yield lines.get_nowait()
        except queue.Empty:
            return


def _healthy(http: httpx.Client, served_name: str) -> bool:
    try:
        if http.get("/health").status_code != 200:
            return False
        models = http.get("/v1/models")
        return models.status_code == 200 and any(m.get("id") == served_name for m in models.json().get("data", []))
    except (httpx.HTTPError, ValueError):
        return False
