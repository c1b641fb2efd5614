"""Where the operator's messages go: one Prefect notification block and the automation that uses it.

    python -m deployments.setup --no-deploy --notify https://hooks.slack.com/services/T.../B.../...  # on / change
    python -m deployments.setup --no-deploy --notify off                                            # off
    python -m deployments.notify                                                                    # where they go now

The webhook URL chooses the block (`notification_block`): Prefect's own blocks for Slack, Microsoft
Teams and Discord (prefect/blocks/notifications.py), and its custom webhook block, a JSON POST, for
any other http(s) URL. The block is saved as `ALERTS_BLOCK`; the automation `NOTIFY_AUTOMATION`
sends every incident event the flows emit (`INCIDENT_EVENTS`) through it, with the event's own
``subject`` and ``body``. Nothing configured: no block, no automation, nothing sent.

A webhook URL is a credential (whoever has a Slack incoming-webhook URL can post to the channel): it
is kept in the block's secret fields and never printed; messages name only its scheme and host
(`destination`). docs/operator.md "Where alerts go" is the operator's page.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit
from uuid import UUID

from prefect import get_client
from prefect.automations import EventTrigger, Posture, SendNotification
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.notifications import (
    CustomWebhookNotificationBlock,
    DiscordWebhook,
    MicrosoftTeamsWebhook,
    SlackWebhook,
)
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound
from prefect.types import SecretDict
from pydantic import SecretStr

from blocks.target import service_resource_id
from tasks.events import IncidentEvent

#: The block document every message goes through (one at a time, whatever its type).
ALERTS_BLOCK = "vllm-alerts"
#: The automation that sends the incident events through `ALERTS_BLOCK`.
NOTIFY_AUTOMATION = "notify-vllm-incidents"
#: The events that carry a message (payload ``subject`` and ``body``): every `IncidentEvent`.
INCIDENT_EVENTS = tuple(what.event for what in IncidentEvent)
#: What `--notify` takes to remove the block and the automation.
NOTIFY_OFF = "off"
#: The custom webhook block's URL field is a plain ``str`` (shown in the UI and the API): the real
#: URL goes in its ``secrets`` (a SecretDict, masked) under this key, and the field holds only the
#: placeholder the block fills in when it sends (prefect/blocks/notifications.py
#: ``CustomWebhookNotificationBlock._build_request_args``).
URL_SECRET_KEY = "url"
#: The JSON the custom webhook POSTs; ``{{subject}}``, ``{{body}}`` and ``{{name}}`` (the block's
#: name) are the block's own placeholders. ``text`` makes it readable as is by receivers that take
#: Slack's incoming-webhook shape (Mattermost, Rocket.Chat, Google Chat).
WEBHOOK_JSON = {"subject": "{{subject}}", "body": "{{body}}", "name": "{{name}}", "text": "{{subject}}\n\n{{body}}"}
#: The notification block types `notification_block` chooses from.
ALERT_BLOCK_TYPES: tuple[type[NotificationBlock], ...] = (
    SlackWebhook,
    MicrosoftTeamsWebhook,
    DiscordWebhook,
    CustomWebhookNotificationBlock,
)

ACCEPTED = (
    "a Slack incoming webhook (https://hooks.slack.com/services/T.../B.../...), a Microsoft Teams "
    "Workflows URL (https://<...>.logic.azure.com/workflows/<id>/triggers/manual/paths/invoke?... or "
    "https://<...>.environment.api.powerplatform.com/powerautomate/automations/direct/workflows/<id>/...), "
    "a Discord webhook (https://discord.com/api/webhooks/<id>/<token>), any other http(s) URL "
    f"(a JSON POST of subject, body, name, text), or {NOTIFY_OFF!r}"
)
# apprise's Slack plugin, behind SlackWebhook, takes the incoming-webhook form only (three tokens).
_SLACK = re.compile(r"^https://hooks\.slack(?:-gov)?\.com/services/[A-Z0-9]+/[A-Z0-9]+/[A-Z0-9]+/?$", re.I)
_SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
_DISCORD = re.compile(
    r"^https://(?:(?:canary|ptb)\.)?discord(?:app)?\.com/api/(?:v\d+/)?webhooks/(?P<id>\d+)/(?P<token>[\w-]+)/?$"
)
_DISCORD_HOSTS = re.compile(r"^(?:(?:canary|ptb)\.)?discord(?:app)?\.com$")
# Teams today: a Workflows (Power Automate / Logic Apps) "When a webhook request is received" URL.
_TEAMS_HOST_SUFFIXES = (".logic.azure.com", ".powerplatform.com")
# The Office 365 connectors' incoming webhooks, which Microsoft retires (Prefect's block refuses them).
_RETIRED_TEAMS_HOST_SUFFIXES = (".webhook.office.com", "outlook.office.com")


def destination(url: str) -> str:
    """What may be shown of a webhook URL: its scheme, host and port (never user, path or query,
    where the services put the token)."""
    parts = urlsplit(url.strip())
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: shown as no port
        port = ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def notification_block(url: str) -> NotificationBlock:
    """The Prefect notification block that sends to `url`, chosen by its host (see `ACCEPTED`).

    Raises:
        ValueError: not an http(s) URL, or a service's URL in a form its block cannot send to; the
            message names what is accepted and shows only the URL's scheme and host.
    """
    url = url.strip()
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"--notify takes a webhook URL: {ACCEPTED}; got something that is not an http(s) URL")
    if host in _SLACK_HOSTS:
        return _slack(url)
    if host.endswith(_RETIRED_TEAMS_HOST_SUFFIXES):
        raise ValueError(
            f"{destination(url)} is an Office 365 connector webhook, which Microsoft retires and Prefect's "
            "Teams block does not send to: in Teams, create a Workflow from the template 'Post to a channel "
            "when a webhook request is received' and pass its URL"
        )
    if host.endswith(_TEAMS_HOST_SUFFIXES):
        return _teams(url)
    if _DISCORD_HOSTS.match(host):
        return _discord(url)
    return CustomWebhookNotificationBlock(
        name=ALERTS_BLOCK,
        url="{{" + URL_SECRET_KEY + "}}",
        json_data=dict(WEBHOOK_JSON),
        secrets=SecretDict({URL_SECRET_KEY: url}),
    )


def _slack(url: str) -> SlackWebhook:
    if not _SLACK.match(url):
        raise ValueError(
            f"a Slack URL ({destination(url)}) that is not an incoming webhook "
            "https://hooks.slack.com/services/T.../B.../...: Prefect's Slack block (apprise) sends only to "
            "those; create one under your Slack app's 'Incoming Webhooks'"
        )
    return SlackWebhook(url=SecretStr(url))


def _teams(url: str) -> MicrosoftTeamsWebhook:
    try:
        return MicrosoftTeamsWebhook(url=SecretStr(url))
    except ValueError:  # its own message; the pydantic wrapper around it would quote the URL
        raise ValueError(
            f"{destination(url)} is not a Teams Workflows webhook URL (.../workflows/<id>/triggers/manual/paths/"
            "invoke?...): copy the URL of the Workflow's 'When a Teams webhook request is received' step"
        ) from None


def _discord(url: str) -> DiscordWebhook:
    found = _DISCORD.match(url)
    if found is None:
        raise ValueError(
            f"a Discord URL ({destination(url)}) that is not a webhook https://discord.com/api/webhooks/<id>/<token> "
            "(Server Settings -> Integrations -> Webhooks -> Copy Webhook URL)"
        )
    return DiscordWebhook(webhook_id=SecretStr(found["id"]), webhook_token=SecretStr(found["token"]))


def describe(block: NotificationBlock) -> str:
    """One line naming the block's service and where it sends (scheme and host only)."""
    if isinstance(block, CustomWebhookNotificationBlock):
        url = str(block.secrets.get_secret_value().get(URL_SECRET_KEY, block.url))
        return f"{block.get_block_type_name()} (JSON POST) to {destination(url)}"
    if isinstance(block, DiscordWebhook):
        return f"{block.get_block_type_name()} to https://discord.com"
    url_field = getattr(block, "url", None)
    where = destination(url_field.get_secret_value()) if isinstance(url_field, SecretStr) else "?"
    return f"{block.get_block_type_name()} to {where}"


