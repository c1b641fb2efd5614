"""The words of an incident's messages: a one-line subject and a plain-text body, from a `Notice`.

Each message names the target, the vLLM it runs, what happened, the cause and the fix (or who fixed
it and how long it lasted) and links to the report and the run, in the Prefect UI the operator
opens (``PREFECT_UI_URL``). Pure: the caller passes the links' base and the run's id. Nothing here
reads a secret; the causes come from the flows' payloads, which are scrubbed where they carry logs.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from tasks.events import IncidentEvent
from tasks.incidents.machine import Effect, Incident, Notice

__all__ = ["Links", "Message", "duration", "message"]

SUBJECT_MAX = 150


class Links(BaseModel):
    """Where the message's links point: the UI's base URL (None: no UI known) and the run that sent it."""

    ui_url: str | None = None
    flow_run_id: str | None = None

    def report(self, key: str) -> str | None:
        """The report's page (the artifact's versions, newest first)."""
        return f"{self.ui_url.rstrip('/')}/artifacts/key/{key}" if self.ui_url and key else None

    def run(self) -> str | None:
        """The run that sent the message."""
        return (
            f"{self.ui_url.rstrip('/')}/runs/flow-run/{self.flow_run_id}" if self.ui_url and self.flow_run_id else None
        )


class Message(BaseModel):
    """What the notify automation sends: ``subject`` and ``body`` (event payload keys)."""

    subject: str
    body: str


def message(notice: Notice, target: str, vllm_version: str | None, links: Links) -> Message:
    """The message for one notice about ``target``."""
    incident = notice.incident
    vllm = f"vLLM {vllm_version or incident.vllm_version or 'unknown'}"
    if notice.event is IncidentEvent.OPENED:
        subject, lines = _opened(incident, target)
    elif notice.event is IncidentEvent.ESCALATED:
        subject = f"[{target}] ESCALATED: {incident.escalation}"
        lines = [
            f"What happened: {notice.signal.what}",
            f"Cause: {notice.signal.cause or 'see the report'}",
            f"Fix: {notice.signal.fix}",
            f"Open since: {_iso(incident.opened_at)} ({incident.what})",
        ]
    else:
        subject, lines = _closed(notice, target)
    body = [f"Target: {target} ({vllm})", *lines, f"Incident: {incident.id}"]
    body += [f"{name}: {url}" for name, url in _urls(notice, links) if url]
    return Message(subject=_one_line(subject), body="\n".join(body))


def _opened(incident: Incident, target: str) -> tuple[str, list[str]]:
    state = "ESCALATED" if incident.escalation else "OPENED"
    subject = f"[{target}] {state}: {incident.what}: {incident.cause}"
    lines = [
        f"What happened: {incident.what}",
        f"Cause: {incident.cause or 'see the report'}",
        f"Fix: {incident.fix}",
        f"Since: {_iso(incident.opened_at)}",
    ]
    if incident.flapping:
        subject = f"[{target}] FLAPPING ({incident.opens_in_window} incidents within the hour): {incident.what}"
        lines.append(
            f"Flapping: incident {incident.opens_in_window} within the flap window; this one stays open until the "
            "target has served through the quiet time, and further ups and downs are folded into it"
        )
    return subject, lines


def _closed(notice: Notice, target: str) -> tuple[str, list[str]]:
    incident = notice.incident
    lasted = duration(notice.now - incident.opened_at)
    if notice.signal.effect is Effect.END:
        how = "stopped on purpose (stop-qwen): nothing is wanted of the target"
    else:
        fixer = incident.fixed_by or "itself (docker restarted it, or a person outside the flows)"
        how = f"serving again; fixed by {fixer}"
    lines = [f"Resolved after {lasted}: {how}", f"It was: {incident.what}: {incident.cause}"]
    if incident.escalation:
        lines.append(f"Escalated on the way: {incident.escalation}")
    if incident.outages > 1:
        lines.append(f"Outages in it: {incident.outages} (it failed again after a fix, before a check saw it serving)")
    if incident.repeats:
        lines.append(f"Further signals folded into it: {incident.repeats}")
    return f"[{target}] RESOLVED after {lasted}: {incident.what}", lines


def _urls(notice: Notice, links: Links) -> list[tuple[str, str | None]]:
    key = notice.signal.artifact or notice.incident.artifact
    return [("Report", links.report(key)), ("Run", links.run())]


def duration(seconds: float) -> str:
    """45 s, 12 min, 3 h 05 min: how long an incident lasted, as an operator reads it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SUBJECT_MAX else line[: SUBJECT_MAX - 1] + "…"
