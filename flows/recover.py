"""recover-vllm: bring back a server that was healthy and no longer is, as the runbook's
troubleshooting does by hand, but classified first and acted on once.

    prefect deployment run recover-vllm/spark --param reason="health check: /health 500"

The health-check automation runs it on `vllm.service.unhealthy` (it never emits that event itself,
so it cannot trigger itself). Steps: a server that answers again needs nothing; otherwise read what
docker says about ours (state, exit code, OOMKilled, log tail) and classify it (tasks/vllm/failures.py),
remove it, and hand that failure to the recovery loop deploy-qwen runs (tasks/serve.py `serve`): it
reads the machine's memory, lets the planner (tasks/recovery/planner.py) name the class, the actions
and the spec, acts, and starts again until the server serves or the planner gives up; smoke-test;
report.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect_docker.host import DockerHost
from pydantic import BaseModel

from blocks.engine import EngineSpec
from blocks.target import TargetMachine
from tasks.cleanup import remove_unserved_container
from tasks.container import inspect_server, remove_managed_containers
from tasks.errors import SparkVllmError
from tasks.events import ServiceEvent
from tasks.health.probes import probe_endpoints
from tasks.incidents.track import report_service_event
from tasks.inference import smoke_inference
from tasks.loader import loader_as_served
from tasks.locks import gpu_lock
from tasks.memory import wait_for_release
from tasks.readiness import ReadinessTimeouts
from tasks.recovery.cap import needs_operator
from tasks.recovery.step import RecoveryLimits
from tasks.report import artifact_key, publish_report
from tasks.serve import Failure, ServerSecrets, StartFailed, load_target, serve
from tasks.state import (
    desired_state,
    last_healthy_record,
    recent_recoveries,
    record_healthy,
    record_recover_run,
    recover_runs,
)
from tasks.vllm.failures import FailureKind, classify_failure, wedged_engine_cause
from tasks.vllm.versions import VersionInfo
from tasks.vllm_version import confirm_version, learn_vllm_version, recorded_version, version_rows


class RecoverResult(BaseModel):
    """What a recovery did."""

    target: str
    status: str  # "serving" | "stopped" (on purpose) | "needs-operator" (nothing done) | "recovered"
    reason: str
    failure: str | None = None  # the classified kind of what stopped the server
    classes: list[str] = []
    spec_hash: str | None = None
    degraded: str | None = None
    attempts: int = 0
    vllm_version: str | None = None  # the vLLM that serves again (the server's word)
    duration_s: float


#: Recoveries within an hour that did not end healthy, after which recover-vllm stops and asks for a person.
NEEDS_OPERATOR_AFTER = 3


class RecoveryGaveUp(SparkVllmError):
    """The planner found nothing to do that would help; the message says what a person should do."""


@flow(
    name="recover-vllm",
    flow_run_name="recover-{target}",
    on_cancellation=[remove_unserved_container],
    on_crashed=[remove_unserved_container],
)
def recover_vllm(
    target: str = "spark",
    reason: str = "",
    engine: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    timeouts: ReadinessTimeouts = ReadinessTimeouts(),
    max_attempts: int = 2,
    release_timeout_s: float = 30.0,
    answer_timeout_s: float = 60.0,
) -> RecoverResult:
    """Recover the target's server; the engine/preset/overrides are the spec to serve, as in deploy-qwen.

    Args:
        target: name of the TargetMachine block.
        reason: why recovery was asked for (free text from the triggering event).
        engine: name of an EngineSpec block; None = the runbook's compose file.
        preset: one of the runbook's tuning blocks.
        overrides: EngineSpec fields to change.
        timeouts: per-phase readiness limits.
        max_attempts: retries after the first start, at most.
        release_timeout_s: how long to wait for the dead server's memory to come back before planning.
        answer_timeout_s: how long the server may take to answer the one tiny question that tells
            "serving" from "wedged while /health says 200".
    """
    started = time.monotonic()
    logger = get_run_logger()
    resolved = load_target(target, engine, preset, overrides)
    machine, spec, secrets = resolved.machine, resolved.spec, resolved.secrets
    docker_host = resolved.docker_host
    limits = RecoveryLimits(max_attempts=max_attempts).guarded(machine.host_memory_floor_gib)
    logger.info("recovering %s: %s", machine.name, reason or "(no reason given)")
    with gpu_lock(machine.name):
        if desired_state(machine.name) == "stopped":
            logger.info(
                "%s was stopped on purpose (stop-qwen): nothing to recover; deploy-qwen starts it again", machine.name
            )
            return RecoverResult(target=machine.name, status="stopped", reason=reason, duration_s=_since(started))
        facts = probe_endpoints(machine.endpoint, spec.served_name, secrets.api_key, timeout_s=answer_timeout_s)
        if facts.health_status == 200 and facts.models_listed and facts.answer_ok:
            logger.info("%s serves %s again: nothing to recover", machine.endpoint, spec.served_name)
            return RecoverResult(target=machine.name, status="serving", reason=reason, duration_s=_since(started))
        # /health 200 without an answer: the engine is wedged while the API server lies (vllm issue 39863)
        wedged = facts.health_status == 200
        if needs_operator(recover_runs(machine.name), time.time(), limit=NEEDS_OPERATOR_AFTER):
            message = (
                f"{NEEDS_OPERATOR_AFTER} recoveries of {machine.name} within the hour did not end healthy:"
                " recovery stops here until a person deploys again (deploy-qwen)"
            )
            logger.warning("%s", message)
            report_service_event(machine.name, ServiceEvent.NEEDS_OPERATOR, {"reason": message, "trigger": reason})
            return RecoverResult(
                target=machine.name, status="needs-operator", reason=reason, duration_s=_since(started)
            )
        try:
            return _recover(
                machine, spec, secrets, docker_host, limits, reason, timeouts, release_timeout_s, started, wedged
            )
        except BaseException as exc:
            record_recover_run(machine.name, time.time(), ended_healthy=False)
            if not isinstance(exc, StartFailed | RecoveryGaveUp):  # those said recovery-failed already
                _report_crash(machine.name, exc)
            raise


def _recover(
    machine: TargetMachine,
    spec: EngineSpec,
    secrets: ServerSecrets,
    docker_host: DockerHost,
    limits: RecoveryLimits,
    reason: str,
    timeouts: ReadinessTimeouts,
    release_timeout_s: float,
    started: float,
    wedged: bool,
) -> RecoverResult:
    """The recovery itself, inside the target's GPU lock (see the module docstring)."""
    # Which vLLM: the last healthy server's word for this image, else the image's own (tasks/vllm_version.py)
    recorded = last_healthy_record(machine.name).vllm_version_of(spec.image)
    spec = loader_as_served(spec, last_healthy_record(machine.name).spec)  # the loader deploy-qwen chose for it
    vllm = recorded_version(spec.image, recorded) or learn_vllm_version(machine, spec.image)
    failure = _dead_server(machine, secrets, docker_host, limits, wedged, vllm)
    kind = failure.cause.kind.value if failure else None
    # a killed server's memory can come back seconds after its container is gone (vllm 34643):
    # plan and start from the memory once it settled, not from what a dying process still held
    wait_for_release(machine, spec.image, spec.gpu_memory_utilization, timeout_s=release_timeout_s, version=vllm.parsed)
    history = recent_recoveries(machine.name)
    try:
        served = serve(
            docker_host,
            machine,
            spec,
            secrets,
            timeouts,
            limits=limits,
            history=history,
            failure=failure,
            vllm=vllm,
        )
    except StartFailed as exc:
        if exc.attempts:
            _report(machine.name, f"recover-vllm on {machine.name}: FAILED", reason, kind, exc.steps, None, vllm)
            raise
        # the planner gave up on the dead server's failure itself: nothing was started
        _report(machine.name, f"recover-vllm on {machine.name}: GAVE UP", reason, kind, exc.steps, None, vllm)
        raise RecoveryGaveUp(
            f"recover-vllm on {machine.name} gave up: [{kind}] {exc.cause.summary}\nNext step: {exc.next_step}"
        ) from None
    vllm, _ = confirm_version(vllm, served.readiness.stats.version, machine.endpoint)
    smoke_inference(machine.endpoint, spec.served_name, secrets.api_key)
    degraded = served.degraded(spec)
    record_healthy(
        machine.name,
        served.spec,
        served.spec_hash,
        degraded=degraded,
        kv_cache_tokens=served.kv_cache_tokens,
        vllm_version=vllm.version,
    )
    record_recover_run(machine.name, time.time(), ended_healthy=True)
    result = RecoverResult(
        target=machine.name,
        status="recovered",
        reason=reason,
        failure=kind,
        classes=[s.klass.value for s in served.steps],
        spec_hash=served.spec_hash,
        degraded=degraded,
        attempts=len(served.attempts),
        vllm_version=vllm.version,
        duration_s=_since(started),
    )
    if not served.steps:  # serve() emits `recovered` itself when it planned
        report_service_event(
            machine.name,
            ServiceEvent.RECOVERED,
            {"classes": [], "failure": "", "spec_hash": served.spec_hash, "degraded": degraded or ""},
            vllm_version=vllm.version,
        )
    title = f"recover-vllm on {machine.name}: recovered" + (" (DEGRADED)" if degraded else "")
    _report(machine.name, title, reason, kind, served.steps, result, vllm)
    return result


