"""Where messages go, through a real Prefect server's automations: setup's notify function points the
`vllm-alerts` block at a loopback webhook receiver; an incident event reaches it as JSON with the
event's subject and body; a rerun with another URL replaces the automation and the block (messages to
the new URL only); `off` stops them.

The harness's server runs the triggers and actions services (prefect/server/services: they run in
ephemeral servers too), as test_automation.py relies on for its deployment triggers.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from prefect import get_client
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from prefect.events.actions import SendNotification
from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from prefect.types._datetime import now

from deployments.notify import (
    ALERTS_BLOCK,
    NOTIFY_AUTOMATION,
    NOTIFY_OFF,
    alerts_block_id,
    configure_notifications,
    notifications_status,
)
from deployments.notify import main as notify_main
from tasks.events import IncidentEvent, emit_incident_event
from tests.integration.receiver import WebhookReceiver

pytestmark = pytest.mark.integration
#: From the event to the message in the receiver: the server's triggers service, then its actions
#: service, then the block's POST (measured here: about 1-2 s on the test machine).
DELIVERY_BOUND_S = 15
TOKEN = "tok3nNotToBeShown"  # in the URL's query, as services put theirs


def incident(what: str, target: str, subject: str) -> float:
    """Emit ``vllm.incident.<what>`` as the flows do (their emitter), sent to the server now; returns when
    (time.time())."""
    emitted = time.time()
    payload = {
        "subject": subject,
        "body": f"{target}: {what}\nsecond line",
        "incident": "i-1",
        "vllm_version": "0.10.1.1",
    }
    emit_incident_event(target, IncidentEvent(what), payload)
    EventsWorker.drain_all(timeout=10)
    return emitted


def automation_trail(automation_id: uuid.UUID | None = None, since_s: float = 120) -> list[str]:
    """What the server says its automations (or that one) did lately (``prefect.automation.*``
    events with the action's failure reason), for the assertion messages."""
    where = [f"prefect.automation.{automation_id}"] if automation_id else ["prefect.automation."]
    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=now("UTC") - timedelta(seconds=since_s)),
                resource=EventResourceFilter(id_prefix=where),
            ),
            limit=50,
        )
    return [f"{e.event} {e.payload.get('reason') or ''} {e.payload.get('notification_log') or ''}" for e in page.events]


def delivered(receiver: WebhookReceiver, subject: str) -> dict:
    """The message with that subject, or an assertion naming what the server's automations did.

    A Slack, Teams or Discord block's failure is an event ``prefect.automation.action.failed`` with
    the reason; the custom webhook block's (an HTTP error, a refused connection) raises out of the
    action, so the server only logs it: that traceback is in this test's captured output.
    """
    try:
        return receiver.wait_for(lambda m: (m["json"] or {}).get("subject") == subject, DELIVERY_BOUND_S)
    except AssertionError as missing:
        raise AssertionError(f"{missing}; the server's automation events: {automation_trail()}") from None


def action_executed(automation_id: uuid.UUID, timeout_s: float = 10) -> list[str]:
    """The automation's events once the server has recorded a send as executed."""
    deadline = time.monotonic() + timeout_s
    while True:
        trail = automation_trail(automation_id)
        if any(line.startswith("prefect.automation.action.executed") for line in trail) or time.monotonic() > deadline:
            return trail
        time.sleep(0.5)


def mine(receiver: WebhookReceiver, target: str) -> list[str]:
    """The subjects of this test's messages (other tests' incidents may still be on their way)."""
    subjects = [(m["json"] or {}).get("subject", "") for m in receiver.messages]
    return [subject for subject in subjects if subject.startswith(f"{target}: ")]


def alerts_documents() -> list[str]:
    """The block types that hold a `vllm-alerts` document now."""
    with get_client(sync_client=True) as client:
        found = client.read_block_documents(include_secrets=False)
    return sorted(d.block_type.slug for d in found if d.name == ALERTS_BLOCK and d.block_type)


def test_incident_messages_reach_the_webhook_and_a_rerun_replaces_where_they_go(prefect_server, capsys):
    target = f"notify-{uuid.uuid4().hex[:6]}"
    with WebhookReceiver() as first, WebhookReceiver() as second:
        try:
            automation_id = configure_notifications(f"{first.url}?token={TOKEN}")
            printed = capsys.readouterr().out
            assert "Custom Webhook (JSON POST) to http://127.0.0.1:" in printed and TOKEN not in printed
            assert TOKEN not in notifications_status()

            emitted = incident("opened", target, f"{target}: opened")
            message = delivered(first, f"{target}: opened")
            took = message["time"] - emitted
            with capsys.disabled():  # the measured delivery, shown with pytest -s
                print(f"\nincident event -> webhook message: {took:.2f} s")
            assert message["method"] == "POST" and message["path"] == f"/hook?token={TOKEN}"
            assert message["json"]["body"] == f"{target}: opened\nsecond line"
            assert message["json"]["name"] == ALERTS_BLOCK
            assert message["headers"].get("Content-Type") == "application/json"
            assert automation_id is not None
            trail = action_executed(automation_id)
            assert not [line for line in trail if ".action.failed" in line], trail
            assert any(line.startswith("prefect.automation.action.executed") for line in trail), trail

            # a rerun with another service, then another URL: one block, one automation, the new URL only
            configure_notifications("https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefXYZ")
            assert alerts_documents() == [SlackWebhook.get_block_type_slug()]
            configure_notifications(second.url)
            assert alerts_documents() == [CustomWebhookNotificationBlock.get_block_type_slug()]
            with get_client(sync_client=True) as client:
                [automation] = client.read_automations_by_name(NOTIFY_AUTOMATION)
            [action] = automation.actions
            assert isinstance(action, SendNotification) and action.block_document_id == alerts_block_id()
            incident("escalated", target, f"{target}: escalated")
            assert delivered(second, f"{target}: escalated")["json"]["body"] == f"{target}: escalated\nsecond line"
            time.sleep(max(1.0, took))  # the old destination would have had it by now
            assert mine(first, target) == [f"{target}: opened"]

            # off: no block, no automation, nothing sent
            configure_notifications(NOTIFY_OFF)
            assert alerts_documents() == [] and alerts_block_id() is None
            with get_client(sync_client=True) as client:
                assert client.read_automations_by_name(NOTIFY_AUTOMATION) == []
            assert notifications_status().startswith("off; turn on with:")
            assert notify_main([]) == 0 and "notifications: off; turn on with:" in capsys.readouterr().out
            incident("closed", target, f"{target}: closed")
            time.sleep(max(1.5, 2 * took))
            assert mine(first, target) == [f"{target}: opened"] and mine(second, target) == [f"{target}: escalated"], (
                automation_trail()
            )
        finally:
            configure_notifications(NOTIFY_OFF)
