"""The benchmark's steps as tasks: measure levels, gate, report (used by bench-qwen and deploy-qwen).

Why steps and not a subflow: the deploy's gate runs them inside the deploy's own run (as it does with
staging), and bench-qwen runs them under the target's GPU lock; neither imports the other flow.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from blocks.bench_gate import BenchGate
from tasks.loadtest.chart import png_chart, text_chart
from tasks.loadtest.load import Endpoint, LevelRun, Workload, make_prompts, run_level
from tasks.loadtest.metrics import DEFAULT_PERCENTILES, BenchmarkMetrics, RequestOutput, SLOs, calculate_metrics
from tasks.loadtest.server import ServerSide, server_side, snapshots, token_disagreement
from tasks.report import artifact_key, fenced, markdown_table
from tasks.vllm.api import METRICS_PATH, auth_headers
from tasks.vllm.metrics import MetricsSnapshot, parse_metrics

#: Artifact keys: the results table and the report with the chart (one of each per target).
TABLE_KEY = "bench"
REPORT_KEY = "bench-report"
#: The runbook's "Measured Performance" of Qwen3-32B-FP8 on a DGX Spark, shown beside ours.
RUNBOOK_FIGURES = {
    "single_stream_tps": (6.0, 7.0),  # "Single request: ~6-7 tokens/sec generation"
    "aggregate_tps_64": (300.0, 400.0),  # "Batched (64 concurrent): ~300-400 tokens/sec aggregate (estimated)"
    "ttft_ms": (200.0, 500.0),  # "Time to first token: 200-500ms (depends on prompt length)"
}
DEFAULT_CONCURRENCIES: tuple[int, ...] = (1, 8, 16, 32, 64)
#: The warm-up's prompt stream, apart from the levels' (salt = the level's index).
WARM_UP_SALT = 1_000_000


class Level(BaseModel):
    """One level of a sweep: a concurrency (closed loop) or a request rate."""

    concurrency: int | None = Field(None, ge=1)
    request_rate: float | None = Field(None, gt=0, description="requests/s, Poisson arrivals")
    note: str = ""

    @property
    def label(self) -> str:
        base = f"rate {self.request_rate:g}/s" if self.request_rate else str(self.concurrency)
        return f"{base} ({self.note})" if self.note else base


def sweep_levels(
    concurrencies: Sequence[int] | None, request_rates: Sequence[float] | None, max_num_seqs: int | None
) -> list[Level]:
    """The levels to run: the given concurrencies (default 1, 8, 16, 32, 64, plus one above the
    server's `--max-num-seqs` to show queueing; a given one above it is marked so), or instead the
    request rates (Poisson arrivals, no concurrency limit)."""
    if request_rates:
        return [Level(request_rate=r) for r in request_rates]
    values = sorted(set(concurrencies or DEFAULT_CONCURRENCIES))
    levels = [Level(concurrency=c) for c in values]
    if concurrencies is None and max_num_seqs is not None and max(values) <= max_num_seqs:
        levels.append(Level(concurrency=max_num_seqs + 1, note=f"> max-num-seqs {max_num_seqs}"))
    elif max_num_seqs is not None:
        levels = [
            Level(concurrency=lv.concurrency, note=f"> max-num-seqs {max_num_seqs}")
            if lv.concurrency and lv.concurrency > max_num_seqs
            else lv
            for lv in levels
        ]
    return levels


class RequestRecord(BaseModel):
    """One request of a level, raw (results.json): times in seconds from the level's first send."""

    start_s: float
    ttft_s: float | None
    latency_s: float | None
    prompt_tokens: int
    output_tokens: int
    itl_s: list[float]
    error: str | None = None

    @classmethod
    def of(cls, out: RequestOutput, origin: float) -> RequestRecord:
        return cls(
            start_s=round(out.start_time - origin, 6),
            ttft_s=round(out.ttft, 6) if out.success else None,
            latency_s=round(out.latency, 6) if out.success else None,
            prompt_tokens=out.prompt_len,
            output_tokens=out.output_tokens,
            itl_s=[round(g, 6) for g in out.itl],
            error=out.error or None,
        )


class LevelResult(BaseModel):
    """What one level measured: the client's metrics, the server's account, the client's own cost."""

    label: str
    concurrency: int | None
    request_rate: float | None
    metrics: BenchmarkMetrics
    server: ServerSide
    token_check: str | None = Field(None, description="None: the server counted the client's tokens")
    client_cpu_fraction: float = Field(description="the load generator's CPU time / wall time (1 = one core)")
    loop_lag_p99_ms: float = Field(description="p99 lateness of the client's event loop: its error on a timestamp")
    client_bound: bool
    requests: list[RequestRecord] = Field(default_factory=list, description="every request, raw (results.json only)")

    def row(self) -> dict[str, float | int | str | None]:
        """The level as a flat row (table artifact, chart, JSON)."""
        m, s = self.metrics, self.server
        if not m.completed:  # no successful request: no figure (vLLM's zeros would read as a perfect TTFT)
            return {
                "label": self.label,
                "concurrency": self.concurrency,
                "request_rate": self.request_rate,
                "completed": 0,
                "failed": m.failed,
                **{key: None for key in _FIGURE_KEYS},
                "client_cpu": round(self.client_cpu_fraction, 3),
                "tokens_agree": None,
            }
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "request_rate": self.request_rate,
            "completed": m.completed,
            "failed": m.failed,
            "output_throughput": round(m.output_throughput, 2),
            "request_throughput": round(m.request_throughput, 3),
            "goodput": round(m.request_goodput, 3) if m.request_goodput is not None else None,
            "ttft_median_ms": round(m.ttft.median_ms, 1),
            "ttft_p99_ms": _r(m.ttft.p(99)),
            "tpot_median_ms": round(m.tpot.median_ms, 1),
            "tpot_p99_ms": _r(m.tpot.p(99)),
            "itl_median_ms": round(m.itl.median_ms, 1),
            "itl_p99_ms": _r(m.itl.p(99)),
            "e2el_median_ms": round(m.e2el.median_ms, 1),
            "e2el_p99_ms": _r(m.e2el.p(99)),
            "prefix_hit_rate": _r(s.prefix_cache_hit_rate, 3),
            "kv_cache_peak": _r(s.kv_cache_peak, 3),
            "preemptions": s.preemptions,
            "queue_ms": _r(s.queue_time_mean_ms),
            "waiting_peak": s.waiting_peak,
            "client_cpu": round(self.client_cpu_fraction, 3),
            "tokens_agree": "yes" if self.token_check is None else "no",
        }


