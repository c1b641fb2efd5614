"""The page-cache warm through real docker and a real Prefect server (tasks/warmup.py): on a 0.11.1
imitation target the staged shards are read in a helper container on the docker host, the cache
mounted read-only; on 0.10.1.1, and for fastsafetensors, nothing runs.

The imitation's ledger records page cache only for its own loads (sim/vllm/vllm_sim/ledger.py
`record_load`), so what this proves is the helper: it runs, it reads every shard, it says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version
from prefect import flow

from blocks.engine import EngineSpec
from blocks.target import TargetMachine
from deployments.targets import SIM_IMAGES
from tasks.staging.cache import RepoCache
from tasks.warmup import WarmResult, warm_page_cache

pytestmark = pytest.mark.integration
SHARD_BYTES = 1024 * 1024
COMMIT = "c" * 40


def stage_fake_snapshot(cache_dir: str, repo_id: str, shards: int = 7) -> None:
    """A staged snapshot as tasks/staging writes it: blobs, relative links, refs/main."""
    cache = RepoCache(Path(cache_dir), repo_id)
    cache.blobs.mkdir(parents=True, exist_ok=True)
    for n in range(shards):
        etag = f"{n:064x}"
        cache.blob(etag).write_bytes(bytes([n]) * SHARD_BYTES)
        cache.link(COMMIT, f"model-{n + 1:05d}-of-{shards:05d}.safetensors", etag)
    cache.write_ref("main", COMMIT)


@flow(name="warm-test")
def _warm(target: str, version: str, loader: str) -> WarmResult:
    machine = TargetMachine.named(target)
    return warm_page_cache(machine, machine.apply_to(EngineSpec()), Version(version), loader)


def test_the_shards_are_read_on_0_11_and_never_on_0_10(make_sim_target):
    target = make_sim_target(image=SIM_IMAGES["0.11.1"])
    spec = target.apply_to(EngineSpec())
    stage_fake_snapshot(target.cache_dir, spec.model)
    done = _warm(target.name, "0.11.1", "mmap")
    assert done.warmed and done.shards == 7, done
    assert done.gib == pytest.approx(7 * SHARD_BYTES / 1024**3, abs=0.01)
    assert "MemAvailable" in done.why and "fit in" in done.why
    assert not _warm(target.name, "0.11.1", "fastsafetensors").warmed
    never = _warm(target.name, "0.10.1.1", "mmap")
    assert not never.warmed and "MemFree" in never.why
