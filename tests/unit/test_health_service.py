"""The service-level rules of tasks/health/verdict.py, on /metrics texts with vLLM's real names (0.10.1.1 and
0.31.0): p99 TTFT and inter-token latency over the window between checks, the error ratio, the preemption rate,
the KV cache and the queue held for a while, the idle server's minimum, and what is not judged."""

from __future__ import annotations

import dataclasses

import pytest
from packaging.version import Version

from tasks.health.layers import Layer, LayerVerdict
from tasks.health.observation import Observation, Thresholds
from tasks.health.verdict import SERVICE_LEVEL_CONDITIONS, Condition, HealthReport, Verdict, evaluate
from tasks.vllm.metrics import MetricsSnapshot, parse_metrics

NOW = 1_750_000_000.0
MODEL = "Qwen/Qwen3-32B-FP8"
#: vLLM's bounds: TTFT loggers.py:371-374 in 0.10.1.1 (buckets.py:56-79 in 0.31.0); inter-token loggers.py:383-386
#: in 0.10.1.1 (buckets.py:83-103 in 0.31.0).
TTFT_BOUNDS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0]
TTFT_BOUNDS += [40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BOUNDS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0]
ITL_BOUNDS += [80.0]
#: the inter-token histogram's name (loggers.py:381 in 0.10.1.1, :832 in 0.31.0) and FINISH_REASON_STRINGS
#: (v1/engine/__init__.py:21 in 0.10.1.1, :36 in 0.31.0)
ITL_NAME = {"0.10.1.1": "time_per_output_token_seconds", "0.31.0": "inter_token_latency_seconds"}
REASONS = {"0.10.1.1": ["stop", "length", "abort"], "0.31.0": ["stop", "length", "abort", "error", "repetition"]}
VERSIONS = list(ITL_NAME)
LABELS = f'engine="0",model_name="{MODEL}"'


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _histogram(name: str, bounds: list[float], observed: list[float]) -> list[str]:
    lines = [f"# TYPE vllm:{name} histogram"]
    for bound in [*bounds, float("inf")]:
        n = sum(1 for v in observed if v <= bound)
        lines.append(f'vllm:{name}_bucket{{engine="0",le="{_le(bound)}",model_name="{MODEL}"}} {n}.0')
    lines += [f"vllm:{name}_count{{{LABELS}}} {len(observed)}.0", f"vllm:{name}_sum{{{LABELS}}} {sum(observed)}"]
    return lines


def reading(
    version: str,
    taken_at: float,
    ttft: list[float] = (),  # type: ignore[assignment]
    itl: list[float] = (),  # type: ignore[assignment]
    finished: dict[str, int] | None = None,
    kv: float = 0.10,
    waiting: int = 0,
    preemptions: int = 0,
    reasons: list[str] | None = None,
) -> MetricsSnapshot:
    """One /metrics read of a server of ``version``, as prometheus_client renders vLLM's metrics; the histograms
    and counters are cumulative since the server started."""
    lines = [f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{LABELS}}} 0.0"]
    lines.append(f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{LABELS}}} {waiting}.0")
    lines.append(f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{LABELS}}} {kv}")
    lines.append(f"# TYPE vllm:num_preemptions counter\nvllm:num_preemptions_total{{{LABELS}}} {preemptions}.0")
    lines.append(f"# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total{{{LABELS}}} {len(itl)}.0")
    lines += _histogram("time_to_first_token_seconds", TTFT_BOUNDS, list(ttft))
    lines += _histogram(ITL_NAME[version], ITL_BOUNDS, list(itl))
    lines.append("# TYPE vllm:request_success counter")
    finished = finished if finished is not None else {"stop": len(ttft)}
    for reason in REASONS[version] if reasons is None else reasons:
        labels = f'engine="0",finished_reason="{reason}",model_name="{MODEL}"'
        lines.append(f"vllm:request_success_total{{{labels}}} {finished.get(reason, 0)}.0")
    return parse_metrics("\n".join(lines) + "\n", taken_at, Version(version))