#: The row's figures, None on a level without a successful request.
_FIGURE_KEYS = (
    "output_throughput",
    "request_throughput",
    "goodput",
    "ttft_median_ms",
    "ttft_p99_ms",
    "tpot_median_ms",
    "tpot_p99_ms",
    "itl_median_ms",
    "itl_p99_ms",
    "e2el_median_ms",
    "e2el_p99_ms",
    "prefix_hit_rate",
    "kv_cache_peak",
    "preemptions",
    "queue_ms",
    "waiting_peak",
)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def read_metrics(base_url: str, api_key: str | None) -> MetricsSnapshot:
    """GET /metrics once (not guarded by the API key in vLLM; the key is sent anyway, harmless)."""
    response = httpx.get(base_url.rstrip("/") + METRICS_PATH, headers=auth_headers(api_key), timeout=10)
    response.raise_for_status()
    return parse_metrics(response.text, time.time())


def summarize(
    level: Level,
    run: LevelRun,
    before: MetricsSnapshot,
    after: MetricsSnapshot,
    percentiles: Sequence[float],
    slos: SLOs | None,
) -> LevelResult:
    """A level's result from its raw run and the /metrics reads around it (pure)."""
    metrics = calculate_metrics(run.outputs, run.duration_s, percentiles, slos)
    origin = min((o.start_time for o in run.outputs), default=0.0)
    server = server_side(before, after, snapshots(run.metrics_texts))
    return LevelResult(
        label=level.label,
        concurrency=level.concurrency,
        request_rate=level.request_rate,
        metrics=metrics,
        server=server,
        token_check=token_disagreement(server, metrics.total_input, metrics.total_output),
        client_cpu_fraction=run.client_cpu_fraction,
        loop_lag_p99_ms=run.lag_percentile_ms(99),
        client_bound=run.client_bound,
        requests=[RequestRecord.of(o, origin) for o in run.outputs],
    )


