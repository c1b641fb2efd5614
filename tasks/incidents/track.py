"""The incident's I/O: each service event a flow reports passes here, and the message it sends leaves
as a ``vllm.incident.<opened|escalated|closed>`` event that the notify automation delivers.

Where the state lives, and why: a Prefect Variable per target (``vllm-incident-<target>``,
tasks/state.py), in the Prefect server's database like the other per-target records. It survives a
worker restart (nothing is kept in a process) and a server restart (the database does), it is shown
and editable in the UI's Variables page, and every flow that reports reads the same one, wherever
its worker runs. Two flows can report about one target at once (a health check during a
recovery), so the read-change-write holds the target's ``incident:<target>`` concurrency slot for
its few milliseconds.

Alerting must never break the flow that reports: a failure here is logged as a warning, the
service event itself is emitted first.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.settings import get_current_settings

from tasks.events import ServiceEvent, emit_incident_event, emit_service_event, service_event
from tasks.incidents.machine import IncidentPolicy, Notice, advance_incident
from tasks.incidents.messages import Links, message
from tasks.incidents.signals import signal_of
from tasks.locks import incident_lock
from tasks.state import incident_state, save_incident_state

__all__ = ["POLICY", "report_service_event", "track_incident"]

#: The flap limit every target uses (tasks/incidents/machine.py says what it bounds).
POLICY = IncidentPolicy()


def report_service_event(
    target_name: str,
    what: ServiceEvent | str,
    payload: dict[str, Any] | None = None,
    vllm_version: str | None = None,
    incident: str | None = None,
) -> None:
    """Emit the service event (tasks/events.py `emit_service_event`), then move the target's incident.

    Args are `emit_service_event`'s; the payload never holds a secret.
    """
    emit_service_event(target_name, what, payload, vllm_version=vllm_version, incident=incident)
    try:
        track_incident(target_name, service_event(what), payload or {}, vllm_version)
    except Exception as exc:  # noqa: BLE001 - the flow's own work must not fail on its alerting
        get_run_logger().warning(
            "incident of %s not updated after %s (%s: %s): no message for this event; the next check tries again",
            target_name,
            service_event(what).event,
            type(exc).__name__,
            exc,
        )


def track_incident(target_name: str, what: ServiceEvent, payload: dict[str, Any], vllm_version: str | None) -> None:
    """Move the target's incident by one service event; emit the message it sends, if any."""
    signal = replace(signal_of(what, {**payload, "target": target_name}), vllm_version=vllm_version)
    now = time.time()
    incident_id = str(payload.get("since") or datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"))
    # Read first without the lock: a signal that changes nothing (a healthy check with no incident open,
    # most of them; a check that sees it starting) is done, as if it came just before any concurrent
    # writer. Else read again under it.
    unlocked = incident_state(target_name)
    if advance_incident(unlocked, signal, now, incident_id, POLICY) == (unlocked, None):
        return
    with incident_lock(target_name):
        state = incident_state(target_name)
        new, notice = advance_incident(state, signal, now, incident_id, POLICY)
        if new != state:
            save_incident_state(target_name, new)
    if notice is not None:
        _send(target_name, notice, vllm_version)


def _send(target_name: str, notice: Notice, vllm_version: str | None) -> None:
    """The message as a ``vllm.incident.*`` event: the notify automation sends it (none set up: none sent)."""
    links = Links(ui_url=get_current_settings().ui_url, flow_run_id=flow_run.get_id())
    text = message(notice, target_name, vllm_version, links)
    emit_incident_event(
        target_name,
        notice.event,
        {
            "subject": text.subject,
            "body": text.body,
            "incident": notice.incident.id,
            "what": notice.incident.what,
            "vllm_version": vllm_version or notice.incident.vllm_version or "",
        },
    )
    get_run_logger().info("incident %s of %s %s: %s", notice.incident.id, target_name, notice.event.value, text.subject)
