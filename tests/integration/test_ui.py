"""The operator's view, in a real browser: a deploy and a health check on the imitations, then the
Prefect UI's pages rendered by headless Chromium (`--dump-dom` after a virtual time budget) must show
the verdict, the report's numbers and the `vllm.service.*` events.

Prefect's test harness serves no UI (its server runs with PREFECT_UI_ENABLED=0), so this test starts
a `prefect server start` of its own (UI included, PREFECT_HOME in tmp, a free port, the UI told its
API's URL) and runs the flows in this process against it. Skipped only when no Chromium is installed
(deployments/bootstrap.sh, run by `make test`, installs Debian's chromium-headless-shell).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.blocks.system import Secret

from bench.ui_screenshots import (
    CHROMIUM_BINARIES,
    find_chromium,
    flows_against,
    latest_artifact_id,
    rendered_text,
    ui_server,
    wait_for_events,
)
from deployments.targets import sim_target
from flows.deploy import deploy_qwen
from flows.health import health_check
from sim.ports import free_port
from tasks.probes import Verdict
from tests.integration.conftest import SESSION_PREFIX, TEST_TOKEN, target_containers

pytestmark = pytest.mark.integration


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[str]:
    """A Prefect server with its UI, for this test only; its base URL."""
    if find_chromium() is None:
        pytest.skip(f"no Chromium installed ({' or '.join(CHROMIUM_BINARIES)}): deployments/bootstrap.sh installs it")
    with ui_server(tmp_path / "prefect") as base:
        yield base


def test_the_ui_shows_the_verdict_the_deploy_report_and_the_service_events(ui, docker_client, sim_image, hub, tmp_path):
    api = f"{ui}/api"
    name = f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}"
    try:
        with flows_against(api):
            Secret(value=TEST_TOKEN).save("hf-token-ui", overwrite=True)
            sim_target(name, tmp_path / name, hub.url, free_port(), time_scale=0.01,
                       hf_token_secret="hf-token-ui").save(name, overwrite=True)
            deployed = deploy_qwen(target=name)
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

    history = rendered_text(f"{ui}/artifacts/artifact/{latest_artifact_id(api, f'health-history-{name}')}", ["checked at"])
    assert "healthy" in history and f"The last 1 health checks of {name}" in history

    deploy = rendered_text(f"{ui}/artifacts/artifact/{latest_artifact_id(api, f'deploy-{name}')}", ["KV cache tokens"])
    assert f"deploy-qwen on {name}: deployed" in deploy
    assert f"KV cache tokens {kv_tokens}" in deploy, deploy
    assert f"max concurrency (at max-model-len) {deployed.max_concurrency}" in deploy

    events = rendered_text(f"{ui}/events?resource=vllm.service.{name}", ["vllm.service.healthy"])
    assert "vllm.service.deployed" in events and f"vllm.service.{name}" in events

    variables = rendered_text(f"{ui}/variables", [f"vllm-health-{name}"])
    assert f"vllm-last-healthy-{name}" in variables
