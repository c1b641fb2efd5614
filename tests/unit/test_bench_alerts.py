"""bench/alerts.py's pure parts: the goal, fault -> message at an interval, the default-limit figures, the
schedule's starts."""

from __future__ import annotations

import pytest

from bench.alerts import GOAL_SLACK_S, Sample, at_default, fault_to_message, goal_s, median, meets_goal, next_start


def test_the_goal_is_one_interval_plus_the_slack():
    assert goal_s(300) == 300 + GOAL_SLACK_S
    assert goal_s(30) == 30 + GOAL_SLACK_S
    with pytest.raises(ValueError):
        goal_s(0)


def test_a_message_d_after_the_checks_scheduled_start_meets_the_goal_while_d_is_within_the_slack():
    # worst = I + d: the goal holds exactly when d <= the slack, at any interval
    for interval in (30.0, 300.0):
        assert meets_goal(interval, fault_to_message(interval, GOAL_SLACK_S)[1])
        assert not meets_goal(interval, fault_to_message(interval, GOAL_SLACK_S + 0.1)[1])


def test_fault_to_message_is_half_an_interval_plus_d_on_average_and_a_whole_one_at_worst():
    assert fault_to_message(300, 4.0) == (154.0, 304.0)
    assert fault_to_message(30, 4.0) == (19.0, 34.0)
    with pytest.raises(ValueError):
        fault_to_message(30, -1.0)


def test_a_wedge_measured_with_a_3_s_answer_budget_waits_60_s_at_the_default():
    assert at_default(4.5, 3.0, 60.0) == pytest.approx(61.5)
    with pytest.raises(ValueError):
        at_default(2.0, 3.0, 60.0)  # the measured figure holds the scaled wait


def test_next_start_is_the_schedules_first_start_at_or_after_a_moment():
    assert next_start(100.0, 30.0, 90.0) == 100.0
    assert next_start(100.0, 30.0, 100.0) == 100.0
    assert next_start(100.0, 30.0, 100.1) == 130.0
    assert next_start(100.0, 30.0, 160.0) == 160.0
    with pytest.raises(ValueError):
        next_start(0.0, 0.0, 1.0)


def test_a_samples_parts_add_up_to_fault_to_message():
    s = Sample("t", onset=10.0, phase_s=5.0, scheduled=35.0, pending=34.5, running=37.0, event_at=38.0)
    s.message_at = 38.4
    parts = [(s.onset, s.scheduled), (s.scheduled, s.pending), (s.pending, s.running), (s.running, s.event_at)]
    parts.append((s.event_at, s.message_at))
    assert sum(s.between(a, b) or 0 for a, b in parts) == pytest.approx(s.between(s.onset, s.message_at))
    assert Sample("t", 1.0, 0.0).between(1.0, None) is None


def test_median_ignores_what_was_not_measured():
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None]) is None
