"""The compile/kernel caches (tasks/caches.py): the bound evicts the oldest entries first, a bound
that eviction cannot meet is a warning with the size and how to clear, and the helper program (run
here by python3 on a temporary directory, as the helper container runs it on /caches) creates,
lists, removes and clears what the table says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from blocks.render import CACHE_MOUNTS
from blocks.target import TargetMachine
from tasks.caches import (
    _HELPER,
    ENTRY_ROOTS,
    HELPER_MOUNT,
    CacheEntry,
    CacheListing,
    bound_caches,
    parse_listing,
    pick_evictions,
)
from tasks.vllm.versions import variants_for

MIB = 1024**2
GIB = 1024**3


def listing(*entries: tuple[str, int, float], extra: int = 0) -> CacheListing:
    found = tuple(CacheEntry(p, b, t) for p, b, t in entries)
    return CacheListing(total_bytes=sum(e.bytes for e in found) + extra, entries=found)


def test_eviction_picks_the_oldest_until_the_caches_fit():
    caches = listing(
        ("vllm/torch_compile_cache/new", 6 * GIB, 300.0),
        ("vllm/torch_compile_cache/old", 6 * GIB, 100.0),
        ("triton/k1", 6 * GIB, 200.0),
        ("vllm/torch_compile_cache/torch_aot_compile/mid", 6 * GIB, 250.0),
    )
    picked = pick_evictions(caches, 14 * GIB)
    assert [e.path for e in picked] == ["vllm/torch_compile_cache/old", "triton/k1"]
    assert pick_evictions(caches, 24 * GIB) == []  # fits
    assert pick_evictions(caches, 0) == []  # no bound


def test_a_bound_eviction_cannot_meet_is_a_warning_with_the_size_and_the_fix():
    machine = TargetMachine(name="spark", vllm_cache_max_gib=1)
    caches = listing(("vllm/torch_compile_cache/a", 512 * MIB, 1.0), extra=3 * GIB)
    evicted = pick_evictions(caches, GIB)
    report = bound_caches(machine, caches, evicted)
    assert [e.path for e in evicted] == ["vllm/torch_compile_cache/a"] and report.entries == 0
    assert "3.0 GiB" in report.warning and "clear_caches=true" in report.warning and "/opt/vllm-cache" in report.warning
    assert "evicted the 1 oldest (0.50 GiB)" in report.summary()
    fits = bound_caches(TargetMachine(name="spark"), listing(("triton/k", MIB, 1.0)), [])
    assert fits.warning is None and fits.summary() == "/opt/vllm-cache: 0.00 GiB of 20 GiB, 1 entries"


def test_every_entry_root_is_under_a_mounted_cache():
    subdirs = {m.subdir for m in CACHE_MOUNTS}
    assert {root.split("/")[0] for root in variants_for(ENTRY_ROOTS, None)} == subdirs


def _helper(root: Path, mode: str, args: dict) -> str:
    program = _HELPER.replace(f'ROOT = "{HELPER_MOUNT}"', f"ROOT = {str(root)!r}")
    assert program != _HELPER
    done = subprocess.run([sys.executable, "-c", program, mode, json.dumps(args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _write(path: Path, size: int, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))


def test_the_helper_creates_lists_removes_and_clears(tmp_path):
    subdirs = [m.subdir for m in CACHE_MOUNTS]
    roots = variants_for(ENTRY_ROOTS, None)
    _write(tmp_path / "vllm/torch_compile_cache/aaa/rank_0_0/backbone/graph.py", 1000, 100.0)
    _write(tmp_path / "vllm/torch_compile_cache/torch_aot_compile/bbb/rank_0_0/model", 500, 300.0)
    _write(tmp_path / "vllm/modelinfos/x.json", 7, 50.0)  # counted, never an entry
    _write(tmp_path / "triton/k1/kernel.cubin", 20, 200.0)

    found = parse_listing(_helper(tmp_path, "list", {"subdirs": subdirs, "roots": roots}))
    assert all((tmp_path / sub).is_dir() for sub in subdirs)  # flashinfer created
    assert found.total_bytes == 1527
    by_path = {e.path: e for e in found.entries}
    assert set(by_path) == {
        "vllm/torch_compile_cache/aaa",
        "vllm/torch_compile_cache/torch_aot_compile/bbb",
        "triton/k1",
    }  # the nested root is no entry of its parent
    assert by_path["vllm/torch_compile_cache/aaa"].bytes == 1000
    assert by_path["triton/k1"].mtime >= 200.0

    oldest = pick_evictions(found, 600)
    assert [e.path for e in oldest] == ["vllm/torch_compile_cache/aaa"]
    _helper(tmp_path, "remove", {"paths": [e.path for e in oldest]})
    assert not (tmp_path / "vllm/torch_compile_cache/aaa").exists()
    assert (tmp_path / "vllm/torch_compile_cache/torch_aot_compile/bbb").exists()

    _helper(tmp_path, "clear", {"subdirs": subdirs})
    assert all((tmp_path / sub).is_dir() and not any((tmp_path / sub).iterdir()) for sub in subdirs)


def test_the_helper_refuses_a_path_outside_the_caches(tmp_path):
    program = _HELPER.replace(f'ROOT = "{HELPER_MOUNT}"', f"ROOT = {str(tmp_path / 'c')!r}")
    (tmp_path / "keep").write_text("x")
    done = subprocess.run(
        [sys.executable, "-c", program, "remove", json.dumps({"paths": ["../keep"]})], capture_output=True, text=True
    )
    assert done.returncode != 0 and "outside the caches" in done.stderr
    assert (tmp_path / "keep").exists()