def observe(service: MetricsSnapshot | None, previous: MetricsSnapshot | None, **changes) -> Observation:
    """A server fine in every other layer; ``service`` is read before the smoke question, ``previous`` after the
    previous check's; the after-read of this check is the before-read plus the check's own (fast) question."""
    obs = Observation(
        desired="running",
        now=NOW,
        exists=True,
        status="running",
        started_at=NOW - 3600,
        previous_restart_count=0,
        health_status=200,
        health_latency_s=0.004,
        models_listed=True,
        answer_ok=True,
        answer_latency_s=1.4,
        metrics=service,
        previous=previous,
        service=service,
    )
    return dataclasses.replace(obs, **changes)


def service_layer(report: HealthReport):
    return next(r for r in report.layers if r.name is Layer.SERVICE)


FAST = [0.2] * 18


# ------------------------------------------------------------------------------ p99 TTFT and inter-token latency


@pytest.mark.parametrize("version", VERSIONS)
def test_slow_first_tokens_breach_the_ttft_p99(version):
    before = reading(version, NOW - 300, ttft=[0.2] * 50)
    now = reading(version, NOW - 1, ttft=[0.2] * 50 + FAST + [45.0, 50.0])  # 20 in the window, 2 of them slow
    report = evaluate(observe(now, before))
    assert (report.verdict, report.layer, report.condition) == (Verdict.DEGRADED, Layer.SERVICE, Condition.TTFT_P99)
    # rank 19.8 of 20 falls in the 40-80 s bucket (2 observations), 1.8 into it: 40 + 40 * 0.9 = 76 s
    assert report.reason.startswith("p99 time to first token was 76 s over the 20 requests of the last 299 s")
    assert "above 30 s" in report.reason
    assert service_layer(report).verdict is LayerVerdict.WARN
    assert service_layer(report).numbers["ttft_p99_s"] == pytest.approx(76.0)


@pytest.mark.parametrize("version", VERSIONS)
def test_stalled_tokens_breach_the_itl_p99(version):
    before = reading(version, NOW - 300, ttft=[0.2] * 10, itl=[0.05] * 100)
    now = reading(version, NOW - 1, ttft=[0.2] * 30, itl=[0.05] * 100 + [0.05] * 95 + [1.8] * 5)
    report = evaluate(observe(now, before))
    assert report.condition is Condition.ITL_P99, report.reason
    assert "p99 inter-token latency was 2.2 s" in report.reason and "above 1.0 s" in report.reason


def test_fast_traffic_is_healthy_and_the_layer_says_the_figures():
    before = reading("0.31.0", NOW - 300, ttft=[0.2] * 10, itl=[0.05] * 10)
    now = reading("0.31.0", NOW - 1, ttft=[0.2] * 30, itl=[0.05] * 40)
    report = evaluate(observe(now, before))
    assert report.verdict is Verdict.HEALTHY, report.reason
    detail = service_layer(report).detail
    assert "p99 TTFT 248 ms and p99 ITL 50 ms over 20 requests in 299 s" in detail, detail
    assert "0.00 preemptions/s" in detail and "KV cache 10.0%" in detail and "0.0% of 20 finished" in detail


# ------------------------------------------------------------------------------ the window: idle servers, own requests


@pytest.mark.parametrize("version", VERSIONS)
def test_an_idle_server_does_not_page_on_a_handful_of_slow_requests(version):
    before = reading(version, NOW - 300, ttft=[0.2] * 10)
    now = reading(version, NOW - 1, ttft=[0.2] * 10 + [45.0] * 3)
    report = evaluate(observe(now, before))
    assert report.verdict is Verdict.HEALTHY, report.reason
    assert "p99 TTFT (3 request(s) in the window, fewer than 10)" in service_layer(report).detail
    assert evaluate(observe(now, before), Thresholds(min_window_requests=3)).condition is Condition.TTFT_P99


def test_the_checks_own_question_is_never_counted():
    """The window ends at the read before the smoke question: the question (slow here) is in the after-read only,
    and the next window starts at that after-read."""
    before = reading("0.10.1.1", NOW - 300, ttft=[0.2] * 10)
    service = reading("0.10.1.1", NOW - 2, ttft=[0.2] * 10)  # nothing in between: idle
    after = reading("0.10.1.1", NOW, ttft=[0.2] * 10 + [45.0])  # the check's own 12*17, slow
    report = evaluate(observe(service, before, metrics=after), Thresholds(min_window_requests=1))
    assert report.verdict is Verdict.HEALTHY, report.reason
    assert service_layer(report).numbers["window_requests"] == 0


