"""An incident's life, as a pure state machine: signal + state + clock -> new state and at most one notice.

An incident opens at the first signal that something is wrong (a check sees the target unhealthy
or a service level breached, a deploy ends with the target down, a rollback, a missed benchmark
gate), escalates once when it gets worse (recovery failed, needs-operator, target down), and closes
when a check sees the target serving again, or when a person stops it on purpose. Each of those
three is one notice, so one incident is at most three messages; every other signal while it is
open is folded into it (``repeats``), silently.

What limits a flapping target: the opens of the last `IncidentPolicy.flap_window_s` are counted;
the incident that exceeds `IncidentPolicy.flap_limit` in that window is a *flapping* one. Its open
message says so, and it does not close at the first healthy check: it closes only once every check
has seen the target serving for `IncidentPolicy.flap_quiet_s` (an unhealthy check in between
restarts that count, silently). So a target that goes down and up every check sends at most
``3 * flap_limit`` messages plus one flapping incident's three per window, not two per check.

No I/O, no clock: tasks/incidents/track.py reads the state (a Prefect Variable), passes ``now``,
saves the state and emits the notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from tasks.events import IncidentEvent

__all__ = ["Effect", "Incident", "IncidentPolicy", "IncidentState", "Notice", "Signal", "advance_incident"]


class Effect(StrEnum):
    """What a signal does to the target's incident (tasks/incidents/signals.py maps events to effects)."""

    #: something is wrong: opens an incident, or is folded into the open one.
    OPEN = "open"
    #: it got worse: escalates the open incident once (opens an escalated one when `Signal.opens_alone`).
    ESCALATE = "escalate"
    #: someone or something brought it back (recover-vllm, a deploy): said in the close message.
    FIXED = "fixed"
    #: a check sees the target serving: closes the open incident.
    CLEAR = "clear"
    #: stopped on purpose (stop-qwen): closes the open incident at once; nothing is wanted of the target.
    END = "end"
    #: nothing to do with incidents (a check that sees it starting, a deploy that left the old server serving).
    NONE = "none"


@dataclass(frozen=True)
class Signal:
    """One service event as the incident sees it.

    Attributes:
        effect: what it does (`Effect`).
        what: what happened, a few words ("unhealthy", "rolled back", "needs an operator").
        cause: why, with the numbers (the check's reason, the classified failure).
        fix: what to do, or what happens next.
        artifact: the key of the report the message links to (``health-spark``).
        by: for FIXED: who brought it back ("recover-vllm: dropped the page cache").
        opens_alone: for ESCALATE: with no incident open, open one already escalated.
        vllm_version: the vLLM the event named, when it did (kept by an incident it opens).
    """

    effect: Effect
    what: str = ""
    cause: str = ""
    fix: str = ""
    artifact: str = ""
    by: str = ""
    opens_alone: bool = False
    vllm_version: str | None = None


class IncidentPolicy(BaseModel):
    """What limits the messages of a flapping target (the defaults follow the Spark watchdog's
    "at most 3 restarts per 6 h, then a person" on the scale of an hour)."""

    model_config = ConfigDict(frozen=True)

    flap_window_s: float = Field(3600.0, gt=0, description="the window the opens are counted in")
    flap_limit: int = Field(
        3, ge=1, description="incidents per window with their own messages; the next one is a flapping incident"
    )
    flap_quiet_s: float = Field(
        1800.0, ge=0, description="a flapping incident closes once the target served through this long"
    )


class Incident(BaseModel):
    """The target's open incident (small: it lives in a Prefect Variable)."""

    id: str
    opened_at: float
    what: str
    cause: str
    fix: str
    artifact: str = ""
    vllm_version: str | None = None
    #: what escalated it ("needs an operator: ..."); None: not escalated.
    escalation: str | None = None
    #: who brought it back, as the last FIXED signal said.
    fixed_by: str | None = None
    flapping: bool = False
    #: the incidents opened in the window, this one included (said in a flapping incident's messages).
    opens_in_window: int = 1
    #: further signals folded into it.
    repeats: int = 0
    #: outages in it: a new one begins when the target fails again after a FIXED signal (a recovery that
    #: served) before any check saw it serving.
    outages: int = 1
    #: a flapping incident: when the checks started seeing the target serving.
    clear_since: float | None = None