@task(name="measure-level", task_run_name="measure-{level.label}")
def measure_level(
    base_url: str,
    served_model: str,
    api_key: str | None,
    level: Level,
    workload: Workload,
    salt: int = 0,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slos: SLOs | None = None,
) -> LevelResult:
    """Load the server at one level and measure it, client side and server side."""
    logger = get_run_logger()
    endpoint = Endpoint(base_url, served_model, api_key)
    count = workload.prompts_for(level.concurrency)
    prompts = make_prompts(workload, count, salt=salt)
    before = read_metrics(base_url, api_key)
    run = asyncio.run(
        run_level(
            endpoint, prompts, workload, concurrency=level.concurrency, request_rate=level.request_rate or math.inf
        )
    )
    after = read_metrics(base_url, api_key)
    result = summarize(level, run, before, after, percentiles, slos)
    m = result.metrics
    logger.info(
        "level %s: %d/%d ok, %.1f output tok/s, TTFT p50 %.0f ms p99 %.0f ms, TPOT p50 %.1f ms, ITL p99 %.1f ms%s",
        level.label,
        m.completed,
        count,
        m.output_throughput,
        m.ttft.median_ms,
        m.ttft.p(99) or 0,
        m.tpot.median_ms,
        m.itl.p(99) or 0,
        ""
        if not result.client_bound
        else f" (CLIENT-BOUND: the load generator used {result.client_cpu_fraction:.0%} of a core)",
    )
    if m.failed:
        logger.warning("level %s: %d requests failed: %s", level.label, m.failed, "; ".join(m.errors))
    if result.token_check:
        logger.warning("level %s: token counts differ: %s", level.label, result.token_check)
    return result


@task(name="warm-up")
def warm_up(base_url: str, served_model: str, api_key: str | None) -> float:
    """One short streamed request first (vllm bench serve's test prompt): connections, first-call costs."""
    endpoint = Endpoint(base_url, served_model, api_key)
    workload = Workload(input_len=16, output_len=4, num_prompts=1).with_seed()
    run = asyncio.run(
        run_level(
            endpoint,
            make_prompts(workload, 1, salt=WARM_UP_SALT),
            workload,
            concurrency=1,
            metrics_every_s=None,
            timeout_s=120,
        )
    )
    out = run.outputs[0]
    if not out.success:
        raise RuntimeError(
            f"the benchmark's first request to {base_url} failed: {out.error}; check that the "
            "server is up (health-check or deploy-qwen) and that the served model name is right"
        )
    return out.latency


class BenchReport(BaseModel):
    """A whole benchmark: where, what, each level, and where the files went."""

    target: str
    series: str = Field(description="what was measured: the preset or spec label (one series of the chart)")
    served_model: str
    spec_hash: str | None = None
    max_num_seqs: int | None = None
    workload: Workload
    started_at: datetime
    duration_s: float
    levels: list[LevelResult]
    results_dir: str | None = None
    warnings: list[str] = Field(default_factory=list)


def runbook_comparison(levels: Sequence[LevelResult]) -> list[tuple[str, str, str]]:
    """(figure, measured, runbook) rows: single stream, 64 concurrent, TTFT of one request."""
    rows = []
    single = next((lv for lv in levels if lv.concurrency == 1 and lv.metrics.completed), None)
    at64 = next((lv for lv in levels if lv.concurrency == 64 and lv.metrics.completed), None)
    lo, hi = RUNBOOK_FIGURES["single_stream_tps"]
    if single is not None and single.metrics.tpot.median_ms > 0:
        rows.append(
            (
                "single request, tokens/s (1000 / median TPOT)",
                f"{1000 / single.metrics.tpot.median_ms:.2f}",
                f"~{lo:g}-{hi:g}",
            )
        )
    lo, hi = RUNBOOK_FIGURES["aggregate_tps_64"]
    if at64 is not None:
        rows.append(
            (
                "64 concurrent, aggregate output tokens/s",
                f"{at64.metrics.output_throughput:.0f}",
                f"~{lo:g}-{hi:g} (estimated)",
            )
        )
    lo, hi = RUNBOOK_FIGURES["ttft_ms"]
    if single is not None:
        rows.append(
            (
                "time to first token, one request (median / p99 ms)",
                f"{single.metrics.ttft.median_ms:.0f} / {single.metrics.ttft.p(99) or 0:.0f}",
                f"{lo:g}-{hi:g} (depends on prompt length)",
            )
        )
    return rows


#: The columns of the results table (row key, header), in order.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("label", "level"),
    ("completed", "ok"),
    ("failed", "failed"),
    ("output_throughput", "out tok/s"),
    ("request_throughput", "req/s"),
    ("goodput", "goodput req/s"),
    ("ttft_median_ms", "TTFT p50"),
    ("ttft_p99_ms", "TTFT p99"),
    ("tpot_median_ms", "TPOT p50"),
    ("tpot_p99_ms", "TPOT p99"),
    ("itl_p99_ms", "ITL p99"),
    ("e2el_median_ms", "E2EL p50"),
    ("prefix_hit_rate", "prefix hits"),
    ("kv_cache_peak", "KV peak"),
    ("preemptions", "preempt"),
    ("queue_ms", "queue ms"),
    ("waiting_peak", "waiting"),
    ("client_cpu", "client CPU"),
    ("tokens_agree", "tokens agree"),
)


