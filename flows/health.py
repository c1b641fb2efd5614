"""health-check: is the target's server healthy, and if not, which layer says so? On a schedule.

    prefect deployment run health-check/spark          # or wait for its schedule (every 5 minutes)

The runbook's "Health Check" (`curl /health`, `curl /v1/models`, a test inference) and "Key Metrics
to Watch", done by a flow every few minutes, in layers, each with its own verdict: the container
(exists, state, restarts since the deploy, exit code, OOMKilled), liveness (/health; no answer
while loading is "starting", not dead), readiness (/v1/models lists the model), function (one tiny
deterministic request), progress (/metrics: requests in flight while no token is generated =
wedged, even when /health says 200: vllm issue 39863), host (MemAvailable, KV cache usage,
preemptions). The verdict is the pure `tasks.health.verdict.evaluate`. It publishes an event per check
(`vllm.service.<verdict>`: the unhealthy one's automation runs recover-vllm), a status artifact and
a history table; it never restarts anything itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.target import TargetMachine
from tasks.events import ServiceEvent, emit_service_event
from tasks.health.probes import inspect_container, probe_endpoints, read_host_memory
from tasks.health.verdict import (
    HealthReport,
    MetricsSnapshot,
    Observation,
    Thresholds,
    evaluate,
    history_row,
    parse_metrics,
)
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


@flow(name="health-check", flow_run_name="health-{target}")
def health_check(
    target: str = "spark",
    engine: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    thresholds: Thresholds = Thresholds(),
) -> HealthReport:
    """Check the target's server layer by layer; publish the verdict. Changes nothing on the machine.

    Args:
        target: name of the TargetMachine block.
        engine: name of an EngineSpec block (for the served model name); None = the runbook's.
        preset: a runbook tuning block (only the served name matters here).
        overrides: EngineSpec fields (only the served name matters here).
        thresholds: the verdict's limits (startup budget, latency budgets, wedge window, headroom).
    """
    started = time.monotonic()
    logger = get_run_logger()
    resolved = load_target(target, engine, preset, overrides)
    machine, spec, secrets = resolved.machine, resolved.spec, resolved.secrets
    docker_host = resolved.docker_host
    before = health_state(machine.name)
    record = last_healthy_record(machine.name)
    desired = desired_state(machine.name) or "running"
    now = time.time()

    container = inspect_container(docker_host, machine.name)
    endpoints = probe_endpoints(
        machine.endpoint, spec.served_name, secrets.api_key, timeout_s=thresholds.answer_budget_s
    )
    running = container.exists and container.status == "running"
    memory = read_host_memory(docker_host, container.container_id, machine.meminfo_command) if running else None
    metrics = _snapshot(endpoints.metrics_text, now)
    observation = Observation(
        desired=desired,
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
        answer_detail=f"answered {endpoints.answer!r}" if endpoints.answer_ok is False else None,
        metrics=metrics,
        previous=before.metrics,
        memory=memory,
        degraded=record.degraded,
    )
    report = evaluate(observation, thresholds)
    since = before.since if before.verdict == report.verdict else datetime.now(UTC).isoformat()
    row = history_row(report, now)
    history = [*health_history(machine.name, artifact_key("health-history", machine.name)), row][-HEALTH_HISTORY:]
    save_health_state(
        machine.name,
        HealthState(
            verdict=report.verdict,
            since=since,
            checked_at=now,
            layer=report.layer,
            reason=report.reason[:300],
            metrics=metrics or before.metrics,
            restart_count=container.restart_count,
        ),
    )
    emit_service_event(
        machine.name,
        ServiceEvent(report.verdict.value),
        {"layer": report.layer.value, "condition": report.condition.value, "reason": report.reason, "since": since},
    )
    duration = round(time.monotonic() - started, 3)
    _publish(machine, spec.served_name, report, since, history, duration, record)
    logger.info(
        "%s: %s (%s): %s [%.2f s]", machine.name, report.verdict.value, report.layer.value, report.reason, duration
    )
    return report


def _snapshot(text: str | None, now: float) -> MetricsSnapshot | None:
    if not text:
        return None
    try:
        return parse_metrics(text, now)
    except ValueError:
        return None


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