def incident_automation(block_document_id: UUID) -> AutomationCore:
    """The automation that sends each incident event's own subject and body through the block.

    Reactive, threshold 1, within 0: every event is one message; the flows, not the trigger, decide
    what is worth a message (tasks/incidents: one when an incident opens, escalates, closes).
    """
    return AutomationCore(
        name=NOTIFY_AUTOMATION,
        description=f"Send every incident event ({', '.join(INCIDENT_EVENTS)}) through the block {ALERTS_BLOCK}",
        enabled=True,
        trigger=EventTrigger(
            match={"prefect.resource.id": service_resource_id("*")},
            expect=set(INCIDENT_EVENTS),
            posture=Posture.Reactive,
            threshold=1,
            within=0,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="{{ event.payload.subject }}",
                body="{{ event.payload.body }}",
            )
        ],
    )


def notify_argument(value: str) -> str:
    """argparse ``type=`` of ``--notify``: the URL once a block can be built from it, or `NOTIFY_OFF`.

    Raises:
        argparse.ArgumentTypeError: what `notification_block` says (argparse prints it as is; a
            ValueError would make argparse quote the URL).
    """
    if value.strip().lower() == NOTIFY_OFF:
        return NOTIFY_OFF
    try:
        notification_block(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value.strip()


def saved_alerts_block() -> NotificationBlock | None:
    """The saved `ALERTS_BLOCK`, whichever notification type it is (None: notifications are off)."""
    for block_type in ALERT_BLOCK_TYPES:
        try:
            return cast(NotificationBlock, block_type.load(ALERTS_BLOCK))  # sync here: not a coroutine
        except ValueError:  # Block.load: no document of that name and type
            continue
    return None


def alerts_block_id() -> UUID | None:
    """The id of the saved `ALERTS_BLOCK` document, for automations that send through it (None: off)."""
    with get_client(sync_client=True) as client:
        for block_type in ALERT_BLOCK_TYPES:
            try:
                slug = block_type.get_block_type_slug()
                return client.read_block_document_by_name(ALERTS_BLOCK, slug, include_secrets=False).id
            except ObjectNotFound:
                continue
    return None


def _remove_alerts(keep: type[NotificationBlock] | None = None) -> None:
    """Delete the automation `NOTIFY_AUTOMATION` (every copy) and the `ALERTS_BLOCK` documents of
    every type but `keep` (one block at a time, whatever service it is)."""
    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name(NOTIFY_AUTOMATION):
            client.delete_automation(automation.id)
        for block_type in ALERT_BLOCK_TYPES:
            if block_type is keep:
                continue
            try:
                slug = block_type.get_block_type_slug()
                client.delete_block_document(client.read_block_document_by_name(ALERTS_BLOCK, slug, False).id)
            except ObjectNotFound:
                continue


def configure_notifications(url: str) -> UUID | None:
    """Send incident messages to `url` (replacing any earlier destination), or stop them (`NOTIFY_OFF`).

    A rerun replaces rather than adds: the automation is deleted by name and created again, and an
    `ALERTS_BLOCK` of another service is deleted. Returns the automation's id (None when off).

    Raises:
        ValueError: `url` is not one `notification_block` accepts (nothing is changed).
    """
    if url.strip().lower() == NOTIFY_OFF:
        _remove_alerts()
        print(f"notifications off: block {ALERTS_BLOCK} and automation {NOTIFY_AUTOMATION} removed")
        return None
    block = notification_block(url)
    _remove_alerts(keep=type(block))
    block_id = cast(UUID, block.save(ALERTS_BLOCK, overwrite=True))  # sync here: not a coroutine
    with get_client(sync_client=True) as client:
        automation_id = client.create_automation(incident_automation(block_id))
    print(f"notifications on: {describe(block)} (block {ALERTS_BLOCK}, automation {NOTIFY_AUTOMATION})")
    return automation_id


def notifications_status() -> str:
    """One line saying where messages go now, or how to turn them on (what `make demo` prints)."""
    from prefect.settings import PREFECT_API_URL

    block = saved_alerts_block()
    with get_client(sync_client=True) as client:
        automations = client.read_automations_by_name(NOTIFY_AUTOMATION)
    python = Path(sys.executable)
    if python.is_relative_to(Path.cwd()):
        python = python.relative_to(Path.cwd())
    turn_on = (
        f"PREFECT_API_URL={PREFECT_API_URL.value()} {python} -m deployments.setup --no-deploy "
        "--notify https://hooks.slack.com/services/..."
    )
    if block is None:
        return f"off; turn on with: {turn_on} (docs/operator.md, 'Where alerts go')"
    if not any(a.enabled for a in automations):
        return f"off: {describe(block)} is saved, but no automation {NOTIFY_AUTOMATION} sends through it; {turn_on}"
    return f"{describe(block)} (block {ALERTS_BLOCK}, automation {NOTIFY_AUTOMATION})"


def main(argv: list[str] | None = None) -> int:
    """``python -m deployments.notify``: print where messages go (changing it is setup's --notify)."""
    argparse.ArgumentParser(prog="python -m deployments.notify", description=__doc__).parse_args(argv)
    print(f"notifications: {notifications_status()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
