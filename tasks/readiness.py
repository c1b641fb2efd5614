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
from typing import Any

import docker
import httpx
from docker.errors import NotFound
from docker.models.containers import Container
from packaging.version import Version
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_docker.host import DockerHost
from pydantic import BaseModel, Field

from tasks.container import docker_client
from tasks.errors import ServerDidNotStart
from tasks.memory import MemoryReadError, exec_meminfo
from tasks.recovery.load_memory import loader_guard_cause, loader_transient_gib
from tasks.recovery.sizing import margin_for
from tasks.report import ProgressArtifact
from tasks.secrets import scrub
from tasks.vllm.api import HEALTH_PATH, lists_model, vllm_client
from tasks.vllm.failures import FailureCause, classify_failure, host_memory_guard_cause
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
            f"vLLM did not become ready ({status}): [{cause.kind.value}] {cause.summary}\nFix: {cause.fix}\n"
            f"Log:\n{evidence}"
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
    loader: str = Field(
        "mmap",
        description="the weight loader of the start: a stop while the shards load names its buffer "
        "(tasks/recovery/load_memory.py)",
    )

    def cause(self, available_gib: float, phase: Phase, evidence: list[str]) -> FailureCause:
        """Why the guard stopped the start: the loader's buffer when it held memory then (a stop in the
        loading phase with eager or fastsafetensors), else the profiling peak."""
        transient = loader_transient_gib(self.loader)
        if phase is Phase.LOADING and transient > 0:
            return loader_guard_cause(self.loader, available_gib, self.floor_gib, transient, evidence)
        return host_memory_guard_cause(available_gib, self.floor_gib, evidence)


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
    with vllm_client(base_url, api_key, timeout) as client:
        return _healthy(client, served_name)


def serves(base_url: str, api_key: str | None = None, timeout: float = 2.0) -> bool:
    """Some server answers /health with 200 at ``base_url`` (whatever model it serves)."""
    with vllm_client(base_url, api_key, timeout) as client:
        return _health_ok(client)


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
        self._stream: Any = None  # docker-py's log stream (an iterator of bytes), once entered
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
    version: Version | None = None,
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
        version: the vLLM the image runs (None: unknown): the log forms and failure texts read.
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
            version,
        )


