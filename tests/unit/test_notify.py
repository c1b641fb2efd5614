"""Where messages go: the webhook URL -> Prefect notification block mapping (deployments/notify.py),
and the URL, a credential, never shown: not in the block's repr, errors, log lines or setup's output."""

from __future__ import annotations

import argparse
import logging
import uuid
from datetime import timedelta

import pytest
from prefect.blocks.notifications import (
    CustomWebhookNotificationBlock,
    DiscordWebhook,
    MicrosoftTeamsWebhook,
    SlackWebhook,
)
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture, ResourceSpecification

from deployments import setup
from deployments.notify import (
    ALERTS_BLOCK,
    INCIDENT_EVENTS,
    NOTIFY_AUTOMATION,
    NOTIFY_OFF,
    describe,
    destination,
    incident_automation,
    notification_block,
    notify_argument,
)

# Each service's URL form, with a secret part the tests look for everywhere it must not be.
SECRET = "Zq9SeCrEt7Tok3n"
SLACK = f"https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}"
SLACK_GOV = f"https://hooks.slack-gov.com/services/T0123ABCD/B0456EFGH/{SECRET}"
TEAMS_LOGIC = (
    "https://prod-12.westeurope.logic.azure.com:443/workflows/0a1b2c3d4e5f/triggers/manual/paths/invoke"
    f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SECRET}"
)
TEAMS_POWER_PLATFORM = (
    "https://default0123abcd.45.environment.api.powerplatform.com:443/powerautomate/automations/direct"
    f"/workflows/0a1b2c3d4e5f/triggers/manual/paths/invoke?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SECRET}"
)
DISCORD = f"https://discord.com/api/webhooks/112233445566778899/{SECRET}-x_y"
DISCORD_APP = f"https://discordapp.com/api/webhooks/112233445566778899/{SECRET}"
CUSTOM = f"https://alerts.example.org:8443/hooks/vllm?token={SECRET}"
CUSTOM_HTTP = f"http://user:{SECRET}@10.0.0.5/hook"


@pytest.mark.parametrize(
    "url, block_type",
    [
        (SLACK, SlackWebhook),
        (SLACK_GOV, SlackWebhook),
        (TEAMS_LOGIC, MicrosoftTeamsWebhook),
        (TEAMS_POWER_PLATFORM, MicrosoftTeamsWebhook),
        (DISCORD, DiscordWebhook),
        (DISCORD_APP, DiscordWebhook),
        (CUSTOM, CustomWebhookNotificationBlock),
        (CUSTOM_HTTP, CustomWebhookNotificationBlock),
    ],
)
def test_each_service_gets_its_block_and_the_url_is_never_shown(url, block_type, caplog):
    with caplog.at_level(logging.DEBUG):
        block = notification_block(url)
    assert type(block) is block_type
    shown = [repr(block), str(block), block.model_dump_json(), describe(block), caplog.text]
    assert not [text for text in shown if SECRET in text]
    assert describe(block).endswith(f"to {destination(url)}") or block_type is DiscordWebhook


def test_slack_and_teams_keep_the_whole_url_in_their_secret_field():
    slack, teams = notification_block(SLACK), notification_block(TEAMS_LOGIC)
    assert isinstance(slack, SlackWebhook) and isinstance(teams, MicrosoftTeamsWebhook)
    assert slack.url.get_secret_value() == SLACK and teams.url.get_secret_value() == TEAMS_LOGIC


def test_discord_takes_the_webhook_id_and_token_from_the_url():
    block = notification_block(DISCORD)
    assert isinstance(block, DiscordWebhook)
    assert block.webhook_id.get_secret_value() == "112233445566778899"
    assert block.webhook_token.get_secret_value() == f"{SECRET}-x_y"


def test_a_custom_webhook_posts_json_with_the_subject_body_and_name_and_keeps_its_url_secret():
    block = notification_block(CUSTOM)
    assert isinstance(block, CustomWebhookNotificationBlock)
    # the block's URL field is a plain str (shown in the UI): the URL lives in its SecretDict
    assert SECRET not in block.url and block.secrets.get_secret_value() == {"url": CUSTOM}
    request = block._build_request_args(body="line 1\nline 2", subject="sim: unhealthy")
    assert request["method"] == "POST" and request["url"] == CUSTOM
    assert request["json"] == {
        "subject": "sim: unhealthy",
        "body": "line 1\nline 2",
        "name": ALERTS_BLOCK,
        "text": "sim: unhealthy\n\nline 1\nline 2",
    }


@pytest.mark.parametrize(
    "url, says",
    [
        ("", "not an http(s) URL"),
        (SECRET, "not an http(s) URL"),
        (f"ftp://files.example.org/{SECRET}", "not an http(s) URL"),
        (f"hooks.slack.com/services/T0/B0/{SECRET}", "not an http(s) URL"),
        ("http:///nohost", "not an http(s) URL"),
        (f"https://hooks.slack.com/triggers/T0/123/{SECRET}", "Incoming Webhooks"),
        (f"https://acme.webhook.office.com/webhookb2/{SECRET}/IncomingWebhook/x/y", "create a Workflow"),
        (f"https://prod-12.westeurope.logic.azure.com/workflows/abc/{SECRET}", "not a Teams Workflows webhook"),
        (f"https://discord.com/channels/123/{SECRET}", "not a webhook"),
    ],
)
def test_a_bad_url_is_refused_naming_what_is_accepted_without_quoting_it(url, says):
    with pytest.raises(ValueError) as refused:
        notification_block(url)
    assert says in str(refused.value)
    assert SECRET not in str(refused.value)
    with pytest.raises(argparse.ArgumentTypeError):
        notify_argument(url)


def test_setup_refuses_a_bad_url_before_touching_the_server_and_does_not_echo_it(capsys):
    with pytest.raises(SystemExit) as stopped:
        setup.main(["--no-deploy", "--notify", f"https://hooks.slack.com/triggers/T0/1/{SECRET}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --notify" in err and "Incoming Webhooks" in err and SECRET not in err


def test_off_is_an_argument_not_a_url():
    assert notify_argument("off") == notify_argument(" OFF ") == NOTIFY_OFF
    with pytest.raises(ValueError, match="or 'off'"):
        notification_block("off")


def test_destination_shows_scheme_host_and_port_only():
    assert destination(CUSTOM) == "https://alerts.example.org:8443"
    assert destination(CUSTOM_HTTP) == "http://10.0.0.5"
    assert destination(SLACK) == "https://hooks.slack.com"


def test_the_automation_sends_each_incident_event_once_with_its_own_subject_and_body():
    block_id = uuid.uuid4()
    automation = incident_automation(block_id)
    assert automation.name == NOTIFY_AUTOMATION and automation.enabled
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger)
    assert (
        trigger.expect
        == set(INCIDENT_EVENTS)
        == {
            "vllm.incident.opened",
            "vllm.incident.escalated",
            "vllm.incident.closed",
        }
    )
    assert isinstance(trigger.match, ResourceSpecification)
    assert trigger.match.model_dump() == {"prefect.resource.id": "vllm.service.*"}
    assert trigger.posture is Posture.Reactive and trigger.threshold == 1 and trigger.within == timedelta(0)
    [action] = automation.actions
    assert isinstance(action, SendNotification) and action.block_document_id == block_id
    assert action.subject == "{{ event.payload.subject }}" and action.body == "{{ event.payload.body }}"