class IncidentState(BaseModel):
    """What one target's incidents need remembered between runs."""

    open: Incident | None = None
    #: when the recent incidents opened (epoch seconds), for the flap limit.
    opened: list[float] = Field(default_factory=list)


@dataclass(frozen=True)
class Notice:
    """One message to send: the incident as it stands after the signal, and what happened to it."""

    event: IncidentEvent
    incident: Incident
    signal: Signal
    now: float


def advance_incident(
    state: IncidentState, signal: Signal, now: float, incident_id: str, policy: IncidentPolicy | None = None
) -> tuple[IncidentState, Notice | None]:
    """The state after ``signal`` at ``now``, and the message it sends, if any (at most one).

    Args:
        state: the target's incident state before the signal.
        signal: the event as the incident sees it.
        now: epoch seconds (the caller's clock).
        incident_id: the id a newly opened incident gets (the unhealthy streak's start for a health
            check: the same ``vllm.incident`` label the recovery automation buckets by).
        policy: the flap limit.
    """
    policy = policy or IncidentPolicy()
    current = state.open
    if signal.effect is Effect.NONE:
        return state, None
    if current is None:
        return _no_incident(state, signal, now, incident_id, policy)
    if signal.effect is Effect.FIXED:
        return state.model_copy(update={"open": current.model_copy(update={"fixed_by": signal.by})}), None
    if signal.effect in (Effect.CLEAR, Effect.END):
        return _clear(state, current, signal, now, policy)
    if signal.effect is Effect.ESCALATE and current.escalation is None:
        escalated = current.model_copy(update={"escalation": _words(signal), "clear_since": None})
        return state.model_copy(update={"open": escalated}), Notice(IncidentEvent.ESCALATED, escalated, signal, now)
    again = signal.effect is Effect.OPEN and current.fixed_by is not None and incident_id != current.id
    folded = current.model_copy(
        update={
            "repeats": current.repeats + 1,
            "clear_since": None,
            "outages": current.outages + 1 if again else current.outages,
        }
    )
    return state.model_copy(update={"open": folded}), None


def _no_incident(
    state: IncidentState, signal: Signal, now: float, incident_id: str, policy: IncidentPolicy
) -> tuple[IncidentState, Notice | None]:
    """With no incident open, only OPEN (and an ESCALATE that opens alone) open one."""
    opens = signal.effect is Effect.OPEN or (signal.effect is Effect.ESCALATE and signal.opens_alone)
    if not opens:
        return state, None
    recent = [t for t in state.opened if now - t < policy.flap_window_s] + [now]
    incident = Incident(
        id=incident_id,
        opened_at=now,
        what=signal.what,
        cause=signal.cause,
        fix=signal.fix,
        artifact=signal.artifact,
        vllm_version=signal.vllm_version,
        escalation=_words(signal) if signal.effect is Effect.ESCALATE else None,
        flapping=len(recent) > policy.flap_limit,
        opens_in_window=len(recent),
    )
    new = IncidentState(open=incident, opened=recent[-(policy.flap_limit + 1) :])
    return new, Notice(IncidentEvent.OPENED, incident, signal, now)


def _clear(
    state: IncidentState, current: Incident, signal: Signal, now: float, policy: IncidentPolicy
) -> tuple[IncidentState, Notice | None]:
    """A check sees it serving (or it was stopped on purpose): close, unless a flapping incident has
    not yet served through its quiet time."""
    if signal.effect is Effect.CLEAR and current.flapping:
        since = current.clear_since if current.clear_since is not None else now
        if now - since < policy.flap_quiet_s:
            return state.model_copy(update={"open": current.model_copy(update={"clear_since": since})}), None
    closed = current.model_copy(update={"fixed_by": current.fixed_by if signal.effect is Effect.CLEAR else signal.by})
    return state.model_copy(update={"open": None}), Notice(IncidentEvent.CLOSED, closed, signal, now)


def _words(signal: Signal) -> str:
    return f"{signal.what}: {signal.cause}" if signal.cause else signal.what
