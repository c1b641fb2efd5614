"""tasks/health/history.py: one row of the health check's history table."""

from __future__ import annotations

import json

from tasks.health.history import history_row
from tasks.health.observation import Observation
from tasks.health.verdict import evaluate
from tasks.vllm.metrics import MetricsSnapshot

NOW = 1_750_000_000.0


def wedged() -> Observation:
    """/health 200 and a running container, but requests in flight 75 s apart and generation_tokens_total stuck."""
    return Observation(
        desired="running",
        now=NOW,
        exists=True,
        status="running",
        started_at=NOW - 3600,
        health_status=200,
        health_latency_s=0.004,
        models_listed=True,
        answer_ok=True,
        answer_latency_s=1.4,
        metrics=MetricsSnapshot(taken_at=NOW, requests_running=3, requests_waiting=5, generation_tokens_total=1_234),
        previous=MetricsSnapshot(taken_at=NOW - 75, requests_running=3, generation_tokens_total=1_234),
    )


def test_history_row():
    row = history_row(evaluate(wedged()), checked_at=0.0)
    assert row["checked at"] == "1970-01-01 00:00:00 UTC"
    assert (row["verdict"], row["layer"], row["condition"]) == ("unhealthy", "progress", "wedged")
    assert "1,234" in row["reason"]
    assert row["layers"].startswith("desired ok, container ok, liveness ok")
    assert all(isinstance(v, str) for v in row.values())
    json.dumps(row)
