"""health-check: is the target's server healthy, and if not, which layer says so? On a schedule.

    prefect deployment run health-check/spark          # or wait for its schedule (every 5 minutes)

The runbook's "Health Check" (`curl /health`, `curl /v1/models`, a test inference) and "Key Metrics
to Watch", done by a flow every few minutes, in layers, each with its own verdict: the container
(exists, state, restarts since the deploy, exit code, OOMKilled), liveness (/health; no answer
while loading is "starting", not dead), readiness (/v1/models lists the model), function (one tiny
deterministic request), progress (/metrics: requests in flight while no token is generated =
wedged, even when /health says 200: vllm issue 39863), service levels (/metrics read before the
smoke question against the previous check's read after its own: p99 TTFT and inter-token latency,
error ratio, preemption rate, KV cache and queue held for minutes; the limits in the
`HealthLimits` block `default`, a run's ``limits`` overriding them), host (MemAvailable against the
target's `host_memory_floor_gib`, the floor of the start's memory guard). The verdict is the pure
`tasks.health.verdict.evaluate`. It publishes an event per check (`vllm.service.<verdict>`: the
unhealthy one's automation runs recover-vllm), a status artifact and a history table; it never
restarts anything itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.health_limits import HEALTH_LIMITS_BLOCK, load_health_limits
from blocks.target import TargetMachine
from tasks.events import ServiceEvent
from tasks.health.history import history_row, verdict_since
from tasks.health.limits import Thresholds
from tasks.health.observation import Observation
from tasks.health.probes import ContainerFacts, EndpointFacts, inspect_container, probe_endpoints, read_host_memory
from tasks.health.verdict import HealthReport, Verdict, evaluate
from tasks.incidents.track import report_service_event
from tasks.memory import MemInfo
from tasks.report import artifact_key, publish_report
from tasks.serve import load_target
from tasks.state import (
    HEALTH_HISTORY,
    HealthState,
    HealthyRecord,
    desired_state,
    health_history,
    health_state,
    last_healthy_record,
    save_health_state,
)
from tasks.vllm.metrics import MetricsSnapshot, parse_metrics
from tasks.vllm.versions import parse_vllm_version


@flow(name="health-check", flow_run_name="health-{target}")
def health_check(
    target: str = "spark",
    engine: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    limits: dict[str, float] | None = None,
) -> HealthReport:
    """Check the target's server layer by layer; publish the verdict. Changes nothing on the machine.

    Args:
        target: name of the TargetMachine block (its ``host_memory_floor_gib`` is the host layer's floor).
        engine: name of an EngineSpec block (for the served model name); None = the runbook's.
        preset: a runbook tuning block (only the served name matters here).
        overrides: EngineSpec fields (only the served name matters here).
        limits: health limits for this run only, over the `HealthLimits` block ``default`` (UI: Blocks ->
            vLLM Health Limits), e.g. ``{"ttft_p99_s": 10, "kv_cache_full_for_s": 600}``; a key that is no
            limit fails the run naming the valid ones.
    """
    started = time.monotonic()
    thresholds = _limits(limits)
    resolved = load_target(target, engine, preset, overrides)
    machine, served = resolved.machine, resolved.spec.served_name
    before = health_state(machine.name)
    record = last_healthy_record(machine.name)
    now = time.time()

    # The container: docker's state, restarts, exit code, OOMKilled.
    container = inspect_container(resolved.docker_host, machine.name)
    # Health, readiness, function, progress: /health, /v1/models, the smoke question, /metrics.
    endpoints = probe_endpoints(
        machine.endpoint,
        served,
        resolved.secrets.api_key,
        timeout_s=thresholds.answer_budget_s,
        first_token_stall_s=thresholds.first_token_stall_s,
    )
    # The host: MemAvailable, read in the running server.
    server_id = container.container_id if container.exists and container.status == "running" else None
    memory = read_host_memory(resolved.docker_host, server_id, machine.meminfo_command) if server_id else None

    # Which vLLM: the server's GET /version, else the last healthy server's word (its metric names).
    vllm = endpoints.vllm_version or record.vllm_version
    # The verdict: the first rule of the table that matches, and every layer.
    metrics = _snapshot(endpoints.metrics_text, endpoints.metrics_at or now, vllm)
    service = _snapshot(endpoints.metrics_before_text, endpoints.metrics_before_at or now, vllm)
    observation = _observation(
        container,
        endpoints,
        (metrics, service),
        memory,
        machine=machine,
        before=before,
        record=record,
        now=now,
    )
    report = evaluate(observation, thresholds).model_copy(update={"vllm_version": vllm})

    # Report: the state for the next check, the event (unhealthy triggers recover-vllm) and the incident
    # (opened, escalated or closed: one message each), the artifacts.
    since = verdict_since(before.verdict, before.since, report.verdict.value, record.at, datetime.now(UTC))
    save_health_state(machine.name, _state(report, since, now, container, metrics, before))
    report_service_event(
        machine.name,
        ServiceEvent(report.verdict.value),
        {"layer": report.layer.value, "condition": report.condition.value, "reason": report.reason, "since": since},
        vllm_version=vllm,
        incident=since if report.verdict is Verdict.UNHEALTHY else None,
    )
    history_key = artifact_key("health-history", machine.name)
    history = [*health_history(machine.name, history_key), history_row(report, now)][-HEALTH_HISTORY:]
    duration = round(time.monotonic() - started, 3)
    _publish(machine, served, report, since, history, duration, record)
    get_run_logger().info(
        "%s: %s (%s): %s [%.2f s]", machine.name, report.verdict.value, report.layer.value, report.reason, duration
    )
    return report


def _limits(overrides: dict[str, float] | None) -> Thresholds:
    """The `HealthLimits` block's limits (the defaults when none is saved, said once in the run's log), with
    this run's overrides."""
    saved = load_health_limits(HEALTH_LIMITS_BLOCK)
    if saved is None:
        get_run_logger().warning(
            "no HealthLimits block %r: the default limits apply (python -m deployments.setup saves it)",
            HEALTH_LIMITS_BLOCK,
        )
    return (saved or Thresholds()).overridden(overrides)


