"""tasks/loadtest/server.py, tasks/loadtest/run.py and blocks/bench_gate.py: the server's account of a level
(from the imitation's /metrics exposition), the sweep's levels, a level's result and row, the report
beside the runbook, the warnings, and the deploy gate's verdict."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from blocks.bench_gate import BenchGate
from sim.vllm.vllm_sim.metrics import VllmMetrics
from tasks.health.verdict import MetricsSnapshot, parse_metrics
from tasks.loadtest.chart import text_chart
from tasks.loadtest.load import LevelRun, Workload
from tasks.loadtest.metrics import BenchmarkMetrics, RequestOutput, SLOs, calculate_metrics
from tasks.loadtest.run import (
    BenchReport,
    Level,
    LevelResult,
    gate_levels,
    judge_gate,
    level_warnings,
    report_markdown,
    runbook_comparison,
    summarize,
    sweep_levels,
)
from tasks.loadtest.server import ServerSide, server_side, snapshots, token_disagreement
from tasks.report import fenced

MODEL = "Qwen/Qwen3-32B-FP8"
T0 = 1_750_000_000.0


def snap(m: VllmMetrics, at: float) -> MetricsSnapshot:
    return parse_metrics(m.render(), at)


# ------------------------------------------------------------------------------ server_side


def busy_server() -> tuple[MetricsSnapshot, list[MetricsSnapshot], MetricsSnapshot]:
    """/metrics before, during (three reads) and after a level, rendered by the imitation."""
    m = VllmMetrics(MODEL, {"block_size": "16"})
    m.prompt_tokens.inc(1000)
    m.generation_tokens.inc(200)
    m.success.inc(5, "length")
    m.preemptions.inc(1)
    m.prefix_queries.inc(1000)
    m.prefix_hits.inc(100)
    m.queue.observe(0.5)
    before = snap(m, T0)
    during = []
    for i, (kv, running, waiting) in enumerate([(0.30, 4, 2), (0.80, 8, 7), (0.55, 8, 1)]):
        m.kv_cache.set(kv)
        m.running.set(running)
        m.waiting.set(waiting)
        during.append(snap(m, T0 + 1 + i))
    m.prompt_tokens.inc(4000)
    m.generation_tokens.inc(640)
    m.success.inc(9, "length")
    m.success.inc(1, "stop")
    m.preemptions.inc(3)
    m.prefix_queries.inc(4000)
    m.prefix_hits.inc(1000)
    for q in (0.25, 0.75, 0.5):
        m.queue.observe(q)
    m.kv_cache.set(0.1)
    m.running.set(0)
    m.waiting.set(0)
    return before, during, snap(m, T0 + 10)


def test_server_side_deltas_and_peaks():
    before, during, after = busy_server()
    s = server_side(before, after, during)
    assert (s.prompt_tokens, s.generation_tokens, s.requests, s.preemptions) == (4000, 640, 10, 3)
    assert s.prefix_cache_hit_rate == pytest.approx(1000 / 4000)
    assert s.queue_time_mean_ms == pytest.approx((0.25 + 0.75 + 0.5) / 3 * 1000)  # 500 ms
    assert s.kv_cache_peak == pytest.approx(0.80)
    assert (s.running_peak, s.waiting_peak) == (8, 7)


def test_server_side_peaks_include_the_read_after():
    before, _, after = busy_server()
    s = server_side(before, after, [])
    assert s.kv_cache_peak == pytest.approx(0.1) and s.running_peak == 0


def test_server_side_after_a_restart_takes_the_new_counters_whole():
    before, _, _ = busy_server()  # prompt 1000, generation 200, queries 1000
    fresh = VllmMetrics(MODEL, {})
    fresh.prompt_tokens.inc(300)
    fresh.generation_tokens.inc(40)
    fresh.prefix_queries.inc(300)
    fresh.prefix_hits.inc(30)
    s = server_side(before, snap(fresh, T0 + 5), [])
    assert (s.prompt_tokens, s.generation_tokens) == (300, 40)
    assert s.prefix_cache_hit_rate == pytest.approx(0.1)
    assert s.preemptions == 0  # 0 after 1: reset, all of 0 is new


def test_server_side_without_metrics_or_traffic_is_none():
    s = server_side(MetricsSnapshot(taken_at=T0), MetricsSnapshot(taken_at=T0 + 1), [])
    assert s == ServerSide()
    idle = VllmMetrics(MODEL, {})
    quiet = server_side(snap(idle, T0), snap(idle, T0 + 1), [])
    assert quiet.prompt_tokens == 0
    assert quiet.prefix_cache_hit_rate is None  # no query: no rate, not 0/0
    assert quiet.queue_time_mean_ms is None


def test_snapshots_skip_unparseable_bodies():
    m = VllmMetrics(MODEL, {})
    m.kv_cache.set(0.5)
    parsed = snapshots([(T0, m.render()), (T0 + 1, "<html>502 Bad Gateway {</html>"), (T0 + 2, m.render())])
    assert [s.taken_at for s in parsed] == [T0, T0 + 2]
    assert parsed[0].kv_cache_usage == 0.5


def test_token_disagreement():
    agree = ServerSide(prompt_tokens=4000, generation_tokens=640)
    assert token_disagreement(agree, 4000, 640) is None
    assert token_disagreement(ServerSide(), 4000, 640) is None  # nothing to compare
    more = token_disagreement(ServerSide(prompt_tokens=4016, generation_tokens=640), 4000, 640)
    assert more == "prompt tokens: server 4,016, client 4,000 (other traffic during the run?)"
    fewer = token_disagreement(ServerSide(prompt_tokens=4000, generation_tokens=600), 4000, 640)
    assert fewer == "generation tokens: server 600, client 640 (tokens the engine never counted)"
    both = token_disagreement(ServerSide(prompt_tokens=1, generation_tokens=2), 3, 1)
    assert both is not None and both.startswith("prompt tokens: server 1, client 3") and "; generation" in both


# ------------------------------------------------------------------------------ levels


def test_default_sweep_adds_a_level_past_max_num_seqs():
    levels = sweep_levels(None, None, 64)
    assert [lv.concurrency for lv in levels] == [1, 8, 16, 32, 64, 65]
    assert [lv.note for lv in levels[:-1]] == [""] * 5
    assert levels[-1].note == "> max-num-seqs 64"
    assert levels[-1].label == "65 (> max-num-seqs 64)"
    assert [lv.label for lv in levels[:2]] == ["1", "8"]


def test_default_sweep_without_max_num_seqs():
    levels = sweep_levels(None, None, None)
    assert [(lv.concurrency, lv.note) for lv in levels] == [(c, "") for c in (1, 8, 16, 32, 64)]


def test_default_sweep_past_a_small_max_num_seqs_notes_the_levels_above():
    levels = sweep_levels(None, None, 16)
    assert [lv.concurrency for lv in levels] == [1, 8, 16, 32, 64]  # no extra level: 32 and 64 queue already
    assert [lv.note for lv in levels] == ["", "", "", "> max-num-seqs 16", "> max-num-seqs 16"]


def test_explicit_concurrencies_are_sorted_deduplicated_and_noted():
    levels = sweep_levels([8, 1, 8, 4], None, 4)
    assert [(lv.concurrency, lv.note) for lv in levels] == [(1, ""), (4, ""), (8, "> max-num-seqs 4")]
    assert [lv.concurrency for lv in sweep_levels([1, 2], None, 64)] == [1, 2]  # no level added to a given list


def test_request_rates_replace_the_concurrencies():
    levels = sweep_levels([1, 8], [0.5, 2.0], 64)
    assert [(lv.concurrency, lv.request_rate) for lv in levels] == [(None, 0.5), (None, 2.0)]
    assert [lv.label for lv in levels] == ["rate 0.5/s", "rate 2/s"]


def test_level_validation_and_labels():
    assert Level(concurrency=1, note="gate").label == "1 (gate)"
    with pytest.raises(ValidationError):
        Level(concurrency=0)
    with pytest.raises(ValidationError):
        Level(request_rate=0)


# ------------------------------------------------------------------------------ results


def done(start: float, ttft: float, tpot: float, tokens: int, prompt_len: int = 128) -> RequestOutput:
    """A successful request with a uniform TPOT (ITL = TPOT, one chunk per token)."""
    return RequestOutput(
        success=True,
        prompt_len=prompt_len,
        output_tokens=tokens,
        ttft=ttft,
        itl=[tpot] * (tokens - 1),
        latency=ttft + tpot * (tokens - 1),
        start_time=start,
    )


def single_metrics() -> BenchmarkMetrics:
    # three lone requests: TTFT 300, 400, 500 ms, TPOT 150 ms -> 6.67 tok/s, p99 TTFT 400 + 0.98 * 100 = 498
    outputs = [done(i * 20.0, 0.3 + 0.1 * i, 0.150, 64) for i in range(3)]
    return calculate_metrics(outputs, duration_s=60.0)


def aggregate_metrics(failed: int = 0) -> BenchmarkMetrics:
    # 64 requests of 64 tokens in 10 s: 409.6 output tok/s
    outputs = [done(0.0, 0.5, 0.1, 64) for _ in range(64)]
    outputs += [RequestOutput(prompt_len=128, error="KV cache is full") for _ in range(failed)]
    return calculate_metrics(outputs, duration_s=10.0)


def result(
    level: Level, metrics: BenchmarkMetrics, *, server: ServerSide | None = None, token_check=None, cpu: float = 0.2
) -> LevelResult:
    return LevelResult(
        label=level.label,
        concurrency=level.concurrency,
        request_rate=level.request_rate,
        metrics=metrics,
        server=server or ServerSide(),
        token_check=token_check,
        client_cpu_fraction=cpu,
        loop_lag_p99_ms=1.0,
        client_bound=cpu > 0.8,
    )


def test_summarize_a_level():
    before, during, after = busy_server()
    # the client's totals match the server's growth: 4000 prompt tokens (8 x 500), 640 generated (10 x 64)
    outputs = [done(float(i), 0.2, 0.05, 64, prompt_len=500) for i in range(8)]
    outputs += [done(8.0, 0.2, 0.05, 64, prompt_len=0), done(9.0, 0.2, 0.05, 64, prompt_len=0)]
    m = VllmMetrics(MODEL, {})
    m.kv_cache.set(0.9)
    m.waiting.set(3)
    texts = [(T0 + 1, m.render()), (T0 + 2, "not prometheus {")]
    run = LevelRun(outputs=outputs, duration_s=20.0, client_cpu_s=4.0, loop_lag_ms=[0.5, 1.5], metrics_texts=texts)
    r = summarize(Level(concurrency=8), run, before, after, (50, 99), SLOs(ttft_ms=250))
    assert r.label == "8" and r.concurrency == 8 and r.request_rate is None
    assert r.metrics.completed == 10 and r.metrics.output_throughput == pytest.approx(640 / 20.0)
    assert r.metrics.request_goodput == pytest.approx(10 / 20.0)
    assert r.server.prompt_tokens == 4000 and r.server.generation_tokens == 640
    assert r.token_check is None
    assert r.server.kv_cache_peak == pytest.approx(0.9) and r.server.waiting_peak == 3  # from the kept bodies
    assert r.client_cpu_fraction == pytest.approx(0.2) and not r.client_bound
    assert r.loop_lag_p99_ms == pytest.approx(0.5 + 0.99 * 1.0)


def test_summarize_flags_disagreeing_tokens():
    before, during, after = busy_server()
    run = LevelRun(outputs=[done(0.0, 0.2, 0.05, 64, prompt_len=500)], duration_s=2.0, client_cpu_s=1.9)
    r = summarize(Level(concurrency=1), run, before, after, (50, 99), None)
    assert r.token_check is not None and "server 4,000, client 500" in r.token_check
    assert r.client_bound


def test_level_result_row():
    server = ServerSide(
        prefix_cache_hit_rate=0.123456, kv_cache_peak=0.87654, preemptions=2, queue_time_mean_ms=12.345, waiting_peak=3
    )
    level = Level(concurrency=1)
    row = result(level, single_metrics(), server=server).row()
    assert row["label"] == "1" and row["concurrency"] == 1 and row["request_rate"] is None
    assert (row["completed"], row["failed"]) == (3, 0)
    assert row["tpot_median_ms"] == 150.0
    assert row["ttft_median_ms"] == 400.0 and row["ttft_p99_ms"] == 498.0
    assert row["output_throughput"] == round(3 * 64 / 60.0, 2)
    assert row["goodput"] is None
    assert (row["prefix_hit_rate"], row["kv_cache_peak"], row["queue_ms"]) == (0.123, 0.877, 12.3)
    assert (row["preemptions"], row["waiting_peak"], row["tokens_agree"]) == (2, 3, "yes")
    assert result(level, single_metrics(), token_check="differs").row()["tokens_agree"] == "no"


def test_runbook_comparison_rows():
    levels = [result(Level(concurrency=1), single_metrics()), result(Level(concurrency=64), aggregate_metrics())]
    rows = runbook_comparison(levels)
    assert rows == [
        ("single request, tokens/s (1000 / median TPOT)", "6.67", "~6-7"),
        ("64 concurrent, aggregate output tokens/s", "410", "~300-400 (estimated)"),
        ("time to first token, one request (median / p99 ms)", "400 / 498", "200-500 (depends on prompt length)"),
    ]


def test_runbook_comparison_skips_levels_without_results():
    failed = calculate_metrics([RequestOutput(error="boom")], 1.0)
    assert runbook_comparison([result(Level(concurrency=1), failed), result(Level(concurrency=8), failed)]) == []
    only64 = runbook_comparison([result(Level(concurrency=64), aggregate_metrics())])
    assert [r[0] for r in only64] == ["64 concurrent, aggregate output tokens/s"]


def bench_report(series: str, warnings: list[str] | None = None, results_dir: str | None = None) -> BenchReport:
    failed = calculate_metrics([RequestOutput(error="KV cache is full")] * 2, 5.0)
    levels = [
        result(Level(concurrency=1), single_metrics()),
        result(Level(concurrency=64), aggregate_metrics()),
        result(Level(concurrency=65, note="> max-num-seqs 64"), failed),
    ]
    return BenchReport(
        target="spark",
        series=series,
        served_model="qwen",
        max_num_seqs=64,
        workload=Workload(input_len=1024, output_len=128, prefix_len=256),
        started_at=datetime(2025, 6, 1, tzinfo=UTC),
        duration_s=90.0,
        levels=levels,
        warnings=warnings or [],
        results_dir=results_dir,
    )


def test_report_markdown_one_series():
    report = bench_report("runbook")
    md = report_markdown([report], chart_png=None, embed_png=True)
    assert md.startswith("# bench-qwen on spark: runbook\n")
    assert "Random prompts of 1024 tokens (256 shared), 128 output tokens each" in md
    assert "## runbook: measured beside the runbook" in md
    assert "| single request, tokens/s (1000 / median TPOT) | 6.67 | ~6-7 |" in md
    assert "| 64 concurrent, aggregate output tokens/s | 410 | ~300-400 (estimated) |" in md
    assert (
        "| time to first token, one request (median / p99 ms) | 400 / 498 | 200-500 (depends on prompt length) |" in md
    )
    rows = [{"series": "runbook", **lv.row()} for lv in report.levels]
    chart = fenced(text_chart(rows).splitlines())
    assert chart in md
    block = md.split("## Output throughput by level\n\n```\n", 1)[1].split("\n```", 1)[0]
    lines = block.splitlines()
    assert len(lines) == 3 and lines[0].startswith("1 ") and "65 (> max-num-seqs 64)" in lines[2]
    assert "410 tok/s" in lines[1] and "TTFT p50 500 ms" in lines[1]
    assert "data:image/png" not in md  # no PNG given
    table = md.split("## Results\n\n", 1)[1]
    assert table.startswith("| level | ok | failed | out tok/s |")
    assert "| 65 (> max-num-seqs 64) | 0 | 2 |" in table
    assert "## Warnings" not in md and "## Files" not in md


def test_a_level_without_a_successful_request_shows_as_failed_in_the_chart():
    md = report_markdown([bench_report("runbook")], chart_png=None, embed_png=False)
    block = md.split("## Output throughput by level\n\n```\n", 1)[1].split("\n```", 1)[0]
    dead = block.splitlines()[2]
    assert dead.startswith("65 (> max-num-seqs 64)")
    assert dead.endswith("failed") and "0 ms" not in dead


def test_report_markdown_embeds_the_png_only_when_asked():
    png = b"\x89PNG\r\n\x1a\nfake"
    encoded = base64.b64encode(png).decode()
    embedded = report_markdown([bench_report("runbook")], chart_png=png, embed_png=True)
    assert f"(data:image/png;base64,{encoded})" in embedded
    assert "## Chart" in embedded
    plain = report_markdown([bench_report("runbook")], chart_png=png, embed_png=False)
    assert "data:image/png" not in plain and "## Chart" not in plain


def test_report_markdown_several_series():
    reports = [
        bench_report("runbook", warnings=["level 65: 2 failed requests"], results_dir="/r/a"),
        bench_report("throughput", results_dir="/r/b"),
    ]
    md = report_markdown(reports, None, embed_png=False)
    assert md.startswith("# bench-qwen on spark: runbook, throughput\n")
    assert "## runbook: measured beside the runbook" in md and "## throughput: measured beside the runbook" in md
    assert "[runbook]" in md and "[throughput]" in md  # the text chart's sections
    table = md.split("## Results\n\n", 1)[1]
    assert table.startswith("| series | level | ok |")
    assert "| runbook | 1 | 3 | 0 |" in table and "| throughput | 64 | 64 | 0 |" in table
    assert "- runbook: level 65: 2 failed requests" in md
    assert "- `/r/a`: results.json, chart.png, report.md" in md and "- `/r/b`:" in md


def test_level_warnings():
    failed = aggregate_metrics(failed=2)
    levels = [
        result(Level(concurrency=1), single_metrics()),
        result(Level(concurrency=8), single_metrics(), cpu=0.95),
        result(Level(concurrency=16), single_metrics(), token_check="prompt tokens: server 2, client 1"),
        result(Level(concurrency=64), failed),
    ]
    warnings = level_warnings(levels)
    assert len(warnings) == 3
    assert warnings[0].startswith("level 8: the load generator used 95% of a core")
    assert warnings[1] == "level 16: prompt tokens: server 2, client 1"
    assert warnings[2] == "level 64: 2 failed requests (KV cache is full)"


# ------------------------------------------------------------------------------ the gate


def test_bench_gate_needs_a_threshold():
    with pytest.raises(ValidationError) as err:
        BenchGate()
    text = str(err.value)
    assert "needs at least one threshold" in text
    assert "min_single_stream_tps, max_p99_ttft_ms or min_aggregate_tps" in text and "remove the gate" in text


def test_bench_gate_fields():
    with pytest.raises(ValidationError):
        BenchGate(min_single_stream_tps=5, output_len=1)  # TPOT needs a second token
    assert BenchGate(min_single_stream_tps=5, output_len=2).output_len == 2
    with pytest.raises(ValidationError):
        BenchGate(min_aggregate_tps=250, concurrency=1)
    with pytest.raises(ValidationError):
        BenchGate(min_single_stream_tps=5, unknown=1)
    with pytest.raises(ValidationError):
        BenchGate(min_single_stream_tps=0)
    assert BenchGate(max_p99_ttft_ms=1000).needs_single
    assert not BenchGate(min_aggregate_tps=250).needs_single


def test_gate_levels():
    single, agg = gate_levels(BenchGate(min_single_stream_tps=5, min_aggregate_tps=250, concurrency=32))
    assert (single.concurrency, single.label) == (1, "1 (gate)")
    assert (agg.concurrency, agg.label) == (32, "32 (gate)")
    assert gate_levels(BenchGate(max_p99_ttft_ms=1000))[1] is None
    assert gate_levels(BenchGate(min_aggregate_tps=250))[0] is None


def test_the_gate_passes():
    gate = BenchGate(min_single_stream_tps=5, max_p99_ttft_ms=1000, min_aggregate_tps=250)
    g = judge_gate(gate, single_metrics(), aggregate_metrics())
    assert g.passed and g.problems == []
    assert g.single_stream_tps == 6.67 and g.p99_ttft_ms == 498.0 and g.aggregate_tps == 409.6
    assert g.concurrency == 64


def test_the_gate_fails_a_slow_single_stream():
    g = judge_gate(BenchGate(min_single_stream_tps=8), single_metrics(), None)
    assert not g.passed and len(g.problems) == 1
    assert g.problems[0].startswith("single stream decodes at 6.67 tok/s, below the gate's 8")
    assert g.aggregate_tps is None


def test_the_gate_fails_a_slow_first_token():
    g = judge_gate(BenchGate(max_p99_ttft_ms=450, input_len=256), single_metrics(), None)
    assert not g.passed and len(g.problems) == 1
    assert g.problems[0].startswith("p99 TTFT is 498.0 ms, above the gate's 450 ms for 256-token prompts")
    assert "max_num_batched_tokens" in g.problems[0]


def test_the_gate_fails_a_low_aggregate():
    g = judge_gate(BenchGate(min_aggregate_tps=500, concurrency=64), None, aggregate_metrics())
    assert not g.passed and len(g.problems) == 1
    assert g.problems[0].startswith("64 concurrent requests give 409.6 output tok/s, below the gate's 500")
    assert "max_num_seqs >= 64" in g.problems[0]


def test_the_gate_at_its_thresholds_passes():
    # TTFT all 0.5 s: p99 exactly 500 ms; TPOT 0.125 s: exactly 8 tok/s
    single = calculate_metrics([done(float(i), 0.5, 0.125, 9) for i in range(3)], 30.0)
    g = judge_gate(BenchGate(min_single_stream_tps=8, max_p99_ttft_ms=500), single, None)
    assert g.passed, g.problems


def test_the_gate_without_results_says_no():
    nothing = calculate_metrics([RequestOutput(error="connection refused")] * 3, 1.0)
    gate = BenchGate(min_single_stream_tps=5, max_p99_ttft_ms=1000)
    g = judge_gate(gate, nothing, None)
    assert not g.passed
    assert g.problems[0] == "3 of the single-stream requests failed (connection refused)"
    assert g.problems[1].startswith("single stream decodes at no tok/s")
    assert g.problems[2].startswith("p99 TTFT is no ms")
    assert g.single_stream_tps is None and g.p99_ttft_ms is None


def test_the_gate_reports_failed_requests_even_when_the_figures_pass():
    gate = BenchGate(min_aggregate_tps=250, concurrency=64)
    g = judge_gate(gate, None, aggregate_metrics(failed=2))
    assert not g.passed
    assert g.problems == ["2 of the 64-concurrent requests failed (KV cache is full)"]
    assert g.aggregate_tps == 409.6