@dataclass
class _Gate:
    """One start's gate: what it read so far and when it next checks what (see `_gate`)."""

    logger: Any
    client: docker.DockerClient
    container: Container
    lines: queue.Queue
    timeouts: ReadinessTimeouts
    secrets: list[str]
    progress_key: str
    guard: MemoryGuard | None
    #: the vLLM the image runs (None: unknown, every version's log forms are read).
    version: Version | None = None
    readiness: Readiness = field(default_factory=lambda: Readiness(started_at=time.monotonic()))
    tracker: StartupTracker = field(init=False)
    progress: ProgressArtifact | None = None
    restarts_before: int = 0
    phase_started: float = 0.0
    next_state_check: float = 0.0
    next_guard_check: float = 0.0
    #: MemAvailable (GiB) when the guard stopped the start, and the phase it stopped in; None while it has not.
    guard_reading: float | None = None
    guard_phase: Phase = Phase.STARTING
    stream_ended: bool = False

    def __post_init__(self) -> None:
        self.tracker = StartupTracker(version=self.version)
        self.restarts_before = self.container.attrs.get("RestartCount", 0)
        self.phase_started = self.readiness.started_at

    def take(self, line: str) -> None:
        """Forward one log line to the run's log, track the startup's phase and its shard progress."""
        line = scrub(line, self.secrets)
        self.logger.info("%s", line)
        before = self.tracker.phase
        event = self.tracker.feed(line)
        if event is not None and event.kind is EventKind.SHARD_PROGRESS:
            total = event.values["total"]
            if self.progress is None:
                self.progress = ProgressArtifact(self.progress_key, f"Loading safetensors checkpoint shards ({total})")
            self.progress.update(100.0 * event.values["done"] / max(total, 1))
        if self.tracker.phase != before:
            now = time.monotonic()
            self.readiness.phase_seconds[before.value] = round(now - self.phase_started, 3)
            self.phase_started = now

    def take_queued(self, wait_s: float) -> bool:
        """Take every queued line, waiting up to ``wait_s`` for the first; False when none came."""
        took = False
        for line in _drain(self.lines, wait_s):
            took = True
            if line is _EOF:
                self.stream_ended = True
            else:
                self.take(line)  # type: ignore[arg-type]
        return took

    def guard_trips(self) -> bool:
        """Read MemAvailable; below the floor, kill the start and say so (once per start)."""
        guard = self.guard
        if guard is None or self.guard_reading is not None:
            return False
        self.next_guard_check = time.monotonic() + guard.interval_s
        available = _available_gib(self.client, self.container, guard)
        if available is None or available >= guard.floor_gib:
            return False
        self.guard_reading, self.guard_phase = available, self.tracker.phase
        self.logger.warning(
            "memory guard: MemAvailable %.2f GiB is below the host floor %.2f GiB while vLLM starts (%s, %s loader):"
            " stopping the container before the machine runs out of memory",
            available,
            guard.floor_gib,
            self.tracker.phase.value,
            guard.loader,
        )
        _kill(self.container)
        self.next_state_check = 0.0  # the kill ends the start: the state check reports it
        return True

    def fail(self, status: ExitState | str) -> ReadinessFailed:
        """The failure, classified: the guard's own cause when it stopped the start, else the log's."""
        recent = list(self.tracker.recent)
        summary = status if isinstance(status, str) else status.summary
        if self.guard is not None and self.guard_reading is not None:
            cause = self.guard.cause(self.guard_reading, self.guard_phase, recent)  # lines are scrubbed
            return ReadinessFailed(cause, summary, recent)
        margin = margin_for(self.guard.floor_gib if self.guard else 0.0)
        if isinstance(status, str):
            cause = classify_failure(recent, secrets=self.secrets, margin_gib=margin, version=self.version)
            return ReadinessFailed(cause, summary, recent)
        cause = classify_failure(
            recent,
            exit_code=status.exit_code,
            oom_killed=status.oom_killed,
            secrets=self.secrets,
            margin_gib=margin,
            version=self.version,
        )
        return ReadinessFailed(cause, summary, recent)

    def check_state(self) -> None:
        """Raise the classified failure once the container stopped (or the log ended while it runs)."""
        self.next_state_check = time.monotonic() + 1.0
        container, restarts = self.container, self.restarts_before
        if _container_stopped(container, restarts) or (self.stream_ended and _stops_soon(container, restarts)):
            # the follower may still hold the traceback's tail: take it until the stream's end
            while not self.stream_ended:
                if not self.take_queued(0.5):
                    self.stream_ended = True
            raise self.fail(exit_state(container.attrs))
        if self.stream_ended:
            raise self.fail("log stream ended while the container still runs")

    def ready(self, served_name: str) -> Readiness:
        """The server answers: take the startup lines the log stream still holds, and say so.

        The server printed its startup lines (KV cache size, "Application startup complete.") before
        it answered, but the follower may still hold them: on a loaded machine the log stream lags
        the HTTP answer. Take them (a bounded wait) so the stats are whole.
        """
        readiness = self.readiness
        readiness.ready_at, readiness.ready_wall = time.monotonic(), time.time()
        catch_up = time.monotonic() + LOG_CATCH_UP_S
        while self.tracker.phase is not Phase.READY and not self.stream_ended and time.monotonic() < catch_up:
            self.take_queued(0.1)
        readiness.phase_seconds[self.tracker.phase.value] = round(readiness.ready_at - self.phase_started, 3)
        readiness.stats = self.tracker.stats
        self.logger.info("vLLM is ready: /health 200 and /v1/models lists %s", served_name)
        return readiness


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
    version: Version | None = None,
) -> Readiness:
    """The gate's loop: take the log, check the container's state once a second and the host's
    memory at the guard's interval, ask /health; return when it serves, raise when it cannot."""
    gate = _Gate(logger, client, container, lines, timeouts, secrets, progress_key, guard, version)
    with vllm_client(base_url, api_key, max(timeouts.poll_interval_s, 1.0)) as http:
        while True:
            # a new line wakes the loop at once, so /health is asked right after the server says it is up
            gate.take_queued(timeouts.poll_interval_s)
            now = time.monotonic()
            if gate.stream_ended or now >= gate.next_state_check:
                gate.check_state()
            if now >= gate.next_guard_check and gate.guard_trips():
                continue
            if _healthy(http, served_name):
                # the server holds its whole budget once it serves, for as long as it serves: one
                # reading now, so a spec that leaves the host below the floor never counts as ready
                if gate.guard_trips():
                    continue
                return gate.ready(served_name)
            limit = timeouts.limit_for(gate.tracker.phase.value)
            if now - gate.phase_started > limit:
                raise gate.fail(f"timed out after {limit:.0f} s in phase {gate.tracker.phase.value!r}")


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


def _health_ok(http: httpx.Client) -> bool:
    """/health answers 200 (no answer at all is False)."""
    try:
        return http.get(HEALTH_PATH).status_code == 200
    except httpx.HTTPError:
        return False


def _healthy(http: httpx.Client, served_name: str) -> bool:
    return _health_ok(http) and lists_model(http, served_name)
