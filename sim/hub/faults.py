"""Faults the Hub imitation can inject, process-wide, optionally limited by path glob and count.

A :class:`Faults` is one rule. Several rules can be active at once (``HubServer.set_faults``
accepts one or a list). For every request the server asks :class:`FaultSet` which rules match
(path glob, method) and *apply* to that response; each applying rule is consumed once (its
``times`` counts down; ``None`` means forever).

What applies to which response:

- ``status_5xx`` (500/502/503/504, or 429) and ``first_byte_delay_s``: any Hub or CDN request.
- ``ignore_range``: a GET for file bytes that carries a ``Range`` header (answered 200, full body).
- ``cut_after_bytes``, ``throttle_bytes_per_s``, ``total_throttle_bytes_per_s``: a GET that sends
  file bytes (a 200/206 body from ``/resolve`` for non-LFS files or from the CDN for LFS files).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Faults:
    """One fault rule. All effects set on it fire together on a matching request.

    cut_after_bytes: close the connection after this many body bytes of the response.
    status_5xx: answer this status instead (500, 502, 503, 504 or 429), JSON body.
    retry_after: seconds for a ``Retry-After`` header on that status answer.
    ignore_range: answer a Range request with 200 and the full body.
    throttle_bytes_per_s: pace each matching body to this rate (per connection, like a slow link).
    total_throttle_bytes_per_s: cap the summed rate of all bodies this rule applies to.
    first_byte_delay_s: sleep before the status line is sent.
    path_glob: fnmatch pattern tried on the file path in the repo (``model-00001-of-00007.safetensors``),
        on ``<repo_id>/<path>`` and on the URL path; ``*`` matches everything.
    methods: only these HTTP methods (e.g. ``["GET"]``); None = any.
    times: how many requests this rule fires on before it disappears; None = unlimited.
    """

    cut_after_bytes: int | None = None
    status_5xx: int | None = None
    retry_after: int | None = None
    ignore_range: bool = False
    throttle_bytes_per_s: float | None = None
    total_throttle_bytes_per_s: float | None = None
    first_byte_delay_s: float | None = None
    path_glob: str = "*"
    methods: list[str] | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.status_5xx is not None and self.status_5xx not in (429, 500, 502, 503, 504):
            raise ValueError(f"status_5xx must be one of 429, 500, 502, 503, 504; got {self.status_5xx}")
        if self.cut_after_bytes is not None and self.cut_after_bytes < 0:
            raise ValueError("cut_after_bytes must be >= 0")
        for name in ("throttle_bytes_per_s", "total_throttle_bytes_per_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 (or None for unlimited)")
        if self.methods is not None:
            self.methods = [m.upper() for m in self.methods]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Faults:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)


class RateLimiter:
    """A shared pacing clock: each ``take(n)`` reserves n bytes of a global budget and sleeps."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
            wake = self._next
        delay = wake - time.monotonic()
        if delay > 0:
            time.sleep(delay)


@dataclass
class _Rule:
    faults: Faults
    remaining: int | None
    fired: int = 0
    limiter: RateLimiter | None = None


@dataclass
class Effects:
    """What the server must do to one response (the union of the rules that fired)."""

    status: int | None = None
    retry_after: int | None = None
    first_byte_delay_s: float = 0.0
    ignore_range: bool = False
    cut_after_bytes: int | None = None
    throttle_bytes_per_s: float | None = None
    limiters: list[RateLimiter] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)  # kinds, for stats

    @property
    def shapes_body(self) -> bool:
        return self.cut_after_bytes is not None or self.throttle_bytes_per_s is not None or bool(self.limiters)


class FaultSet:
    """Thread-safe set of active rules."""

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()

    def set(self, faults: Faults | list[Faults] | None, append: bool = False) -> None:
        items = [] if faults is None else ([faults] if isinstance(faults, Faults) else list(faults))
        rules = [
            _Rule(
                faults=f,
                remaining=f.times,
                limiter=RateLimiter(f.total_throttle_bytes_per_s) if f.total_throttle_bytes_per_s else None,
            )
            for f in items
        ]
        with self._lock:
            self._rules = (self._rules if append else []) + rules

    def clear(self) -> None:
        self.set(None)

    def describe(self) -> list[dict]:
        with self._lock:
            return [{**r.faults.to_dict(), "remaining": r.remaining, "fired": r.fired} for r in self._rules]

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._rules)

    @staticmethod
    def _matches(f: Faults, method: str, candidates: list[str]) -> bool:
        if f.methods is not None and method.upper() not in f.methods:
            return False
        return any(fnmatch.fnmatchcase(c, f.path_glob) for c in candidates if c)

    def evaluate(self, *, method: str, candidates: list[str], body: bool, has_range: bool) -> Effects:
        """Fire (and consume) every rule that matches and applies to this response.

        A status rule wins the response: when one fires, rules that only shape a body do not fire
        (and are not consumed) on that request.
        """
        eff = Effects()
        with self._lock:
            if not self._rules:
                return eff
            matching = [r for r in self._rules if self._matches(r.faults, method, candidates)]
            fired: list[_Rule] = []
            status_rule = next((r for r in matching if r.faults.status_5xx is not None), None)
            if status_rule is not None:
                f = status_rule.faults
                eff.status, eff.retry_after = f.status_5xx, f.retry_after
                eff.fired.append(f"status_{f.status_5xx}")
                fired.append(status_rule)
                if f.first_byte_delay_s:
                    eff.first_byte_delay_s = f.first_byte_delay_s
            else:
                for rule in matching:
                    f = rule.faults
                    applies = False
                    if f.first_byte_delay_s:
                        applies = True
                        eff.first_byte_delay_s = max(eff.first_byte_delay_s, f.first_byte_delay_s)
                        eff.fired.append("first_byte_delay")
                    if f.ignore_range and body and has_range:
                        applies = True
                        eff.ignore_range = True
                        eff.fired.append("ignore_range")
                    if body and f.cut_after_bytes is not None:
                        applies = True
                        if eff.cut_after_bytes is None or f.cut_after_bytes < eff.cut_after_bytes:
                            eff.cut_after_bytes = f.cut_after_bytes
                        eff.fired.append("cut")
                    if body and f.throttle_bytes_per_s is not None:
                        applies = True
                        if eff.throttle_bytes_per_s is None or f.throttle_bytes_per_s < eff.throttle_bytes_per_s:
                            eff.throttle_bytes_per_s = f.throttle_bytes_per_s
                        eff.fired.append("throttle")
                    if body and rule.limiter is not None:
                        applies = True
                        eff.limiters.append(rule.limiter)
                        eff.fired.append("total_throttle")
                    if applies:
                        fired.append(rule)
            for rule in fired:
                rule.fired += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
            self._rules = [r for r in self._rules if r.remaining is None or r.remaining > 0]
        return eff
