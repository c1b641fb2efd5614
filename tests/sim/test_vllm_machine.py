"""The imitated machine: `python3 -m vllm_sim meminfo` (the ledger as /proc/meminfo, computed when
read), `python3 -m vllm_sim hold` (another process holding memory), the profiling-overshoot fault,
and the servers' free-memory error agreeing with meminfo.  Host processes, plus one docker test of
both commands in the image as the product runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from vllm_fixtures import REPO_ROOT, hf_cache, ledger_dir, start_sim  # noqa: F401

from sim.vllm.vllm_sim.knobs import Knobs
from sim.vllm.vllm_sim.ledger import Ledger, MemoryView
from sim.vllm.vllm_sim.testing import FakeCache
from tasks.memory import MemInfo, parse_meminfo  # the product's parser

TOTAL, BASELINE, SHMEM = 119.7, 3.0, 0.5
EMPTY_FREE = TOTAL - BASELINE  # 116.7
BUDGET = round(TOTAL * 0.90, 2)  # the runbook's 0.90: 107.73
WEIGHTS_GIB = 34_322_434_048 / 1024**3  # the index's total_size: 31.97 GiB
FREE_ERROR = re.compile(r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup is less than desired")


def machine_env(ledger: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update({"VLLM_SIM_LEDGER_DIR": str(ledger), "PYTHONUNBUFFERED": "1", **extra})
    return env


def meminfo_run(ledger: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sim.vllm.vllm_sim", "meminfo"],
        cwd=REPO_ROOT,
        env=machine_env(ledger, **extra),
        capture_output=True,
        text=True,
        timeout=30,
    )


def meminfo(ledger: Path, **extra: str) -> MemInfo:
    proc = meminfo_run(ledger, **extra)
    assert proc.returncode == 0, proc.stderr
    return parse_meminfo(proc.stdout)


class Holder:
    """`python -m sim.vllm.vllm_sim hold --gib N --name NAME` on the host."""

    def __init__(self, ledger: Path, gib: float, name: str, **extra: str) -> None:
        self.path = ledger / "held" / f"{name}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sim.vllm.vllm_sim", "hold", "--gib", str(gib), "--name", name],
            cwd=REPO_ROOT,
            env=machine_env(ledger, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # printed once the entry is published
        assert first.startswith(f"holding {gib:g} GiB as {name}"), first

    def entry(self) -> dict:
        return json.loads(self.path.read_text())

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


# --- meminfo ------------------------------------------------------------------


def test_meminfo_is_the_ledger_rendered_when_read(ledger_dir: Path, tmp_path: Path) -> None:
    empty = meminfo(ledger_dir)
    assert (empty.total_gib, empty.free_gib, empty.available_gib, empty.cached_gib) == (
        TOTAL,
        EMPTY_FREE,
        EMPTY_FREE,
        SHMEM,  # shmem: inside the baseline's used memory, shown in Cached
    )
    # the servers' knobs, and exactly Ledger.meminfo_text's lines
    knobs = {"VLLM_SIM_DEVICE_TOTAL_GIB": "121.69", "VLLM_SIM_SYSTEM_BASELINE_GIB": "2.5"}
    Ledger(ledger_dir, "other").publish(10.25, "held", "x")
    out = meminfo_run(ledger_dir, **knobs).stdout
    assert out == Ledger(ledger_dir, "", total_gib=121.69, baseline_gib=2.5, shmem_gib=SHMEM).meminfo_text()
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "MemTotal",
        "MemFree",
        "MemAvailable",
        "Cached",
        "Shmem",
    ]
    assert parse_meminfo(out).free_gib == round(121.69 - 2.5 - 10.25, 2)
    assert sorted(p.name for p in ledger_dir.iterdir()) == ["held"]  # a reader writes nothing (no meminfo file)
    # no ledger directory: an empty machine, as a server without the mount sees it; nothing created
    absent = tmp_path / "absent"
    proc = meminfo_run(absent)
    assert proc.returncode == 0 and parse_meminfo(proc.stdout).free_gib == EMPTY_FREE
    assert "does not exist" in proc.stderr and not absent.exists()


def test_holder_counts_while_alive_and_releases_on_sigterm(ledger_dir: Path) -> None:
    holder = Holder(ledger_dir, 30.5, "other-job")
    try:
        assert meminfo(ledger_dir).free_gib == round(EMPTY_FREE - 30.5, 2)
        first = holder.entry()["heartbeat"]
        time.sleep(1.3)
        assert holder.entry()["heartbeat"] > first  # a live heartbeat, about every second
        assert meminfo(ledger_dir).available_gib == round(EMPTY_FREE - 30.5, 2)
    finally:
        assert holder.stop() == 0
    assert not holder.path.exists()
    assert meminfo(ledger_dir).free_gib == EMPTY_FREE


def test_a_killed_holder_stops_counting_once_its_heartbeat_is_stale(ledger_dir: Path) -> None:
    holder = Holder(ledger_dir, 20, "killed-job")
    holder.stop(signal.SIGKILL)  # no release: the entry stays, as after a docker kill
    beat = holder.entry()["heartbeat"]
    assert meminfo(ledger_dir, VLLM_SIM_HEARTBEAT_STALE_S="2").free_gib == round(EMPTY_FREE - 20, 2)
    time.sleep(max(0.0, beat + 2.2 - time.time()))
    assert holder.path.exists()
    assert meminfo(ledger_dir, VLLM_SIM_HEARTBEAT_STALE_S="2").free_gib == EMPTY_FREE


def test_holder_refuses_a_missing_ledger_and_bad_sizes(tmp_path: Path) -> None:
    def hold(ledger: Path, gib: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "sim.vllm.vllm_sim", "hold", "--gib", gib],
            cwd=REPO_ROOT,
            env=machine_env(ledger),
            capture_output=True,
            text=True,
            timeout=30,
        )

    missing = hold(tmp_path / "absent", "1")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert hold(tmp_path, "-1").returncode == 2


def test_vllm_command_has_no_meminfo_subcommand() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sim.vllm", "meminfo"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "invalid choice: 'meminfo'" in proc.stderr


# --- the servers see what meminfo shows ----------------------------------------


def test_free_memory_error_agrees_with_meminfo_for_a_holder(hf_cache: FakeCache, ledger_dir: Path) -> None:
    holder = Holder(ledger_dir, 30, "not-ours")
    try:
        seen = meminfo(ledger_dir)
        server = start_sim(hf_cache, ledger_dir)
        assert server.wait_exit(20) == 1
    finally:
        holder.stop()
    free, total = map(float, FREE_ERROR.search(server.output).groups())
    assert (free, total) == (seen.free_gib, seen.total_gib) == (86.7, TOTAL)
    assert "utilization (0.9, 107.73 GiB)" in server.output


def test_page_cache_and_drop_caches_show_at_once_without_a_server(hf_cache: FakeCache, ledger_dir: Path) -> None:
    first = start_sim(hf_cache, ledger_dir)
    first.wait_ready()
    assert first.stop() == 0
    after_load = meminfo(ledger_dir)  # no server runs: computed now, not left behind by one
    assert after_load.cached_gib == round(WEIGHTS_GIB + SHMEM, 2)
    assert after_load.free_gib == round(EMPTY_FREE - WEIGHTS_GIB, 2) == 84.73
    second = start_sim(hf_cache, ledger_dir)
    assert second.wait_exit(20) == 1
    assert tuple(map(float, FREE_ERROR.search(second.output).groups())) == (after_load.free_gib, TOTAL)
    (ledger_dir / "drop_caches").write_text("3\n")  # what `sync; echo 3 > /proc/sys/vm/drop_caches` is here
    dropped = meminfo(ledger_dir)
    assert (dropped.free_gib, dropped.cached_gib) == (EMPTY_FREE, SHMEM)  # drop_caches cannot free shmem
    assert not (ledger_dir / "meminfo").exists()


def test_memory_under_pressure_reclaims_the_page_cache_shown() -> None:
    """A server at 0.90 next to its own weights' page cache: MemAvailable is what is left, not the cache."""
    view = MemoryView(TOTAL, BASELINE, held_gib=108.36, page_cache_gib=31.97)
    assert view.free_gib == 0.0 and view.cached_gib == pytest.approx(8.34) == view.available_gib
    assert MemoryView(TOTAL, BASELINE, 120.0, 31.97).available_gib == 0.0
    assert MemoryView(TOTAL, BASELINE, 30.0, 31.97).cached_gib == 31.97
    info = parse_meminfo(view.meminfo_text())
    assert (info.free_gib, info.available_gib, info.cached_gib) == (0.0, 8.34, 8.34)