def report_markdown(reports: Sequence[BenchReport], chart_png: bytes | None, embed_png: bool) -> str:
    """The report artifact: the runbook's figures beside ours, the chart, the table per series."""
    first = reports[0]
    w = first.workload
    lines = [
        f"# bench-qwen on {first.target}: {', '.join(r.series for r in reports)}",
        "",
        f"Random prompts of {w.input_len} tokens"
        + (f" ({w.prefix_len} shared)" if w.prefix_len else "")
        + f", {w.output_len} output tokens each (ignore_eos), streamed `/v1/completions`, timed as"
        " `vllm bench serve` does (TTFT, TPOT, ITL, E2EL in ms).",
        "",
    ]
    for report in reports:
        comparison = runbook_comparison(report.levels)
        if comparison:
            lines += [
                f"## {report.series}: measured beside the runbook",
                "",
                markdown_table(("figure", "measured", "runbook (DGX Spark)"), comparison),
                "",
            ]
    rows = [{"series": r.series, **lv.row()} for r in reports for lv in r.levels]
    lines += ["## Output throughput by level", "", fenced(text_chart(rows).splitlines()), ""]
    if chart_png is not None and embed_png:
        lines += [
            "## Chart",
            "",
            f"![throughput and latency against concurrency](data:image/png;base64,"
            f"{base64.b64encode(chart_png).decode()})",
            "",
        ]
    header = ["series"] + [h for _, h in TABLE_COLUMNS] if len(reports) > 1 else [h for _, h in TABLE_COLUMNS]
    table_rows = [([r["series"]] if len(reports) > 1 else []) + [r[k] for k, _ in TABLE_COLUMNS] for r in rows]
    lines += ["## Results", "", markdown_table(header, table_rows), ""]
    warnings = [f"{r.series}: {wn}" for r in reports for wn in r.warnings]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {wn}" for wn in warnings] + [""]
    files = [r.results_dir for r in reports if r.results_dir]
    if files:
        lines += ["## Files", ""] + [f"- `{f}`: results.json, chart.png, report.md" for f in files]
    return "\n".join(lines)


def level_warnings(levels: Sequence[LevelResult]) -> list[str]:
    """What makes a figure doubtful: a client-bound level, disagreeing token counts, failed requests."""
    out = []
    for lv in levels:
        if lv.client_bound:
            out.append(
                f"level {lv.label}: the load generator used {lv.client_cpu_fraction:.0%} of a core; its figures"
                " may be the client's limit, not the server's (run bench-qwen on another machine)"
            )
        if lv.token_check:
            out.append(f"level {lv.label}: {lv.token_check}")
        if lv.metrics.failed:
            out.append(f"level {lv.label}: {lv.metrics.failed} failed requests ({'; '.join(lv.metrics.errors)})")
    return out


@task(name="write-results")
def write_results(reports: list[BenchReport], directory: str) -> str:
    """results.json (every level, raw figures), chart.png and report.md under `directory`/<target>/<UTC time>/."""
    stamp = reports[0].started_at.strftime("%Y%m%dT%H%M%SZ")
    folder = Path(directory).expanduser() / reports[0].target / stamp
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"series": r.series, **lv.row()} for r in reports for lv in r.levels]
    (folder / "chart.png").write_bytes(png_chart(rows, f"bench-qwen on {reports[0].target}"))
    payload = [r.model_dump(mode="json") for r in reports]
    for r in payload:
        r["results_dir"] = str(folder)
    (folder / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / "report.md").write_text(report_markdown(reports, None, embed_png=False) + "\n")
    get_run_logger().info("benchmark results written to %s", folder)
    return str(folder)


@task(name="publish-benchmark")
def publish_benchmark(reports: list[BenchReport], embed_png: bool = True) -> None:
    """The table artifact (every level of every series) and the report artifact with the chart."""
    target = reports[0].target
    rows = [{"series": r.series, **lv.row()} for r in reports for lv in r.levels]
    chart = png_chart(rows, f"bench-qwen on {target}") if embed_png else None
    create_table_artifact(
        table=rows,
        key=artifact_key(TABLE_KEY, target),
        description=f"bench-qwen on {target}: {', '.join(r.series for r in reports)}",
    )
    create_markdown_artifact(
        markdown=report_markdown(reports, chart, embed_png),
        key=artifact_key(REPORT_KEY, target),
        description=f"bench-qwen on {target}: throughput and latency by level, beside the runbook",
    )


