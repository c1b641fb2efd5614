"""The incident machine, its signal table and its words: pure, no Prefect."""

from __future__ import annotations

import pytest

from tasks.events import IncidentEvent, ServiceEvent
from tasks.health.verdict import SERVICE_LEVEL_CONDITIONS, Condition
from tasks.incidents.machine import Effect, IncidentPolicy, IncidentState, Signal, advance_incident
from tasks.incidents.messages import Links, duration, message
from tasks.incidents.signals import SIGNAL_RULES, signal_of

T0 = 1_800_000_000.0
POLICY = IncidentPolicy(flap_window_s=3600, flap_limit=3, flap_quiet_s=1800)


def check(verdict: str, condition: str = "healthy", reason: str = "ok", since: str = "s") -> Signal:
    return signal_of(
        ServiceEvent(verdict),
        {"target": "spark", "layer": "container", "condition": condition, "reason": reason, "since": since},
    )


UNHEALTHY = check("unhealthy", "not_running", "the container exited, exit code 137, OOMKilled")
HEALTHY = check("healthy")
RECOVERED = signal_of(
    ServiceEvent.RECOVERED, {"target": "spark", "classes": ["page_cache"], "failure": "free_memory", "degraded": ""}
)
NEEDS_OPERATOR = signal_of(ServiceEvent.NEEDS_OPERATOR, {"target": "spark", "reason": "3 recoveries within the hour"})
RECOVERY_FAILED = signal_of(
    ServiceEvent.RECOVERY_FAILED, {"target": "spark", "kind": "kv_too_small", "attempts": 3, "next_step": "lower it"}
)


def run(signals: list[tuple[float, Signal]], state: IncidentState | None = None):
    """Feed signals at times; return the final state and the notices sent."""
    state = state or IncidentState()
    sent = []
    for at, signal in signals:
        state, notice = advance_incident(state, signal, T0 + at, f"id-{at}", POLICY)
        if notice:
            sent.append(notice)
    return state, sent


def test_every_service_event_has_a_signal():
    for event in ServiceEvent:
        assert signal_of(event, {"target": "spark"}).effect in Effect


def test_a_recovered_crash_is_opened_then_closed_with_who_fixed_it():
    state, sent = run([(0, UNHEALTHY), (60, check("starting")), (120, RECOVERED), (300, HEALTHY)])
    assert [n.event for n in sent] == [IncidentEvent.OPENED, IncidentEvent.CLOSED]
    assert state.open is None
    closed = sent[1]
    assert closed.incident.id == "id-0"
    assert "recover-vllm (page_cache after free_memory)" in (closed.incident.fixed_by or "")


def test_repeats_of_one_outage_are_one_message():
    _, sent = run([(0, UNHEALTHY), (300, UNHEALTHY), (600, UNHEALTHY)])
    assert [n.event for n in sent] == [IncidentEvent.OPENED]


def test_a_second_outage_after_a_recovery_before_any_check_is_counted_in_the_same_incident():
    again = check("unhealthy", "crash_loop", "restarting", since="s2")
    state, sent = run([(0, UNHEALTHY), (120, RECOVERED), (240, again), (360, RECOVERED), (600, HEALTHY)])
    assert [n.event for n in sent] == [IncidentEvent.OPENED, IncidentEvent.CLOSED]
    assert sent[1].incident.outages == 2
    assert "Outages in it: 2" in message(sent[1], "spark", None, Links()).body


def test_escalation_is_sent_once():
    state, sent = run([(0, UNHEALTHY), (100, RECOVERY_FAILED), (300, UNHEALTHY), (400, NEEDS_OPERATOR)])
    assert [n.event for n in sent] == [IncidentEvent.OPENED, IncidentEvent.ESCALATED]
    assert state.open is not None and state.open.repeats == 2
    assert "recovery failed" in (state.open.escalation or "")


def test_needs_operator_alone_opens_an_escalated_incident_but_recovery_failed_alone_does_not():
    _, sent = run([(0, RECOVERY_FAILED)])
    assert sent == []
    state, sent = run([(0, NEEDS_OPERATOR)])
    assert [n.event for n in sent] == [IncidentEvent.OPENED]
    assert sent[0].incident.escalation


def test_two_outages_in_a_row_are_two_incidents():
    _, sent = run([(0, UNHEALTHY), (300, HEALTHY), (420, UNHEALTHY), (720, HEALTHY)])
    assert [n.event for n in sent] == [IncidentEvent.OPENED, IncidentEvent.CLOSED] * 2
    assert sent[0].incident.id != sent[2].incident.id


def test_nothing_is_sent_for_a_target_stopped_or_never_deployed():
    stopped = check("stopped", "desired_stopped")
    never = check("stopped", "never_deployed")
    _, sent = run([(0, stopped), (300, never), (600, HEALTHY), (900, check("starting"))])
    assert sent == []


