"""The loader's own memory (tasks/recovery/load_memory.py) in the pre-start check (tasks/memory.py), the
readiness gate's memory guard (tasks/readiness.py) and the planner; and the page-cache warm's
decisions (tasks/warmup.py), by vLLM version and loader."""

from __future__ import annotations

import pytest
from packaging.version import Version

from blocks.engine import EngineSpec
from tasks.memory import MemInfo, NotEnoughMemory, room_for_start
from tasks.readiness import MemoryGuard
from tasks.recovery.kv_model import QWEN3_32B_FP8_WEIGHTS_GIB
from tasks.recovery.load_memory import (
    LOADER_MEMORY,
    QWEN3_32B_FP8_LARGEST_SHARD_GIB,
    load_peak_gib,
    loader_memory,
    loader_transient_gib,
)
from tasks.recovery.planner import plan_recovery
from tasks.recovery.step import MachineMemory, RecoveryClass
from tasks.staging.cache import RepoCache
from tasks.vllm.failures import FailureKind, host_memory_guard_cause
from tasks.vllm.logs import Phase
from tasks.vllm.versions import NGC_IMAGES
from tasks.warmup import WarmResult, snapshot_shards, warm_command, warm_decision, warm_fits

MEMFREE_VERSIONS = ("0.10.1.1", "0.10.2")
MEMAVAILABLE_VERSIONS = ("0.11.1", "0.17.1", "0.20.1", "0.31.0")
EAGER = loader_transient_gib("eager")


def spark(free: float, available: float, cached: float = 0.0, total: float = 119.7) -> MemInfo:
    return MemInfo(total_gib=total, free_gib=free, available_gib=available, cached_gib=cached)


# ------------------------------------------------------------------------------ the table


def test_every_loader_is_in_the_table_with_a_vllm_source():
    assert set(LOADER_MEMORY) == {"mmap", "eager", "fastsafetensors"}
    assert all("vllm/" in entry.source and ".py:" in entry.source for entry in LOADER_MEMORY.values())
    with pytest.raises(ValueError, match="mmap, eager, fastsafetensors"):
        loader_memory("tensorizer")


def test_what_each_loader_holds_while_loading():
    assert loader_transient_gib("mmap") == 0.0  # page cache only: reclaimable
    assert loader_transient_gib("fastsafetensors") == QWEN3_32B_FP8_LARGEST_SHARD_GIB  # one device buffer
    assert EAGER == pytest.approx(3 * QWEN3_32B_FP8_LARGEST_SHARD_GIB, abs=0.01)  # bytes, tensors, previous file
    assert load_peak_gib("eager", QWEN3_32B_FP8_WEIGHTS_GIB) == pytest.approx(31.97 + EAGER, abs=0.01)
    assert [name for name, entry in LOADER_MEMORY.items() if entry.reads_page_cache] == ["mmap", "eager"]


# ------------------------------------------------------------------------------ the pre-start check


def test_mmap_keeps_todays_check_even_near_the_floor():
    near = spark(free=84.9, available=40.0, cached=31.5)
    assert room_for_start(near, 0.30, floor_gib=4.0) == "fits"
    assert room_for_start(near, 0.30, floor_gib=4.0, loader="mmap") == "fits"


def test_the_eager_buffer_may_not_take_the_host_under_the_floor():
    """31.97 GiB of weights + 13.98 GiB of eager buffer from 48 GiB available leaves 2.05 GiB: under 4."""
    info = spark(free=48.0, available=48.0)
    assert room_for_start(info, 0.35, floor_gib=4.0, loader="mmap", version=Version("0.11.1")) == "fits"
    with pytest.raises(NotEnoughMemory) as refused:
        room_for_start(info, 0.35, floor_gib=4.0, loader="eager", version=Version("0.11.1"))
    cause = refused.value.cause
    assert cause.kind is FailureKind.HOST_MEMORY_GUARD
    assert cause.numbers["loader_transient_gib"] == EAGER and cause.numbers["floor_gib"] == 4.0
    assert "eager loader" in cause.summary and "loader mmap" in cause.fix
    assert f"holds {EAGER:.1f} GiB" in str(refused.value)
    # with room for it, the eager start fits
    assert room_for_start(spark(free=60.0, available=60.0), 0.35, floor_gib=4.0, loader="eager") == "fits"
    # no guard (floor 0): nothing to protect
    assert room_for_start(info, 0.35, floor_gib=0.0, loader="eager") == "fits"


def test_on_memfree_versions_the_drop_stays():
    """0.10.x still drops the page cache before a start: eager does not change that."""
    info = spark(free=84.9, available=116.4, cached=31.5)
    for version in MEMFREE_VERSIONS:
        assert room_for_start(info, 0.90, version=Version(version), loader="eager", floor_gib=4.0) == "drop-page-cache"
    for version in MEMAVAILABLE_VERSIONS:
        assert room_for_start(info, 0.90, version=Version(version), loader="eager", floor_gib=4.0) == "fits"


# ------------------------------------------------------------------------------ the guard and the planner