# --- the profiling overshoot ---------------------------------------------------


def _tags(output: str) -> list[str]:
    """The source locations of the log lines, in order (what was logged, without the numbers)."""
    return re.findall(r"\[([\w.]+:\d+)\]", output)


def test_profile_overshoot_pushes_available_memory_down_then_starts(
    hf_cache: FakeCache, ledger_dir: Path, tmp_path: Path
) -> None:
    extra = 6.0
    server = start_sim(
        hf_cache,
        ledger_dir,
        env_extra={"VLLM_SIM_FAULT_PROFILE_OVERSHOOT_GIB": str(extra), "VLLM_SIM_FAULT_PROFILE_OVERSHOOT_S": "2"},
    )
    during: list[tuple] = []  # (monotonic time, MemAvailable) of readings taken inside the profiling phase
    try:
        while server.proc.poll() is None and "Application startup complete." not in server.output:
            before = server.output
            info = meminfo(ledger_dir)
            after = server.output
            if "Model loading took" in before and "Available KV cache memory" not in after:
                during.append((time.monotonic(), info.available_gib, info.free_gib))
        server.wait_ready()
        ready = meminfo(ledger_dir)
    finally:
        assert server.stop() == 0
    ceiling = TOTAL - BUDGET - extra + 0.05
    assert during and max(avail for _, avail, _ in during) < ceiling, during
    assert all(free == 0.0 for _, _, free in during)
    assert during[-1][0] - during[0][0] > 1.5  # the phase lasts VLLM_SIM_FAULT_PROFILE_OVERSHOOT_S
    assert ready.available_gib > ceiling  # back to the budget once profiled: 119.7 - 3 - 108.36
    # nothing unusual in the log: the same lines and KV cache as a start without the fault
    normal_ledger = tmp_path / "normal-ledger"
    normal_ledger.mkdir()
    normal = start_sim(hf_cache, normal_ledger)
    normal.wait_ready()
    assert normal.stop() == 0
    assert _tags(server.output) == _tags(normal.output)
    kv = re.compile(r"GPU KV cache size: [\d,]+ tokens")
    assert kv.findall(server.output) == kv.findall(normal.output) == ["GPU KV cache size: 271,360 tokens"]


