"""tasks/vllm/metrics.py: /metrics parsing, of the imitation's renderer, of vLLM 0.10.1.1's format and of the
names each inspected vLLM (0.10.1.1 to 0.31.0) exports."""

from __future__ import annotations

import pytest
from packaging.version import Version
from pydantic import ValidationError

from sim.vllm.vllm_sim.metrics import (
    TPOT_BUCKETS,
    TTFT_BUCKETS,
    VllmMetrics,
    go_float,
)
from tasks.vllm.metrics import (
    METRIC_SAMPLES,
    MetricsSnapshot,
    counter_delta,
    counter_rate,
    histogram_quantile,
    metric_names,
    parse_metrics,
)

MODEL = "Qwen/Qwen3-32B-FP8"
NOW = 1_750_000_000.0

# vLLM 0.10.1.1's exposition (prometheus_client 0.22 generate_latest), trimmed: counters as
# `<name>_total` with a `<name>_created` gauge, histograms as buckets/count/sum, labels sorted.
VLLM_0_10_SAMPLE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 5.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.(DEPRECATED: Use vllm:kv_cache_usage_perc instead.)
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 0.4217
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 0.4217
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 2.0
# HELP vllm:num_preemptions_created Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_created gauge
vllm:num_preemptions_created{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 1.7499e+09
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 20480.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 8192.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 45678.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 1.7499e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 1234.0
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 1.7499e+09
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="Qwen/Qwen3-32B-FP8"} 40.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="Qwen/Qwen3-32B-FP8"} 2.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="Qwen/Qwen3-32B-FP8"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen3-32B-FP8"} 42.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 42.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="Qwen/Qwen3-32B-FP8"} 210.5
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",gpu_memory_utilization="0.9"} 1.0
"""  # noqa: E501 (vLLM's own lines)


# ------------------------------------------------------------------------------ /metrics: the imitation


def test_parse_the_imitations_metrics():
    m = VllmMetrics(MODEL, {"block_size": "16"})
    m.running.set(3)
    m.waiting.set(5)
    m.kv_cache.set(0.42)
    m.gpu_cache.set(0.99)  # the deprecated gauge must lose to vllm:kv_cache_usage_perc
    m.generation_tokens.inc(1234)
    m.prompt_tokens.inc(45678)
    m.preemptions.inc(2)
    m.prefix_queries.inc(100)
    m.prefix_hits.inc(40)
    m.success.inc(7, "stop")
    m.success.inc(1, "abort")
    m.e2e.observe(1.5)
    m.ttft.observe(0.3)
    m.queue.observe(0.25)
    m.queue.observe(0.5)
    s = parse_metrics(m.render(), taken_at=NOW)
    assert s == MetricsSnapshot(
        taken_at=NOW,
        requests_running=3,
        requests_waiting=5,
        kv_cache_usage=0.42,
        generation_tokens_total=1234,
        prompt_tokens_total=45678,
        preemptions_total=2,
        prefix_cache_queries_total=100,
        prefix_cache_hits_total=40,
        requests_succeeded_total=8,
        requests_aborted_total=1,
        queue_time_sum=0.75,
        queue_time_count=2,
        ttft_sum=0.3,
        ttft_count=1,
        ttft_buckets={le: (0 if float(le) < 0.3 else 1) for le in [*map(go_float, TTFT_BUCKETS), "+Inf"]},
        itl_buckets={le: 0 for le in [*map(go_float, TPOT_BUCKETS), "+Inf"]},
        itl_sum=0.0,
        itl_count=0,
        e2e_latency_sum=1.5,
        e2e_latency_count=1,
    )
    assert s.in_flight == 8


def test_parse_the_imitation_at_rest():
    s = parse_metrics(VllmMetrics(MODEL, {}).render(), taken_at=NOW)
    assert (s.requests_running, s.requests_waiting, s.generation_tokens_total, s.kv_cache_usage) == (0, 0, 0, 0.0)
    assert s.in_flight == 0


# ------------------------------------------------------------------------------ /metrics: vLLM 0.10.1.1


def test_parse_vllm_0_10_sample():
    s = parse_metrics(VLLM_0_10_SAMPLE, taken_at=NOW)
    assert s.taken_at == NOW
    assert (s.requests_running, s.requests_waiting) == (3, 5)
    assert s.kv_cache_usage == pytest.approx(0.4217)
    assert s.generation_tokens_total == 1234
    assert s.prompt_tokens_total == 45678
    assert s.preemptions_total == 2
    assert (s.prefix_cache_queries_total, s.prefix_cache_hits_total) == (20480, 8192)


def test_kv_usage_falls_back_to_the_deprecated_gauge():
    text = "\n".join(line for line in VLLM_0_10_SAMPLE.splitlines() if "vllm:kv_cache_usage_perc" not in line)
    assert parse_metrics(text, NOW).kv_cache_usage == pytest.approx(0.4217)


def test_counters_with_and_without_total():
    # typed counter whose sample lacks _total (the parser adds it), untyped sample with _total,
    # untyped sample without it: all three are read.
    text = (
        "# TYPE vllm:generation_tokens counter\n"
        'vllm:generation_tokens{engine="0"} 11\n'
        'vllm:prompt_tokens_total{engine="0"} 22\n'
        'vllm:num_preemptions{engine="0"} 3\n'
    )
    s = parse_metrics(text, NOW)
    assert (s.generation_tokens_total, s.prompt_tokens_total, s.preemptions_total) == (11, 22, 3)


def test_sums_over_label_sets_and_takes_the_fullest_kv_cache():
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="a"} 2\n'
        'vllm:num_requests_running{engine="1",model_name="a"} 3\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.5\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.97\n'
        "# TYPE vllm:generation_tokens_total counter\n"
        'vllm:generation_tokens_total{engine="0",model_name="a"} 100\n'
        'vllm:generation_tokens_total{engine="1",model_name="a"} 23\n'
    )
    s = parse_metrics(text, NOW)
    assert s.requests_running == 5
    assert s.kv_cache_usage == 0.97  # a sum of fractions would be 1.47
    assert s.generation_tokens_total == 123


def test_missing_metrics_are_none():
    s = parse_metrics('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine="0"} 1\n', NOW)
    assert s.requests_running == 1
    assert s.requests_waiting is None and s.kv_cache_usage is None and s.generation_tokens_total is None
    assert s.prefix_cache_hits_total is None and s.preemptions_total is None
    assert s.in_flight == 1
    empty = parse_metrics("", NOW)
    assert empty == MetricsSnapshot(taken_at=NOW)
    assert empty.in_flight is None


def test_not_prometheus_text():
    with pytest.raises(ValueError, match="not Prometheus text"):
        parse_metrics("<html>502 Bad Gateway {</html>", NOW)


def test_snapshot_round_trips_through_json():
    s = parse_metrics(VLLM_0_10_SAMPLE, NOW)
    assert MetricsSnapshot.model_validate_json(s.model_dump_json()) == s
    with pytest.raises(ValidationError):
        s.requests_running = 9  # frozen: stored between checks, never edited


def test_counter_delta():
    assert counter_delta(150, 100) == 50
    assert counter_delta(30, 100) == 30  # went down: the server restarted, all of it is new
    assert counter_delta(None, 100) is None and counter_delta(5, None) is None


def test_every_snapshot_field_has_its_samples():
    assert set(METRIC_SAMPLES) == set(MetricsSnapshot.model_fields) - {"taken_at"}
    for field, variants in METRIC_SAMPLES.items():
        assert all(name.startswith("vllm:") for variant in variants for name in variant.value), field
        assert all("loggers.py:" in variant.source for variant in variants), field
        for version in VERSIONS:  # every field is exported by every inspected version, under some name
            assert metric_names(field, Version(version)), (field, version)


# ------------------------------------------------------------------------------ /metrics: every inspected vLLM

VERSIONS = ["0.10.1.1", "0.10.2", "0.11.1", "0.17.1", "0.20.1", "0.31.0"]
#: what PrometheusStatLogger.__init__ (vllm/v1/metrics/loggers.py) declares in each version, of the names read
#: here; counters are exposed with `_total`, histograms by `_sum` and `_count` (0.11.1 shows
#: gpu_cache_usage_perc only with --show-hidden-metrics-for-version=0.10, loggers.py:448)
COMMON = ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prompt_tokens", "generation_tokens"]
COMMON += ["num_preemptions", "prefix_cache_queries", "prefix_cache_hits", "request_success"]
COMMON += ["time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"]
DECLARED = {
    "0.10.1.1": [*COMMON, "gpu_cache_usage_perc", "time_per_output_token_seconds"],
    "0.10.2": [*COMMON, "gpu_cache_usage_perc", "time_per_output_token_seconds", "inter_token_latency_seconds"],
    "0.11.1": [*COMMON, "time_per_output_token_seconds", "inter_token_latency_seconds"],
    "0.17.1": [*COMMON, "inter_token_latency_seconds"],
    "0.20.1": [*COMMON, "inter_token_latency_seconds"],
    "0.31.0": [*COMMON, "inter_token_latency_seconds"],
}
GAUGES = {
    "num_requests_running": 3,
    "num_requests_waiting": 5,
    "kv_cache_usage_perc": 0.42,
    "gpu_cache_usage_perc": 0.42,
}
COUNTERS = {"prompt_tokens": 45678, "generation_tokens": 1234, "num_preemptions": 2, "prefix_cache_queries": 20480}
COUNTERS |= {"prefix_cache_hits": 8192, "request_success": 42}
HISTOGRAMS = {"time_to_first_token_seconds": (42, 8.4), "e2e_request_latency_seconds": (42, 210.5)}
HISTOGRAMS |= {"request_queue_time_seconds": (42, 1.5), "inter_token_latency_seconds": (1192, 59.6)}
HISTOGRAMS |= {"time_per_output_token_seconds": (1192, 59.6)}


def exposition(version: str) -> str:
    """A /metrics text of that version: its declared names, rendered the way prometheus_client does."""
    lines = []
    for name in DECLARED[version]:
        labels = f'{{engine="0",model_name="{MODEL}"}}'
        if name in GAUGES:
            lines += [f"# TYPE vllm:{name} gauge", f"vllm:{name}{labels} {GAUGES[name]}"]
        elif name in COUNTERS:
            lines += [f"# TYPE vllm:{name} counter", f"vllm:{name}_total{labels} {COUNTERS[name]}"]
        else:
            count, total = HISTOGRAMS[name]
            lines += [f"# TYPE vllm:{name} histogram", f'vllm:{name}_bucket{{engine="0",le="+Inf"}} {count}']
            lines += [f"vllm:{name}_count{labels} {count}", f"vllm:{name}_sum{labels} {total}"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("version", VERSIONS)
def test_each_version_s_metrics(version):
    """Every field read from each version's own names, with the version and with none known."""
    for known in (Version(version), None):
        s = parse_metrics(exposition(version), NOW, known)
        assert (s.requests_running, s.requests_waiting, s.kv_cache_usage) == (3, 5, 0.42)
        assert (s.prompt_tokens_total, s.generation_tokens_total, s.preemptions_total) == (45678, 1234, 2)
        assert (s.prefix_cache_queries_total, s.prefix_cache_hits_total, s.requests_succeeded_total) == (
            20480,
            8192,
            42,
        )
        assert (s.ttft_count, s.ttft_sum, s.e2e_latency_count, s.e2e_latency_sum) == (42, 8.4, 42, 210.5)
        assert (s.queue_time_count, s.queue_time_sum) == (42, 1.5)
        assert (s.itl_count, s.itl_sum) == (1192, 59.6)  # 0.10.1.1: under time_per_output_token_seconds


