"""bench-qwen and the deploy's benchmark gate end to end: the imitation in docker, a real Prefect
server, real streamed HTTP. Decode speeds come from the imitation's knob
(VLLM_SIM_DECODE_TIME_SCALE: 1 = the Spark's roofline, 0.2 = five times faster, 0 = instant)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prefect.blocks.system import Secret

from blocks.shared import LABEL_SPEC_HASH
from deployments.dev.worker import start_worker, stop_worker
from deployments.setup import ensure_work_pool
from flows.bench import bench_qwen
from flows.deploy import deploy_qwen
from tasks.loadtest.load import Workload
from tasks.report import artifact_key
from tests.integration.conftest import TEST_API_KEY, TEST_TOKEN, target_containers
from tests.integration.prefect_reads import flow_run_artifacts, flow_run_logs, flush_logs, latest_artifact, table_rows

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
#: A gate that the imitation at 0.2 x the Spark's step time (~31 tok/s single stream) cannot pass.
SLOW_GATE = {"min_single_stream_tps": 60, "input_len": 32, "output_len": 6, "single_requests": 2}


def test_bench_sweep_measures_queueing_and_agrees_with_the_server(make_sim_target, docker_client, tmp_path):
    """A sweep past --max-num-seqs: every request streamed, the engine's token counters match the
    client's, requests queue above max-num-seqs, and the artifacts and files are all there."""
    Secret(value=TEST_API_KEY).save("vllm-api-key-bench", overwrite=True)
    target = make_sim_target(api_key_secret="vllm-api-key-bench", decode_time_scale=0.1)
    state = deploy_qwen(target=target.name, overrides={"max_num_seqs": 4}, return_state=True)
    assert state.is_completed(), state.message

    workload = Workload(input_len=48, output_len=12, num_prompts=8)
    state = bench_qwen(
        target=target.name,
        concurrencies=[1, 8],
        workload=workload,
        slos={"ttft_ms": 60_000, "tpot_ms": 60_000},
        results_dir=str(tmp_path / "results"),
        return_state=True,
    )
    assert state.is_completed(), state.message
    [report] = state.result()
    run_id = state.state_details.flow_run_id
    one, eight = report.levels
    assert (one.label, eight.label) == ("1", "8 (> max-num-seqs 4)")
    running = httpx.get(f"{target.endpoint}/version").json()["version"]
    assert report.series.endswith(f", vLLM {running}")  # the figures name the vLLM they measured
    for level in (one, eight):
        m = level.metrics
        assert (m.completed, m.failed, m.total_output, m.total_input) == (8, 0, 8 * 12, 8 * 48)
        assert level.token_check is None, level.token_check  # the engine counted what the client sent/got
        assert level.server.generation_tokens == 96 and level.server.requests == 8
        assert m.request_goodput == pytest.approx(m.request_throughput)
        assert m.max_concurrent_requests == (1 if level is one else 8)
        assert 0 < m.ttft.median_ms < m.e2el.median_ms and m.tpot.median_ms > 0
        assert not level.client_bound
    # above max-num-seqs half the requests wait a whole request's decode before they run
    assert eight.server.queue_time_mean_ms > 5 * max(one.server.queue_time_mean_ms, 1.0)
    assert eight.metrics.ttft.p(99) > 3 * one.metrics.ttft.p(99)
    assert eight.server.running_peak <= 4

    rows = table_rows(artifact_key("bench", target.name))
    assert [r["label"] for r in rows] == ["1", "8 (> max-num-seqs 4)"] and rows[1]["tokens_agree"] == "yes"
    markdown = latest_artifact(artifact_key("bench-report", target.name)).data
    assert "measured beside the runbook" in markdown and "~6-7" in markdown
    assert "data:image/png;base64," in markdown and "tok/s" in markdown
    folder = Path(report.results_dir)
    assert folder.parent == tmp_path / "results" / target.name
    saved = json.loads((folder / "results.json").read_text())
    assert saved[0]["levels"][1]["metrics"]["completed"] == 8
    raw = saved[0]["levels"][1]["requests"]  # every request, raw: 12 tokens = a TTFT and 11 gaps
    assert len(raw) == 8 and all(len(r["itl_s"]) == 11 and r["output_tokens"] == 12 for r in raw)
    assert (folder / "chart.png").read_bytes().startswith(b"\x89PNG")
    assert "| level |" in (folder / "report.md").read_text()
    flush_logs()
    text = " ".join(flow_run_logs(run_id) + flow_run_artifacts(run_id)) + (folder / "results.json").read_text()
    assert TEST_API_KEY not in text and TEST_TOKEN not in text
    assert "level 8 (> max-num-seqs 4): 8/8 ok" in text
    assert one.server.prefix_cache_hit_rate == 0  # random prompts share nothing

    # a shared-prefix workload: after the first request, every prompt's 48 shared tokens hit the cache
    shared = Workload(input_len=64, output_len=4, prefix_len=48, num_prompts=8)
    state = bench_qwen(target=target.name, concurrencies=[1], workload=shared, results_dir=None, return_state=True)
    assert state.is_completed(), state.message
    [level] = state.result()[0].levels
    assert level.server.prefix_cache_hit_rate == pytest.approx(7 * 48 / (8 * 64))