def test_profile_overshoot_knobs() -> None:
    assert Knobs.from_env({}).fault_profile_overshoot_gib is None
    knobs = Knobs.from_env({"VLLM_SIM_FAULT_PROFILE_OVERSHOOT_GIB": "2.5"})
    assert (knobs.fault_profile_overshoot_gib, knobs.fault_profile_overshoot_s) == (2.5, 5.0)


# --- in docker, as the product runs them ----------------------------------------


@pytest.mark.integration
def test_meminfo_and_hold_in_the_image(tmp_path: Path) -> None:
    import docker
    from docker.errors import ContainerError

    from sim.image import ensure_sim_image

    client = docker.from_env()
    image = ensure_sim_image(client)
    ledger = tmp_path / "ledger"
    (ledger / "held").mkdir(parents=True)
    mine = {"org.spark-vllm.test": str(os.getpid()), "org.spark-vllm.test-case": uuid.uuid4().hex}
    common = {
        "volumes": {str(ledger): {"bind": "/var/lib/vllm-sim", "mode": "rw"}},
        "labels": mine,
        "entrypoint": [],
        "network_mode": "none",
        "environment": {"VLLM_SIM_TIME_SCALE": "0.01"},
    }
    meminfo_cmd = ["python3", "-m", "vllm_sim", "meminfo"]
    try:
        holder = client.containers.run(
            image, ["python3", "-m", "vllm_sim", "hold", "--gib", "30", "--name", "other-job"], detach=True, **common
        )
        deadline = time.monotonic() + 30
        while b"holding 30 GiB" not in holder.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        helper = parse_meminfo(client.containers.run(image, meminfo_cmd, remove=True, **common).decode())
        code, out = holder.exec_run(meminfo_cmd, stdout=True, stderr=False)
        assert code == 0
        assert helper.free_gib == parse_meminfo(out.decode()).free_gib == round(EMPTY_FREE - 30, 2)
        holder.stop(timeout=10)
        assert holder.wait(timeout=10)["StatusCode"] == 0
        assert b"released 30 GiB" in holder.logs()
        assert not list((ledger / "held").glob("*.json"))
        assert (
            parse_meminfo(client.containers.run(image, meminfo_cmd, remove=True, **common).decode()).free_gib
            == EMPTY_FREE
        )
        with pytest.raises(ContainerError) as rejected:  # the image's `vllm` stays vLLM's CLI
            client.containers.run(image, ["vllm", "meminfo"], remove=True, **common)
        assert rejected.value.exit_status == 2
    finally:  # this test's containers only (the helpers remove themselves unless interrupted)
        for mine_left in client.containers.list(
            all=True, filters={"label": f"org.spark-vllm.test-case={mine['org.spark-vllm.test-case']}"}
        ):
            mine_left.remove(force=True)
        client.close()
