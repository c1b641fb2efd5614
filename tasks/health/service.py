"""The service-level figures of one health check: what users got between two checks, from /metrics.

The window runs from the previous check's /metrics read, taken after its smoke question, to this
check's read taken before its own: the check's 12*17 question never falls inside, so a quiet
server's p99 is never the check's own. Quantiles come from the growth of vLLM's cumulative
histogram buckets over the window (`tasks.vllm.metrics.histogram_quantile`), rates from counters
(`counter_rate`), and the gauges (KV cache usage, waiting requests) from this check's read.

A figure is None when it cannot be judged, and `ServiceLevels.not_judged` says why, in the
operator's words: the running vLLM does not export the metric, there is no window yet (the first
check, or the previous one read no /metrics), or the window saw fewer requests than
`Thresholds.min_window_requests` (a p99 of three requests is the slowest of three). The rules that
judge these figures, their limits and sources are in `tasks.health.verdict.RULES`.

No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.vllm.metrics import MetricsSnapshot, counter_delta, counter_rate, histogram_quantile

__all__ = ["ServiceLevels", "service_levels"]


@dataclass(frozen=True)
class ServiceLevels:
    """What users got in one window (None: not judged, `not_judged` says why).

    Attributes:
        window_s: seconds from the previous check's read to this check's read before its question.
        requests: requests that got their first token in the window (vllm:time_to_first_token_seconds_count).
        finished: requests that finished in the window, for any reason (vllm:request_success_total).
        ttft_p99_s: p99 time to first token in the window.
        itl_p99_s: p99 inter-token latency in the window.
        error_ratio: the window's finished requests that the engine aborted or failed, 0-1.
        preemptions_per_s: preemptions per second over the window.
        preemptions: preemptions in the window.
        kv_cache_usage: KV cache usage at this check's read, 0-1.
        requests_waiting: requests waiting at this check's read.
        not_judged: one phrase per figure that could not be judged, with the reason.
    """

    window_s: float | None = None
    requests: int | None = None
    finished: int | None = None
    ttft_p99_s: float | None = None
    itl_p99_s: float | None = None
    error_ratio: float | None = None
    preemptions_per_s: float | None = None
    preemptions: int | None = None
    kv_cache_usage: float | None = None
    requests_waiting: int | None = None
    not_judged: tuple[str, ...] = ()


def _int(value: int | float | None) -> int | None:
    return None if value is None else int(value)


def service_levels(now: MetricsSnapshot | None, before: MetricsSnapshot | None, min_requests: int) -> ServiceLevels:
    """The figures of the window from ``before`` (the previous check's read after its question) to
    ``now`` (this check's read before its question).

    Args:
        now: this check's /metrics read before the smoke question (None: not read).
        before: the previous check's read after its smoke question (None: no window yet).
        min_requests: fewer requests in the window than this and the quantiles and the error
            ratio are not judged (`Thresholds.min_window_requests`).
    """
    if now is None:
        return ServiceLevels(not_judged=("service levels: /metrics was not read before the smoke question",))
    kv, waiting = now.kv_cache_usage, now.requests_waiting
    missing = [
        f"{name} (not exported)" for name, value in (("KV cache usage", kv), ("waiting", waiting)) if value is None
    ]
    if before is None or now.taken_at <= before.taken_at:
        return ServiceLevels(
            kv_cache_usage=kv,
            requests_waiting=waiting,
            not_judged=(*missing, "p99 TTFT, p99 ITL, error ratio, preemption rate (no window yet: the first check)"),
        )
    window = now.taken_at - before.taken_at
    requests = _int(counter_delta(now.ttft_count, before.ttft_count))
    finished = _int(counter_delta(now.requests_succeeded_total, before.requests_succeeded_total))
    enough = requests is not None and requests >= min_requests
    few = f"{requests} request(s) in the window, fewer than {min_requests}"
    ttft = histogram_quantile(0.99, now.ttft_buckets, before.ttft_buckets) if enough else None
    itl = histogram_quantile(0.99, now.itl_buckets, before.itl_buckets) if enough else None
    missing += _why_not("p99 TTFT", now.ttft_buckets, before.ttft_buckets, enough, few)
    missing += _why_not("p99 ITL", now.itl_buckets, before.itl_buckets, enough, few)
    failed = _failed(now, before)
    ratio = None
    if failed is None:
        missing.append('error ratio (no finished_reason="abort" or "error" counter)')
    elif finished is None or finished < min_requests:
        missing.append(f"error ratio ({finished or 0} request(s) finished in the window, fewer than {min_requests})")
    else:
        ratio = failed / finished
    rate = counter_rate(now.preemptions_total, before.preemptions_total, window)
    if rate is None:
        missing.append("preemption rate (vllm:num_preemptions_total not exported)")
    return ServiceLevels(
        window_s=window,
        requests=requests,
        finished=finished,
        ttft_p99_s=ttft,
        itl_p99_s=itl,
        error_ratio=ratio,
        preemptions_per_s=rate,
        preemptions=_int(counter_delta(now.preemptions_total, before.preemptions_total)),
        kv_cache_usage=kv,
        requests_waiting=waiting,
        not_judged=tuple(missing),
    )


def _why_not(name: str, now: object, before: object, enough: bool, few: str) -> list[str]:
    if now is None:
        return [f"{name} (its histogram's buckets not exported)"]
    if before is None:  # the previous check's snapshot predates them (an upgrade), or it read none
        return [f"{name} (no buckets in the previous check's snapshot: judged from the next check on)"]
    return [] if enough else [f"{name} ({few})"]


def _failed(now: MetricsSnapshot, before: MetricsSnapshot) -> int | None:
    """Requests the engine aborted or failed in the window (abort + error); None when neither label set
    is exported (the counter does not exist on that vLLM)."""
    parts = [
        counter_delta(getattr(now, field), getattr(before, field))
        for field in ("requests_aborted_total", "requests_errored_total")
    ]
    known = [int(p) for p in parts if p is not None]
    return sum(known) if known else None
