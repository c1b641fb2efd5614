"""How the health check says its numbers in its reasons and layer details: "75 s", "1,234", "97.0%", "twice"."""

from __future__ import annotations

__all__ = ["count", "pct", "secs", "times"]


def secs(seconds: float) -> str:
    """75 s, 1.4 s, 12 ms: whole seconds from 10 s up, milliseconds below one."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def count(value: float | int | None) -> str:
    """1,234 (a whole number with thousands separators), 12.5 (one decimal), or ? when unknown."""
    if value is None:
        return "?"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def pct(fraction: float) -> str:
    """A fraction 0-1 as a percentage with one decimal: 0.97 -> 97.0%."""
    return f"{fraction * 100:.1f}%"


def times(n: int) -> str:
    """once, 2 times, 3 times."""
    return "once" if n == 1 else f"{n} times"
