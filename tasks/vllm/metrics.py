"""vLLM's ``/metrics``, read: the Prometheus samples the health check and bench-qwen compare between reads.

vLLM renders ``/metrics`` with prometheus_client, so prometheus_client's own text parser reads it
(`prometheus_client.parser.text_string_to_metric_families`); this module only says which samples
matter and how label sets combine. The metric names are vLLM 0.10.1.1's, defined in
``PrometheusStatLogger.__init__`` of ``vllm/v1/metrics/loggers.py`` (the lines are cited in
`METRIC_SAMPLES`). Every metric carries the labels ``model_name`` and ``engine`` (loggers.py:168),
one label set per engine core.

No I/O, no clock: the caller reads the text and passes when it did.
"""

from __future__ import annotations

import math

from packaging.version import Version
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["METRIC_SAMPLES", "MetricsSnapshot", "counter_delta", "parse_metrics"]


class MetricsSnapshot(BaseModel):
    """The numbers of one ``/metrics`` read that the callers compare between reads.

    JSON-able and frozen: the health check stores it (in a Variable) and passes it back as the
    previous snapshot at the next check. Every number is summed over vLLM's label sets
    (``model_name``, ``engine``), except the KV cache usage, the fullest engine's (summing
    fractions of several engines would exceed 1 and mean nothing). None: the server did not
    export that metric (older or newer vLLM, or not vLLM).
    """

    model_config = ConfigDict(frozen=True)

    taken_at: float = Field(description="when the caller read /metrics (epoch seconds; the caller's clock)")
    requests_running: int | None = Field(None, description="vllm:num_requests_running")
    requests_waiting: int | None = Field(None, description="vllm:num_requests_waiting")
    kv_cache_usage: float | None = Field(
        None,
        description="vllm:kv_cache_usage_perc (else the deprecated vllm:gpu_cache_usage_perc); a fraction 0-1",
    )
    generation_tokens_total: int | None = Field(None, description="vllm:generation_tokens_total")
    prompt_tokens_total: int | None = Field(None, description="vllm:prompt_tokens_total")
    preemptions_total: int | None = Field(None, description="vllm:num_preemptions_total")
    prefix_cache_queries_total: int | None = Field(None, description="vllm:prefix_cache_queries_total")
    prefix_cache_hits_total: int | None = Field(None, description="vllm:prefix_cache_hits_total")
    requests_succeeded_total: int | None = Field(None, description="vllm:request_success_total (all finish reasons)")
    queue_time_sum: float | None = Field(None, description="vllm:request_queue_time_seconds_sum (seconds)")
    queue_time_count: int | None = Field(None, description="vllm:request_queue_time_seconds_count")

    @property
    def in_flight(self) -> int | None:
        """Requests running plus waiting; None when the server exports neither gauge."""
        if self.requests_running is None and self.requests_waiting is None:
            return None
        return (self.requests_running or 0) + (self.requests_waiting or 0)


#: Which samples feed which field of `MetricsSnapshot`, in order of preference: the first name that
#: has samples wins (``vllm:kv_cache_usage_perc`` over the deprecated ``vllm:gpu_cache_usage_perc``).
#: vLLM declares counters without ``_total``; prometheus_client exposes their samples as
#: ``<name>_total`` (the parser keeps it on samples while it strips it from the family name), so a
#: counter is listed by its sample name and by the bare name (an untyped exposition). Where vLLM
#: 0.10.1.1 declares each, in vllm/v1/metrics/loggers.py:
METRIC_SAMPLES: dict[str, tuple[str, ...]] = {
    "requests_running": ("vllm:num_requests_running",),  # gauge, loggers.py:189
    "requests_waiting": ("vllm:num_requests_waiting",),  # gauge, loggers.py:198
    # gauges, loggers.py:245 and the deprecated loggers.py:212 (same value, still exported in 0.10)
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "generation_tokens_total": ("vllm:generation_tokens_total", "vllm:generation_tokens"),  # loggers.py:286
    "prompt_tokens_total": ("vllm:prompt_tokens_total", "vllm:prompt_tokens"),  # loggers.py:278
    "preemptions_total": ("vllm:num_preemptions_total", "vllm:num_preemptions"),  # loggers.py:271
    "prefix_cache_queries_total": ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"),  # :252
    "prefix_cache_hits_total": ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),  # loggers.py:260
    # one label set per finished_reason (loggers.py:295-297)
    "requests_succeeded_total": ("vllm:request_success_total", "vllm:request_success"),
    # histogram, loggers.py:417: its _sum and _count samples
    "queue_time_sum": ("vllm:request_queue_time_seconds_sum",),
    "queue_time_count": ("vllm:request_queue_time_seconds_count",),
}
#: Fields whose label sets are combined by max, not sum (a fraction per engine).
_MAX_FIELDS = frozenset({"kv_cache_usage"})
_FLOAT_FIELDS = frozenset({"kv_cache_usage", "queue_time_sum"})


def parse_metrics(text: str, taken_at: float, version: Version | None = None) -> MetricsSnapshot:
    """The numbers of `METRIC_SAMPLES` from vLLM's Prometheus text (prometheus_client's parser).

    Args:
        text: the body of ``GET /metrics`` (vLLM renders it with prometheus_client).
        taken_at: when it was read (epoch seconds), from the caller's clock.

    Returns:
        The snapshot; a metric the text lacks is None (an empty text gives all None).

    Raises:
        ValueError: the text is not Prometheus exposition (the parser's error, with context).
    """
    wanted = {name for names in METRIC_SAMPLES.values() for name in names}
    found: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted and not math.isnan(sample.value):
                    found.setdefault(sample.name, []).append(float(sample.value))
    except ValueError as exc:
        raise ValueError(f"/metrics is not Prometheus text: {exc}") from exc
    values: dict[str, float | int | None] = {}
    for field, names in METRIC_SAMPLES.items():
        samples = next((found[name] for name in names if name in found), None)
        if samples is None:
            values[field] = None
            continue
        total = max(samples) if field in _MAX_FIELDS else sum(samples)
        values[field] = float(total) if field in _FLOAT_FIELDS else int(round(total))
    return MetricsSnapshot(taken_at=taken_at, **values)


def counter_delta(now: int | float | None, before: int | float | None) -> int | float | None:
    """How much a counter grew between two reads.

    A counter that went down was reset (the server restarted in between), so all of its current
    value is new. None when either read lacks it.
    """
    if now is None or before is None:
        return None
    return now - before if now >= before else now
