"""Start the vLLM server and, when a start fails on memory, recover: the one code path that
deploy-qwen and recover-vllm both run (no recovery is written twice).

    served = serve(docker_host, machine, spec, secrets, timeouts)  # deploy-qwen
    served = serve(docker_host, machine, spec, secrets, timeouts, failure=Failure(cause, log_lines))  # recover-vllm

`start_once` is the runbook's `docker compose up -d` plus the readiness gate: make room in memory,
create and start the container, wait until it serves (with the host-memory guard), arm the restart
policy. `serve` wraps it in the recovery loop: a failed start is classified (tasks/vllm/failures.py), the
machine's memory is read (tasks/memory.py), the pure planner (tasks/recovery/planner.py) names the class,
the actions and the next spec, the actions run as tasks, and the next spec starts, until it serves
or the planner gives up. recover-vllm hands the failure it found (a dead server's classified log) to
the same loop, which then begins by planning instead of starting. Every attempt is a row of a table
artifact; the outcome is an event.
What is kept per target between runs (the last healthy spec, the recent recoveries) lives in
tasks/state.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from packaging.version import Version
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect_docker.host import DockerHost
from pydantic import BaseModel

from blocks.engine import EngineSpec, load_engine_spec
from blocks.render import container_kwargs, redacted, secret_environment
from blocks.target import TargetMachine
from tasks.container import (
    arm_restart_policy,
    docker_client,
    managed_containers,
    remove_container,
    restart_policy_after_ready,
    start_vllm_container,
)
from tasks.errors import ServerDidNotStart
from tasks.events import ServiceEvent
from tasks.incidents.track import report_service_event
from tasks.memory import (
    NotEnoughMemory,
    drop_caches,
    make_room_for_start,
    read_meminfo,
    read_memory,
    wait_for_release,
    wait_for_steady_memory,
)
from tasks.prune import prune_docker
from tasks.readiness import MemoryGuard, Readiness, ReadinessFailed, ReadinessTimeouts, wait_until_ready
from tasks.recovery.kv_model import QWEN3_32B_FP8_WEIGHTS_GIB
from tasks.recovery.load_memory import LOADER_MEMORY
from tasks.recovery.planner import plan_recovery
from tasks.recovery.step import Action, MachineMemory, RecoveryLimits, RecoveryStep, retry_spec
from tasks.report import artifact_key
from tasks.secrets import DOTENV, HF_TOKEN_ENV_VARS, load_secret
from tasks.state import remember_recoveries
from tasks.vllm.failures import FailureCause
from tasks.vllm.versions import VersionInfo

#: How long a failed start's memory may take to come back before recovery plans (a killed process's
#: memory is released when the kernel reaps it; the imitation's, when its heartbeat goes stale: 5 s).
RELEASE_WAIT_S = 10.0


@dataclass(frozen=True)
class ServerSecrets:
    """The HF token and the optional API key of a target, resolved once; only values are masked."""

    hf_token: str | None
    api_key: str | None

    @classmethod
    def for_target(cls, machine: TargetMachine) -> ServerSecrets:
        token = load_secret(machine.hf_token_secret, HF_TOKEN_ENV_VARS, DOTENV)
        key = load_secret(machine.api_key_secret, ("VLLM_API_KEY",), DOTENV) if machine.api_key_secret else None
        return cls(token.get_secret_value() if token else None, key.get_secret_value() if key else None)

    @property
    def values(self) -> list[str]:
        return [v for v in (self.hf_token, self.api_key) if v]


@dataclass(frozen=True)
class Target:
    """What every flow about a target starts from: its block, the spec it serves, its secrets."""

    machine: TargetMachine
    spec: EngineSpec
    secrets: ServerSecrets

    @property
    def docker_host(self) -> DockerHost:
        return self.machine.docker_host()


def load_target(target: str, engine: str | None, preset: str | None, overrides: dict[str, Any] | None) -> Target:
    """The TargetMachine block ``target``, the spec as it runs there (engine block or the runbook's,
    then the preset, then the overrides, then the machine's own overrides) and its secrets."""
    machine = TargetMachine.named(target)
    spec = machine.apply_to(load_engine_spec(engine, preset, overrides))
    return Target(machine, spec, ServerSecrets.for_target(machine))


class Attempt(BaseModel):
    """One start, as a row of the attempts table."""

    attempt: int
    spec_hash: str
    gpu_memory_utilization: float
    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int
    outcome: str  # "serving" or the failure kind
    kv_cache_tokens: int | None = None
    seconds: float
    then: str = ""  # the recovery step that followed a failure: "class: actions -> retry with"

    def row(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "utilization": self.gpu_memory_utilization,
            "max-model-len": self.max_model_len,
            "batched tokens": self.max_num_batched_tokens,
            "seqs": self.max_num_seqs,
            "outcome": self.outcome,
            "KV cache tokens": f"{self.kv_cache_tokens:,}" if self.kv_cache_tokens else "",
            "seconds": self.seconds,
            "then": self.then,
            "spec hash": self.spec_hash,
        }


@dataclass
class Served:
    """A server that serves: its container, what the gate learned, and how it got there."""

    container_id: str
    readiness: Readiness
    spec: EngineSpec
    spec_hash: str
    steps: list[RecoveryStep] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def kv_cache_tokens(self) -> int | None:
        """The KV cache size the server logged at startup ("GPU KV cache size: N tokens")."""
        stats = self.readiness.stats if self.readiness else None
        return stats.kv_cache_tokens if stats else None

    def degraded(self, requested: EngineSpec) -> str | None:
        """ "requested X, running Y, because Z" when recovery changed the spec; None when it did not.

        One sentence for one step or many: the running spec's differences from the request, as the
        planner's own `RecoveryStep.degraded` writes them, with every step's reason.
        """
        fields = set(EngineSpec.model_fields)
        running, asked = self.spec.model_dump(include=fields), requested.model_dump(include=fields)
        changed = {name: value for name, value in running.items() if asked.get(name) != value}
        if not changed or not self.steps:
            return None
        reasons = "; ".join(step.reason for step in self.steps if step.overrides) or self.steps[-1].reason
        return RecoveryStep(klass=self.steps[-1].klass, overrides=changed, reason=reasons).degraded(requested)


class StartFailed(ServerDidNotStart):
    """The server did not start, and recovery (when on) gave up: ``next_step`` is for a person."""

    def __init__(self, target: str, cause: FailureCause, steps: list[RecoveryStep], attempts: list[Attempt]) -> None:
        self.cause, self.steps, self.attempts = cause, steps, attempts
        last = steps[-1] if steps else None
        self.next_step = (last.next_step if last and last.give_up else None) or cause.fix
        tried = f" after {len(attempts)} attempts" if len(attempts) > 1 else ""
        evidence = "\n".join(f"    {line}" for line in cause.evidence[-8:])
        super().__init__(
            f"vLLM did not start on {target}{tried}: [{cause.kind.value}] {cause.summary}\n"
            f"Next step: {self.next_step}\nLog:\n{evidence}"
        )


@dataclass
class Failure:
    """A failed start (or a server that died), classified: what the recovery loop plans from."""

    cause: FailureCause
    #: the log lines it came from, secrets scrubbed (the KV model calibrates its weights from them).
    lines: list[str] = field(default_factory=list)
    #: the attempts-table row of the start that failed; None for a failure handed to `serve`.
    attempt: Attempt | None = None


def loader_of(spec: EngineSpec, loader: str | None = None) -> str:
    """The loader a start of ``spec`` uses: ``loader`` when given, else the spec's own once resolved
    (tasks/loader.py `with_loader` turns ``auto`` into a loader's name), else "mmap" (vLLM's default)."""
    if loader:
        return loader
    return spec.loader if spec.loader in LOADER_MEMORY else "mmap"


def failure_of(exc: BaseException) -> tuple[FailureCause, list[str]]:
    """The classified cause of a failed start, and the log lines it came from (for calibration)."""
    if isinstance(exc, ReadinessFailed):
        return exc.cause, exc.lines
    if isinstance(exc, NotEnoughMemory):  # refused before it ran: the cause vLLM's check would give
        return exc.cause, []
    raise TypeError(f"not a start failure: {type(exc).__name__}")


def start_once(
    docker_host: DockerHost,
    machine: TargetMachine,
    spec: EngineSpec,
    secrets: ServerSecrets,
    timeouts: ReadinessTimeouts,
    version: Version | None = None,
    loader: str | None = None,
    weights_gib: float = QWEN3_32B_FP8_WEIGHTS_GIB,
) -> tuple[str, Readiness]:
    """Make room in memory, start the container, wait until it serves; remove it if it never does.
    ``version``: the vLLM the image runs (None: the runbook's 0.10.1.1 for memory, every log form).
    ``loader``: the weight loader the start uses (None: the spec's own, `loader_of`): the pre-start
    check and the memory guard count its buffer (tasks/recovery/load_memory.py), with ``weights_gib``
    in memory by the end of the load."""
    loader = loader_of(spec, loader)
    kwargs = container_kwargs(
        spec,
        machine,
        secret_env=secret_environment(hf_token=secrets.hf_token, api_key=secrets.api_key),
        version=version,
        flow_run_id=flow_run.id,  # the label the run's cancellation/crash hook finds it by (tasks/cleanup.py)
    )
    make_room_for_start(machine, spec.image, spec.gpu_memory_utilization, version, loader, weights_gib)
    first_start, restart_policy = restart_policy_after_ready(kwargs)
    container_id = start_vllm_container(docker_host, first_start, redacted(first_start))
    guard = (
        MemoryGuard(command=machine.meminfo_command, floor_gib=machine.host_memory_floor_gib, loader=loader)
        if machine.host_memory_floor_gib > 0
        else None
    )
    try:
        readiness = wait_until_ready(
            docker_host,
            container_id,
            machine.endpoint,
            spec.served_name,
            secrets.api_key,
            timeouts,
            secrets.values,
            artifact_key("vllm-load", machine.name),
            guard,
            version,
        )
        arm_restart_policy(
            docker_host, container_id, restart_policy
        )  # the runbook's `restart: unless-stopped`, from now on
    except BaseException:
        remove_container(docker_host, container_id, stop_timeout=None)  # it never served: kill, its log is in the run's
        raise
    return container_id, readiness


@task(name="observe-memory", cache_policy=NO_CACHE, task_run_name="observe-memory {machine.name}")
def observe_memory(machine: TargetMachine, image: str) -> MachineMemory:
    """What holds the machine's memory after a failed start: meminfo, and our own servers of this
    target that still run (the failed one is already removed)."""
    with docker_client(machine.docker_host()) as client:
        try:
            info = read_meminfo(client, machine, image)
        except Exception as exc:  # noqa: BLE001 - the planner can still decide from the error's own numbers
            get_run_logger().warning("memory of %s unknown after the failure: %s", machine.name, exc)
            info = None
        stale = tuple(c.name for c in managed_containers(client, machine.name) if c.status in ("running", "restarting"))
    return MachineMemory(meminfo=info, stale_containers=stale)


def act(
    docker_host: DockerHost, machine: TargetMachine, image: str, step: RecoveryStep, version: Version | None = None
) -> None:
    """Run a step's actions on the machine, in order, each as a task of its own."""
    logger = get_run_logger()
    for action in step.actions:
        if action is Action.DROP_PAGE_CACHE:
            drop_caches(machine, image)
        elif action is Action.WAIT_FOR_STEADY_MEMORY:
            wait_for_steady_memory(machine, image, version)
        elif action is Action.REMOVE_STALE_CONTAINERS:
            with docker_client(docker_host) as client:
                stale = [
                    c.id for c in managed_containers(client, machine.name) if c.status in ("running", "restarting")
                ]
            for container_id in stale:
                remove_container(docker_host, container_id, stop_timeout=30)
        elif action is Action.PRUNE:
            before = read_memory(machine, image, unreadable_ok=True)
            report = prune_docker(
                docker_host, machine.prune_scope, machine.name if machine.prune_scope == "project" else None
            )
            after = read_memory(machine, image, unreadable_ok=True)
            freed = f"{after.free_gib - before.free_gib:+.1f} GiB free memory" if before and after else "memory unknown"
            logger.info(
                "prune (%s): %s; %s (stopped containers hold no memory: a prune frees disk)",
                machine.prune_scope,
                report.summary,
                freed,
            )


def serve(
    docker_host: DockerHost,
    machine: TargetMachine,
    requested: EngineSpec,
    secrets: ServerSecrets,
    timeouts: ReadinessTimeouts,
    recover: bool = True,
    limits: RecoveryLimits | None = None,
    history: list[RecoveryStep] | None = None,
    failure: Failure | None = None,
    vllm: VersionInfo | None = None,
    loader: str | None = None,
) -> Served:
    """Start ``requested``; on a failure, classify, plan, act and retry until it serves or the planner
    gives up (then StartFailed, nothing left running). ``recover=False``: one start, its failure raised.

    Args:
        docker_host: the target's docker daemon.
        machine: the target.
        requested: the spec to serve.
        secrets: the target's HF token and API key.
        timeouts: the readiness gate's limits.
        recover: plan and retry after a failure; False raises the first failure.
        limits: the planner's bounds and KV model (their margin is raised above the target's floor).
        history: the target's earlier recovery steps (engine restarts of the last hour count).
        failure: a failure found before this call (recover-vllm: the dead server's): the loop begins
            by planning from it, and the caller has waited for its memory to come back.
        vllm: the vLLM the image runs, as preflight learnt it (None: the runbook's 0.10.1.1): the
            pre-start memory check, the readiness gate's log forms and failure texts, and the planner
            read what its free-memory check reads (MemFree or MemAvailable); the events name it.
        loader: the weight loader the spec's command uses ("mmap", "eager" or "fastsafetensors"; None:
            the spec's own once tasks/loader.py `with_loader` resolved it, else "mmap", today's start):
            the pre-start check and the memory guard count its buffer while the shards load.
    """
    logger = get_run_logger()
    version = vllm.parsed if vllm else None
    named = vllm.version if vllm else None
    limits = (limits or RecoveryLimits()).guarded(machine.host_memory_floor_gib)
    spec = requested
    steps: list[RecoveryStep] = []
    attempts: list[Attempt] = []
    past = list(history or [])
    first = failure
    while True:
        if failure is None:
            started = _start(docker_host, machine, spec, secrets, timeouts, attempts, recover, version, loader, limits)
            if not isinstance(started, Failure):
                return _served(machine, requested, spec, started, steps, attempts, first, named)
            failure = started
            first = first or failure
        # retries made: a failure handed in counts as the first start's, as deploy-qwen's first start does
        attempt = max(0, len(attempts) - 1)
        step = _plan(machine, spec, failure, attempt, limits.calibrated(failure.lines), [*past, *steps], version)
        steps.append(step)
        if failure.attempt is not None:
            failure.attempt.then = _describe(step)
        logger.warning("recovery (%s): %s", step.klass.value, step.reason)
        if step.give_up:
            _give_up(machine, failure.cause, steps, attempts, named)
        act(docker_host, machine, spec.image, step, version)
        spec = machine.apply_to(retry_spec(spec, step))
        failure = None


def _start(
    docker_host: DockerHost,
    machine: TargetMachine,
    spec: EngineSpec,
    secrets: ServerSecrets,
    timeouts: ReadinessTimeouts,
    attempts: list[Attempt],
    recover: bool,
    version: Version | None = None,
    loader: str | None = None,
    limits: RecoveryLimits | None = None,
) -> tuple[str, Readiness] | Failure:
    """One start, recorded as a row of ``attempts``: the container and what the gate learned, or the
    classified failure (raised as is when ``recover`` is off). ``loader`` and the KV model's weights
    (``limits``) size the load's memory (`start_once`)."""
    spec_hash = spec.spec_hash(machine)
    started = time.monotonic()
    weights = (limits or RecoveryLimits()).weights_gib
    try:
        container_id, readiness = start_once(docker_host, machine, spec, secrets, timeouts, version, loader, weights)
    except (ReadinessFailed, NotEnoughMemory) as exc:
        cause, lines = failure_of(exc)
        attempts.append(_attempt(len(attempts) + 1, spec, spec_hash, cause.kind.value, None, started))
        if not recover:
            _publish_attempts(machine, attempts)
            raise
        if isinstance(exc, ReadinessFailed):
            # a start that got a container: its memory may come back seconds after the kill (vllm
            # 34643); plan from the memory once it settled, not from what the dying start held
            wait_for_release(
                machine, spec.image, spec.gpu_memory_utilization, timeout_s=RELEASE_WAIT_S, version=version
            )
        return Failure(cause, lines, attempts[-1])
    attempts.append(_attempt(len(attempts) + 1, spec, spec_hash, "serving", readiness.stats.kv_cache_tokens, started))
    return container_id, readiness


def _plan(
    machine: TargetMachine,
    spec: EngineSpec,
    failure: Failure,
    attempt: int,
    limits: RecoveryLimits,
    history: list[RecoveryStep],
    version: Version | None = None,
) -> RecoveryStep:
    """The planner's next step for ``failure``, from the machine's memory as it is now."""
    memory = observe_memory(machine, spec.image)
    step = plan_recovery(failure.cause, memory, spec, attempt, limits, history, now=datetime.now(UTC), version=version)
    return step.model_copy(update={"at": datetime.now(UTC)})


def _give_up(
    machine: TargetMachine,
    cause: FailureCause,
    steps: list[RecoveryStep],
    attempts: list[Attempt],
    vllm_version: str | None,
) -> NoReturn:
    """The planner gave up: report the attempts, remember the steps, say so, raise StartFailed."""
    step = steps[-1]
    if attempts:
        _publish_attempts(machine, attempts)
    remember_recoveries(machine.name, steps)
    report_service_event(
        machine.name,
        ServiceEvent.RECOVERY_FAILED,
        {
            "kind": cause.kind.value,
            "class": step.klass.value,
            "next_step": step.next_step or "",
            "attempts": len(attempts),
        },
        vllm_version=vllm_version,
    )
    raise StartFailed(machine.name, cause, steps, attempts) from None


def _served(
    machine: TargetMachine,
    requested: EngineSpec,
    spec: EngineSpec,
    started: tuple[str, Readiness],
    steps: list[RecoveryStep],
    attempts: list[Attempt],
    first: Failure | None,
    vllm_version: str | None,
) -> Served:
    """The server serves: after a recovery, report the attempts, remember the steps, emit `recovered`."""
    container_id, readiness = started
    served = Served(container_id, readiness, spec, attempts[-1].spec_hash, steps, attempts)
    if steps:
        _publish_attempts(machine, attempts)
        remember_recoveries(machine.name, steps)
        report_service_event(
            machine.name,
            ServiceEvent.RECOVERED,
            {
                "classes": [s.klass.value for s in steps],
                "failure": first.cause.kind.value if first else "",
                "attempts": len(attempts),
                "spec_hash": served.spec_hash,
                "degraded": served.degraded(requested) or "",
            },
            vllm_version=vllm_version,
        )
    return served


def _attempt(n: int, spec: EngineSpec, spec_hash: str, outcome: str, kv: int | None, started: float) -> Attempt:
    return Attempt(
        attempt=n,
        spec_hash=spec_hash,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        max_model_len=spec.max_model_len,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        max_num_seqs=spec.max_num_seqs,
        outcome=outcome,
        kv_cache_tokens=kv,
        seconds=round(time.monotonic() - started, 2),
    )


def _describe(step: RecoveryStep) -> str:
    row = step.row()
    return f"{row['class']}: {row['actions']} -> {'give up' if step.give_up else row['retry with']}"


def _publish_attempts(machine: TargetMachine, attempts: list[Attempt]) -> None:
    create_table_artifact(
        table=[a.row() for a in attempts],
        key=artifact_key("recovery", machine.name),
        description=f"Starts on {machine.name}: each attempt, the recovery that followed, the outcome",
    )
