"""What the fleet flows show of the router: a column of the fleet table, and the router's own table."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from tasks.report import artifact_key
from tasks.router.api import RouterUnreachable, read_status, router_client
from tasks.router.sync import Membership

#: The router's table artifact: `fleet-router-<fleet>`.
ROUTER_ARTIFACT = "fleet-router"


def router_column(membership: Membership | None, target: str) -> str:
    """The fleet table's "router" cell: "in", "out: <why>", or "" when the fleet has no router (pure)."""
    if membership is None:
        return ""
    if membership.error:
        return f"unknown: {membership.error}"
    why = membership.reasons.get(target, "")
    return "in" if target in membership.members else f"out: {why}"


@task(name="router-status", task_run_name="report the router of {fleet}")
def publish_router_status(fleet: str, membership: Membership | None) -> list[dict[str, Any]]:
    """The router's table (`fleet-router-<fleet>`): its /health, then a row per worker it lists, with the
    router's own health check of it and the requests it sent there."""
    if membership is None:  # the fleet has no router
        return []
    try:
        with router_client(membership.router) as http:
            status = read_status(http, membership.metrics_url)
    except RouterUnreachable as err:
        rows: list[dict[str, Any]] = [
            {"worker": membership.router, "target": "(the router)", "health": f"unreachable: {err}", "requests": None}
        ]
    else:
        targets = {url: t for t, url in membership.urls.items()}
        front = {"worker": membership.router, "target": "(the router)", "health": status.health}
        rows = [{**front, "requests": status.requests_total}]
        rows += [
            {
                "worker": url,
                "target": targets.get(url, "(not a fleet target)"),
                "health": "healthy" if healthy else "failing its /health",
                "requests": status.per_worker.get(url, 0),
            }
            for url, healthy in status.workers.items()
        ]
    create_table_artifact(
        table=rows, key=artifact_key(ROUTER_ARTIFACT, fleet), description=f"router of {fleet}: {rows[0]['health']}"
    )
    return rows
