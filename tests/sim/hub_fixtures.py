"""Fixtures and helpers for the Hub imitation's tests (import them explicitly in a test module).

The real huggingface_hub reads ``HF_ENDPOINT`` at import time, so the client runs in a
subprocess with that variable set (``run_hf``), as staging code will; in-process calls pass
``endpoint=hub.url`` instead (``api``), which the library honours for every call used here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.hub import HubServer, RepoSpec

REPO_ID = "Qwen/Qwen3-32B-FP8"
SPEC = RepoSpec(repo_id=REPO_ID, n_shards=7, shard_bytes=256 * 1024, seed=0)
GATED = RepoSpec(repo_id="sim-org/gated-model", n_shards=2, shard_bytes=256 * 1024, gated=True, seed=1)
PRIVATE = RepoSpec(repo_id="sim-org/private-model", n_shards=2, shard_bytes=256 * 1024, private=True, seed=2)
TOKEN = "hf_test_token_imitation_0123456789"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def hub_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub-data")


@pytest.fixture(scope="module")
def hub_server(hub_data_dir: Path) -> Iterator[HubServer]:
    """One open Hub (token=None) serving the Qwen-shaped repo, a gated and a private repo."""
    with HubServer(repos=[SPEC, GATED, PRIVATE], data_dir=hub_data_dir) as hub:
        yield hub


@pytest.fixture
def hub(hub_server: HubServer) -> Iterator[HubServer]:
    """The module's Hub with faults, counters, gates and knobs reset around each test."""
    hub_server.clear_faults()
    hub_server.wait_idle()
    hub_server.reset_stats()
    for spec in (GATED,):
        hub_server.revoke_gate(spec.repo_id)
    page, ttl = hub_server.tree_page_size, hub_server.cdn_url_ttl_s
    yield hub_server
    hub_server.clear_faults()
    hub_server.tree_page_size, hub_server.cdn_url_ttl_s = page, ttl


@pytest.fixture(scope="module")
def token_hub(hub_data_dir: Path) -> Iterator[HubServer]:
    """A Hub that requires ``TOKEN`` (anonymous callers see every repo as private)."""
    with HubServer(repos=[SPEC, GATED], data_dir=hub_data_dir, token=TOKEN) as hub:
        yield hub


def client_env(hub_url: str, hf_home: Path, token: str | None = None) -> dict[str, str]:
    """Environment for a huggingface_hub subprocess pointed at the imitation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def run_hf(code: str, hub_url: str, hf_home: Path, token: str | None = None, timeout: float = 120) -> dict:
    """Run ``code`` with the real client in a subprocess; it must print one JSON object last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=client_env(hub_url, hf_home, token),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def api(hub: HubServer, token: str | bool | None = False):
    """An in-process HfApi aimed at the imitation (``token=False``: send no token at all)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url, token=token)
