"""tasks/memory.py: meminfo as each vLLM on GB10 sees it (MemFree up to 0.10.x, MemAvailable from 0.11.1),
from /proc/meminfo or the imitation's ledger."""

import pytest
from packaging.version import Version

from sim.vllm.vllm_sim.ledger import Ledger
from sim.vllm.vllm_sim.machine import meminfo_text as imitation_meminfo
from tasks.memory import MemInfo, NotEnoughMemory, drop_caches_command, parse_meminfo, room_for_start, steady
from tasks.vllm.failures import FailureKind
from tasks.vllm.versions import FreeMemory

SPARK_LIKE = """MemTotal:       125515968 kB
MemFree:        89000000 kB
MemAvailable:   122000000 kB
Buffers:          100000 kB
Cached:         33000000 kB
"""


def test_parse_proc_meminfo():
    info = parse_meminfo(SPARK_LIKE)
    assert info.total_gib == pytest.approx(119.7, abs=0.01)
    assert info.free_gib == pytest.approx(84.88, abs=0.01)
    assert info.cached_gib == pytest.approx(31.47, abs=0.01)
    # the runbook's 0.90 does not fit in free memory, but would once the page cache is dropped
    assert room_for_start(info, 0.90) == "drop-page-cache" and info.released_for(0.90)


def test_parse_rejects_what_is_not_meminfo():
    with pytest.raises(ValueError, match="MemFree"):
        parse_meminfo("MemTotal: 1 kB\n")


def test_imitation_ledger_meminfo_reads_like_proc(tmp_path):
    """What `python3 -m vllm_sim meminfo` prints (rendered from the ledger when read) parses as /proc/meminfo."""
    env = {"VLLM_SIM_LEDGER_DIR": str(tmp_path)}
    ledger = Ledger(tmp_path, "server-a", total_gib=119.7, baseline_gib=3.0)
    ledger.publish(60.0, "running", "Qwen/Qwen3-32B-FP8")
    ledger.record_load("Qwen/Qwen3-32B-FP8@abc", 31.97)
    info = parse_meminfo(imitation_meminfo(env))
    assert info.total_gib == pytest.approx(119.7, abs=0.01)
    assert info.free_gib == pytest.approx(119.7 - 3.0 - 60.0 - 31.97, abs=0.01)
    assert info.cached_gib == pytest.approx(31.97 + 0.5, abs=0.01)  # + 0.5 GiB shmem (VLLM_SIM_SHMEM_GIB)
    ledger.release()
    after = parse_meminfo(imitation_meminfo(env))
    assert after.free_gib == pytest.approx(119.7 - 3.0 - 31.97, abs=0.01)
    assert after.released_for(0.90) and room_for_start(after, 0.90) == "drop-page-cache"


def test_drop_caches_command_is_the_playbooks():
    assert drop_caches_command() == ["sh", "-c", "sync; echo 3 > /drop_caches"]


def test_room_for_start_decides_from_free_memory_and_page_cache():
    info = parse_meminfo(SPARK_LIKE)  # 84.9 free + 31.5 page cache of 119.7
    assert room_for_start(info, 0.70) == "fits"  # 83.8 needed
    assert room_for_start(info, 0.90) == "drop-page-cache"  # 107.7 needed, 116.4 once dropped
    with pytest.raises(NotEnoughMemory) as short:
        room_for_start(info, 0.99)  # 118.5 needed: more than free + page cache
    # the message names what fits by the one sizing rule: floor((84.88 + 31.47 - 1) / 119.7, 0.01) = 0.96,
    # and the cause recovery plans from (and the report shows) says the same
    assert '"gpu_memory_utilization": 0.96' in str(short.value) and "118.5 GiB" in str(short.value)
    assert short.value.cause.kind is FailureKind.FREE_MEMORY
    assert short.value.cause.suggested == {"gpu_memory_utilization": 0.96} and "0.96" in short.value.cause.fix
    assert short.value.cause.numbers["free_gib"] == info.free_gib  # what vLLM's check would see now
    with pytest.raises(NotEnoughMemory) as guarded:
        room_for_start(info, 0.99, margin_gib=5.0)  # a target with the 4 GiB host floor
    assert '"gpu_memory_utilization": 0.93' in str(guarded.value)


