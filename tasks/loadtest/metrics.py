"""Serving-benchmark metrics, defined exactly as `vllm bench serve` defines them.

Why our own copy of the arithmetic and not vLLM's module: `vllm` is not installable here (and is
a CUDA wheel of several GB on the Spark's worker), while the definitions are a page of numpy. They
follow `vllm/benchmarks/serve.py::calculate_metrics` and the OpenAI-completions request function
of `vllm/benchmarks/lib/endpoint_request_func.py` line for line, so a figure here and a figure from
`vllm bench serve` on the same server mean the same thing:

- TTFT: send -> the first streamed chunk that carries a choice (its text may be empty).
- ITL: the gaps between consecutive chunks that carry a choice (every gap of every request).
- E2EL (latency): send -> the last chunk that carries a choice.
- TPOT per request: (latency - TTFT) / (output tokens - 1), for requests with more than one token.
- Output tokens: the server's `usage.completion_tokens` (streamed with `include_usage`).
- Throughputs: totals over the run's wall duration; goodput: requests meeting every SLO, per second.
- Mean, median, std and percentiles with numpy (`np.percentile`: linear interpolation).

One deliberate difference: when the server sends no usage, vLLM counts tokens with the model's
tokenizer (or 1); we count the chunks, which is what a per-token stream carries, and say so in
`RequestOutput.counted_chunks`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: The percentiles reported for TTFT, TPOT, ITL and E2EL (vllm bench serve: --metric-percentiles).
DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


@dataclass
class RequestOutput:
    """One request as the client saw it (vLLM's ``RequestFuncOutput``), times in seconds."""

    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    start_time: float = 0.0
    error: str = ""
    counted_chunks: bool = False  # True: no usage in the stream, output_tokens = chunks with a choice
    finish_reason: str | None = None


def request_output(start: float, events: Iterable[tuple[float, str]], prompt_len: int) -> RequestOutput:
    """A streamed request's output from its server-sent events, as vLLM's request function reads them.

    The load generator only stamps each event's arrival (``time.perf_counter()``) and keeps its raw
    data; the JSON is parsed here, after the stream ended, so parsing never delays a timestamp.

    Args:
        start: ``perf_counter()`` just before the request was sent.
        events: (arrival time, the event's ``data`` field) in arrival order, without ``[DONE]``.
        prompt_len: tokens in the prompt (the client built it from token ids, so it knows).

    Returns:
        The request's output; ``success`` False with the server's message on an error event, or
        when no chunk carried a choice (vLLM: "Never received a valid chunk to calculate TTFT").
    """
    out = RequestOutput(prompt_len=prompt_len, start_time=start)
    last = start
    first = True
    chunks = 0
    usage_tokens: int | None = None
    for stamp, data in events:
        if data.strip() == "[DONE]":
            continue
        try:
            body = json.loads(data)
        except ValueError:
            out.error = f"the stream sent an event that is not JSON: {data[:200]!r}"
            return out
        if isinstance(body, dict) and body.get("error"):
            err = body["error"]
            out.error = str(err.get("message", err) if isinstance(err, dict) else err)
            return out
        choices = body.get("choices") if isinstance(body, dict) else None
        if choices:
            chunks += 1
            if first:
                first = False
                out.ttft = stamp - start
            else:
                out.itl.append(stamp - last)
            last = stamp
            reason = choices[0].get("finish_reason")
            if reason:
                out.finish_reason = reason
        elif isinstance(body, dict) and body.get("usage"):
            usage_tokens = body["usage"].get("completion_tokens")
    if first:
        out.error = "Never received a valid chunk to calculate TTFT. This response will be marked as failed!"
        return out
    out.success = True
    out.latency = last - start
    if usage_tokens is None:
        out.output_tokens, out.counted_chunks = chunks, True
    else:
        out.output_tokens = int(usage_tokens)
    return out


class SLOs(BaseModel):
    """Service-level objectives for goodput (vllm bench serve --goodput ttft:X tpot:Y e2el:Z, in ms)."""

    model_config = ConfigDict(frozen=True)

    ttft_ms: float | None = Field(None, gt=0, description="a good request's TTFT is at most this (ms)")
    tpot_ms: float | None = Field(None, gt=0, description="a good request's TPOT is at most this (ms)")
    e2el_ms: float | None = Field(None, gt=0, description="a good request's end-to-end latency is at most this (ms)")

    def is_empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2el_ms is None


class LatencyStats(BaseModel):
    """Mean, median, std and percentiles of one latency, in milliseconds."""

    model_config = ConfigDict(frozen=True)

    mean_ms: float
    median_ms: float
    std_ms: float
    percentiles_ms: dict[str, float] = Field(description='"p50", "p90", "p99", ... -> ms')

    def p(self, q: float) -> float | None:
        """The ``q``-th percentile (ms), None when it was not computed."""
        return self.percentiles_ms.get(percentile_key(q))


def percentile_key(q: float) -> str:
    """99 -> "p99", 99.9 -> "p99.9" (the keys of `LatencyStats.percentiles_ms`)."""
    return f"p{q:g}"


def latency_stats(values_s: Sequence[float], percentiles: Sequence[float]) -> LatencyStats:
    """numpy's mean, median, std and linear-interpolation percentiles of seconds, in ms.

    An empty list gives zeros, as vLLM's ``np.mean(x or 0)`` does.
    """
    data = np.asarray(list(values_s) or [0.0], dtype=float)
    return LatencyStats(
        mean_ms=float(np.mean(data)) * 1000,
        median_ms=float(np.median(data)) * 1000,
        std_ms=float(np.std(data)) * 1000,
        percentiles_ms={percentile_key(q): float(np.percentile(data, q)) * 1000 for q in percentiles},
    )


class BenchmarkMetrics(BaseModel):
    """One run's figures (vLLM's ``BenchmarkMetrics``): counts, throughputs, four latencies."""

    completed: int
    failed: int
    total_input: int
    total_output: int
    duration_s: float
    request_throughput: float
    request_goodput: float | None = Field(None, description="None when no SLO was given")
    output_throughput: float
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2el: LatencyStats
    max_output_tokens_per_s: float = Field(description="the busiest whole second of the run (tokens in 1 s buckets)")
    max_concurrent_requests: int = Field(
        description="most requests in flight at once (sweep line over send..last chunk)"
    )
    errors: list[str] = Field(default_factory=list, description="the first distinct error messages of failed requests")


def calculate_metrics(
    outputs: Sequence[RequestOutput],
    duration_s: float,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slos: SLOs | None = None,
) -> BenchmarkMetrics:
    """The run's metrics from its requests, as ``vllm bench serve`` computes them.

    Args:
        outputs: every request of the run, failed ones included.
        duration_s: wall time from the first send to the last request's end.
        percentiles: which percentiles to report.
        slos: goodput objectives; None or empty = no goodput.
    """
    duration_s = max(duration_s, 1e-9)
    good = [o for o in outputs if o.success]
    ttfts = [o.ttft for o in good]
    e2els = [o.latency for o in good]
    itls = [gap for o in good for gap in o.itl]
    tpots: list[float] = []
    all_tpots: list[float] = []
    for o in good:
        tpot = 0.0
        if o.output_tokens > 1:
            tpot = (o.latency - o.ttft) / (o.output_tokens - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)  # a one-token request counts as TPOT 0 for goodput, as in vLLM
    total_output = sum(o.output_tokens for o in good)
    total_input = sum(o.prompt_len for o in good)
    goodput = None
    if slos is not None and not slos.is_empty():
        limits = [(slos.ttft_ms, ttfts), (slos.tpot_ms, all_tpots), (slos.e2el_ms, e2els)]
        wanted = [(limit / 1000, values) for limit, values in limits if limit is not None]
        met = sum(1 for i in range(len(good)) if all(values[i] <= limit for limit, values in wanted))
        goodput = met / duration_s
    errors: list[str] = []
    for o in outputs:
        message = o.error[:300]
        if not o.success and message and message not in errors and len(errors) < 5:
            errors.append(message)
    return BenchmarkMetrics(
        completed=len(good),
        failed=len(outputs) - len(good),
        total_input=total_input,
        total_output=total_output,
        duration_s=duration_s,
        request_throughput=len(good) / duration_s,
        request_goodput=goodput,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        ttft=latency_stats(ttfts, percentiles),
        tpot=latency_stats(tpots, percentiles),
        itl=latency_stats(itls, percentiles),
        e2el=latency_stats(e2els, percentiles),
        max_output_tokens_per_s=_peak_tokens_per_second(good),
        max_concurrent_requests=_peak_concurrency(good),
        errors=errors,
    )


def _peak_tokens_per_second(good: Sequence[RequestOutput]) -> float:
    """Tokens in the busiest 1-second bucket from the first send (vLLM's max_output_tokens_per_s)."""
    if not good:
        return 0.0
    origin = min(o.start_time for o in good)
    end = max(o.start_time + o.latency for o in good)
    buckets = np.zeros(int(math.ceil(end - origin)) + 1)
    for o in good:
        stamp = o.start_time + o.ttft
        times = [stamp]
        for gap in o.itl:
            stamp += gap
            times.append(stamp)
        for t in times:
            k = int(t - origin)
            if 0 <= k < len(buckets):
                buckets[k] += 1
    return float(buckets.max())


def _peak_concurrency(good: Sequence[RequestOutput]) -> int:
    """Most requests in flight at once over half-open [send, last chunk) intervals (a sweep line)."""
    events = sorted([(o.start_time, 1) for o in good] + [(o.start_time + o.latency, -1) for o in good])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