def test_the_first_check_has_no_window_but_judges_the_gauges():
    now = reading("0.31.0", NOW - 1, ttft=[0.2] * 30, kv=0.99)
    report = evaluate(observe(now, None), Thresholds(kv_cache_full_for_s=0))
    assert report.condition is Condition.KV_CACHE_FULL
    assert "no window yet: the first check" in service_layer(report).detail


def test_without_a_read_before_the_question_the_layer_is_skipped():
    report = evaluate(observe(None, None))
    assert report.verdict is Verdict.HEALTHY
    assert service_layer(report).verdict is LayerVerdict.SKIPPED


# ------------------------------------------------------------------------------ errors and preemptions


@pytest.mark.parametrize("version", VERSIONS)
def test_aborted_or_failed_requests_breach_the_error_ratio(version):
    failed = {"0.10.1.1": {"abort": 2}, "0.31.0": {"abort": 1, "error": 1}}[version]
    before = reading(version, NOW - 300, ttft=[0.2] * 10, finished={"stop": 10})
    now = reading(version, NOW - 1, ttft=[0.2] * 30, finished={"stop": 28, **failed})
    report = evaluate(observe(now, before))
    assert report.condition is Condition.ERROR_RATIO, report.reason
    assert report.reason.startswith("10.0% of the 20 requests finished in the last 299 s")


def test_no_error_ratio_where_no_counter_gives_it():
    before = reading("0.10.1.1", NOW - 300, ttft=[0.2] * 10, reasons=["stop", "length"])
    now = reading("0.10.1.1", NOW - 1, ttft=[0.2] * 30, reasons=["stop", "length"])
    report = evaluate(observe(now, before))
    assert report.verdict is Verdict.HEALTHY
    assert 'error ratio (no finished_reason="abort" or "error" counter)' in service_layer(report).detail


@pytest.mark.parametrize(("preempted", "fires"), [(400, True), (250, False)])
def test_the_preemption_rate_over_the_window(preempted, fires):
    before = reading("0.31.0", NOW - 300, preemptions=100)
    now = reading("0.31.0", NOW - 1, preemptions=100 + preempted)
    report = evaluate(observe(now, before))
    assert (report.condition is Condition.PREEMPTION_RATE) is fires, report.reason
    if fires:
        assert "preempted 400 request(s) in the last 299 s" in report.reason and "1.34/s, above 1/s" in report.reason


# ------------------------------------------------------------------------------ held a while: the streaks


def test_a_full_kv_cache_fires_once_held_for_five_minutes_at_every_check():
    limits = Thresholds()
    full = reading("0.10.1.1", NOW - 1, kv=0.97)
    first = evaluate(observe(full, None))
    assert first.verdict is Verdict.HEALTHY and first.streaks == {"kv_cache_full": NOW}
    later = dataclasses.replace(observe(full, None), now=NOW + 200, held_since=first.streaks)
    assert evaluate(later).verdict is Verdict.HEALTHY  # 200 s of 300
    fired = evaluate(dataclasses.replace(later, now=NOW + limits.kv_cache_full_for_s))
    assert (fired.condition, fired.layer) == (Condition.KV_CACHE_FULL, Layer.SERVICE)
    assert "KV cache usage is 97.0%, above 95.0% at every check for 300 s" in fired.reason
    assert fired.streaks == {"kv_cache_full": NOW}
    cleared = evaluate(
        dataclasses.replace(observe(reading("0.10.1.1", NOW + 599, kv=0.5), None), now=NOW + 600, held_since={})
    )
    assert cleared.verdict is Verdict.HEALTHY and cleared.streaks == {}


def test_a_check_without_the_condition_ends_the_streak():
    full, calm = reading("0.31.0", NOW - 1, kv=0.99), reading("0.31.0", NOW - 1, kv=0.5)
    assert evaluate(observe(calm, None, held_since={"kv_cache_full": NOW - 900})).streaks == {}
    restarted = evaluate(observe(full, None, held_since={}))  # the streak starts again
    assert restarted.streaks == {"kv_cache_full": NOW} and restarted.verdict is Verdict.HEALTHY


