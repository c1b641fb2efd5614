"""The operator's view, in a real browser: a deploy, a small benchmark and a health check on the
imitations, then the Prefect UI's pages rendered by headless Chromium (`--dump-dom` after a virtual
time budget) must show the verdict, the reports' numbers, the benchmark's chart image and the
`vllm.service.*` events.

Prefect's test harness serves no UI (its server runs with PREFECT_UI_ENABLED=0), so this test starts
a `prefect server start` of its own (UI included, PREFECT_HOME in tmp, a free port, the UI told its
API's URL) and runs the flows in this process against it. Skipped only when no Chromium is installed
(deployments/bootstrap.sh, run by `make test`, installs Debian's chromium-headless-shell).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.system import Secret

from bench.ui_screenshots import (
    CHROMIUM_BINARIES,
    find_chromium,
    flows_against,
    latest_artifact_id,
    page_text,
    rendered_dom,
    rendered_text,
    ui_server,
    wait_for_events,
)
from deployments.targets import sim_target
from flows.bench import bench_qwen
from flows.deploy import deploy_qwen
from flows.health import health_check
from sim.ports import free_port
from tasks.health.verdict import Verdict
from tasks.loadtest.load import Workload
from tests.integration.conftest import SESSION_PREFIX, TEST_TOKEN, target_containers

pytestmark = pytest.mark.integration


class _Tables(HTMLParser):
    """Every <table> of a rendered DOM as rows of cell texts (header cells and data cells alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables and self.tables[-1]:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join(" ".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str) -> list[list[dict[str, str]]]:
    """Each table of ``html`` as a list of {header: cell text} rows."""
    parser = _Tables()
    parser.feed(html)
    parser.close()
    return [[dict(zip(rows[0], row, strict=False)) for row in rows[1:]] for rows in parser.tables if rows]


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[str]:
    """A Prefect server with its UI, for this test only; its base URL."""
    if find_chromium() is None:
        pytest.skip(f"no Chromium installed ({' or '.join(CHROMIUM_BINARIES)}): deployments/bootstrap.sh installs it")
    with ui_server(tmp_path / "prefect") as base:
        yield base


def test_the_ui_shows_the_verdict_the_reports_the_chart_and_the_service_events(
    ui, docker_client, sim_image, hub, tmp_path
):
    api = f"{ui}/api"
    name = f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}"
    try:
        with flows_against(api):
            Secret(value=TEST_TOKEN).save("hf-token-ui", overwrite=True)
            sim_target(
                name, tmp_path / name, hub.url, free_port(), time_scale=0.01, hf_token_secret="hf-token-ui"
            ).save(name, overwrite=True)
            deployed = deploy_qwen(target=name)
            # a few seconds at the imitation's instant decoding: two levels of four requests
            [bench] = bench_qwen(
                target=name,
                concurrencies=[1, 4],
                results_dir=str(tmp_path / "bench"),
                workload=Workload(input_len=16, output_len=8, num_prompts=4),
            )
            report = health_check(target=name)
    finally:
        for container in target_containers(docker_client, name):
            container.remove(force=True)
    assert deployed.status == "deployed" and report.verdict is Verdict.HEALTHY, report.reason
    wait_for_events(api, f"vllm.service.{name}", ["vllm.service.deployed", "vllm.service.healthy"])
    kv_tokens = f"{deployed.kv_cache_tokens:,}"  # as the report writes it: 271,360 on this rig

    # the key's page (the link an operator keeps): every version, newest first, titled with its verdict
    versions = rendered_text(f"{ui}/artifacts/key/health-{name}", [f"{name}: healthy"])
    assert f"health-{name}" in versions

    health = rendered_text(f"{ui}/artifacts/artifact/{latest_artifact_id(api, f'health-{name}')}", ["deciding layer"])
    assert f"{name}: healthy" in health and "verdict healthy" in health
    for layer in ("container", "liveness", "readiness", "function", "progress", "host"):
        assert layer in health, layer

    history = rendered_text(
        f"{ui}/artifacts/artifact/{latest_artifact_id(api, f'health-history-{name}')}", ["checked at"]
    )
    assert "healthy" in history and f"The last 1 health checks of {name}" in history

    deploy = rendered_text(f"{ui}/artifacts/artifact/{latest_artifact_id(api, f'deploy-{name}')}", ["KV cache tokens"])
    assert f"deploy-qwen on {name}: deployed" in deploy
    assert f"KV cache tokens {kv_tokens}" in deploy, deploy
    assert f"max concurrency (at max-model-len) {deployed.max_concurrency}" in deploy

    events = rendered_text(f"{ui}/events?resource=vllm.service.{name}", ["vllm.service.healthy"])
    assert "vllm.service.deployed" in events and f"vllm.service.{name}" in events

    variables = rendered_text(f"{ui}/variables", [f"vllm-health-{name}"])
    assert f"vllm-last-healthy-{name}" in variables

    # the benchmark's report: the runbook's figures beside ours, the text chart, and the PNG chart as a
    # data URI, which the artifact's page renders as an <img> (page_text has no images: the DOM has)
    bench_dom = rendered_dom(
        f"{ui}/artifacts/artifact/{latest_artifact_id(api, f'bench-report-{name}')}", ["measured beside the runbook"]
    )
    bench_text = page_text(bench_dom)
    assert f"bench-qwen on {name}: {bench.series}" in bench_text
    assert f"{bench.series}: measured beside the runbook" in bench_text
    assert "single request, tokens/s (1000 / median TPOT)" in bench_text
    assert "Output throughput by level" in bench_text and "tok/s" in bench_text
    images = [
        tag for tag in re.findall(r"<img\b[^>]*>", bench_dom) if "throughput and latency against concurrency" in tag
    ]
    assert images, "no <img> of the chart in the bench report's page"
    assert re.search(r'\ssrc="data:image/png;base64,iVBORw0KGgo', images[0]), images[0][:200]  # a PNG's signature
    [runbook, results] = table_rows(bench_dom)  # the markdown's two tables, as the page renders them
    assert runbook[0]["runbook (DGX Spark)"] == "~6-7", runbook
    assert [(row["level"], row["ok"], row["failed"]) for row in results] == [("1", "4", "0"), ("4", "4", "0")]

    # the results table artifact: one row per level
    table_dom = rendered_dom(
        f"{ui}/artifacts/artifact/{latest_artifact_id(api, f'bench-{name}')}", ["output_throughput"]
    )
    assert f"bench-qwen on {name}: {bench.series}" in page_text(table_dom)
    [rows] = table_rows(table_dom)
    assert [(row["series"], row["label"], row["completed"]) for row in rows] == [
        (bench.series, "1", "4"),
        (bench.series, "4", "4"),
    ]
