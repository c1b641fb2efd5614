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
from tasks.router.report import publish_router_status, router_column
from tasks.router.sync import Membership, drain, sync_router, undrain
from tasks.state import health_state, last_healthy_record

#: The per-target deployments the fleet flows run (their flow names; the deployment is <flow>/<target>).
DEPLOY_FLOW = "deploy-qwen"
HEALTH_FLOW = "health-check"


#: What a rolling update of one target means for clients (its log and its report say it).
ONE_TARGET_GAP = (
    "rolling-update of one target: clients have no server from its drain until it is back in the router "
    "(the router answers 503 meanwhile, for as long as the deploy takes); add a second target to update without a gap"
)


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


def _rows(runs: Mapping[str, TargetRun | None], membership: Membership | None = None) -> list[dict[str, Any]]:
    """One row per target: this run's verdict, what serves (from the server's records), last check,
    whether the fleet's router sends to it."""
    now = now_epoch()
    rows = []
    for target, run in runs.items():
        try:
            endpoint = TargetMachine.named(target).endpoint
        except ValueError:
            endpoint = "(no target block)"
        row = fleet_row(target, endpoint, run, last_healthy_record(target), health_state(target), now)
        rows.append({**row, "router": router_column(membership, target)})
    return rows


def _table(
    fleet: str,
    kind: str,
    runs: Mapping[str, TargetRun | None],
    description: str,
    membership: Membership | None = None,
) -> list[dict[str, Any]]:
    """The fleet table artifact `<kind>-<fleet>` of `_rows`."""
    rows = _rows(runs, membership)
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
    membership = sync_router(fleet)
    rows = _table(
        fleet,
        "fleet",
        runs,
        f"deploy-fleet {fleet}: {len(targets) - len(failed)} of {len(targets)} deployed",
        membership,
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
    membership = sync_router(fleet)
    rows = _table(fleet, "fleet-health", runs, f"health-check-fleet {fleet}", membership)
    publish_router_status(fleet, membership)
    verdicts = {
        row["target"]: f"{row['last_health_check']}{' ' + row['router'] if row['router'] else ''}" for row in rows
    }
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

    Each target is taken out of the fleet's router and drained (its running requests finish; the
    other targets take the new ones), deployed through deploy-qwen/<target> (its readiness gate, smoke
    test and the spec's benchmark gate, with rollback to its last healthy spec on failure), then
    health-checked (health-check/<target> must say healthy) and put back in the router before the
    next is touched: clients of the router see no failed request. A failure leaves that
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
    drains: dict[str, str] = {}
    stopped: str | None = None
    if len(targets) == 1:
        get_run_logger().warning(ONE_TARGET_GAP)
    for target in targets:
        runs[target], problem, drained = _update_one(
            fleet, target, {**common, **(per_target or {}).get(target, {})}, health_check, stop_on_degraded
        )
        steps.append((target, "updated" if problem is None else f"STOPPED: {problem}"))
        drains[target] = drained
        if problem is not None:
            stopped = f"{target}: {problem}"
            break
    for target in targets[len(steps) :]:
        steps.append((target, "not attempted: still on the old spec"))
    rows = _publish_update(fleet, runs, dict(steps), drains, stopped)
    if stopped is not None:
        others = [f"{t}: {step}" for t, step in steps if not step.startswith("STOPPED")]
        raise RollingUpdateStopped(f"stopped at {stopped}" + (f"; {', '.join(others)}" if others else ""))
    return rows


def _update_one(
    fleet: str, target: str, parameters: dict[str, Any], health_check: bool, stop_on_degraded: bool
) -> tuple[TargetRun | None, str | None, str]:
    """One step of a rolling update: out of the router and drained, deployed, checked, back in the
    router if it may serve; the problem that stops the update (if any) and what the drain did."""
    drained = drain(fleet, target)
    if not drained.out:  # clients would keep sending to the server being replaced: touch nothing
        return None, f"not drained, not touched: {drained.text}", drained.text
    run = run_on_target(f"{DEPLOY_FLOW}/{target}", target, parameters, with_outcome=True)
    problem = _problem(run, target, health_check, stop_on_degraded)
    undrain(fleet, target)
    return run, problem, drained.text


def _problem(run: TargetRun, target: str, health_check: bool, stop_on_degraded: bool) -> str | None:
    """What stops the update after this target's deploy (None: it serves the new spec, healthy)."""
    if not run.ok:
        return f"deploy {run.state.lower()}: {run.why}"
    if stop_on_degraded and run.outcome is not None and run.outcome.degraded:
        return f"deployed DEGRADED ({run.outcome.degraded})"
    if health_check:
        check = run_on_target(f"{HEALTH_FLOW}/{target}", target)
        health = health_state(target)
        if not check.ok or health.verdict != "healthy":
            return f"health check after the deploy: {health.verdict or check.state} {health.reason}"
    return None


def _publish_update(
    fleet: str,
    runs: Mapping[str, TargetRun | None],
    steps: dict[str, str],
    drains: dict[str, str],
    stopped: str | None,
) -> list[dict[str, Any]]:
    """The rolling update's table (a row per target: its step, its drain and what serves) and its report."""
    rows = [
        {"target": row["target"], "step": steps[row["target"]], "drain": drains.get(row["target"], ""), **row}
        for row in _rows(runs, sync_router(fleet))
    ]
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
                    ("target", "step", "drain", "runs spec", "degraded", "router"),
                    [(r["target"], r["step"], r["drain"], r["spec"], r["degraded"], r["router"]) for r in rows],
                ),
                *(["", f"**{ONE_TARGET_GAP}**"] if len(rows) == 1 else []),
            ]
        ),
    )
    return rows
