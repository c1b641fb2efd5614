"""vLLM's Prometheus metrics, rendered as prometheus_client renders them.

Why hand-rolled: the image has only the standard library.  The exposition
follows prometheus_client's `generate_latest` (counters as `<name>_total` plus a
`<name>_created` gauge family, histograms as `_bucket{le}`/`_count`/`_sum` then
`_created`, Go-style float formatting), so scrapers and parsers that work on the
real server work here.  Names, help texts, labels (model_name, engine) and
buckets are vLLM 0.10.1.1's (vllm/v1/metrics/loggers.py). Which families exist depends on the
version (versions.py): `vllm:gpu_cache_usage_perc` up to 0.10.x (hidden from 0.11.1, loggers.py:448
in 0.11.1), `vllm:time_per_output_token_seconds` up to 0.11.x (gone in 0.17.1), `vllm:inter_token_latency_seconds`
from 0.10.2 (loggers.py:396 in 0.10.2) and `vllm:request_time_per_output_token_seconds` from 0.11.1
(loggers.py:803 in 0.11.1), both with time_per_output_token's buckets.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISH_REASONS = ("stop", "length", "abort")


def go_float(value: float) -> str:
    """prometheus_client.utils.floatToGoString."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    """Labels sorted by name, as prometheus_client's sample_line writes them."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs)) + "}"


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, base: Sequence[tuple[str, str]]) -> None:
        self.name = name
        self.doc = doc
        self.base = tuple(base)
        self.created = time.time()

    def render(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, doc: str, base: Sequence[tuple[str, str]], value: float = 0.0) -> None:
        super().__init__(name, doc, base)
        self.value = value

    def set(self, value: float) -> None:
        self.value = float(value)

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.doc}",
            f"# TYPE {self.name} gauge",
            f"{self.name}{_labels(self.base)} {go_float(self.value)}",
        ]


class Counter(_Metric):
    """A counter family; `extra` is an extra label name (e.g. finished_reason) with preset values."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        doc: str,
        base: Sequence[tuple[str, str]],
        extra: str | None = None,
        extra_values: Sequence[str] = (),
    ) -> None:
        super().__init__(name, doc, base)
        self.extra = extra
        self.values: dict[str, float] = {v: 0.0 for v in extra_values} if extra else {"": 0.0}
        self.created_at: dict[str, float] = {k: self.created for k in self.values}

    def inc(self, amount: float = 1.0, extra_value: str = "") -> None:
        if extra_value not in self.values:
            self.values[extra_value] = 0.0
            self.created_at[extra_value] = time.time()
        self.values[extra_value] += amount

    def get(self, extra_value: str = "") -> float:
        return self.values.get(extra_value, 0.0)

    def _pairs(self, key: str) -> tuple[tuple[str, str], ...]:
        return self.base + (((self.extra, key),) if self.extra else ())

    def render(self) -> list[str]:
        total = f"{self.name}_total"
        out = [f"# HELP {total} {self.doc}", f"# TYPE {total} counter"]
        out += [f"{total}{_labels(self._pairs(k))} {go_float(v)}" for k, v in self.values.items()]
        out += [f"# HELP {self.name}_created {self.doc}", f"# TYPE {self.name}_created gauge"]
        out += [f"{self.name}_created{_labels(self._pairs(k))} {go_float(self.created_at[k])}" for k in self.values]
        return out


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, doc: str, base: Sequence[tuple[str, str]], buckets: Sequence[float]) -> None:
        super().__init__(name, doc, base)
        self.bounds = tuple(buckets) + (math.inf,)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break

    @property
    def count(self) -> int:
        return sum(self.counts)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            acc += n
            out.append(f"{self.name}_bucket{_labels(self.base + (('le', go_float(bound)),))} {go_float(acc)}")
        out.append(f"{self.name}_count{_labels(self.base)} {go_float(acc)}")
        out.append(f"{self.name}_sum{_labels(self.base)} {go_float(self.sum)}")
        out += [
            f"# HELP {self.name}_created {self.doc}",
            f"# TYPE {self.name}_created gauge",
            f"{self.name}_created{_labels(self.base)} {go_float(self.created)}",
        ]
        return out


class VllmMetrics:
    """The server's metric set; every update goes through one lock."""

    def __init__(
        self,
        model_name: str,
        cache_info: dict[str, str],
        gpu_cache: bool = True,
        tpot: bool = True,
        itl: bool = False,
        request_tpot: bool = False,
        finish_reasons: Sequence[str] = FINISH_REASONS,
    ) -> None:
        base = (("model_name", model_name), ("engine", "0"))
        self.lock = threading.Lock()
        self.running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", base)
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", base)
        self.gpu_cache: Gauge | None = (
            Gauge(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage.(DEPRECATED: Use vllm:kv_cache_usage_perc instead.)",
                base,
            )
            if gpu_cache
            else None
        )
        self.kv_cache = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", base)
        self.preemptions = Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", base)
        self.prefix_queries = Counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", base
        )
        self.prefix_hits = Counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", base
        )
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", base)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", base)
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            base,
            extra="finished_reason",
            extra_values=finish_reasons,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", base, TTFT_BUCKETS
        )
        self.tpot: Histogram | None = (
            Histogram(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds."
                + ("DEPRECATED: Use vllm:inter_token_latency_seconds instead." if itl else ""),
                base,
                TPOT_BUCKETS,
            )
            if tpot
            else None
        )
        self.itl: Histogram | None = (
            Histogram(
                "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", base, TPOT_BUCKETS
            )
            if itl
            else None
        )
        self.request_tpot: Histogram | None = (
            Histogram(
                "vllm:request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.",
                base,
                TPOT_BUCKETS,
            )
            if request_tpot
            else None
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", base, LATENCY_BUCKETS
        )
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            base,
            LATENCY_BUCKETS,
        )
        self.inference = Histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            base,
            LATENCY_BUCKETS,
        )
        self.prefill = Histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            base,
            LATENCY_BUCKETS,
        )
        self.decode = Histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            base,
            LATENCY_BUCKETS,
        )
        info = tuple(sorted(cache_info.items())) + (("engine", "0"),)
        self.cache_info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", info, 1.0)
        order: list[_Metric | None] = [
            self.running,
            self.waiting,
            self.gpu_cache,
            self.kv_cache,
            self.preemptions,
            self.prefix_queries,
            self.prefix_hits,
            self.prompt_tokens,
            self.generation_tokens,
            self.success,
            self.ttft,
            self.tpot,
            self.itl,
            self.request_tpot,
            self.e2e,
            self.queue,
            self.inference,
            self.prefill,
            self.decode,
            self.cache_info,
        ]
        self._order: list[_Metric] = [m for m in order if m is not None]

    def render(self) -> str:
        with self.lock:
            lines: list[str] = []
            for metric in self._order:
                lines += metric.render()
        return "\n".join(lines) + "\n"