def _snapshot(text: str | None, now: float, vllm: str | None) -> MetricsSnapshot | None:
    """This check's /metrics numbers, by the names of the server's vLLM (unknown: every version's);
    None when the server gave none or not Prometheus text."""
    if not text:
        return None
    try:
        version = parse_vllm_version(vllm) if vllm else None
    except ValueError:  # a record edited by hand: every version's names
        version = None
    try:
        return parse_metrics(text, now, version)
    except ValueError:
        return None


def _never_deployed_or_running(
    record: HealthyRecord, container: ContainerFacts
) -> Literal["running", "never-deployed"]:
    """The desired state of a target nobody recorded one for: "never-deployed" when nothing of ours ever
    ran there (no healthy record, no container: the demo's Spark), else "running" (a first deploy in
    progress, or a server from before desired states were recorded)."""
    return "running" if record.at or record.spec or container.exists else "never-deployed"


def _observation(
    container: ContainerFacts,
    endpoints: EndpointFacts,
    reads: tuple[MetricsSnapshot | None, MetricsSnapshot | None],
    memory: MemInfo | None,
    *,
    machine: TargetMachine,
    before: HealthState,
    record: HealthyRecord,
    now: float,
) -> Observation:
    """What the probes saw, with what the previous check and the last deploy left, for `evaluate`;
    ``reads`` are /metrics after and before the smoke question."""
    metrics, service = reads
    return Observation(
        desired=desired_state(machine.name) or _never_deployed_or_running(record, container),
        now=now,
        exists=container.exists,
        status=container.status,
        restart_count_since_deploy=container.restart_count,
        exit_code=container.exit_code,
        oom_killed=container.oom_killed,
        started_at=container.started_at,
        previous_restart_count=before.restart_count,
        health_status=endpoints.health_status,
        health_latency_s=endpoints.health_latency_s,
        models_listed=endpoints.models_listed,
        answer_ok=endpoints.answer_ok,
        answer_latency_s=endpoints.answer_latency_s,
        answer_detail=(endpoints.answer_error or f"answered {endpoints.answer!r}")
        if endpoints.answer_ok is False
        else None,
        stalled_s=endpoints.stalled_s,
        metrics=metrics,
        previous=before.metrics,
        service=service,
        held_since=before.streaks,
        memory=memory,
        memory_floor_gib=machine.host_memory_floor_gib,
        degraded=record.degraded,
    )


def _state(
    report: HealthReport,
    since: str,
    now: float,
    container: ContainerFacts,
    metrics: MetricsSnapshot | None,
    before: HealthState,
) -> HealthState:
    """What the next check needs of this one: the verdict and since when, the restarts, the last
    /metrics numbers read after the smoke question (the previous check's when this one read none, so a
    wedge can still be judged; the next service-level window starts there), and the service-level streaks."""
    return HealthState(
        verdict=report.verdict,
        since=since,
        checked_at=now,
        layer=report.layer,
        reason=report.reason[:300],
        metrics=metrics or before.metrics,
        restart_count=container.restart_count,
        streaks=report.streaks,
    )


def _publish(
    machine: TargetMachine,
    served: str,
    report: HealthReport,
    since: str,
    history: list[dict],
    duration: float,
    record: HealthyRecord,
) -> None:
    """The status artifact (one key per target: Prefect keeps its versions) and the history table."""
    rows = {
        "verdict": report.verdict.value,
        "since": since,
        "deciding layer": report.layer.value,
        "endpoint": machine.endpoint,
        "served model": served,
        "vLLM": report.vllm_version,
        "running spec": record.spec_hash,
        "degraded spec": record.degraded,
        "last healthy deploy or recovery": record.at.isoformat() if record.at else None,
        "check took (s)": duration,
    }
    publish_report(
        artifact_key("health", machine.name),
        f"{machine.name}: {report.verdict.value}",
        rows,
        {"Layers": report.markdown()},
    )
    create_table_artifact(
        table=list(reversed(history)),
        key=artifact_key("health-history", machine.name),
        description=f"The last {len(history)} health checks of {machine.name}, newest first",
    )
