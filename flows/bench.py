"""bench-qwen: measure what the target's server really serves, and compare the runbook's presets.

    prefect deployment run bench-qwen/spark                                  # the running server
    prefect deployment run bench-qwen/spark --param 'presets=["throughput","latency","max-context"]'

The runbook's "Measured Performance" (6-7 tok/s single, 300-400 tok/s at 64 "(estimated)", TTFT
200-500 ms) and its three tuning blocks, which come with no numbers at all, measured the way
`vllm bench serve` measures (docs/benchmark.md): random prompts, streamed completions, a sweep of
concurrencies up to one above `--max-num-seqs`, TTFT/TPOT/ITL/E2EL, /metrics before and after.
With `presets`, each preset is deployed in turn through the deploy-qwen deployment (a worker runs
it, as an operator's `prefect deployment run` would), measured, and the spec that served before is
deployed again at the end. Results: a table artifact, a report artifact with the chart, and
results.json + chart.png + report.md under `results_dir` on the machine that ran the benchmark.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from blocks.engine import EngineSpec
from tasks.errors import SparkVllmError
from tasks.fleet import read_outcome
from tasks.loadtest.load import Workload
from tasks.loadtest.metrics import DEFAULT_PERCENTILES, SLOs
from tasks.loadtest.run import (
    BenchReport,
    bench_levels,
    publish_benchmark,
    sweep_levels,
    write_results,
)
from tasks.locks import gpu_lock
from tasks.readiness import endpoint_ready
from tasks.serve import load_target
from tasks.state import last_healthy_record
from tasks.vllm_version import fetch_server_version

DEFAULT_RESULTS_DIR = "~/spark-vllm/bench-results"


class BenchFailed(SparkVllmError):
    """The benchmark could not measure (no server, every request failed, a preset did not deploy)."""


@flow(name="bench-qwen", flow_run_name="bench-{target}")
def bench_qwen(
    target: str = "spark",
    concurrencies: list[int] | None = None,
    request_rates: list[float] | None = None,
    workload: Workload = Workload(),
    slos: SLOs = SLOs(),
    percentiles: list[float] = list(DEFAULT_PERCENTILES),  # noqa: B006 - a fresh list; the run form shows it
    presets: list[str] | None = None,
    deploy_deployment: str | None = None,
    results_dir: str | None = DEFAULT_RESULTS_DIR,
    label: str | None = None,
) -> list[BenchReport]:
    """Benchmark the target's server (or each preset in turn) and publish the results.

    Args:
        target: name of the TargetMachine block.
        concurrencies: closed-loop levels; None = 1, 8, 16, 32, 64 and one above --max-num-seqs.
        request_rates: Poisson request rates (req/s) instead of concurrencies.
        workload: prompt and output lengths, shared prefix, requests per level, seed.
        slos: goodput objectives in ms (TTFT, TPOT, E2EL); empty = no goodput.
        percentiles: reported percentiles of TTFT, TPOT, ITL and E2EL.
        presets: runbook presets to compare ("runbook", "throughput", "latency", "max-context"),
            each deployed in turn through `deploy_deployment`; None = benchmark what runs now.
        deploy_deployment: the deploy-qwen deployment for `presets` (default deploy-qwen/<target>).
        results_dir: where results.json, chart.png and report.md go (one folder per run); None = none.
        label: the series name in the chart and table (default: the spec hash, or the preset).
    """
    workload = workload.with_seed()  # one seed for every level and preset: they all see the same prompts
    get_run_logger().info(
        "workload: %d prompt tokens (%d shared), %d output tokens, seed %d",
        workload.input_len,
        workload.prefix_len,
        workload.output_len,
        workload.seed,
    )
    if presets:
        reports = _compare_presets(
            target,
            presets,
            deploy_deployment or f"deploy-qwen/{target}",
            concurrencies,
            request_rates,
            workload,
            slos,
            percentiles,
        )
    else:
        reports = [_bench_running(target, concurrencies, request_rates, workload, slos, percentiles, label)]
    folder = write_results(reports, results_dir) if results_dir else None
    for report in reports:
        report.results_dir = folder
    publish_benchmark(reports)
    measured = [r for r in reports if any(lv.metrics.completed for lv in r.levels)]
    if not measured:
        raise BenchFailed(
            f"no request of the benchmark on {target} succeeded: "
            + "; ".join(w for r in reports for w in r.warnings)[:1000]
        )
    return reports


def _bench_running(
    target: str,
    concurrencies: list[int] | None,
    request_rates: list[float] | None,
    workload: Workload,
    slos: SLOs,
    percentiles: list[float],
    label: str | None,
) -> BenchReport:
    """Measure the server that runs now, holding the target's GPU slot (a deploy waits, not replaces it)."""
    resolved = load_target(target, None, None, None)
    machine, secrets = resolved.machine, resolved.secrets
    record = last_healthy_record(machine.name)
    spec = machine.apply_to(record.spec) if record.spec is not None else resolved.spec
    spec_hash = record.spec_hash
    with gpu_lock(machine.name):
        if not endpoint_ready(machine.endpoint, spec.served_name, secrets.api_key, timeout=5):
            raise BenchFailed(
                f"no ready server on {machine.name} at {machine.endpoint} (model {spec.served_name}): "
                f"run `prefect deployment run deploy-qwen/{machine.name}` first, or health-check to see why"
            )
        levels = sweep_levels(concurrencies, request_rates, spec.max_num_seqs)
        # which vLLM is measured: figures of two versions are not the same server's
        vllm = fetch_server_version(machine.endpoint) or record.vllm_version or "unknown"
        get_run_logger().info(
            "benchmarking %s (%s, spec %s, vLLM %s): levels %s",
            machine.name,
            spec.served_name,
            spec_hash,
            vllm,
            ", ".join(lv.label for lv in levels),
        )
        return bench_levels(
            machine.name,
            label or f"spec {spec_hash or 'unknown'}, vLLM {vllm}",
            machine.endpoint,
            spec.served_name,
            secrets.api_key,
            levels,
            workload,
            spec_hash=spec_hash,
            max_num_seqs=spec.max_num_seqs,
            percentiles=percentiles,
            slos=slos,
        )


