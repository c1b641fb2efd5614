"""Keep the fleet's router listing exactly the targets that may serve; drain one for an update.

`follow_verdicts` is the one place that changes the router's worker list from the targets' state
(tasks/router/membership.py decides): deploy-fleet calls it after its deploys, health-check-fleet
at every run (every 5 minutes, and when a target turns unhealthy), rolling-update after each target,
and the router's launcher once the router listens (a restarted router starts empty). A fleet with
no router block has none of this: each step logs so and goes on.
"""

from __future__ import annotations

import logging
import time

import httpx
from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from pydantic import BaseModel

from blocks.router import FleetRouter
from blocks.target import TargetMachine
from tasks.fleet import latest_outcome
from tasks.router.api import RouterUnreachable, add_worker, list_workers, remove_worker, router_client
from tasks.router.membership import MemberEvidence, MembershipPlan, deploy_evidence, plan
from tasks.state import health_state, router_draining, set_router_draining
from tasks.vllm.api import METRICS_PATH, vllm_client
from tasks.vllm.metrics import parse_metrics

#: How often a drain reads the target's running requests.
DRAIN_POLL_S = 0.5


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # the launcher, outside any run
        return logging.getLogger(__name__)


def load_router(fleet: str) -> FleetRouter | None:
    """The fleet's router block (None: the fleet has no router)."""
    try:
        return FleetRouter.named(fleet)
    except ValueError:
        return None


class Membership(BaseModel):
    """The router's list after a sync: who is in, who is out and why, what was changed."""

    router: str  # its URL
    metrics_url: str = ""  # its Prometheus endpoint
    urls: dict[str, str] = {}  # target -> the URL the router reaches it at
    error: str = ""  # the router could not be read or changed: nothing else here is known
    members: list[str] = []
    reasons: dict[str, str] = {}  # target -> why in or out
    added: list[str] = []
    removed: list[str] = []
    strangers: list[str] = []  # router workers that are no target of the fleet


def follow_verdicts(fleet: str) -> Membership | None:
    """Add and remove the fleet's targets (its router block names them) so the router lists those
    `membership.wanted` keeps, from each one's last deploy and last health check."""
    router = load_router(fleet)
    if router is None:
        _logger().info("fleet %s has no router (no vllm-fleet-router block %r): nothing to update", fleet, fleet)
        return None
    draining = router_draining(fleet)
    evidence = [e for e in (_evidence(t, draining) for t in router.targets) if e is not None]
    urls = {item.target: item.url for item in evidence}
    try:
        change = _apply(fleet, router, evidence)
    except (RouterUnreachable, httpx.HTTPError) as err:
        _logger().error("router %s: its workers could not be updated: %s", fleet, err)
        return Membership(router=router.url, metrics_url=router.metrics_url, urls=urls, error=str(err)[:300])
    if change.strangers:
        _logger().warning("router %s also routes to %s, no target of the fleet (left alone)", fleet, change.strangers)
    return Membership(
        router=router.url,
        metrics_url=router.metrics_url,
        urls=urls,
        members=list(change.members),
        reasons=dict(change.reasons),
        added=[i.target for i in change.add],
        removed=[i.target for i in change.remove],
        strangers=list(change.strangers),
    )


def _evidence(target: str, draining: str | None) -> MemberEvidence | None:
    """What the server's records say of ``target``: its last health check and its last deploy (None:
    its target block is gone; the router's worker of it, if any, is then a stranger, left alone)."""
    try:
        url = TargetMachine.named(target).endpoint
    except ValueError:
        _logger().warning("router: target %s of the fleet has no target block: register the fleet again", target)
        return None
    health = health_state(target)
    deploy = latest_outcome(target)
    return MemberEvidence(
        target=target,
        url=url,
        verdict=health.verdict,
        verdict_at=health.checked_at,
        deploy=deploy_evidence(deploy[0].verdict != "failed", deploy[0].spec_hash) if deploy else None,
        deploy_at=deploy[1] if deploy else None,
        draining=target == draining,
    )


def _apply(fleet: str, router: FleetRouter, evidence: list[MemberEvidence]) -> MembershipPlan:
    """Read the router's workers, then add and remove what `plan` says; one log line per change."""
    with router_client(router.url) as http:
        change = plan(evidence, list_workers(http))
        for item in change.add:
            add_worker(http, item.url)
            _logger().info("router %s: added %s (%s): %s", fleet, item.target, item.url, change.reasons[item.target])
        for item in change.remove:
            remove_worker(http, item.url)
            _logger().info("router %s: removed %s (%s): %s", fleet, item.target, item.url, change.reasons[item.target])
    return change


@task(name="router-follow-verdicts", task_run_name="router of {fleet}: follow the verdicts")
def sync_router(fleet: str) -> Membership | None:
    """`follow_verdicts` as a task of a fleet flow (its own line in the UI)."""
    return follow_verdicts(fleet)


class Drain(BaseModel):
    """How a drain went: ``out`` once the router no longer sends to the target (or there is no router)."""

    out: bool
    text: str  # for the update's report: "drained in 2.1 s", "3 still running after 300 s (cut off)"


@task(name="router-drain", task_run_name="drain {target} from the router of {fleet}")
def drain(fleet: str, target: str) -> Drain:
    """Take ``target`` out of the router, then wait until its running requests finish (or the drain
    timeout): nothing new reaches it, and nothing sent to it is cut off by its replacement. A router
    the flow cannot tell is not drained from: the update must stop there (its clients would fail)."""
    router = load_router(fleet)
    if router is None:
        return Drain(out=True, text="no router")
    set_router_draining(fleet, target)
    membership = follow_verdicts(fleet)
    if membership is not None and membership.error:
        set_router_draining(fleet, None)
        return Drain(out=False, text=f"the router at {router.url} could not be told: {membership.error[:200]}")
    machine = TargetMachine.named(target)
    started = time.monotonic()
    running = _running(machine)
    while running and time.monotonic() - started < router.drain_timeout_s:
        time.sleep(DRAIN_POLL_S)
        running = _running(machine)
    seconds = time.monotonic() - started
    done = f"drained in {seconds:.1f} s" if not running else f"{running} still running after {seconds:.0f} s (cut off)"
    _logger().info("router %s: %s out of the router, %s", fleet, target, done)
    return Drain(out=True, text=done)


@task(name="router-undrain", task_run_name="{target} back in the router of {fleet} if it may serve")
def undrain(fleet: str, target: str) -> Membership | None:
    """End the drain; the target rejoins when its newest evidence says it may serve (its deploy passed
    or rolled back, and the health check after it, if any, is healthy)."""
    set_router_draining(fleet, None)
    return follow_verdicts(fleet)


def _running(machine: TargetMachine) -> int:
    """Requests the target's server is running or holding (0 when it does not answer: nothing to wait for)."""
    try:
        with vllm_client(machine.endpoint, timeout=5) as http:
            response = http.get(METRICS_PATH)
            response.raise_for_status()
    except httpx.HTTPError:  # a server that does not answer runs nothing to drain
        return 0
    snapshot = parse_metrics(response.text, time.time())
    return (snapshot.requests_running or 0) + (snapshot.requests_waiting or 0)
