"""tasks/recovery/planner.py by vLLM version: what the free-memory check reads (MemFree up to 0.10.x,
MemAvailable from 0.11.1 on: tasks/vllm/versions.py `FREE_MEMORY`) decides whether a page-cache drop
can help, cold starts on 0.10.x get less KV cache (vllm issue 35920), and the memory-profiling
assertion is waited out once."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

from packaging.version import Version

from blocks.engine import EngineSpec
from tasks.memory import MemInfo
from tasks.recovery.kv_model import KvModel
from tasks.recovery.planner import plan_recovery
from tasks.recovery.step import MACHINE_ACTIONS, MEMORY_KINDS, Action, MachineMemory, RecoveryClass, RecoveryLimits
from tasks.vllm.failures import FailureCause, FailureKind, classify_failure

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"
V0101 = Version("0.10.1.1+381074ae.nv25.09")
V0111 = Version("0.11.1+nv25.12")
NOW = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)
SPEC_092 = EngineSpec(gpu_memory_utilization=0.92)


def free_memory_line(free: float, total: float, util: float, engine: str) -> str:
    """vLLM's free-memory error as its format string prints it: vllm/v1/worker/gpu_worker.py:179-187
    (init_device) in 0.10.1.1, :247-254 in 0.11.1 (the same text), with each version's engine prefix."""
    requested = round(total * util, 2)
    return (
        f"({engine} pid=210) ERROR 12-05 14:00:30 [core.py:700] ValueError: Free memory on device "
        f"({free}/{total} GiB) on startup is less than desired GPU memory utilization ({util}, {requested} GiB)."
        " Decrease GPU memory utilization or reduce GPU memory used by other processes."
    )


def free_memory_failure(free: float, version: Version, total: float = 121.69, util: float = 0.92) -> FailureCause:
    engine = "EngineCore_0" if version < Version("0.10.2") else "EngineCore_DP0"
    found = classify_failure([free_memory_line(free, total, util, engine)], exit_code=1, version=version)
    assert found.kind is FailureKind.FREE_MEMORY and found.numbers["free_gib"] == free
    return found


def machine(free: float, available: float, cached: float, shmem: float = 0.0, total: float = 121.69) -> MachineMemory:
    return MachineMemory(meminfo=MemInfo(total, free, available, cached, shmem))


# ------------------------------------------------------------------------------ free memory


def test_the_same_failure_and_memory_plan_a_drop_on_0_10_and_none_on_0_11():
    """85.92 GiB found free, 30 GiB page cache: 0.10.1.1 counts it as used, so a drop lets the same
    spec start; 0.11.1 counts it as available already, so a drop cannot help and is never planned."""
    memory = machine(free=85.92, available=115.92, cached=30.0)
    old = plan_recovery(free_memory_failure(85.92, V0101), memory, SPEC_092, 0, version=V0101)
    assert old.klass is RecoveryClass.PAGE_CACHE and old.actions == [Action.DROP_PAGE_CACHE] and old.overrides == {}
    assert "vLLM 0.10.1.1" in old.reason
    new = plan_recovery(free_memory_failure(85.92, V0111), memory, SPEC_092, 0, version=V0111)
    assert new.klass is RecoveryClass.HELD_BY_OTHERS and Action.DROP_PAGE_CACHE not in new.actions
    assert "MemAvailable" in new.reason  # the figure it planned from is the one 0.11.1 reads


def test_on_0_11_a_free_memory_failure_means_memory_is_held():
    """What each version's error says for the same machine (55.92 free, 30 page cache, 85.92 available):
    0.10.1.1 drops the cache and fits 0.69 with it; 0.11.1 fits the same 0.69 from MemAvailable, no drop."""
    memory = machine(free=55.92, available=85.92, cached=30.0)
    old = plan_recovery(free_memory_failure(55.92, V0101), memory, SPEC_092, 0, version=V0101)
    assert old.klass is RecoveryClass.HELD_BY_OTHERS
    assert old.actions == [Action.DROP_PAGE_CACHE, Action.PRUNE] and old.overrides == {"gpu_memory_utilization": 0.69}
    new = plan_recovery(free_memory_failure(85.92, V0111), memory, SPEC_092, 0, version=V0111)
    assert new.klass is RecoveryClass.HELD_BY_OTHERS
    assert new.actions == [Action.PRUNE] and new.overrides == {"gpu_memory_utilization": 0.69}
    assert "35.8 GiB are held by other processes" in new.reason  # 121.69 - 85.92: page cache is not held
    after_prune = plan_recovery(
        free_memory_failure(80.10, V0111, util=0.69),
        memory,
        EngineSpec(gpu_memory_utilization=0.69),
        1,
        history=[new],
        version=V0111,
    )
    assert after_prune.klass is RecoveryClass.SHORTAGE and after_prune.actions == []


