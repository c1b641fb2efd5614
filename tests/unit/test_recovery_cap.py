"""tasks/recovery/cap.py: when recover-vllm stops recovering and calls a person."""

from __future__ import annotations

import pytest

from tasks.recovery.cap import needs_operator

# ------------------------------------------------------------------------------ recovery cap


def test_needs_operator_after_three_failed_recoveries_within_an_hour():
    now = 10_000.0
    assert needs_operator([(now - 3000, False), (now - 1200, False), (now - 60, False)], now)
    assert not needs_operator([(now - 1200, False), (now - 60, False)], now)


def test_needs_operator_ignores_healthy_and_old_recoveries():
    now = 10_000.0
    assert not needs_operator([(now - 3000, False), (now - 1200, True), (now - 60, False)], now)
    assert not needs_operator([(now - 7200, False), (now - 1200, False), (now - 60, False)], now)
    assert needs_operator([(now - 7200, False), (now - 60, False)], now, limit=2, window_s=7200)
    assert not needs_operator([], now)


def test_needs_operator_limit():
    with pytest.raises(ValueError):
        needs_operator([], 0.0, limit=0)
    assert needs_operator([(0.0, False)], 10.0, limit=1)