def _dead_server(
    machine: TargetMachine,
    secrets: ServerSecrets,
    docker_host: DockerHost,
    limits: RecoveryLimits,
    wedged: bool,
    vllm: VersionInfo,
) -> Failure | None:
    """What docker says about our server (state, exit code, OOMKilled, log tail), classified by its
    vLLM's texts, and the server removed; None when there is none."""
    state = inspect_server(docker_host, machine.name, secrets.values)
    if state is None:
        return None
    cause = classify_failure(
        state.log_tail,
        exit_code=state.exit_code,
        oom_killed=state.oom_killed,
        secrets=secrets.values,
        margin_gib=limits.margin_gib,
        version=vllm.parsed,
    )
    if wedged and cause.kind is FailureKind.UNKNOWN:  # a hang prints nothing: the engine is as good as dead
        cause = wedged_engine_cause(cause.evidence)
    get_run_logger().info("%s is %s: [%s] %s", state.name, state.status, cause.kind.value, cause.summary)
    remove_managed_containers(docker_host, machine.name, 10)
    return Failure(cause, list(state.log_tail))


def _report_crash(target: str, exc: BaseException) -> None:
    """recover-vllm itself failed (not the planner giving up): say so, so the incident escalates."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    report_service_event(
        target,
        ServiceEvent.RECOVERY_FAILED,
        {"kind": type(exc).__name__, "next_step": f"recover-vllm failed: {first}; see its run", "attempts": 0},
    )


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _report(
    target: str,
    title: str,
    reason: str,
    failure: str | None,
    steps,
    result: RecoverResult | None,
    vllm: VersionInfo,
) -> None:
    rows = {
        "target": target,
        **version_rows(vllm),
        "reason": reason or None,
        "failure": failure,
        "spec hash": result.spec_hash if result else None,
        "degraded": result.degraded if result else None,
        "starts": result.attempts if result else None,
        "duration (s)": result.duration_s if result else None,
    }
    sections = {
        "Steps": "\n".join(
            f"- {s.klass.value}: {s.reason}" + (f" Next step: {s.next_step}" if s.give_up else "") for s in steps
        )
        or "none"
    }
    publish_report(artifact_key("recover", target), title, rows, sections)
