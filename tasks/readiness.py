"""Readiness gate: poll /health while following the container's log and state at the same time.

Why not docker's HEALTHCHECK or a plain poll loop: a 30 s healthcheck interval (or the playbook's
10 s) adds that much to every deploy, and a loop that only polls waits out its whole timeout when
the server has already died. Here three signals are merged: log lines (milestones, progress and the
failure text), the container's state (exit or restart ends the wait at once), and /health at a
short interval, polled at once when the log says the API server is up.

The gate takes values (the target's ``DockerHost`` and a container id) and owns what it opens: its
docker client, the log stream and the thread that follows it are closed before it returns, on
failure too, and the queue between the thread and the gate is bounded.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import docker
import httpx
from docker.errors import NotFound
from docker.models.containers import Container
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_docker.host import DockerHost
from pydantic import BaseModel, Field

from tasks.container import docker_client
from tasks.errors import ServerDidNotStart
from tasks.memory import MemoryReadError, exec_meminfo
from tasks.report import ProgressArtifact
from tasks.secrets import scrub
from tasks.vllm.failures import FailureCause, classify_failure, guard_line
from tasks.vllm.logs import EventKind, LineSplitter, Phase, StartupStats, StartupTracker

_EOF = object()
#: Once /health answers, how long the gate waits for the startup lines the log stream still holds.
LOG_CATCH_UP_S = 3.0
#: Lines the follower may queue ahead of the gate; past that it waits (the gate drains in 0.2 s turns).
LOG_QUEUE_LINES = 10_000


class ReadinessTimeouts(BaseModel):
    """Per-phase limits, generous against the runbook's timings (3.4 min of shard loading, ~17 s
    torch.compile, ~6 s KV and graphs, 3-4 min to ready from a warm cache)."""

    starting_s: float = Field(
        900, description="container start to the first load line (includes a download when not staged)"
    )
    loading_s: float = Field(1200, description="shard loading")
    compiling_s: float = Field(600, description="torch.compile, KV cache, CUDA graphs")
    kv_cache_s: float = Field(600, description="KV cache sizing and CUDA graph capture")
    serving_s: float = Field(300, description="API server start to /health 200 and /v1/models")
    poll_interval_s: float = Field(0.2, gt=0, le=5, description="/health poll interval")

    def limit_for(self, phase: str) -> float:
        """The limit of a phase; 'ready' (log says up, /health not yet 200) counts as serving."""
        return getattr(self, f"{phase}_s", self.serving_s)


class ReadinessFailed(ServerDidNotStart):
    """The server will not become ready; ``cause`` says why and what to do."""

    def __init__(self, cause: FailureCause, status: str, lines: list[str] | None = None) -> None:
        self.cause = cause
        self.status = status
        self.lines = list(lines or [])  # the startup log, secrets already scrubbed (recovery calibrates from it)
        self.detected_at = time.time()  # wall clock, to compare with docker's own event times
        evidence = "\n".join(f"    {line}" for line in cause.evidence[-12:])
        super().__init__(
            f"vLLM did not become ready ({status}): [{cause.kind.value}] {cause.summary}\nFix: {cause.fix}\nLog:\n{evidence}"
        )


class MemoryGuard(BaseModel):
    """Watch the docker host's MemAvailable while a start runs; stop the start below the floor.

    On GB10 the utilization is not a hard cap while vLLM profiles (vllm issue 46307): a start that
    pushes memory can hang the whole machine, which then needs a power cycle. The gate reads the
    target's meminfo command in the starting container once a second and kills it before that,
    and once more when the server is ready: a server holds its whole budget from then on, so a spec
    that leaves the host below the floor is stopped rather than declared ready.
    """

    command: list[str] = Field(description="the target's meminfo_command, run in the starting container")
    floor_gib: float = Field(gt=0, description="MemAvailable below this stops the start")
    interval_s: float = Field(1.0, gt=0, description="how often MemAvailable is read")


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


@dataclass(frozen=True)
class ExitState:
    """What docker last said about a container that stopped: the classifier's inputs."""

    summary: str  # "exited with code 1", "restarting after exit code 1 (restart 2)", ...
    exit_code: int | None
    oom_killed: bool