def test_a_long_queue_fires_after_its_hold():
    queue = reading("0.10.1.1", NOW - 1, waiting=60)
    assert evaluate(observe(queue, None)).verdict is Verdict.HEALTHY
    report = evaluate(observe(queue, None, held_since={"queue_long": NOW - 180}))
    assert report.condition is Condition.QUEUE_LONG
    assert report.reason.startswith("60 requests waiting, above 50, at every check for 180 s")
    assert (
        evaluate(observe(reading("0.10.1.1", NOW - 1, waiting=50), None, held_since={"queue_long": 0.0})).streaks == {}
    )


# ------------------------------------------------------------------------------ the table


def test_the_service_level_conditions():
    assert {
        Condition.TTFT_P99,
        Condition.ITL_P99,
        Condition.ERROR_RATIO,
        Condition.QUEUE_LONG,
        Condition.KV_CACHE_FULL,
        Condition.PREEMPTION_RATE,
    } == SERVICE_LEVEL_CONDITIONS
    assert "preemptions" not in {c.value for c in Condition}  # the single-sample rules are gone


def test_the_default_limits_are_the_sources():
    limits = Thresholds()
    assert (limits.ttft_p99_s, limits.itl_p99_s, limits.kv_cache_full, limits.kv_cache_full_for_s) == (30, 1, 0.95, 300)
    assert (limits.waiting_requests, limits.waiting_requests_for_s, limits.preemptions_per_s) == (50, 180, 1)
    assert limits.error_ratio == 0.05


# ------------------------------------------------------------------------------ the block and a run's overrides


def test_a_runs_limits_override_the_blocks_fields():
    from blocks.health_limits import HealthLimits

    saved = HealthLimits(limits=Thresholds(ttft_p99_s=10)).limits
    run = saved.overridden({"kv_cache_full_for_s": 5, "waiting_requests": 5.0})
    assert (run.ttft_p99_s, run.kv_cache_full_for_s, run.waiting_requests) == (10, 5, 5)
    assert saved.overridden(None) is saved and saved.overridden({}) is saved
    assert HealthLimits().limits == Thresholds()  # the block's defaults are Thresholds' (one definition)


def test_a_bad_key_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown health limit.s. ttft_p99: the limits are startup_budget_s, ") as e:
        Thresholds().overridden({"ttft_p99": 5})
    assert "ttft_p99_s" in str(e.value) and "kv_cache_full_for_s" in str(e.value)
    with pytest.raises(ValueError, match="error_ratio"):
        Thresholds().overridden({"error_ratio": 2.0})  # a fraction: at most 1


def test_the_health_state_stays_within_a_variable():
    """Prefect refuses a Variable of more than 5,000 characters: the whole state, with both histograms' buckets
    of a busy server, every streak and the longest reason, stays well inside."""
    from tasks.state import HealthState

    busy = reading("0.10.1.1", NOW, ttft=[0.2] * 99_999 + [45.0], itl=[0.05] * 99_999, waiting=999, preemptions=99_999)
    state = HealthState(
        verdict=Verdict.DEGRADED,
        since="2026-12-05T22:00:00+00:00",
        checked_at=NOW,
        layer=Layer.SERVICE,
        reason="x" * 300,
        metrics=busy,
        restart_count=99,
        streaks={"kv_cache_full": NOW, "queue_long": NOW},
    )
    size = len(state.model_dump_json())
    assert size < 3_000, size


def test_the_block_renders_for_the_ui():
    from uuid import uuid4

    from blocks.health_limits import HealthLimits

    assert HealthLimits.get_block_type_slug() == "vllm-health-limits"
    schema = HealthLimits._to_block_schema(block_type_id=uuid4())
    assert "ttft_p99_s" in str(schema.fields)  # the nested Thresholds' fields, with their descriptions
    document = HealthLimits()._to_block_document(name="default", block_schema_id=uuid4(), block_type_id=uuid4())
    assert document.data["limits"]["kv_cache_full_for_s"] == 300
