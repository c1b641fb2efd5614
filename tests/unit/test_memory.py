"""tasks/memory.py: meminfo as vLLM 0.10.1.1 on GB10 sees it, from /proc/meminfo or the imitation's ledger."""

import pytest

from sim.vllm.vllm_sim.ledger import Ledger
from sim.vllm.vllm_sim.machine import meminfo_text as imitation_meminfo
from tasks.memory import NotEnoughMemory, drop_caches_command, parse_meminfo, room_for_start
from tasks.vllm.failures import FailureKind

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
