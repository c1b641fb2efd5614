"""The fleet flows: the same flows on every Spark of a fleet, through Prefect's pool, queues and workers.

    prefect deployment run deploy-fleet/sparks                   # every target at once
    prefect deployment run health-check-fleet/sparks             # one view (also every 5 minutes)
    prefect deployment run rolling-update/sparks --params '{"preset": "throughput"}'

Each target has its own deployments (deploy-qwen/<target>, health-check/<target>, ...) on the
`spark-vllm` pool's queue named after it, polled by the worker on that machine (docs/fleet.md:
`python -m deployments.fleet register`). These flows only ask Prefect to run those deployments and
wait: the deploy of one target runs on its machine, under its own `gpu:<target>` limit, and its
failure never blocks another's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.target import TargetMachine
from tasks.errors import SparkVllmError
from tasks.fleet import TargetRun, fleet_row, now_epoch, run_on_target
from tasks.report import artifact_key, markdown_table
from tasks.state import health_state, last_healthy_record

#: The per-target deployments the fleet flows run (their flow names; the deployment is <flow>/<target>).
DEPLOY_FLOW = "deploy-qwen"
HEALTH_FLOW = "health-check"


class FleetDeployFailed(SparkVllmError):
    """Some targets did not deploy (the others did: the fleet table says which)."""


class RollingUpdateStopped(SparkVllmError):
    """The rolling update stopped at a target; the ones after it still run the old spec."""


def _deploy_parameters(
    engine: str | None, preset: str | None, overrides: dict[str, Any] | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        k: v for k, v in (("engine", engine), ("preset", preset), ("overrides", overrides)) if v is not None
    }
    return {**parameters, **(extra or {})}


def _rows(runs: Mapping[str, TargetRun | None]) -> list[dict[str, Any]]:
    """One row per target: this run's verdict, what serves (from the server's records), last check."""
    now = now_epoch()
    rows = []
    for target, run in runs.items():
        try:
            endpoint = TargetMachine.named(target).endpoint
        except ValueError:
            endpoint = "(no target block)"
        rows.append(fleet_row(target, endpoint, run, last_healthy_record(target), health_state(target), now))
    return rows


def _table(fleet: str, kind: str, runs: Mapping[str, TargetRun | None], description: str) -> list[dict[str, Any]]:
    """The fleet table artifact `<kind>-<fleet>` of `_rows`."""
    rows = _rows(runs)
    create_table_artifact(table=rows, key=artifact_key(kind, fleet), description=description)
    return rows


@flow(name="deploy-fleet", flow_run_name="deploy-fleet-{fleet}")
def deploy_fleet(
    targets: list[str],
    fleet: str = "fleet",
    engine: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    per_target: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Deploy every target at once, each through deploy-qwen/<target> on its own machine.

    Args:
        targets: the fleet's target names (the registered fleet deployment fills them in).
        fleet: the fleet's name (artifact `fleet-<fleet>`).
        engine, preset, overrides: deploy-qwen's parameters, the same for every target.
        per_target: more deploy-qwen parameters for some targets, e.g. {"spark-b": {"overrides":
            {"gpu_memory_utilization": 0.8}}} (they win over the common ones).

    Returns:
        The fleet table's rows. The flow fails, after publishing the table, when a target failed.
    """
    common = _deploy_parameters(engine, preset, overrides, None)
    futures = {
        t: run_on_target.submit(f"{DEPLOY_FLOW}/{t}", t, {**common, **(per_target or {}).get(t, {})}, with_outcome=True)
        for t in targets
    }
    runs = {t: future.result() for t, future in futures.items()}
    failed = [r for r in runs.values() if not r.ok]
    rows = _table(
        fleet, "fleet", runs, f"deploy-fleet {fleet}: {len(targets) - len(failed)} of {len(targets)} deployed"
    )
    if failed:
        raise FleetDeployFailed(
            f"{len(failed)} of {len(targets)} targets did not deploy (the others did): "
            + "; ".join(f"{r.target}: {r.state} {r.why}" for r in failed)
        )
    return rows


