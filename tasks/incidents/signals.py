"""Which service events open, escalate, fix or close an incident: the one table (`SIGNAL_RULES`).

Every ``vllm.service.<what>`` event a flow emits (tasks/events.py `ServiceEvent`) passes through
`signal_of`: the first rule for its event whose ``when`` holds on the payload decides the `Signal`.
The table is checked at import: every event of the vocabulary has a rule that always applies last,
so a new event cannot be forgotten here. Each rule says why it does what it does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.events import ServiceEvent
from tasks.health.verdict import SERVICE_LEVEL_CONDITIONS
from tasks.incidents.machine import Effect, Signal
from tasks.report import artifact_key

__all__ = ["SIGNAL_RULES", "SignalRule", "signal_of"]

Payload = Mapping[str, Any]


@dataclass(frozen=True)
class SignalRule:
    """How one service event (under a condition on its payload) affects the target's incident.

    Attributes:
        event: the service event.
        effect: what it does.
        what: what happened, a few words (the message's headline).
        cause: the cause, with the numbers, from the payload.
        fix: what to do or what happens next.
        report: the artifact the message links to: ``<report>-<target>`` (health, deploy, recover, stop).
        why: why the rule does what it does.
        when: the condition on the payload (None: always; the last rule of an event must be that).
        by: for FIXED: who brought the target back, from the payload.
        opens_alone: for ESCALATE: opens an incident already escalated when none is open.
    """

    event: ServiceEvent
    effect: Effect
    what: str
    cause: Callable[[Payload], str]
    fix: Callable[[Payload], str]
    report: str
    why: str
    when: Callable[[Payload], bool] | None = None
    by: Callable[[Payload], str] | None = None
    opens_alone: bool = False


def _text(key: str) -> Callable[[Payload], str]:
    return lambda p: str(p.get(key) or "")


def _none(_: Payload) -> str:
    return ""


def _check_reason(p: Payload) -> str:
    layer = p.get("layer")
    return f"{layer}: {p.get('reason', '')}" if layer else str(p.get("reason", ""))


def _service_level(p: Payload) -> bool:
    return p.get("condition") in SERVICE_LEVEL_CONDITIONS


def _gate_missed(p: Payload) -> bool:
    return bool(p.get("gate"))


def _down(p: Payload) -> bool:
    return bool(p.get("down"))


def _recovered_by(p: Payload) -> str:
    classes = ", ".join(p.get("classes") or []) or "a plain restart"
    failure = f" after {p['failure']}" if p.get("failure") else ""
    degraded = f"; running a lowered spec: {p['degraded']}" if p.get("degraded") else ""
    return f"recover-vllm ({classes}{failure}){degraded}"


def _deployed_by(p: Payload) -> str:
    return f"deploy-qwen (spec {p.get('spec_hash', '?')})"


_RECOVERS = (
    "recover-vllm runs now (the recover-on-unhealthy automation); if it cannot bring the server back, one more"
    " message says so"
)

#: The table: per event, its rules in order, the unconditional one last.
SIGNAL_RULES: tuple[SignalRule, ...] = (
    SignalRule(
        ServiceEvent.UNHEALTHY,
        Effect.OPEN,
        "unhealthy",
        _check_reason,
        lambda p: _RECOVERS,
        "health",
        why="a check saw the target not serving: the operator's first message (the recovery starts at the same event)",
    ),
    SignalRule(
        ServiceEvent.DEGRADED,
        Effect.OPEN,
        "service level breached",
        _check_reason,
        lambda p: (
            "the figures and the limit are in the health report; the limits are the block"
            " vllm-health-limits/default (UI: Blocks)"
        ),
        "health",
        when=_service_level,
        why="a service-level rule fired (tasks/health/verdict.py SERVICE_LEVEL_CONDITIONS): users feel it",
    ),
    SignalRule(
        ServiceEvent.DEGRADED,
        Effect.CLEAR,
        "serving",
        _check_reason,
        _none,
        "health",
        why="any other degraded condition (a recovered spec, a restart in the past, a slow answer) still serves",
    ),
    SignalRule(
        ServiceEvent.HEALTHY,
        Effect.CLEAR,
        "serving",
        _none,
        _none,
        "health",
        why="a check sees the target serving: the incident is over",
    ),
    SignalRule(
        ServiceEvent.STARTING,
        Effect.NONE,
        "starting",
        _none,
        _none,
        "health",
        why="a server loading within its startup budget is neither down nor back",
    ),
    SignalRule(
        ServiceEvent.STOPPED,
        Effect.END,
        "stopped on purpose",
        _none,
        _none,
        "stop",
        why="stop-qwen, or a check of a target stopped or never deployed: nothing is wanted, nothing more is sent",
    ),
    SignalRule(
        ServiceEvent.DEPLOYED,
        Effect.OPEN,
        "benchmark gate missed",
        _text("gate"),
        lambda p: "the new server serves below its gate (on_failure: warn); see the deploy report's gate table",
        "deploy",
        when=_gate_missed,
        why="the server serves, but slower than its spec's gate asks",
    ),
    SignalRule(
        ServiceEvent.DEPLOYED,
        Effect.FIXED,
        "deployed",
        _none,
        _none,
        "deploy",
        by=_deployed_by,
        why="a person's deploy passed its gate: the close message names it",
    ),
    SignalRule(
        ServiceEvent.UNCHANGED,
        Effect.FIXED,
        "deployed",
        _none,
        _none,
        "deploy",
        by=_deployed_by,
        why="a deploy found the same spec serving: it proved the server answers",
    ),
    SignalRule(
        ServiceEvent.FAILED,
        Effect.ESCALATE,
        "target down",
        _text("reason"),
        lambda p: "no server serves: fix the cause above and run deploy-qwen again",
        "deploy",
        when=_down,
        opens_alone=True,
        why="a deploy ended with no server on the target: the worst outcome, escalated even with nothing open",
    ),
    SignalRule(
        ServiceEvent.FAILED,
        Effect.OPEN,
        "benchmark gate missed",
        _text("reason"),
        lambda p: "the new server missed its benchmark gate (on_failure: fail); see the deploy report",
        "deploy",
        when=lambda p: p.get("kind") == "BenchGateFailed",
        why="a missed gate with nothing to roll back to: the server serves below its gate",
    ),
    SignalRule(
        ServiceEvent.FAILED,
        Effect.NONE,
        "deploy failed",
        _text("reason"),
        _none,
        "deploy",
        why="the deploy failed and the server it found still serves: the person who ran it reads the run",
    ),
    SignalRule(
        ServiceEvent.ROLLED_BACK,
        Effect.OPEN,
        "rolled back",
        _text("reason"),
        lambda p: f"the last healthy spec {p.get('spec_hash', '?')} serves again; fix the new spec and deploy again",
        "deploy",
        why="the requested spec did not hold: the target serves the old one, which nobody asked for",
    ),
    SignalRule(
        ServiceEvent.RECOVERING,
        Effect.NONE,
        "recovering",
        _none,
        _none,
        "recover",
        why="progress of a recovery: its end says more",
    ),
    SignalRule(
        ServiceEvent.RECOVERED,
        Effect.FIXED,
        "recovered",
        _none,
        _none,
        "recover",
        by=_recovered_by,
        why="recover-vllm brought it back: the close message names what it did",
    ),
    SignalRule(
        ServiceEvent.RECOVERY_FAILED,
        Effect.ESCALATE,
        "recovery failed",
        lambda p: f"[{p.get('kind', '?')}] after {p.get('attempts', '?')} start(s)",
        lambda p: str(p.get("next_step") or "see the recover report"),
        "recover",
        why="the automation could not bring it back: a person is needed; inside a deploy, the deploy's own "
        "event says whether the target is down, so it never opens an incident alone",
    ),
    SignalRule(
        ServiceEvent.NEEDS_OPERATOR,
        Effect.ESCALATE,
        "needs an operator",
        _text("reason"),
        lambda p: "recovery stops here: find the cause in the recover reports, then run deploy-qwen",
        "recover",
        opens_alone=True,
        why="the cap on failing recoveries is reached: nothing automatic will act any more",
    ),
)


def _check_table(rules: tuple[SignalRule, ...]) -> None:
    for event in ServiceEvent:
        mine = [r for r in rules if r.event is event]
        if not mine or mine[-1].when is not None:
            raise ValueError(f"SIGNAL_RULES: {event.value} needs rules ending with one without `when`")
        if any(r.when is None for r in mine[:-1]):
            raise ValueError(f"SIGNAL_RULES: {event.value} has an unconditional rule before its last")


_check_table(SIGNAL_RULES)


def signal_of(event: ServiceEvent, payload: Payload) -> Signal:
    """The service event (with its payload) as the target's incident sees it: the first matching rule."""
    rule = next(r for r in SIGNAL_RULES if r.event is event and (r.when is None or r.when(payload)))
    target = str(payload.get("target") or "")
    return Signal(
        effect=rule.effect,
        what=rule.what,
        cause=rule.cause(payload)[:500],
        fix=rule.fix(payload)[:300],
        artifact=artifact_key(rule.report, target) if target else "",
        by=rule.by(payload) if rule.by else "",
        opens_alone=rule.opens_alone,
    )
