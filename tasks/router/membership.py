"""Who the router routes to: the one decision, from each target's newest evidence (pure).

The router's worker list is derived state. Every change to it (deploy-fleet, health-check-fleet,
rolling-update, the router's own start) goes through `plan`, so the rule lives here once. The
evidence is the newer of the target's last deploy (deploy-qwen's outcome, whoever ran it) and its
last health check:

- a target joins only after its server passed the gate: its last deploy passed (or failed and
  rolled back to its last healthy spec, gated again), or its last health verdict is healthy or
  degraded (degraded still answers: the other Sparks would take its load);
- it leaves on anything else: a failed deploy (until a health check says healthy again), a verdict
  of unhealthy, starting or stopped, nothing known yet, or a rolling update draining it;
- the router's own workers that are no target of the fleet are left alone and reported (someone
  added them by hand; removing them is the operator's call).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from tasks.health.verdict import Verdict

#: A target's last deploy: passed its gate (deployed, unchanged), failed but rolled back to the last
#: healthy spec (which passed the gate again), or failed.
DeployEvidence = Literal["passed", "rolled-back", "failed"]

#: The health verdicts whose server may take traffic.
SERVING_VERDICTS: frozenset[Verdict] = frozenset({Verdict.HEALTHY, Verdict.DEGRADED})


#: What each deploy evidence means for the router, in the words the flows log and report.
DEPLOY_WORDS: dict[str, tuple[bool, str]] = {
    "passed": (True, "deploy passed the gate"),
    "rolled-back": (True, "deploy failed, rolled back to its last healthy spec (gated again)"),
    "failed": (False, "deploy failed (back at the next healthy check)"),
}


@dataclass(frozen=True)
class MemberEvidence:
    """What is known about one target when the router's list is decided."""

    target: str
    url: str  # where the router reaches its server (the target's endpoint)
    verdict: Verdict | None = None  # its last health check's verdict (None: never checked)
    verdict_at: float | None = None  # when (epoch seconds)
    deploy: DeployEvidence | None = None  # its last deploy (None: none known)
    deploy_at: float | None = None  # when it ended (epoch seconds)
    draining: bool = False  # a rolling update is replacing it

    @property
    def deploy_is_newer(self) -> bool:
        """The last deploy came after the last health check (or there was no check)."""
        if self.deploy is None:
            return False
        return self.verdict is None or (self.deploy_at or 0.0) >= (self.verdict_at or 0.0)


def wanted(evidence: MemberEvidence) -> tuple[bool, str]:
    """Whether the target belongs in the router, and why (the words the flow logs and reports)."""
    if evidence.draining:
        return False, "draining for a rolling update"
    if evidence.deploy is not None and evidence.deploy_is_newer:
        return DEPLOY_WORDS[evidence.deploy]
    if evidence.verdict is None:
        return False, "no deploy or health verdict yet"
    if evidence.verdict in SERVING_VERDICTS:
        return True, f"health check: {evidence.verdict.value}"
    return False, f"health check: {evidence.verdict.value}"


@dataclass(frozen=True)
class MembershipPlan:
    """The changes that make the router's list what the evidence wants."""

    add: tuple[MemberEvidence, ...]
    remove: tuple[MemberEvidence, ...]
    members: tuple[str, ...]  # the targets in the router once applied
    reasons: Mapping[str, str]  # target -> why it is in or out
    strangers: tuple[str, ...]  # router workers that are no target of the fleet (left alone)


def plan(evidence: Iterable[MemberEvidence], router_urls: Iterable[str]) -> MembershipPlan:
    """The adds and removes from the router's current worker URLs to what `wanted` says."""
    current = {normalize(u) for u in router_urls}
    add: list[MemberEvidence] = []
    remove: list[MemberEvidence] = []
    members: list[str] = []
    reasons: dict[str, str] = {}
    known: set[str] = set()
    for item in evidence:
        url = normalize(item.url)
        known.add(url)
        keep, reasons[item.target] = wanted(item)
        if keep:
            members.append(item.target)
            if url not in current:
                add.append(item)
        elif url in current:
            remove.append(item)
    return MembershipPlan(tuple(add), tuple(remove), tuple(members), reasons, tuple(sorted(current - known)))


def normalize(url: str) -> str:
    """A worker URL as the router lists it (no trailing slash)."""
    return url.rstrip("/")


def deploy_evidence(ok: bool, serving_spec_hash: str | None) -> DeployEvidence:
    """A deploy-qwen run's word for the router: its outcome, and the spec that serves after it (a failed
    deploy that names one was rolled back to it; tasks/fleet.py `DeployOutcome.spec_hash`)."""
    if ok:
        return "passed"
    return "rolled-back" if serving_spec_hash else "failed"