def exit_state(attrs: dict) -> ExitState:
    """Read docker's ``State`` (of ``docker inspect``) as the gate reports it.

    No reload here: right after an exit, an inspect of a container that docker is restarting waits
    for that restart, which would delay the failure by the container's start time.
    """
    state = attrs.get("State", {})
    code = state.get("ExitCode")
    oom = bool(state.get("OOMKilled"))
    if state.get("Restarting"):
        summary = f"restarting after exit code {code} (restart {attrs.get('RestartCount', 0)})"
    elif state.get("Running"):
        summary = f"running again after a restart (restart {attrs.get('RestartCount', 0)})"
    else:
        summary = f"exited with code {code}" + (" (OOMKilled)" if oom else "")
    return ExitState(summary, code, oom)


def _container_stopped(container: Container, restarts_before: int) -> bool:
    """True once the container stopped, or restarted, since the gate began."""
    try:
        container.reload()
    except NotFound:
        return True
    state = container.attrs.get("State", {})
    return (
        not state.get("Running", False)
        or state.get("Restarting", False)
        or container.attrs.get("RestartCount", 0) > restarts_before
    )


def endpoint_ready(base_url: str, served_name: str, api_key: str | None = None, timeout: float = 2.0) -> bool:
    """Ready = /health answers 200 and /v1/models lists the served model."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base_url, timeout=timeout, headers=headers) as client:
        return _healthy(client, served_name)


class LogFollower:
    """A thread that streams a container's log into a bounded queue until closed.

    It opens a docker client of its own (docker-py's client is not shared across threads here) and
    ``close()`` ends the stream, the thread and the client, whatever state they are in.
    """

    def __init__(self, docker_host: DockerHost, container_id: str, maxsize: int = LOG_QUEUE_LINES) -> None:
        self.lines: queue.Queue = queue.Queue(maxsize=maxsize)
        self._host, self._id = docker_host, container_id
        self._stop = threading.Event()
        self._client: docker.DockerClient | None = None
        self._stream = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"vllm-logs-{container_id[:12]}")

    def __enter__(self) -> LogFollower:
        self._client = self._host.get_client()
        self._stream = self._client.api.logs(self._id, stream=True, follow=True, stdout=True, stderr=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self.lines.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        splitter = LineSplitter()
        try:
            for chunk in self._stream:
                for line in splitter.feed(chunk.decode("utf-8", "replace")):
                    if not self._put(line):
                        return
        except Exception:  # the stream dies with the container (or with close()); the state check says why
            pass
        for line in splitter.flush():
            self._put(line)
        self._put(_EOF)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop following: close the stream (which ends the thread's read), join, close the client."""
        self._stop.set()
        if self._stream is not None:
            self._stream.close()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._client is not None:
            self._client.close()
            self._client = None


@task(name="wait-until-ready", cache_policy=NO_CACHE, task_run_name="wait-until-ready {base_url}")
def wait_until_ready(
    docker_host: DockerHost,
    container_id: str,
    base_url: str,
    served_name: str,
    api_key: str | None,
    timeouts: ReadinessTimeouts,
    secrets: list[str],
    progress_key: str,
    guard: MemoryGuard | None = None,
) -> Readiness:
    """Block until the server is ready; fail fast with the classified cause when it cannot be.

    Args:
        docker_host: the target's docker daemon.
        container_id: the container just started.
        base_url: where the flow reaches the server (the target's endpoint).
        served_name: the model name /v1/models must list.
        api_key: the server's API key, if it has one.
        timeouts: per-phase limits.
        secrets: values scrubbed from every forwarded log line and from the failure's evidence.
        progress_key: artifact key of the shard-loading progress.
        guard: the host-memory guard (None: no guard).
    """
    logger = get_run_logger()
    with docker_client(docker_host) as client, LogFollower(docker_host, container_id) as follower:
        container = client.containers.get(container_id)
        return _gate(
            logger,
            client,
            container,
            follower.lines,
            base_url,
            served_name,
            api_key,
            timeouts,
            secrets,
            progress_key,
            guard,
        )


def _gate(
    logger,
    client: docker.DockerClient,
    container: Container,
    lines: queue.Queue,
    base_url: str,
    served_name: str,
    api_key: str | None,
    timeouts: ReadinessTimeouts,
    secrets: list[str],
    progress_key: str,
    guard: MemoryGuard | None,
) -> Readiness:
    restarts_before = container.attrs.get("RestartCount", 0)
    readiness = Readiness(started_at=time.monotonic())
    tracker = StartupTracker()
    progress: ProgressArtifact | None = None
    phase_started = readiness.started_at
    next_state_check = 0.0
    next_guard_check = 0.0
    guard_tripped = False
    stream_ended = False
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def take(line: str) -> None:
        nonlocal phase_started, progress
        line = scrub(line, secrets)
        logger.info("%s", line)
        before = tracker.phase
        event = tracker.feed(line)
        if event is not None and event.kind is EventKind.SHARD_PROGRESS:
            total = event.values["total"]
            if progress is None:
                progress = ProgressArtifact(progress_key, f"Loading safetensors checkpoint shards ({total})")
            progress.update(100.0 * event.values["done"] / max(total, 1))
        if tracker.phase != before:
            now = time.monotonic()
            readiness.phase_seconds[before.value] = round(now - phase_started, 3)
            phase_started = now

    def guard_trips() -> bool:
        """Read MemAvailable; below the floor, write the guard's line into the log the failure is
        classified from, kill the start, and say so (once per start)."""
        nonlocal guard_tripped, next_guard_check
        if guard is None or guard_tripped:
            return False
        next_guard_check = time.monotonic() + guard.interval_s
        available = _available_gib(client, container, guard)
        if available is None or available >= guard.floor_gib:
            return False
        guard_tripped = True
        line = guard_line(available, guard.floor_gib)
        tracker.feed(line)
        logger.warning("%s", line)
        _kill(container)
        return True

    def fail(status: ExitState | str) -> ReadinessFailed:
        if isinstance(status, str):
            cause = classify_failure(list(tracker.recent), secrets=secrets)
            return ReadinessFailed(cause, status, list(tracker.recent))
        cause = classify_failure(
            list(tracker.recent), exit_code=status.exit_code, oom_killed=status.oom_killed, secrets=secrets
        )
        return ReadinessFailed(cause, status.summary, list(tracker.recent))

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
                if _container_stopped(container, restarts_before) or (
                    stream_ended and _stops_soon(container, restarts_before)
                ):
                    # the follower may still hold the traceback's tail: take it until the stream's end
                    while not stream_ended:
                        line = next(iter(_drain(lines, 0.5)), _EOF)
                        if line is _EOF:
                            stream_ended = True
                        else:
                            take(line)
                    raise fail(exit_state(container.attrs))
                if stream_ended:
                    raise fail("log stream ended while the container still runs")
            if now >= next_guard_check and guard_trips():
                next_state_check = 0.0  # the kill ends the start: the state check classifies it
                continue
            if _healthy(http, served_name):
                # the server holds its whole budget once it serves, for as long as it serves: one
                # reading now, so a spec that leaves the host below the floor never counts as ready
                if guard_trips():
                    next_state_check = 0.0
                    continue
                readiness.ready_at, readiness.ready_wall = time.monotonic(), time.time()
                # The server printed its startup lines (KV cache size, "Application startup complete.")
                # before it answered, but the follower may still hold them: on a loaded machine the
                # log stream lags the HTTP answer. Take them (a bounded wait) so the stats are whole.
                catch_up = time.monotonic() + LOG_CATCH_UP_S
                while tracker.phase is not Phase.READY and not stream_ended and time.monotonic() < catch_up:
                    for line in _drain(lines, 0.1):
                        if line is _EOF:
                            stream_ended = True
                        else:
                            take(line)
                readiness.phase_seconds[tracker.phase.value] = round(readiness.ready_at - phase_started, 3)
                readiness.stats = tracker.stats
                logger.info("vLLM is ready: /health 200 and /v1/models lists %s", served_name)
                return readiness
            limit = timeouts.limit_for(tracker.phase.value)
            if now - phase_started > limit:
                raise fail(f"timed out after {limit:.0f} s in phase {tracker.phase.value!r}")


def _available_gib(client: docker.DockerClient, container: Container, guard: MemoryGuard) -> float | None:
    """MemAvailable of the docker host now, or None when it cannot be read (the container is gone:
    the state check says why)."""
    try:
        return exec_meminfo(client, container.id, guard.command).available_gib
    except MemoryReadError:
        return None


def _kill(container: Container) -> None:
    try:
        container.kill()
    except (NotFound, docker.errors.APIError):  # already gone
        pass


def _stops_soon(container: Container, restarts_before: int, grace_s: float = 2.0) -> bool:
    """The log stream ended: docker may not have recorded the exit yet; give it a moment."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if _container_stopped(container, restarts_before):
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
