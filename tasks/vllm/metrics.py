"""vLLM's ``/metrics``, read: the Prometheus samples the health check and bench-qwen compare between reads.

vLLM renders ``/metrics`` with prometheus_client, so prometheus_client's own text parser reads it
(`prometheus_client.parser.text_string_to_metric_families`); this module only says which samples
matter and how label sets combine. The metric names differ between vLLM versions (0.17.1 drops
``vllm:gpu_cache_usage_perc`` and ``vllm:time_per_output_token_seconds``): `METRIC_SAMPLES` keeps
them by version, each citing where ``PrometheusStatLogger.__init__`` of ``vllm/v1/metrics/loggers.py``
declares it. Every metric carries the labels ``model_name`` and ``engine`` (loggers.py:168 in 0.10.1.1,
:480 in 0.31.0), one label set per engine core.

The service-level rules (tasks/health/verdict.py) read two more kinds of sample: a histogram's
cumulative ``_bucket`` samples (kept per ``le``, summed over label sets, for `histogram_quantile`)
and one label set of a counter (``vllm:request_success_total{finished_reason="abort"}``): a name in
`METRIC_SAMPLES` may carry a Prometheus label selector, and a field whose names end in ``_bucket``
keeps its buckets.

No I/O, no clock: the caller reads the text and passes when it did.
"""

from __future__ import annotations

import math
import re

from packaging.version import Version
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from tasks.vllm.versions import Variant, variants_for

__all__ = [
    "METRIC_SAMPLES",
    "Buckets",
    "MetricsSnapshot",
    "counter_delta",
    "counter_rate",
    "histogram_quantile",
    "metric_names",
    "parse_metrics",
]

#: A histogram's cumulative buckets: the ``le`` label as prometheus_client writes it ("0.5", "+Inf")
#: -> how many observations were at most that (summed over vLLM's label sets).
Buckets = dict[str, int]


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
    ttft_sum: float | None = Field(None, description="vllm:time_to_first_token_seconds_sum (seconds)")
    ttft_count: int | None = Field(None, description="vllm:time_to_first_token_seconds_count")
    itl_sum: float | None = Field(
        None,
        description="vllm:inter_token_latency_seconds_sum (seconds); 0.10.1.1: vllm:time_per_output_token_seconds_sum",
    )
    itl_count: int | None = Field(
        None, description="vllm:inter_token_latency_seconds_count; 0.10.1.1: vllm:time_per_output_token_seconds_count"
    )
    e2e_latency_sum: float | None = Field(None, description="vllm:e2e_request_latency_seconds_sum (seconds)")
    e2e_latency_count: int | None = Field(None, description="vllm:e2e_request_latency_seconds_count")
    requests_aborted_total: int | None = Field(
        None, description='vllm:request_success_total{finished_reason="abort"}: requests the engine aborted'
    )
    requests_errored_total: int | None = Field(
        None, description='vllm:request_success_total{finished_reason="error"} (0.31.0; absent on 0.10.1.1)'
    )
    ttft_buckets: Buckets | None = Field(None, description="vllm:time_to_first_token_seconds_bucket, per le")
    itl_buckets: Buckets | None = Field(
        None,
        description=(
            "vllm:inter_token_latency_seconds_bucket per le; 0.10.1.1: vllm:time_per_output_token_seconds_bucket"
        ),
    )

    @property
    def in_flight(self) -> int | None:
        """Requests running plus waiting; None when the server exports neither gauge."""
        if self.requests_running is None and self.requests_waiting is None:
            return None
        return (self.requests_running or 0) + (self.requests_waiting or 0)


def _sample(versions: str, names: tuple[str, ...], source: str) -> Variant[tuple[str, ...]]:
    return Variant(versions, names, source)


