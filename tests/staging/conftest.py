"""Rig for the staging tests: the real Hub imitation (one per session), a cache per test, log capture.

Helpers (run the flow here or in a subprocess, wait, paths) are in staging_rig.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from staging_rig import BIG, BIG_SHARD, GATED, N_SHARDS, REPO, SHARD, TOKEN, Capture

from sim.hub import HubServer, RepoSpec


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    specs = [
        RepoSpec(repo_id=REPO, n_shards=N_SHARDS, shard_bytes=SHARD, seed=0),
        RepoSpec(repo_id=GATED, n_shards=1, shard_bytes=1024 * 1024, gated=True, seed=1),
        RepoSpec(repo_id=BIG, n_shards=1, shard_bytes=BIG_SHARD, seed=2),
    ]
    with HubServer(repos=specs, data_dir=tmp_path_factory.mktemp("hub-data"), token=TOKEN) as hub:
        yield hub


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The session's Hub with no faults and fresh stats; HF_TOKEN set to its token."""
    hub_server.clear_faults()
    hub_server.reset_stats()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield hub_server
    hub_server.clear_faults()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf"


@pytest.fixture
def logs() -> Iterator[Capture]:
    cap = Capture()
    loggers = [logging.getLogger(), logging.getLogger("prefect"), logging.getLogger("tasks")]
    for lg in loggers:
        lg.addHandler(cap)
    yield cap
    for lg in loggers:
        lg.removeHandler(cap)
