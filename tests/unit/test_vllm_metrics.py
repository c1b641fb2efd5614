"""tasks/vllm/metrics.py: /metrics parsing, of the imitation's renderer and of vLLM 0.10.1.1's format."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sim.vllm.vllm_sim.metrics import VllmMetrics
from tasks.vllm.metrics import METRIC_SAMPLES, MetricsSnapshot, counter_delta, parse_metrics

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
    m.e2e.observe(1.5)
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
        requests_succeeded_total=7,
        queue_time_sum=0.75,
        queue_time_count=2,
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
    assert all(name.startswith("vllm:") for names in METRIC_SAMPLES.values() for name in names)