@flow(name="health-check-fleet", flow_run_name="health-check-fleet-{fleet}")
def health_check_fleet(targets: list[str], fleet: str = "fleet", run_checks: bool = False) -> list[dict[str, Any]]:
    """One status view of the whole fleet (table artifact `fleet-health-<fleet>`).

    Args:
        targets: the fleet's target names.
        fleet: the fleet's name.
        run_checks: run health-check/<target> on every target first (at once) and wait; off: read
            the verdicts their own schedules left (every 5 minutes), which costs nothing on the machines.
    """
    runs: dict[str, TargetRun | None] = {t: None for t in targets}
    if run_checks:
        futures = {t: run_on_target.submit(f"{HEALTH_FLOW}/{t}", t) for t in targets}
        runs = {t: future.result() for t, future in futures.items()}
    rows = _table(fleet, "fleet-health", runs, f"health-check-fleet {fleet}")
    verdicts = {row["target"]: row["last_health_check"] for row in rows}
    get_run_logger().info("fleet %s: %s", fleet, ", ".join(f"{t} {v}" for t, v in verdicts.items()))
    return rows


@flow(name="rolling-update", flow_run_name="rolling-update-{fleet}")
def rolling_update(
    targets: list[str],
    fleet: str = "fleet",
    engine: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    per_target: dict[str, dict[str, Any]] | None = None,
    health_check: bool = True,
    stop_on_degraded: bool = True,
) -> list[dict[str, Any]]:
    """Move every target to a new spec, one at a time, in order; stop at the first that fails.

    Each target is deployed through deploy-qwen/<target> (its readiness gate, smoke test and the
    spec's benchmark gate, with rollback to its last healthy spec on failure), then health-checked
    (health-check/<target> must say healthy) before the next is touched. A failure leaves that
    target on its last healthy spec (the deploy rolled it back) and the rest untouched, on the old
    spec; the report says which target runs which spec.

    Args:
        targets: the order of the update.
        fleet: the fleet's name (artifact `rolling-update-<fleet>`).
        engine, preset, overrides: the new spec (deploy-qwen's parameters).
        per_target: more deploy-qwen parameters for some targets.
        health_check: require a healthy health check after each deploy.
        stop_on_degraded: a deploy that recovery left on a lower spec ("requested X, running Y") stops it too.
    """
    common = _deploy_parameters(engine, preset, overrides, None)
    runs: dict[str, TargetRun | None] = {t: None for t in targets}
    steps: list[tuple[str, str]] = []
    stopped: str | None = None
    for target in targets:
        runs[target], problem = _update_one(
            target, {**common, **(per_target or {}).get(target, {})}, health_check, stop_on_degraded
        )
        steps.append((target, "updated" if problem is None else f"STOPPED: {problem}"))
        if problem is not None:
            stopped = f"{target}: {problem}"
            break
    for target in targets[len(steps) :]:
        steps.append((target, "not attempted: still on the old spec"))
    rows = _publish_update(fleet, runs, dict(steps), stopped)
    if stopped is not None:
        others = [f"{t}: {step}" for t, step in steps if not step.startswith("STOPPED")]
        raise RollingUpdateStopped(f"stopped at {stopped}" + (f"; {', '.join(others)}" if others else ""))
    return rows


def _update_one(
    target: str, parameters: dict[str, Any], health_check: bool, stop_on_degraded: bool
) -> tuple[TargetRun, str | None]:
    """One step of a rolling update: deploy the target, then check it; the problem that stops the update, if any."""
    run = run_on_target(f"{DEPLOY_FLOW}/{target}", target, parameters, with_outcome=True)
    if not run.ok:
        return run, f"deploy {run.state.lower()}: {run.why}"
    if stop_on_degraded and run.outcome is not None and run.outcome.degraded:
        return run, f"deployed DEGRADED ({run.outcome.degraded})"
    if health_check:
        check = run_on_target(f"{HEALTH_FLOW}/{target}", target)
        health = health_state(target)
        if not check.ok or health.verdict != "healthy":
            return run, f"health check after the deploy: {health.verdict or check.state} {health.reason}"
    return run, None


def _publish_update(
    fleet: str, runs: Mapping[str, TargetRun | None], steps: dict[str, str], stopped: str | None
) -> list[dict[str, Any]]:
    """The rolling update's table (a row per target: its step and what serves) and its report."""
    rows = [{"target": row["target"], "step": steps[row["target"]], **row} for row in _rows(runs)]
    done = "done" if stopped is None else "STOPPED"
    create_table_artifact(
        table=rows, key=artifact_key("rolling-update", fleet), description=f"rolling-update {fleet}: {done}"
    )
    create_markdown_artifact(
        key=artifact_key("rolling-update-report", fleet),
        description=f"rolling-update {fleet}: "
        + ("every target updated" if stopped is None else f"stopped at {stopped}"),
        markdown="\n".join(
            [
                f"# rolling-update {fleet}: {done}",
                "",
                markdown_table(
                    ("target", "step", "runs spec", "degraded"),
                    [(r["target"], r["step"], r["spec"], r["degraded"]) for r in rows],
                ),
            ]
        ),
    )
    return rows
