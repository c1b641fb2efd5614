"""The ``webhook_receiver`` fixture: a fresh loopback receiver per test (sim/webhook.py
`WebhookReceiver`, an imitation of Slack's side). Tests point the notification block at
``webhook_receiver.url`` and wait for the message they expect:

    message = webhook_receiver.wait_for(lambda m: m["json"]["subject"] == "...", timeout_s=20)

The fixture is exported to every integration test by tests/integration/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sim.webhook import WebhookReceiver

__all__ = ["WebhookReceiver", "webhook_receiver"]


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A fresh receiver per test, stopped after it."""
    with WebhookReceiver() as receiver:
        yield receiver
