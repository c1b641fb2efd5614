"""The recovery cap: when recover-vllm stops recovering a target and calls a person instead.

Pure (no I/O, no clock): the flow reads the target's recent recoveries and passes its clock.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["needs_operator"]


def needs_operator(
    recent: Iterable[tuple[float, bool]],
    now: float,
    limit: int = 3,
    window_s: float = 3600.0,
) -> bool:
    """Whether recover-vllm should stop recovering and call a person (``vllm.service.needs-operator``).

    Recovery that keeps failing does harm on a Spark: every attempt is a 3-4 min load that pushes
    unified memory again (which can hang the host, vllm issue 46307), and a loop hides the first
    failure's log (the CrashLoopBackOff pattern). So after ``limit`` recoveries within ``window_s``
    that did not end healthy, automation stops and a person acts. Recoveries that ended healthy do
    not count, and neither do failures older than the window: a server that fails once a day is
    recovered every time.

    Args:
        recent: the target's recoveries as ``(at, ended_healthy)``: when it ran (epoch seconds) and
            whether the server was healthy afterwards.
        now: the flow's clock (epoch seconds).
        limit: this many failed recoveries within the window call for an operator (>= 1).
        window_s: how far back they count (seconds).

    Returns:
        True when ``limit`` or more recoveries within the last ``window_s`` did not end healthy.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    failed = sum(1 for at, ended_healthy in recent if not ended_healthy and now - at <= window_s)
    return failed >= limit