def test_0_31_has_no_gpu_cache_usage_perc_and_is_read_without_it():
    assert "gpu_cache_usage_perc" not in exposition("0.31.0") and "time_per_output_token" not in exposition("0.31.0")
    assert "vllm:gpu_cache_usage_perc" not in metric_names("kv_cache_usage", Version("0.31.0"))
    assert metric_names("itl_sum", Version("0.31.0")) == ["vllm:inter_token_latency_seconds_sum"]
    only_deprecated = 'vllm:gpu_cache_usage_perc{engine="0"} 0.3\n'  # a name 0.31 does not export is not read
    assert parse_metrics(only_deprecated, NOW, Version("0.31.0")).kv_cache_usage is None
    assert parse_metrics(only_deprecated, NOW, Version("0.10.1.1")).kv_cache_usage == 0.3
    assert parse_metrics(only_deprecated, NOW).kv_cache_usage == 0.3  # unknown: every name


def test_the_inter_token_name_is_preferred_where_both_exist():
    both = (
        'vllm:time_per_output_token_seconds_sum{engine="0"} 1.0\nvllm:inter_token_latency_seconds_sum{engine="0"} 2.0\n'
    )
    assert parse_metrics(both, NOW, Version("0.11.1")).itl_sum == 2.0
    assert parse_metrics(both, NOW).itl_sum == 2.0
    assert parse_metrics(both, NOW, Version("0.10.1.1")).itl_sum == 1.0  # 0.10.1.1 has only the old name