#: Which samples feed which field of `MetricsSnapshot`, in order of preference, by vLLM version: the
#: first name of the version's variants that has samples wins (``vllm:kv_cache_usage_perc`` over the
#: deprecated ``vllm:gpu_cache_usage_perc``). vLLM declares counters without ``_total``;
#: prometheus_client exposes their samples as ``<name>_total`` (the parser keeps it on samples while
#: it strips it from the family name), so a counter is listed by its sample name and by the bare name
#: (an untyped exposition); a histogram by its ``_sum`` and ``_count`` samples. Each cites where
#: ``PrometheusStatLogger.__init__`` declares it, vllm/v1/metrics/loggers.py, in the inspected versions
#: (0.10.1.1, 0.10.2, 0.11.1, 0.17.1, 0.20.1, 0.31.0).
METRIC_SAMPLES: dict[str, tuple[Variant[tuple[str, ...]], ...]] = {
    "requests_running": (
        _sample("", ("vllm:num_requests_running",), "gauge, loggers.py:189, :189, :398, :436, :452, :509"),
    ),
    "requests_waiting": (
        _sample("", ("vllm:num_requests_waiting",), "gauge, loggers.py:198, :198, :408, :446, :462, :519"),
    ),
    "kv_cache_usage": (
        _sample("", ("vllm:kv_cache_usage_perc",), "gauge, loggers.py:245, :245, :495, :482, :520, :577"),
        _sample(
            "<0.17.1",
            ("vllm:gpu_cache_usage_perc",),
            "the deprecated gauge (same value), loggers.py:212 in 0.10.1.1 and 0.10.2; :450 in 0.11.1 only with "
            "--show-hidden-metrics-for-version=0.10 (:448); gone from 0.17.1",
        ),
    ),
    "generation_tokens_total": (
        _sample(
            "",
            ("vllm:generation_tokens_total", "vllm:generation_tokens"),
            "counter, loggers.py:286, :286, :613, :635, :663, :720",
        ),
    ),
    "prompt_tokens_total": (
        _sample(
            "",
            ("vllm:prompt_tokens_total", "vllm:prompt_tokens"),
            "counter, loggers.py:278, :278, :604, :591, :629, :686",
        ),
    ),
    "preemptions_total": (
        _sample(
            "",
            ("vllm:num_preemptions_total", "vllm:num_preemptions"),
            "counter, loggers.py:271, :271, :595, :582, :620, :677",
        ),
    ),
    "prefix_cache_queries_total": (
        _sample(
            "",
            ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"),
            "counter, loggers.py:252, :252, :518, :505, :543, :600",
        ),
    ),
    "prefix_cache_hits_total": (
        _sample(
            "",
            ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),
            "counter, loggers.py:260, :260, :529, :516, :554, :611",
        ),
    ),
    "requests_succeeded_total": (
        _sample(
            "",
            ("vllm:request_success_total", "vllm:request_success"),
            "counter, one label set per finished_reason, loggers.py:295, :295, :623, :645, :673, :730",
        ),
    ),
    "queue_time_sum": (
        _sample(
            "", ("vllm:request_queue_time_seconds_sum",), "histogram, loggers.py:404, :419, :866, :853, :881, :862"
        ),
    ),
    "queue_time_count": (
        _sample(
            "", ("vllm:request_queue_time_seconds_count",), "histogram, loggers.py:404, :419, :866, :853, :881, :862"
        ),
    ),
    "ttft_sum": (
        _sample(
            "", ("vllm:time_to_first_token_seconds_sum",), "histogram, loggers.py:369, :369, :705, :727, :755, :822"
        ),
    ),
    "ttft_count": (
        _sample(
            "", ("vllm:time_to_first_token_seconds_count",), "histogram, loggers.py:369, :369, :705, :727, :755, :822"
        ),
    ),
    "itl_sum": (
        _sample(
            ">=0.10.2",
            ("vllm:inter_token_latency_seconds_sum",),
            "histogram, loggers.py:396 in 0.10.2, :773 in 0.11.1, :760 in 0.17.1, :788 in 0.20.1, :832 in 0.31.0",
        ),
        _sample(
            "<0.17.1",
            ("vllm:time_per_output_token_seconds_sum",),
            "the same inter-token gaps under the old name, loggers.py:381 in 0.10.1.1, :383 in 0.10.2, :740 in "
            "0.11.1 (deprecated); gone from 0.17.1",
        ),
    ),
    "itl_count": (
        _sample(
            ">=0.10.2",
            ("vllm:inter_token_latency_seconds_count",),
            "histogram, loggers.py:396 in 0.10.2, :773 in 0.11.1, :760 in 0.17.1, :788 in 0.20.1, :832 in 0.31.0",
        ),
        _sample(
            "<0.17.1",
            ("vllm:time_per_output_token_seconds_count",),
            "the old name, loggers.py:381 in 0.10.1.1, :383 in 0.10.2, :740 in 0.11.1; gone from 0.17.1",
        ),
    ),
    "e2e_latency_sum": (
        _sample(
            "", ("vllm:e2e_request_latency_seconds_sum",), "histogram, loggers.py:396, :411, :856, :843, :871, :852"
        ),
    ),
    "e2e_latency_count": (
        _sample(
            "", ("vllm:e2e_request_latency_seconds_count",), "histogram, loggers.py:396, :411, :856, :843, :871, :852"
        ),
    ),
    "requests_aborted_total": (
        _sample(
            "",
            ('vllm:request_success_total{finished_reason="abort"}', 'vllm:request_success{finished_reason="abort"}'),
            "the abort label set, made at start for each FinishReason (loggers.py:298-301 in 0.10.1.1, :734-736 in "
            "0.31.0; FINISH_REASON_STRINGS, v1/engine/__init__.py:21, :36). Counted only for a finish the engine "
            "core reports: a client's abort pops the request before any stats (output_processor.py:301-323 in "
            "0.10.1.1, :517-579 in 0.31.0), so 0.10.1.1 never counts one; 0.31.0 counts the engine's own aborts "
            "(shutdown, pause mode abort: core.py:1571-1574, :2012-2015)",
        ),
    ),
    "requests_errored_total": (
        _sample(
            "",
            ('vllm:request_success_total{finished_reason="error"}', 'vllm:request_success{finished_reason="error"}'),
            "the error label set (loggers.py:734-736 in 0.31.0): FinishReason.ERROR, 'retryable request-level "
            "internal error (e.g., KV load failure)', v1/engine/__init__.py:48-66 in 0.31.0; absent from 0.10.1.1 "
            "(stop, length, abort: :21; loggers.py:298-301)",
        ),
    ),
    "ttft_buckets": (
        _sample(
            "", ("vllm:time_to_first_token_seconds_bucket",), "histogram, loggers.py:369, :369, :705, :727, :755, :822"
        ),
    ),
    "itl_buckets": (
        _sample(
            ">=0.10.2",
            ("vllm:inter_token_latency_seconds_bucket",),
            "histogram, loggers.py:396 in 0.10.2, :773 in 0.11.1, :760 in 0.17.1, :788 in 0.20.1, :832 in 0.31.0",
        ),
        _sample(
            "<0.17.1",
            ("vllm:time_per_output_token_seconds_bucket",),
            "the old name, loggers.py:381 in 0.10.1.1, :383 in 0.10.2, :740 in 0.11.1; gone from 0.17.1",
        ),
    ),
}
#: Fields whose label sets are combined by max, not sum (a fraction per engine).
_MAX_FIELDS = frozenset({"kv_cache_usage"})
#: Fields that keep a histogram's cumulative buckets per ``le`` (`Buckets`).
_BUCKET_FIELDS = frozenset({"ttft_buckets", "itl_buckets"})
#: A sample name with an optional label selector: ``vllm:x_total{finished_reason="abort"}``.
_SELECTOR = re.compile(r"^(?P<name>[^{]+)(?:\{(?P<labels>.*)\})?$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_FLOAT_FIELDS = frozenset({"kv_cache_usage", "queue_time_sum", "ttft_sum", "itl_sum", "e2e_latency_sum"})


def metric_names(field: str, version: Version | None = None) -> list[str]:
    """The sample names that feed ``field`` on ``version``, preferred first (every version's when unknown)."""
    return [name for names in variants_for(METRIC_SAMPLES[field], version) for name in names]


def parse_metrics(text: str, taken_at: float, version: Version | None = None) -> MetricsSnapshot:
    """The numbers of `METRIC_SAMPLES` for ``version`` from vLLM's Prometheus text (prometheus_client's parser).

    Args:
        text: the body of ``GET /metrics`` (vLLM renders it with prometheus_client).
        taken_at: when it was read (epoch seconds), from the caller's clock.
        version: the server's vLLM: only the names it exports are read (0.31.0 has no
            ``vllm:gpu_cache_usage_perc``); None reads every version's, the first found winning.

    Returns:
        The snapshot; a metric the text lacks is None (an empty text gives all None).

    Raises:
        ValueError: the text is not Prometheus exposition (the parser's error, with context).
    """
    names_of = {field: metric_names(field, version) for field in METRIC_SAMPLES}
    wanted = {_split(name)[0] for names in names_of.values() for name in names}
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted and not math.isnan(sample.value):
                    found.setdefault(sample.name, []).append((sample.labels, float(sample.value)))
    except ValueError as exc:
        raise ValueError(f"/metrics is not Prometheus text: {exc}") from exc
    values: dict[str, float | int | Buckets | None] = {}
    for field, names in names_of.items():
        samples = next((hits for name in names if (hits := _matching(found, name))), None)
        values[field] = None if samples is None else _combine(field, samples)
    return MetricsSnapshot(taken_at=taken_at, **values)


def _split(name: str) -> tuple[str, dict[str, str]]:
    """``vllm:x_total{finished_reason="abort"}`` -> ("vllm:x_total", {"finished_reason": "abort"})."""
    match = _SELECTOR.match(name)
    assert match is not None, name
    return match["name"], dict(_LABEL.findall(match["labels"] or ""))


def _matching(found: dict[str, list[tuple[dict[str, str], float]]], name: str) -> list[tuple[dict[str, str], float]]:
    bare, selector = _split(name)
    return [(labels, v) for labels, v in found.get(bare, []) if all(labels.get(k) == w for k, w in selector.items())]


def _combine(field: str, samples: list[tuple[dict[str, str], float]]) -> float | int | Buckets:
    """One field's value from its samples: buckets per ``le``, the fullest engine, or the sum."""
    if field in _BUCKET_FIELDS:
        per_le: dict[str, float] = {}
        for labels, value in samples:
            per_le[labels["le"]] = per_le.get(labels["le"], 0.0) + value
        return {le: int(round(per_le[le])) for le in sorted(per_le, key=float)}
    values = [value for _, value in samples]
    total = max(values) if field in _MAX_FIELDS else sum(values)
    return float(total) if field in _FLOAT_FIELDS else int(round(total))


def counter_delta(now: int | float | None, before: int | float | None) -> int | float | None:
    """How much a counter grew between two reads.

    A counter that went down was reset (the server restarted in between), so all of its current
    value is new. None when either read lacks it.
    """
    if now is None or before is None:
        return None
    return now - before if now >= before else now


def counter_rate(now: int | float | None, before: int | float | None, window_s: float | None) -> float | None:
    """A counter's growth per second over the window between two reads (`counter_delta`, so a reset
    counts from zero); None when either read lacks it or the window is not positive."""
    delta = counter_delta(now, before)
    if delta is None or window_s is None or window_s <= 0:
        return None
    return delta / window_s


def histogram_quantile(q: float, buckets_now: Buckets | None, buckets_before: Buckets | None = None) -> float | None:
    """The ``q`` quantile of what a histogram observed between two reads, as Prometheus computes it.

    prometheus_client has no quantile helper (it only exposes the buckets), so this is PromQL's
    ``histogram_quantile(q, increase(x_bucket[window]))``: the cumulative buckets' growth between
    the reads (all of ``buckets_now`` when a bucket went down: the server restarted), then
    Prometheus's ``bucketQuantile`` (promql/quantile.go): find the bucket where the rank
    ``q * count`` falls, interpolate linearly inside it (from 0 for the first bucket); a rank in the
    ``+Inf`` bucket gives the highest finite bound.

    Args:
        q: the quantile, 0-1 (0.99 for a p99).
        buckets_now: the later read's cumulative buckets (`Buckets`).
        buckets_before: the earlier read's (None: everything since the server started).

    Returns:
        Seconds (the histogram's unit); None when nothing was observed in between, or the
        buckets lack ``+Inf`` (not a Prometheus histogram).
    """
    if buckets_now is None:
        return None
    before = buckets_before or {}
    if any(n < before.get(le, 0) for le, n in buckets_now.items()):
        before = {}  # a reset: the server restarted between the reads
    bounds = sorted((float(le), n - before.get(le, 0)) for le, n in buckets_now.items())
    if len(bounds) < 2 or bounds[-1][0] != math.inf or bounds[-1][1] <= 0:
        return None
    if not 0 <= q <= 1:
        return -math.inf if q < 0 else math.inf
    rank = q * bounds[-1][1]
    b = next((i for i, (_, count) in enumerate(bounds[:-1]) if count >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2][0]
    start, below = (bounds[b - 1][0], bounds[b - 1][1]) if b > 0 else (0.0, 0)
    end, count = bounds[b]
    if b == 0 and end <= 0:
        return end
    if count <= below:  # q = 0 on an empty first bucket
        return start
    return start + (end - start) * ((rank - below) / (count - below))
