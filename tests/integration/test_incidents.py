"""Incidents through a real Prefect server, its notify automation and a webhook receiver on loopback:
a target down whose recoveries keep failing is opened, then escalated once (needs an operator);
a target never deployed, or stopped on purpose, sends nothing.

No container is needed: a target wanted running with no server is down, and recover-vllm's cap on
failing recoveries (seeded: three failed runs within the hour) stops before any start.
"""

from __future__ import annotations

import time

import pytest

from flows.health import health_check
from flows.recover import NEEDS_OPERATOR_AFTER, recover_vllm
from tasks.health.verdict import Verdict
from tasks.state import record_recover_run, set_desired
from tests.integration.conftest import TEST_API_KEY, TEST_TOKEN

pytestmark = pytest.mark.integration


def for_target(name: str):
    """The receiver's messages about one target (the automation may carry other tests' targets too)."""
    return lambda m: (m["json"] or {}).get("subject", "").startswith(f"[{name}]")


def test_a_down_target_opens_once_escalates_once_and_quiet_targets_send_nothing(
    make_sim_target, alerts, hf_token_block
):
    webhook_receiver = alerts
    never, stopped, down = make_sim_target(), make_sim_target(), make_sim_target(api_key=TEST_API_KEY)
    # nothing is wanted of these two: their checks say stopped and send nothing
    set_desired(stopped.name, "stopped")
    assert health_check(target=never.name).verdict is Verdict.STOPPED
    assert health_check(target=stopped.name).verdict is Verdict.STOPPED

    # wanted running, no server: the check opens the incident
    set_desired(down.name, "running")
    sent = time.time()
    report = health_check(target=down.name)
    assert report.verdict is Verdict.UNHEALTHY, report.reason
    opened = webhook_receiver.wait_for(for_target(down.name), timeout_s=30)["json"]
    assert opened["subject"].startswith(f"[{down.name}] OPENED: unhealthy: container: ")
    for line in (f"Target: {down.name} (vLLM ", "Cause: container: ", "Fix: recover-vllm runs now", "Report: http"):
        assert line in opened["body"], opened["body"]
    assert f"/artifacts/key/health-{down.name}" in opened["body"]

    # a second check of the same outage: folded, no message; recovery hits its cap: escalated, once
    assert health_check(target=down.name).verdict is Verdict.UNHEALTHY
    for _ in range(NEEDS_OPERATOR_AFTER):
        record_recover_run(down.name, time.time(), ended_healthy=False)
    assert recover_vllm(target=down.name, reason="test").status == "needs-operator"
    escalated = webhook_receiver.wait_for(
        lambda m: for_target(down.name)(m) and "ESCALATED" in m["json"]["subject"], timeout_s=30
    )
    assert escalated["json"]["subject"].startswith(f"[{down.name}] ESCALATED: needs an operator: ")
    assert "Fix: recovery stops here" in escalated["json"]["body"]
    assert recover_vllm(target=down.name, reason="test again").status == "needs-operator"  # no third message

    time.sleep(1)  # the quiet targets had ten times what the escalation took (~0.1 s from event to message)
    mine = [m["json"] for m in webhook_receiver.messages if for_target(down.name)(m)]
    assert [m["subject"].split(":")[0] for m in mine] == [f"[{down.name}] OPENED", f"[{down.name}] ESCALATED"]
    assert not any(for_target(n)(m) for m in webhook_receiver.messages for n in (never.name, stopped.name))
    everything = "".join(m["body"].decode(errors="replace") for m in webhook_receiver.messages)
    assert TEST_TOKEN not in everything and TEST_API_KEY not in everything
    print(f"open message {opened and webhook_receiver.messages[0]['time'] - sent:.1f} s after the check began")
