"""Unified memory of the target, as vLLM 0.10.1.1 sees it: /proc/meminfo, page cache included.

On GB10, CUDA's "free" memory is the host's free memory, and the Linux page cache counts as used
(vllm issue 48140). So "is the memory free again?" is read from meminfo: ``MemFree`` is what the
next vLLM start can have, ``MemAvailable - MemFree`` is mostly page cache that only
``drop_caches`` returns. The imitation keeps a file of the same format in its ledger directory;
a Spark target reads /proc/meminfo: same code, another path.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.types import Mount
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.target import TargetMachine
from tasks.container import docker_client

KIB_PER_GIB = 1024 * 1024


@dataclass(frozen=True)
class MemInfo:
    total_gib: float
    free_gib: float
    available_gib: float
    cached_gib: float

    def can_start(self, utilization: float) -> bool:
        """vLLM 0.10.1.1 refuses to start when free < utilization x total."""
        return self.free_gib >= utilization * self.total_gib

    def released_for(self, utilization: float) -> bool:
        """Nothing but page cache (which drop_caches returns) stands between us and a start."""
        return self.available_gib >= utilization * self.total_gib


def parse_meminfo(text: str) -> MemInfo:
    """Numbers of /proc/meminfo (kB) as GiB."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            try:
                values[key.strip()] = float(parts[0]) / KIB_PER_GIB
            except ValueError:
                continue
    missing = {"MemTotal", "MemFree"} - values.keys()
    if missing:
        raise ValueError(f"meminfo lacks {', '.join(sorted(missing))}: is this a /proc/meminfo file?")
    return MemInfo(
        total_gib=round(values["MemTotal"], 2),
        free_gib=round(values["MemFree"], 2),
        available_gib=round(values.get("MemAvailable", values["MemFree"]), 2),
        cached_gib=round(values.get("Cached", 0.0), 2),
    )


def suggest_utilization(free_gib: float, total_gib: float, margin: float = 0.02) -> float:
    """The largest `--gpu-memory-utilization` that fits what is free: free/total minus `margin`,
    rounded down to a multiple of 0.05 (never below 0). 85.92/121.69 GiB -> 0.65."""
    if total_gib <= 0:
        raise ValueError(f"total_gib must be positive (got {total_gib})")
    fraction = free_gib / total_gib - margin
    steps = math.floor(fraction * 20 + 1e-9)
    return max(0.0, round(steps / 20, 2))


def read_meminfo(path: str | Path) -> MemInfo:
    return parse_meminfo(Path(path).read_text())


def try_read_meminfo(path: str | Path) -> MemInfo | None:
    """None when the file is absent (an imitation ledger before its first server)."""
    try:
        return read_meminfo(path)
    except FileNotFoundError:
        return None


def wait_for_release(
    path: str | Path, utilization: float, timeout_s: float = 30.0, interval_s: float = 0.25
) -> tuple[bool | None, MemInfo | None]:
    """Poll until only page cache would stand in a start's way, or the timeout.

    Returns (released, last reading); (None, None) when the target has no meminfo to read.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        info = try_read_meminfo(path)
        if info is None:
            return None, None
        if info.released_for(utilization) or time.monotonic() >= deadline:
            return info.released_for(utilization), info
        time.sleep(interval_s)


def drop_caches_command() -> list[str]:
    """What runs in the helper container: flush dirty pages, then drop page cache, dentries, inodes."""
    return ["sh", "-c", "sync; echo 3 > /drop_caches"]


def drop_page_cache(client: docker.DockerClient, image: str, drop_caches_path: str) -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` on the docker host, with the least privilege.

    A privileged container is not needed (and is refused on some hosts): the one file is bind-
    mounted into a throwaway container with CAP_SYS_ADMIN (docs/imitations.md). The sim target points
    ``drop_caches_path`` at its memory ledger's file; a Spark at /proc/sys/vm/drop_caches.
    """
    # a Mount, not a -v volume: a missing source must fail, not become an empty directory
    client.containers.run(
        image, drop_caches_command(), remove=True, cap_add=["SYS_ADMIN"],
        mounts=[Mount(target="/drop_caches", source=drop_caches_path, type="bind")],
        entrypoint=[], network_mode="none",
    )


class NotEnoughMemory(RuntimeError):
    """Other processes hold memory a start at this utilization needs; says how much is missing."""


def room_for_start(info: MemInfo | None, utilization: float) -> str:
    """What a start at ``utilization`` needs done first: 'fits', 'drop-page-cache', or 'unknown'
    (no meminfo to read).

    vLLM 0.10.1.1 refuses to start when free memory is below utilization x total, and on unified
    memory the previous load's page cache counts as used (vllm issue 48140): without dropping it a
    redeploy at the runbook's 0.90 fails although nothing else runs.

    Raises:
        NotEnoughMemory: other processes hold memory that dropping the page cache does not return;
            the message gives the utilization that would fit.
    """
    if info is None:
        return "unknown"
    need = utilization * info.total_gib
    if info.free_gib >= need:
        return "fits"
    if info.free_gib + info.cached_gib >= need:
        return "drop-page-cache"
    raise NotEnoughMemory(
        f"only {info.free_gib:.1f} of {info.total_gib:.1f} GiB is free ({info.cached_gib:.1f} GiB page cache);"
        f" a start at gpu_memory_utilization {utilization:.2f} needs {need:.1f} GiB. Other processes hold the"
        " rest: stop them (`docker ps`; the runbook's `docker system prune -f`), or deploy with a lower"
        " utilization, e.g. overrides={\"gpu_memory_utilization\": "
        f"{suggest_utilization(info.free_gib + info.cached_gib, info.total_gib):.2f}}}."
    )


@task(name="make-room-for-start", cache_policy=NO_CACHE, task_run_name="make-room-for-start {machine.name}")
def make_room_for_start(machine: TargetMachine, image: str, utilization: float) -> str:
    """Before a start: fits -> nothing; only page cache in the way -> drop it; else fail now.

    Args:
        machine: the target (its meminfo and drop_caches paths, its docker host).
        image: an image on the docker host to run the drop-caches helper from (the server's own).
        utilization: the spec's gpu_memory_utilization.

    Returns:
        What was done: 'fits', 'dropped-page-cache' or 'unknown'.
    """
    logger = get_run_logger()
    info = try_read_meminfo(machine.meminfo_path)
    action = room_for_start(info, utilization)
    if action == "unknown":
        logger.info("no meminfo at %s yet: memory check skipped", machine.meminfo_path)
        return action
    if action == "fits":
        logger.info("memory: %.1f GiB free, a start at %.2f needs %.1f GiB", info.free_gib, utilization, utilization * info.total_gib)
        return action
    logger.info("memory: %.1f GiB free but %.1f GiB is page cache (counted as used on GB10): dropping caches",
                info.free_gib, info.cached_gib)
    with docker_client(machine.docker_host()) as client:
        drop_page_cache(client, image, machine.drop_caches_path)
    return "dropped-page-cache"