def test_no_step_drops_the_page_cache_on_0_11():
    """Every recorded failure x machines with page cache x specs: 0.11.1 never drops, 0.10.1.1 does somewhere."""
    machines = [
        machine(free=85.92, available=115.92, cached=30.0),
        machine(free=55.92, available=85.92, cached=30.0),
        machine(free=50.0, available=112.0, cached=62.0, total=119.7),
        machine(free=20.0, available=90.0, cached=70.0, total=119.7),
    ]
    specs = [EngineSpec(), SPEC_092, EngineSpec(gpu_memory_utilization=0.40), EngineSpec(gpu_memory_utilization=0.35)]
    dropped = {V0101: 0, V0111: 0}
    for log, memory, spec, version in itertools.product(sorted(LOGS.glob("*.log")), machines, specs, dropped):
        step = plan_recovery(classify_failure(log.read_text()), memory, spec, 0, version=version)
        dropped[version] += Action.DROP_PAGE_CACHE in step.actions
    assert dropped[V0111] == 0 and dropped[V0101] > 0


def test_shared_memory_is_no_page_cache_a_drop_returns():
    """Cached includes Shmem, which drop_caches cannot free: 30 GiB cached of which 10 shmem leaves
    85.92 + 20 < 112 GiB, so no page-cache class; the fit after a drop counts 20, not 30."""
    memory = machine(free=85.92, available=105.92, cached=30.0, shmem=10.0)
    assert memory.meminfo is not None and memory.meminfo.droppable_gib == 20.0
    step = plan_recovery(free_memory_failure(85.92, V0101), memory, SPEC_092, 0, version=V0101)
    assert step.klass is RecoveryClass.HELD_BY_OTHERS
    assert step.overrides == {"gpu_memory_utilization": 0.86}  # floor((85.92 + 20 - 1) / 121.69, 0.01)
    assert "20.0 GiB page cache" in step.reason and "10.0 GiB shared memory left out" in step.reason
    without = plan_recovery(free_memory_failure(85.92, V0101), machine(85.92, 115.92, 30.0), SPEC_092, 0, version=V0101)
    assert without.klass is RecoveryClass.PAGE_CACHE


# ------------------------------------------------------------------------------ KV cache, cold and warm


def test_the_runbooks_cold_start_is_the_reference_so_by_default_cold_is_charged_nothing():
    """The model is calibrated on the runbook's 0.10.1.1 start, a cold one (0.90 passes MemFree only with
    the weights out of the page cache): by default a cold retry is predicted as that start was."""
    assert KvModel().cold() == KvModel() and RecoveryLimits().cold() == RecoveryLimits()


def test_a_cold_start_on_0_10_gets_less_kv_cache_than_a_warm_one():
    """Where vLLM 0.10.x charges the page cache its weight reads fill as non-torch memory (vllm issue
    35920; cold_load_charge 1), the KV model's cold start loses the weights' size of KV cache."""
    warm, cold = KvModel(cold_load_charge=1.0), KvModel(cold_load_charge=1.0).cold()
    assert cold.charged_page_cache_gib == warm.weights_gib == 31.97
    assert cold.kv_gib(0.90, 119.7, 16384, 64) == warm.kv_gib(0.90, 119.7, 16384, 64) - 31.97
    assert cold.max_len_at(0.90, 119.7, 16384, 64) < warm.max_len_at(0.90, 119.7, 16384, 64)
    assert cold.utilization_for(32000, 119.7, 16384, 64) > warm.utilization_for(32000, 119.7, 16384, 64)


def test_a_retry_after_a_drop_is_predicted_cold_on_0_10_only():
    """40 GiB free + 45 GiB page cache, max_model_len 131072: 0.10.1.1 drops to fit 0.69 and the cold
    retry's KV cache (10.5 GiB) cannot hold 131072, so max_model_len is lowered to what it holds;
    0.11.1 reads 85 GiB available, fits 0.69 without a drop, warm: 131072 stays."""
    spec = EngineSpec(gpu_memory_utilization=0.92, max_model_len=131072)
    memory = machine(free=40.0, available=85.0, cached=45.0)
    limits = RecoveryLimits(cold_load_charge=1.0)
    old = plan_recovery(free_memory_failure(40.0, V0101), memory, spec, 0, limits, version=V0101)
    assert Action.DROP_PAGE_CACHE in old.actions and old.overrides["gpu_memory_utilization"] == 0.69
    assert old.overrides["max_model_len"] == limits.cold().max_len_at(0.69, 121.69, 16384, 64) < 131072
    assert "vllm issue 35920" in old.reason
    new = plan_recovery(free_memory_failure(85.0, V0111), memory, spec, 0, limits, version=V0111)
    assert Action.DROP_PAGE_CACHE not in new.actions and new.overrides == {"gpu_memory_utilization": 0.69}
    assert limits.max_len_at(0.69, 121.69, 16384, 64) >= 131072


