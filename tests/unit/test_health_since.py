"""Since when a verdict holds, and so which outage an unhealthy event belongs to (tasks/health/history.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.health.history import verdict_since

NOW = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)
EARLIER = (NOW - timedelta(minutes=5)).isoformat()


def test_an_unchanged_verdict_keeps_its_since():
    assert verdict_since("unhealthy", EARLIER, "unhealthy", None, NOW) == EARLIER
    assert verdict_since("unhealthy", EARLIER, "unhealthy", NOW - timedelta(hours=1), NOW) == EARLIER


def test_a_changed_verdict_or_a_first_check_starts_now():
    assert verdict_since("healthy", EARLIER, "unhealthy", None, NOW) == NOW.isoformat()
    assert verdict_since(None, None, "unhealthy", None, NOW) == NOW.isoformat()


def test_a_recovery_that_served_since_ends_the_outage_even_without_a_healthy_check():
    """recover-vllm brought the server back (its record is newer than the streak) and it died again
    before a check saw it: a new outage, so the recovery trigger gets a new incident key."""
    recovered = NOW - timedelta(minutes=2)
    assert verdict_since("unhealthy", EARLIER, "unhealthy", recovered, NOW) == NOW.isoformat()
    naive = recovered.replace(tzinfo=None)  # a record written without a zone is UTC
    assert verdict_since("unhealthy", EARLIER, "unhealthy", naive, NOW) == NOW.isoformat()