V0101 = Version("0.10.1.1+381074ae.nv25.09")
V0111 = Version("0.11.1+nv25.12")
WITH_SHMEM = SPARK_LIKE + "Shmem:          10485760 kB\n"  # 10 GiB of tmpfs / shared memory inside Cached


def test_room_for_start_by_version():
    """0.10.1.1 compares MemFree (a drop helps), 0.11.1 MemAvailable (a drop never helps, so never planned)."""
    info = parse_meminfo(SPARK_LIKE)  # 84.9 free, 31.5 page cache, 116.4 available of 119.7
    assert room_for_start(info, 0.90, version=V0101) == "drop-page-cache"
    assert room_for_start(info, 0.90, version=V0111) == "fits"  # 107.7 needed, 116.4 available
    assert room_for_start(info, 0.90) == room_for_start(info, 0.90, version=V0101)  # None: the runbook's
    for util in (0.50, 0.70, 0.90, 0.97):
        assert room_for_start(info, util, version=V0111) != "drop-page-cache"
    with pytest.raises(NotEnoughMemory) as short:
        room_for_start(info, 0.99, version=V0111)  # 118.5 needed, 116.4 available
    assert "only 116.3 of 119.7 GiB is available (MemAvailable); a start" in str(short.value)
    assert short.value.cause.numbers["free_gib"] == info.available_gib  # what 0.11.1's check would see
    assert short.value.cause.suggested == {"gpu_memory_utilization": 0.96}  # floor((116.35 - 1) / 119.7)


def test_shmem_is_left_out_of_what_a_drop_frees():
    info = parse_meminfo(WITH_SHMEM)
    assert info.shmem_gib == 10.0 and info.droppable_gib == pytest.approx(21.47, abs=0.01)
    assert parse_meminfo(SPARK_LIKE).shmem_gib == 0.0  # absent: 0
    # 84.88 free + 21.47 droppable = 106.35 < 107.7 at 0.90: no drop would make room (it would with Cached)
    with pytest.raises(NotEnoughMemory) as short:
        room_for_start(info, 0.90, version=V0101)
    assert "21.5 GiB droppable page cache, 10.0 GiB shared memory" in str(short.value)
    assert short.value.cause.suggested == {"gpu_memory_utilization": 0.88}  # floor((106.35 - 1) / 119.7)
    assert room_for_start(info, 0.88, version=V0101) == "drop-page-cache"
    assert not info.released_for(0.90) and parse_meminfo(SPARK_LIKE).released_for(0.90)


def test_released_means_what_the_versions_check_will_see():
    info = MemInfo(total_gib=119.7, free_gib=60.0, available_gib=100.0, cached_gib=45.0, shmem_gib=5.0)
    assert info.after_drop_gib(FreeMemory.MEM_FREE) == 100.0  # 60 + (45 - 5)
    assert info.check_reads_gib(FreeMemory.MEM_FREE) == 60.0
    assert info.check_reads_gib(FreeMemory.MEM_AVAILABLE) == info.after_drop_gib(FreeMemory.MEM_AVAILABLE) == 100.0
    assert info.released_for(0.83, FreeMemory.MEM_FREE) and info.released_for(0.83, FreeMemory.MEM_AVAILABLE)
    assert not info.released_for(0.84, FreeMemory.MEM_AVAILABLE)


def test_steady_compares_what_the_check_reads():
    before = MemInfo(total_gib=119.7, free_gib=60.0, available_gib=100.0, cached_gib=40.0)
    cache_moved = MemInfo(total_gib=119.7, free_gib=58.0, available_gib=100.2, cached_gib=42.2)
    assert steady(before, cache_moved, FreeMemory.MEM_AVAILABLE, 0.5)  # MemAvailable did not move
    assert not steady(before, cache_moved, FreeMemory.MEM_FREE, 0.5)  # MemFree did: 2 GiB
