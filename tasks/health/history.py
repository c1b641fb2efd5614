"""The health check's history table: one row of short strings per check, for a Prefect table artifact.

The flow keeps the last rows (`tasks.state.HEALTH_HISTORY`) and publishes them newest first.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.health.verdict import HealthReport

__all__ = ["history_row"]


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
