"""The health check's history table: one row of short strings per check, for a Prefect table artifact.

The flow keeps the last rows (`tasks.state.HEALTH_HISTORY`) and publishes them newest first.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.health.verdict import HealthReport

__all__ = ["history_row", "verdict_since"]


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def history_row(report: HealthReport, checked_at: float) -> dict[str, str]:
    """One row of the history table artifact (every value a short string).

    Args:
        report: the check's report.
        checked_at: when the check ran (epoch seconds), shown in UTC.
    """
    return {
        "checked at": _when(checked_at),
        "verdict": report.verdict.value,
        "layer": report.layer.value,
        "condition": report.condition.value,
        "reason": report.reason,
        "layers": ", ".join(f"{r.name.value} {r.verdict.value}" for r in report.layers),
    }


def _utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC time (a naive one is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def verdict_since(
    previous: str | None, previous_since: str | None, verdict: str, served_at: datetime | None, now: datetime
) -> str:
    """Since when ``verdict`` holds (UTC, ISO): the previous check's ``since`` while the verdict is
    unchanged and no deploy or recovery served in between, else ``now``.

    An unhealthy streak's ``since`` names its outage (the events' incident label, tasks/events.py
    `INCIDENT_LABEL`): a server that a recovery brought back and that died again before any check
    saw it healthy is a new outage, which recover-vllm's trigger must not take for the old one.

    Args:
        previous: the previous check's verdict (None: no check yet).
        previous_since: since when it held (ISO).
        verdict: this check's verdict.
        served_at: when a deploy or recovery last served on the target (`HealthyRecord.at`).
        now: this check's time.
    """
    began = datetime.fromisoformat(previous_since) if previous_since else None
    served_since = served_at is not None and began is not None and _utc(served_at) > _utc(began)
    if previous == verdict and previous_since and not served_since:
        return previous_since
    return _utc(now).isoformat()