def test_bench_without_a_server_says_to_deploy_first(make_sim_target):
    target = make_sim_target()
    state = bench_qwen(target=target.name, concurrencies=[1], results_dir=None, return_state=True)
    assert state.is_failed()
    assert f"run `prefect deployment run deploy-qwen/{target.name}` first" in state.message


def test_gate_fails_a_slow_engine_and_rolls_back(make_sim_target, docker_client):
    """A spec whose gate the engine cannot reach: the first deploy fails but keeps its only server;
    over a healthy server, the failing spec is rolled back to the one that served."""
    target = make_sim_target(decode_time_scale=0.2)
    state = deploy_qwen(target=target.name, overrides={"bench_gate": SLOW_GATE}, return_state=True)
    assert state.is_failed()
    assert "benchmark gate failed" in state.message and "below the gate's 60" in state.message
    assert "the server keeps serving" in state.message
    assert httpx.get(f"{target.endpoint}/health").status_code == 200

    # a threshold alone is not in the spec hash (it never replaces a server): change the spec too
    state = deploy_qwen(
        target=target.name,
        overrides={"max_num_seqs": 48, "bench_gate": {**SLOW_GATE, "min_single_stream_tps": 5}},
        return_state=True,
    )
    assert state.is_completed(), state.message
    good = state.result()
    assert good.gate is not None and good.gate.passed and 20 < good.gate.single_stream_tps < 45

    state = deploy_qwen(target=target.name, overrides={"max_num_seqs": 32, "bench_gate": SLOW_GATE}, return_state=True)
    assert state.is_failed()
    assert f"rolled back: {target.name} serves its last healthy spec {good.spec_hash}" in state.message
    assert "missed its benchmark gate" in state.message
    [container] = target_containers(docker_client, target.name)
    assert container.labels[LABEL_SPEC_HASH] == good.spec_hash


def test_gate_in_degraded_mode_keeps_the_server_and_says_so(make_sim_target):
    target = make_sim_target(decode_time_scale=0.2)
    gate = {**SLOW_GATE, "on_failure": "degraded"}
    state = deploy_qwen(target=target.name, overrides={"bench_gate": gate}, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.degraded and result.degraded.startswith("benchmark gate missed: single stream decodes at")
    assert not result.gate.passed
    markdown = latest_artifact(artifact_key("deploy", target.name)).data
    assert "(DEGRADED)" in markdown and "## Benchmark gate" in markdown


def test_preset_comparison_deploys_each_preset_and_puts_the_old_spec_back(
    make_sim_target, prefect_server, docker_client, tmp_path
):
    """bench-qwen with presets: each deployed through the deploy-qwen/sim deployment (a worker runs it),
    measured, one table; then the spec that served before is deployed again."""
    target = make_sim_target()
    state = deploy_qwen(target=target.name, overrides={"max_num_seqs": 8}, return_state=True)
    assert state.is_completed(), state.message
    before = state.result().spec_hash
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    ensure_work_pool()
    subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--name", "deploy-qwen/sim"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    worker = start_worker("spark-vllm", f"test-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log", env=env, cwd=ROOT)
    try:
        state = bench_qwen(
            target=target.name,
            presets=["latency", "throughput"],
            deploy_deployment="deploy-qwen/sim",
            concurrencies=[1, 4],
            workload=Workload(input_len=32, output_len=8, num_prompts=4),
            results_dir=None,
            return_state=True,
        )
    finally:
        stop_worker(worker)
    assert state.is_completed(), f"{state.message}\n{worker.log_tail()}"
    reports = state.result()
    assert [r.series for r in reports] == ["latency", "throughput"]
    assert [r.max_num_seqs for r in reports] == [16, 64]
    assert all(lv.metrics.completed == 4 for r in reports for lv in r.levels)
    rows = table_rows(artifact_key("bench", target.name))
    assert [(r["series"], r["label"]) for r in rows] == [
        ("latency", "1"),
        ("latency", "4"),
        ("throughput", "1"),
        ("throughput", "4"),
    ]
    [container] = target_containers(docker_client, target.name)
    assert container.labels[LABEL_SPEC_HASH] == before  # the spec that served before is back
