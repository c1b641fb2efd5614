"""Staging across processes: SIGKILL mid-shard then resume, huggingface_hub's orphan partial
adopted, two stagings at once on one cache. Real subprocesses, real Hub imitation, real Prefect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from staging_rig import (
    BIG,
    REPO,
    TOKEN,
    blobs_dir,
    child_result,
    file_info,
    quiesce,
    repo_bytes,
    shard_names,
    spawn_stage,
    stage,
    wait_for,
)

from sim.hub import Faults
from tasks.staging.cache import HF_ORPHAN_RE

pytestmark = pytest.mark.integration


def partial_size(cache: Path, etag: str) -> int:
    try:
        return (blobs_dir(cache) / f"{etag}.incomplete").stat().st_size
    except FileNotFoundError:
        return 0


def test_sigkill_mid_shard_then_rerun_resumes_the_partial(prefect_server, hub, cache, tmp_path) -> None:
    shard = shard_names()[0]
    _, size, etag, _ = file_info(hub, shard)
    # Only this shard is slow (about 2 s), so the kill lands in its middle.
    hub.set_faults(Faults(throttle_bytes_per_s=size / 2, path_glob=shard))
    proc = spawn_stage(prefect_server, cache, hub.url, tmp_path / "child.log")
    try:
        wait_for(lambda: partial_size(cache, etag) >= size // 2 or proc.poll() is not None, 60, what="half a shard")
        assert proc.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    kept = partial_size(cache, etag)
    assert size // 2 <= kept < size
    complete = sum(f[1] for f in hub.files(REPO) if (blobs_dir(cache) / f[2]).exists())
    missing = repo_bytes(hub) - complete - kept  # what a perfect resume still has to fetch
    hub.clear_faults()
    quiesce(hub)
    result = stage(hub, cache)
    assert result.bytes_resumed == kept and result.files_resumed == 1
    assert hub.stats()["bytes_served"][f"{REPO}/{shard}"] == size - kept  # resumed, not restarted
    assert hub.stats()["range_requests"] == {f"{REPO}/{shard}": 1}
    assert result.bytes_downloaded == hub.stats()["bytes_total"] == missing  # ratio exactly 1.0
    assert not list(blobs_dir(cache).glob("*.incomplete"))


def test_huggingface_hub_orphan_partial_is_adopted(prefect_server, hub, cache, tmp_path) -> None:
    """`hf download` SIGKILLed mid-shard leaves `<etag>.<8 hex>.incomplete` for good; staging uses it.

    huggingface_hub writes in 10 MiB chunks, so the shard is bigger than that (BIG repo)."""
    shard = "model.safetensors"
    _, size, etag, _ = file_info(hub, shard, BIG)
    hub.set_faults(Faults(throttle_bytes_per_s=size / 3, path_glob=shard))
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_XET": "1",
    }
    hf = Path(sys.executable).parent / "hf"
    proc = subprocess.Popen(
        [str(hf), "download", BIG, shard, "--cache-dir", str(cache)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    blobs = blobs_dir(cache, BIG)

    def orphan() -> Path | None:
        for p in blobs.glob(f"{etag}.*.incomplete") if blobs.exists() else []:
            if p.stat().st_size > 0:
                return p
        return None

    try:
        found = wait_for(lambda: orphan() or proc.poll() is not None, 60, what="hf partial")
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert isinstance(found, Path) and HF_ORPHAN_RE.match(found.name), found  # huggingface_hub's own naming
    kept = found.stat().st_size
    assert 0 < kept < size
    hub.clear_faults()
    quiesce(hub)
    result = stage(hub, cache, repo_id=BIG)
    assert result.bytes_resumed == kept and result.files_resumed == 1
    assert hub.stats()["bytes_served"][f"{BIG}/{shard}"] == size - kept
    assert not list(blobs.glob("*.incomplete"))  # the orphan became the blob: nothing left behind
    assert (blobs / etag).read_bytes() == hub.local_path(BIG, shard).read_bytes()


def test_two_stagings_at_once_on_one_cache(prefect_server, hub, cache, tmp_path) -> None:
    """One staging in a child process, one in this process, started while the first is mid-shard:
    both end with a correct cache and every file crosses the network exactly once (the second
    waits on each blob's lock, then verifies and reuses what the first wrote)."""
    size = file_info(hub, shard_names()[0])[1]
    hub.set_faults(Faults(throttle_bytes_per_s=size / 2.5, path_glob="*.safetensors"))
    log = tmp_path / "child.log"
    proc = spawn_stage(prefect_server, cache, hub.url, log)
    try:
        wait_for(
            lambda: (
                (blobs_dir(cache).exists() and any(blobs_dir(cache).glob("*.incomplete"))) or proc.poll() is not None
            ),
            60,
            what="the first staging to be mid-shard",
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        mine = stage(hub, cache)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    theirs = child_result(log)
    stats = hub.stats()
    total = repo_bytes(hub)
    assert stats["bytes_total"] == total  # no file transferred twice
    assert theirs["bytes_downloaded"] + mine.bytes_downloaded == total
    assert mine.commit == theirs["commit"] == hub.commit(REPO)
    assert mine.files_reused >= 1  # it waited for blobs the other process was writing
    hub.clear_faults()
    from test_staging_flow import assert_cache_is_what_hf_expects

    assert_cache_is_what_hf_expects(hub, cache)