def _deploy(deployment: str, target: str, parameters: dict) -> str | None:
    """Run the deploy-qwen deployment and wait; None when it completed, else its state's message."""
    run = cast(
        FlowRun,  # run_deployment is sync/async dual: a FlowRun in a sync flow
        run_deployment(name=deployment, parameters={"target": target, **parameters}, timeout=None, poll_interval=1),
    )
    state = run.state
    if state is not None and state.is_completed():
        return None
    outcome = read_outcome(run.id, target)  # the deploy's own words, when it published them
    why = outcome.message if outcome and outcome.message else (state.message if state else "")
    return f"{deployment} ended {state.name if state else 'without a state'}: {why}"[:500]


def _compare_presets(
    target: str,
    presets: list[str],
    deployment: str,
    concurrencies: list[int] | None,
    request_rates: list[float] | None,
    workload: Workload,
    slos: SLOs,
    percentiles: list[float],
) -> list[BenchReport]:
    """Deploy, measure, next; then deploy the spec that served before again (also after a failure)."""
    logger = get_run_logger()
    for name in presets:
        EngineSpec.preset(name)  # an unknown name fails here, before anything is replaced (names the choices)
    record = last_healthy_record(target)
    previous, previous_hash = record.spec, record.spec_hash
    reports: list[BenchReport] = []
    try:
        for name in presets:
            logger.info("preset %s: deploying through %s", name, deployment)
            failure = _deploy(deployment, target, {"preset": name})
            if failure is not None:
                logger.warning("preset %s did not deploy: %s", name, failure)
                reports.append(
                    BenchReport(
                        target=target,
                        series=name,
                        served_model="",
                        workload=workload,
                        started_at=datetime.now(UTC),
                        duration_s=0,
                        levels=[],
                        warnings=[f"not measured: {failure}"],
                    )
                )
                continue
            reports.append(_bench_running(target, concurrencies, request_rates, workload, slos, percentiles, name))
    finally:
        if previous is not None:
            fields = previous.model_dump(mode="json", include=set(EngineSpec.model_fields))
            logger.info("putting back the spec that served before the comparison (%s)", previous_hash)
            failure = _deploy(deployment, target, {"overrides": fields})
            if failure is not None:
                logger.error("the spec that served before did not deploy again: %s", failure)
    return reports