def test_stopping_a_target_on_purpose_closes_its_incident_at_once():
    stop = signal_of(ServiceEvent.STOPPED, {"target": "spark"})
    _, sent = run([(0, UNHEALTHY), (60, stop), (120, check("stopped", "desired_stopped"))])
    assert [n.event for n in sent] == [IncidentEvent.OPENED, IncidentEvent.CLOSED]
    assert sent[1].signal.effect is Effect.END


def test_a_flapping_target_is_bounded():
    """Down and up at every check for two hours: three incidents, then one flapping incident."""
    signals = []
    for i in range(24):  # 24 checks, 5 minutes apart, alternating
        signals.append((i * 300.0, UNHEALTHY if i % 2 == 0 else HEALTHY))
    state, sent = run(signals)
    opened = [n for n in sent if n.event is IncidentEvent.OPENED]
    assert len(opened) == 4
    assert opened[-1].incident.flapping and opened[-1].incident.opens_in_window == 4
    assert len(sent) == 3 * 2 + 1  # three incidents opened and closed, the flapping one opened
    assert state.open is not None and state.open.flapping


def test_a_flapping_incident_closes_after_its_quiet_time():
    flapping = [(i * 300.0, UNHEALTHY if i % 2 == 0 else HEALTHY) for i in range(7)]  # 4th opens flapping
    state, sent = run(flapping)
    assert state.open is not None and state.open.flapping
    quiet = [(2100.0 + i * 300, HEALTHY) for i in range(8)]
    state, more = run(quiet, state)
    assert [n.event for n in more] == [IncidentEvent.CLOSED]
    assert more[0].now - T0 >= 2100 + POLICY.flap_quiet_s


def test_service_level_breach_opens_and_other_degraded_conditions_close():
    [slo] = sorted(SERVICE_LEVEL_CONDITIONS)[:1]
    breach = check("degraded", slo.value, "p99 TTFT 42 s over 30 s")
    recovered_spec = check("degraded", Condition.RECOVERED_SPEC.value, "running a lowered spec")
    _, sent = run([(0, breach), (300, breach), (600, recovered_spec)])
    assert [n.event for n in sent] == [IncidentEvent.OPENED, IncidentEvent.CLOSED]
    assert sent[0].incident.what == "service level breached"


@pytest.mark.parametrize(
    ("payload", "effect"),
    [
        ({"kind": "rollback_failed", "down": True, "reason": "x"}, Effect.ESCALATE),
        ({"kind": "kv_too_small", "down": False, "reason": "x"}, Effect.NONE),
        ({"kind": "BenchGateFailed", "down": False, "reason": "x"}, Effect.OPEN),
    ],
)
def test_deploy_failures(payload, effect):
    assert signal_of(ServiceEvent.FAILED, {"target": "spark", **payload}).effect is effect


def test_a_deploy_that_missed_its_gate_opens_and_one_that_passed_fixes():
    missed = signal_of(ServiceEvent.DEPLOYED, {"target": "spark", "gate": "TTFT p99 3.1 s > 2 s", "spec_hash": "a"})
    passed = signal_of(ServiceEvent.DEPLOYED, {"target": "spark", "gate": "", "spec_hash": "b"})
    assert missed.effect is Effect.OPEN and "TTFT" in missed.cause
    assert passed.effect is Effect.FIXED and "deploy-qwen (spec b)" in passed.by


def test_the_table_explains_every_rule():
    assert all(rule.why for rule in SIGNAL_RULES)


def test_messages_name_the_target_version_cause_fix_and_links():
    _, sent = run([(0, UNHEALTHY), (120, RECOVERED), (725, HEALTHY)])
    links = Links(ui_url="http://spark.lan:4200", flow_run_id="abc")
    opened = message(sent[0], "spark", "0.10.1.1+381074ae.nv25.09", links)
    assert opened.subject.startswith("[spark] OPENED: unhealthy: container: the container exited")
    for needle in (
        "Target: spark (vLLM 0.10.1.1+381074ae.nv25.09)",
        "Cause: container: the container exited, exit code 137, OOMKilled",
        "Fix: recover-vllm runs now",
        "Report: http://spark.lan:4200/artifacts/key/health-spark",
        "Run: http://spark.lan:4200/runs/flow-run/abc",
    ):
        assert needle in opened.body
    closed = message(sent[1], "spark", None, Links())
    assert closed.subject == "[spark] RESOLVED after 12 min: unhealthy"
    assert "fixed by recover-vllm (page_cache after free_memory)" in closed.body
    assert "http" not in closed.body  # no UI known: no links
    assert len(opened.subject) <= 150 and "\n" not in opened.subject


def test_durations_read_as_an_operator_reads_them():
    assert [duration(s) for s in (45, 725, 3 * 3600 + 300)] == ["45 s", "12 min", "3 h 05 min"]
