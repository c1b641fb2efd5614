"""Prefect events about the served model: ``vllm.service.<what>`` on resource ``vllm.service.<target>``,
with the target's name in every payload (``target``); and the operator's incidents about it,
``vllm.incident.<opened|escalated|closed>`` on the same resource, whose payload carries the message
(``subject``, ``body``) that the ``notify-vllm-incidents`` automation sends (deployments/notify.py).

Automations match on them (unhealthy -> recovery) and the UI's event feed shows them. The
vocabulary is `ServiceEvent`, the one list of what may follow ``vllm.service.``: an automation
written against a name that no flow emits would never fire, and nothing would say so. The
resource id is defined once, in ``blocks.target.service_resource_id`` (also behind
``TargetMachine.event_resource_id``). docs/design.md describes each event.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from prefect.events import emit_event

from blocks.target import service_resource_id

#: What every event name starts with.
EVENT_PREFIX = "vllm.service"
#: The payload key every event carries the target's name in: automations template it
#: (prefect.yaml's recover-vllm triggers: ``{{ event.payload.target }}``) instead of slicing the
#: resource id.
TARGET_KEY = "target"
#: The resource label that names an outage: the time its unhealthy streak began (the health check's
#: ``since``). recover-vllm's trigger buckets by it (prefect.yaml ``for_each``), so a second outage
#: after a healthy verdict or a recovery is a new bucket and is recovered too, while repeats of one
#: outage stay one recovery (Prefect evaluates ``for_each`` on resource labels:
#: prefect/server/events/schemas/automations.py ``bucketing_key``).
INCIDENT_LABEL = "vllm.incident"
#: The payload key that names the vLLM the target runs (``0.10.1.1+381074ae.nv25.09``), where known.
VLLM_VERSION_KEY = "vllm_version"


class ServiceEvent(StrEnum):
    """What happened to a target's server; the event is ``vllm.service.<value>``."""

    # deploy-qwen / stop-qwen
    DEPLOYED = "deployed"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    STOPPED = "stopped"
    # health checks
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    STARTING = "starting"
    UNHEALTHY = "unhealthy"
    # recovery
    RECOVERING = "recovering"
    RECOVERED = "recovered"
    RECOVERY_FAILED = "recovery-failed"
    ROLLED_BACK = "rolled-back"
    NEEDS_OPERATOR = "needs-operator"

    @property
    def event(self) -> str:
        """The full event name, e.g. ``vllm.service.unhealthy`` (what an automation matches)."""
        return f"{EVENT_PREFIX}.{self.value}"


#: What every incident event name starts with.
INCIDENT_EVENT_PREFIX = "vllm.incident"


class IncidentEvent(StrEnum):
    """What happened to an incident (tasks/incidents); the event is ``vllm.incident.<value>``: one
    message each."""

    OPENED = "opened"
    ESCALATED = "escalated"
    CLOSED = "closed"

    @property
    def event(self) -> str:
        """The full event name, e.g. ``vllm.incident.opened`` (what the notify automation matches)."""
        return f"{INCIDENT_EVENT_PREFIX}.{self.value}"


def service_event(what: ServiceEvent | str) -> ServiceEvent:
    """`what` as a `ServiceEvent`; a plain string must be one of the vocabulary's values.

    Raises:
        ValueError: `what` is not in the vocabulary (the message lists it).
    """
    try:
        return ServiceEvent(what)
    except ValueError:
        raise ValueError(
            f"unknown service event {what!r}: use one of {', '.join(e.value for e in ServiceEvent)} "
            "(a new kind of event is a new member of tasks.events.ServiceEvent, documented in "
            "docs/design.md)"
        ) from None


def service_resource(target_name: str, incident: str | None = None) -> dict[str, str]:
    """The event resource for the target's server (id ``vllm.service.<target>``), with the outage's
    `INCIDENT_LABEL` when given."""
    resource = {
        "prefect.resource.id": service_resource_id(target_name),
        "prefect.resource.name": f"vLLM on {target_name}",
    }
    return {**resource, INCIDENT_LABEL: incident} if incident else resource


def emit_service_event(
    target_name: str,
    what: ServiceEvent | str,
    payload: dict[str, Any] | None = None,
    vllm_version: str | None = None,
    incident: str | None = None,
) -> None:
    """Emit ``vllm.service.<what>`` about the target's server; never put secrets in ``payload``.

    Every payload also carries the target's name under `TARGET_KEY`, so an automation reads the
    target as data (``{{ event.payload.target }}``) rather than by slicing the resource id.

    Args:
        target_name: the TargetMachine's name (the resource is ``vllm.service.<target_name>``).
        what: a `ServiceEvent`, or its value as a string (e.g. "deployed").
        payload: JSON-able details (endpoint, spec hash, failure kind...).
        vllm_version: the vLLM the target runs, when known (under `VLLM_VERSION_KEY`; left out
            when unknown, so an automation can tell "unknown" from a version).
        incident: the outage this event belongs to (`INCIDENT_LABEL` on the resource), for unhealthy.

    Raises:
        ValueError: `what` is not in the vocabulary; refused before anything is emitted.
    """
    event = service_event(what)
    payload = {**(payload or {}), TARGET_KEY: target_name}
    if vllm_version:
        payload[VLLM_VERSION_KEY] = vllm_version
    emit_event(event=event.event, resource=service_resource(target_name, incident), payload=payload)


def emit_incident_event(target_name: str, what: IncidentEvent, payload: dict[str, Any]) -> None:
    """Emit ``vllm.incident.<what>`` about the target's server with the message in its payload.

    The payload must hold ``subject`` and ``body`` (the notify automation templates them) and no
    secret; the target's name is added under `TARGET_KEY`.

    Raises:
        ValueError: the payload lacks the subject or the body (nothing is emitted).
    """
    missing = [key for key in ("subject", "body") if not payload.get(key)]
    if missing:
        raise ValueError(f"an incident event needs {' and '.join(missing)} in its payload (the message sent)")
    emit_event(event=what.event, resource=service_resource(target_name), payload={**payload, TARGET_KEY: target_name})