def test_the_guard_names_the_loaders_buffer_while_loading():
    guard = MemoryGuard(command=["cat", "/proc/meminfo"], floor_gib=4.0, loader="eager")
    loading = guard.cause(3.2, Phase.LOADING, ["Loading safetensors checkpoint shards (eager): 43% Completed | 3/7"])
    assert loading.kind is FailureKind.HOST_MEMORY_GUARD and "eager loader" in loading.summary
    assert loading.numbers["loader_transient_gib"] == EAGER
    profiling = guard.cause(3.2, Phase.COMPILING, [])
    assert profiling == host_memory_guard_cause(3.2, 4.0, [])  # the buffer is gone by then
    mmap = MemoryGuard(command=["cat", "/proc/meminfo"], floor_gib=4.0)
    assert mmap.cause(3.2, Phase.LOADING, []) == host_memory_guard_cause(3.2, 4.0, [])


def test_the_planner_gives_up_with_the_loader_fix_when_the_buffer_tripped_the_guard():
    guard = MemoryGuard(command=["cat", "/proc/meminfo"], floor_gib=4.0, loader="eager")
    step = plan_recovery(guard.cause(3.2, Phase.LOADING, []), MachineMemory(), EngineSpec(), 0)
    assert step.klass is RecoveryClass.ACTIVATION_PEAK and step.give_up
    assert "eager loader" in step.reason and "loader mmap" in (step.next_step or "")
    # a guard trip while profiling is still a profiling peak: the batch settings go down
    plain = plan_recovery(guard.cause(3.2, Phase.COMPILING, []), MachineMemory(), EngineSpec(), 0)
    assert not plain.give_up and plain.overrides["max_num_batched_tokens"] == 8192


# ------------------------------------------------------------------------------ the warm


@pytest.mark.parametrize("version", [None, *MEMFREE_VERSIONS])
def test_never_warm_where_page_cache_counts_as_used(version):
    for loader in LOADER_MEMORY:
        warm, why = warm_decision(Version(version) if version else None, loader)
        assert not warm and "MemFree" in why and "drop it again" in why


@pytest.mark.parametrize("version", MEMAVAILABLE_VERSIONS)
def test_warm_for_the_loaders_that_read_through_the_page_cache(version):
    assert warm_decision(Version(version), "mmap")[0]
    assert warm_decision(Version(version), "eager")[0]
    warm, why = warm_decision(Version(version), "fastsafetensors")
    assert not warm and "page cache" in why


def test_every_ngc_image_has_a_warm_decision():
    decided = {image.tag: warm_decision(Version(image.vllm), "mmap")[0] for image in NGC_IMAGES}
    assert decided == {
        "25.09": False,
        "25.10": False,
        "25.12": True,
        "26.01": True,
        "26.03": True,
        "26.05": True,
        "26.10": True,
    }


def test_warm_only_when_the_shards_fit_in_free_memory_above_the_floor():
    assert warm_fits(spark(free=111.0, available=111.0), 31.97, 4.0)[0]
    fits, why = warm_fits(spark(free=35.0, available=80.0, cached=45.0), 31.97, 4.0)
    assert not fits and "floor 4.0 GiB" in why and "evict" in why
    assert warm_fits(spark(free=33.5, available=33.5), 31.97, 0.0)[0]  # no floor: the 1 GiB margin


def test_the_staged_snapshot_and_the_helpers_command(tmp_path):
    cache = RepoCache(tmp_path, "Qwen/Qwen3-32B-FP8")
    commit = "a" * 40
    assert snapshot_shards(str(tmp_path), "Qwen/Qwen3-32B-FP8", None) == []  # nothing staged
    cache.blobs.mkdir(parents=True)
    for n, etag in enumerate(("b1", "b2")):
        cache.blob(etag).write_bytes(b"x" * 10)
        cache.link(commit, f"model-0000{n + 1}-of-00002.safetensors", etag)
    cache.link(commit, "config.json", "b1")
    cache.write_ref("main", commit)
    shards = snapshot_shards(str(tmp_path), "Qwen/Qwen3-32B-FP8", None)
    assert shards == [cache.blob("b1").resolve(), cache.blob("b2").resolve()]
    assert snapshot_shards(str(tmp_path), "Qwen/Qwen3-32B-FP8", commit) == shards
    command = warm_command(shards)
    assert command[:4] == ["sh", "-c", 'cat -- "$@" > /dev/null', "warm"] and command[4:] == [str(p) for p in shards]


def test_the_report_line():
    assert WarmResult(warmed=False, why="vLLM 0.10.1.1 reads MemFree").summary == "skipped: vLLM 0.10.1.1 reads MemFree"
    done = WarmResult(warmed=True, why="mmap", gib=31.97, seconds=12.34, shards=7)
    assert done.summary == "read 31.97 GiB (7 shards) in 12.3 s: mmap"


def test_a_start_counts_the_spec_s_resolved_loader():
    from tasks.serve import loader_of

    assert loader_of(EngineSpec()) == "mmap"  # "auto", not resolved: vLLM's default
    assert loader_of(EngineSpec(loader="eager")) == "eager"  # resolved by tasks/loader.py's with_loader
    assert loader_of(EngineSpec(loader="eager"), "fastsafetensors") == "fastsafetensors"