# ------------------------------------------------------------------------------ the service-level samples

#: vLLM's bucket bounds: TTFT loggers.py:371-374 in 0.10.1.1, buckets.py:56-79 in 0.31.0 (the same);
#: inter-token loggers.py:383-386 in 0.10.1.1 (time_per_output_token), buckets.py:83-103 in 0.31.0.
VLLM_TTFT_BOUNDS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
VLLM_TTFT_BOUNDS += [20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
VLLM_ITL_BOUNDS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
VLLM_ITL_BOUNDS += [20.0, 40.0, 80.0]
#: FINISH_REASON_STRINGS, vllm/v1/engine/__init__.py:21 in 0.10.1.1, :36 in 0.31.0
FINISH_REASONS = {"0.10.1.1": ["stop", "length", "abort"], "0.31.0": ["stop", "length", "abort", "error", "repetition"]}
ITL_NAME = {"0.10.1.1": "time_per_output_token_seconds", "0.31.0": "inter_token_latency_seconds"}


def histogram_lines(name: str, bounds: list[float], observed: list[float], engine: str = "0") -> list[str]:
    """A histogram as prometheus_client renders it (cumulative ``_bucket`` lines, then +Inf)."""
    lines = [f"# TYPE vllm:{name} histogram"]
    for bound in [*bounds, float("inf")]:
        n = sum(1 for v in observed if v <= bound)
        lines.append(f'vllm:{name}_bucket{{engine="{engine}",le="{go_float(bound)}",model_name="{MODEL}"}} {n}.0')
    lines.append(f'vllm:{name}_count{{engine="{engine}",model_name="{MODEL}"}} {len(observed)}.0')
    return lines


def service_text(version: str, ttft: list[float], itl: list[float], finished: dict[str, int]) -> str:
    lines = histogram_lines("time_to_first_token_seconds", VLLM_TTFT_BOUNDS, ttft)
    lines += histogram_lines(ITL_NAME[version], VLLM_ITL_BOUNDS, itl)
    lines.append("# TYPE vllm:request_success counter")
    for reason in FINISH_REASONS[version]:  # every label set exists from the start (loggers.py:298-301, :734-736)
        labels = f'engine="0",finished_reason="{reason}",model_name="{MODEL}"'
        lines.append(f"vllm:request_success_total{{{labels}}} {finished.get(reason, 0)}.0")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("version", ["0.10.1.1", "0.31.0"])
def test_buckets_and_failed_requests_by_version(version):
    text = service_text(version, ttft=[0.2, 0.3, 45.0], itl=[0.05] * 9 + [1.2], finished={"stop": 7, "abort": 2})
    for known in (Version(version), None):
        s = parse_metrics(text, NOW, known)
        assert list(s.ttft_buckets) == [*map(go_float, VLLM_TTFT_BOUNDS), "+Inf"]
        assert (s.ttft_buckets["0.25"], s.ttft_buckets["0.5"], s.ttft_buckets["40.0"], s.ttft_buckets["+Inf"]) == (
            1,
            2,
            2,
            3,
        )
        assert (s.itl_buckets["0.05"], s.itl_buckets["1.0"], s.itl_buckets["+Inf"]) == (9, 9, 10)
        assert (s.requests_succeeded_total, s.requests_aborted_total) == (9, 2)
        # finished_reason="error" exists from 0.31.0 on (FinishReason.ERROR, v1/engine/__init__.py:65)
        assert s.requests_errored_total == (0 if version == "0.31.0" else None)


def test_buckets_are_summed_over_engines_and_stay_small():
    text = "\n".join(
        histogram_lines("time_to_first_token_seconds", VLLM_TTFT_BOUNDS, [0.2] * 5, "0")
        + histogram_lines("time_to_first_token_seconds", VLLM_TTFT_BOUNDS, [30.0] * 5, "1")
    )
    s = parse_metrics(text + "\n", NOW)
    assert (s.ttft_buckets["0.25"], s.ttft_buckets["40.0"], s.ttft_buckets["+Inf"]) == (5, 10, 10)
    busy = parse_metrics(
        service_text("0.10.1.1", [0.2] * 99_999, [0.05] * 99_999, {"stop": 99_999}) + VLLM_0_10_SAMPLE, NOW
    )
    assert len(busy.model_dump_json()) < 2_000  # kept in a Variable of at most 5,000 characters with the rest


def test_a_server_without_the_histograms_has_none():
    s = parse_metrics(VLLM_0_10_SAMPLE, NOW)
    assert s.ttft_buckets is None and s.itl_buckets is None and s.requests_aborted_total is None


def bucket_map(bounds: list[float], observed: list[float]) -> dict[str, int]:
    return {go_float(b): sum(1 for v in observed if v <= b) for b in [*bounds, float("inf")]}


def test_histogram_quantile_interpolates_as_prometheus_does():
    # 100 observations: 90 at 0.2 s (bucket 0.1-0.25), 10 at 35 s (bucket 20-40): p99 rank 99 falls in 20-40,
    # at 9 of its 10 -> 20 + 20 * 0.9 = 38
    now = bucket_map(VLLM_TTFT_BOUNDS, [0.2] * 90 + [35.0] * 10)
    assert histogram_quantile(0.99, now) == pytest.approx(38.0)
    # p50: rank 50 of the 90 in 0.1-0.25 -> 0.1 + 0.15 * 50/90
    assert histogram_quantile(0.5, now) == pytest.approx(0.1 + 0.15 * 50 / 90)
    # the first bucket interpolates from 0
    assert histogram_quantile(0.5, bucket_map([1.0, 2.0], [0.5] * 4)) == pytest.approx(0.5)


def test_histogram_quantile_is_of_the_window_only():
    before = bucket_map(VLLM_TTFT_BOUNDS, [35.0] * 50)  # slow requests before the window do not count
    now = bucket_map(VLLM_TTFT_BOUNDS, [35.0] * 50 + [0.2] * 20)
    assert histogram_quantile(0.99, now, before) == pytest.approx(0.1 + 0.15 * (0.99 * 20) / 20)
    assert histogram_quantile(0.99, before, before) is None  # nothing observed in between
    restarted = bucket_map(VLLM_TTFT_BOUNDS, [0.2] * 3)  # a reset: all of it is new
    assert histogram_quantile(0.99, restarted, before) == pytest.approx(0.1 + 0.15 * 2.97 / 3)


def test_histogram_quantile_edges():
    in_inf = bucket_map([1.0, 2.0], [5.0] * 10)  # every observation above the last bound: that bound
    assert histogram_quantile(0.99, in_inf) == 2.0
    assert histogram_quantile(0.99, None) is None
    assert histogram_quantile(0.99, {"1.0": 3}) is None  # no +Inf: not a histogram
    assert histogram_quantile(1.5, in_inf) == float("inf") and histogram_quantile(-1, in_inf) == float("-inf")


def test_counter_rate():
    assert counter_rate(700, 100, 300.0) == 2.0
    assert counter_rate(30, 100, 10.0) == 3.0  # a reset counts from zero
    assert counter_rate(None, 1, 10.0) is None and counter_rate(5, 1, 0.0) is None and counter_rate(5, 1, None) is None