def test_a_kv_raise_that_needs_a_drop_covers_the_cold_read_on_0_10():
    """kv_too_small at 0.40 (4.71 GiB missing), 50 GiB free and 62 GiB page cache: 0.44 does not fit the
    free memory, so 0.10.1.1 drops first and the cold retry must also hold the refilled page cache
    (ceil(0.40 + (4.71 + 32.13) / 119.7) = 0.71); 0.11.1 reads 112 GiB available: 0.44, no drop."""
    failed = classify_failure((LOGS / "fail_kv_too_small.log").read_text())
    memory = machine(free=50.0, available=112.0, cached=62.0, total=119.7)
    spec = EngineSpec(gpu_memory_utilization=0.40)
    limits = RecoveryLimits(cold_load_charge=1.0).calibrated((LOGS / "fail_kv_too_small.log").read_text().splitlines())
    old = plan_recovery(failed, memory, spec, 0, limits, version=V0101)
    assert old.actions == [Action.DROP_PAGE_CACHE] and old.overrides == {"gpu_memory_utilization": 0.71}
    assert "vllm issue 35920" in old.reason
    new = plan_recovery(failed, memory, spec, 0, limits, version=V0111)
    assert new.actions == [] and new.overrides == {"gpu_memory_utilization": 0.44}


def test_a_no_kv_raise_that_needs_a_drop_is_sized_as_a_cold_start_on_0_10():
    failed = classify_failure((LOGS / "fail_no_kv_memory.log").read_text())
    limits = RecoveryLimits(cold_load_charge=1.0).calibrated((LOGS / "fail_no_kv_memory.log").read_text().splitlines())
    memory = machine(free=40.0, available=112.0, cached=72.0, total=119.7)
    spec = EngineSpec(gpu_memory_utilization=0.35)
    old = plan_recovery(failed, memory, spec, 0, limits, version=V0101)
    cold_util = limits.cold().utilization_for(32000, 119.7, 16384, 64)
    assert old.actions == [Action.DROP_PAGE_CACHE] and old.overrides == {"gpu_memory_utilization": cold_util}
    new = plan_recovery(failed, memory, spec, 0, limits, version=V0111)
    assert new.actions == [] and new.overrides == {
        "gpu_memory_utilization": limits.utilization_for(32000, 119.7, 16384, 64)
    }
    assert cold_util > new.overrides["gpu_memory_utilization"]


# ------------------------------------------------------------------------------ unsteady memory


def test_the_profiling_assertion_waits_for_steady_memory_and_retries_once():
    failed = classify_failure((LOGS / "fail_memory_profiling.log").read_text())
    assert failed.kind is FailureKind.MEMORY_PROFILING and failed.kind not in MEMORY_KINDS
    first = plan_recovery(failed, MachineMemory(), EngineSpec(), 0, now=NOW)
    assert first.klass is RecoveryClass.UNSTEADY_MEMORY and not first.give_up
    assert first.actions == [Action.WAIT_FOR_STEADY_MEMORY] and first.overrides == {}
    assert Action.WAIT_FOR_STEADY_MEMORY not in MACHINE_ACTIONS  # it changes nothing on the machine
    taken = first.model_copy(update={"at": NOW - timedelta(minutes=4)})
    second = plan_recovery(failed, MachineMemory(), EngineSpec(), 1, history=[taken], now=NOW)
    assert second.give_up and second.klass is RecoveryClass.UNSTEADY_MEMORY
    assert second.next_step == failed.fix and second.actions == [] and "again" in second.reason
    long_ago = first.model_copy(update={"at": NOW - timedelta(hours=2)})
    assert not plan_recovery(failed, MachineMemory(), EngineSpec(), 0, history=[long_ago], now=NOW).give_up
    for version in (V0101, V0111):  # the same on every version
        assert plan_recovery(failed, MachineMemory(), EngineSpec(), 0, version=version).klass is first.klass