def bench_levels(
    target: str,
    series: str,
    base_url: str,
    served_model: str,
    api_key: str | None,
    levels: Sequence[Level],
    workload: Workload,
    spec_hash: str | None = None,
    max_num_seqs: int | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slos: SLOs | None = None,
) -> BenchReport:
    """Warm up, then measure each level in turn (tasks of the calling flow run)."""
    started, t0 = datetime.now(UTC), time.monotonic()
    workload = workload.with_seed()
    warm_up(base_url, served_model, api_key)
    results = [
        measure_level(base_url, served_model, api_key, level, workload, salt=i, percentiles=percentiles, slos=slos)
        for i, level in enumerate(levels)
    ]
    return BenchReport(
        target=target,
        series=series,
        served_model=served_model,
        spec_hash=spec_hash,
        max_num_seqs=max_num_seqs,
        workload=workload,
        started_at=started,
        duration_s=round(time.monotonic() - t0, 2),
        levels=results,
        warnings=level_warnings(results),
    )


# ------------------------------------------------------------------------------------------- the gate


class GateResult(BaseModel):
    """The deploy gate's verdict and the figures it judged."""

    passed: bool
    problems: list[str]
    single_stream_tps: float | None = None
    p99_ttft_ms: float | None = None
    aggregate_tps: float | None = None
    concurrency: int


def judge_gate(gate: BenchGate, single: BenchmarkMetrics | None, aggregate: BenchmarkMetrics | None) -> GateResult:
    """Each threshold against its figure; a problem names the figure, the threshold and what to do (pure)."""
    problems = []
    tps = 1000 / single.tpot.median_ms if single and single.completed and single.tpot.median_ms > 0 else None
    ttft = single.ttft.p(99) if single and single.completed else None
    agg = aggregate.output_throughput if aggregate and aggregate.completed else None
    for metrics, what in ((single, "single-stream"), (aggregate, f"{gate.concurrency}-concurrent")):
        if metrics is not None and metrics.failed:
            problems.append(f"{metrics.failed} of the {what} requests failed ({'; '.join(metrics.errors)})")
    if gate.min_single_stream_tps is not None and (tps is None or tps < gate.min_single_stream_tps):
        problems.append(
            f"single stream decodes at {_fmt(tps)} tok/s, below the gate's {gate.min_single_stream_tps:g}"
            " (runbook ~6-7): check what else uses the memory bandwidth (other containers, a second model)"
        )
    if gate.max_p99_ttft_ms is not None and (ttft is None or ttft > gate.max_p99_ttft_ms):
        problems.append(
            f"p99 TTFT is {_fmt(ttft)} ms, above the gate's {gate.max_p99_ttft_ms:g} ms for "
            f"{gate.input_len}-token prompts (runbook 200-500): lower max_num_batched_tokens for shorter "
            "prefill steps, or raise the threshold"
        )
    if gate.min_aggregate_tps is not None and (agg is None or agg < gate.min_aggregate_tps):
        problems.append(
            f"{gate.concurrency} concurrent requests give {_fmt(agg)} output tok/s, below the gate's "
            f"{gate.min_aggregate_tps:g} (runbook ~300-400 at 64): check max_num_seqs >= {gate.concurrency}"
            " and the KV cache size in the deploy report"
        )
    return GateResult(
        passed=not problems,
        problems=problems,
        single_stream_tps=_r(tps, 2),
        p99_ttft_ms=_r(ttft),
        aggregate_tps=_r(agg),
        concurrency=gate.concurrency,
    )


def _fmt(value: float | None) -> str:
    return "no" if value is None else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def gate_levels(gate: BenchGate) -> tuple[Level | None, Level | None]:
    """The single-stream level and the aggregate level the gate needs (None: not needed)."""
    single = Level(concurrency=1, note="gate") if gate.needs_single else None
    aggregate = Level(concurrency=gate.concurrency, note="gate") if gate.min_aggregate_tps is not None else None
    return single, aggregate


def run_gate(target: str, base_url: str, served_model: str, api_key: str | None, gate: BenchGate) -> GateResult:
    """The gate's short benchmark (tasks of the calling flow run) and its verdict."""
    single_level, agg_level = gate_levels(gate)
    warm_up(base_url, served_model, api_key)
    single = agg = None
    if single_level is not None:
        workload = Workload(
            input_len=gate.input_len, output_len=gate.output_len, num_prompts=gate.single_requests
        ).with_seed()
        single = measure_level(base_url, served_model, api_key, single_level, workload, salt=1).metrics
    if agg_level is not None:
        workload = Workload(
            input_len=gate.input_len, output_len=gate.output_len, num_prompts=gate.concurrency
        ).with_seed()
        agg = measure_level(base_url, served_model, api_key, agg_level, workload, salt=2).metrics
    return judge_gate(gate, single, agg)
