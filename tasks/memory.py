"""Unified memory of the target, as the vLLM that runs there sees it: /proc/meminfo.

On GB10 vLLM's free-memory check reads the host's memory, and which number depends on the version
(tasks/vllm/versions.py `FREE_MEMORY`): up to 0.10.x ``torch.cuda.mem_get_info()``, which is
``MemFree``, so the Linux page cache counts as used (vllm issue 35313; measured on GB10 in unsloth
PR 10704) and only ``drop_caches`` returns it; from 0.11.1 on ``MemAvailable``, where reclaimable page
cache already counts as free and a drop only makes the next weight read cold. What a drop returns is
``Cached - Shmem``: ``Cached`` includes shared memory and tmpfs, which drop_caches cannot free.

One reader for every kind of target: the target's ``meminfo_command`` runs on its docker host (a
throwaway helper container, or ``docker exec`` in the running server) and its output is parsed as
/proc/meminfo. On a Spark that is ``cat /proc/meminfo`` (a container sees the host's); the
imitation's command renders its memory ledger at the moment it is read. The numbers are always
the docker host's, wherever the worker runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import APIError, ContainerError, ImageNotFound, NotFound
from docker.types import Mount
from packaging.version import Version
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.shared import HELPER_LABELS
from blocks.target import SPARK_MEMINFO_COMMAND, TargetMachine, split_volume_target
from tasks.container import docker_client
from tasks.errors import ServerDidNotStart, SparkVllmError
from tasks.recovery.kv_model import QWEN3_32B_FP8_WEIGHTS_GIB
from tasks.recovery.load_memory import load_peak_gib, loader_guard_cause, loader_transient_gib
from tasks.recovery.sizing import MARGIN_GIB, margin_for
from tasks.vllm.failures import FailureCause, free_memory_cause
from tasks.vllm.versions import FREE_MEMORY, FreeMemory, select

KIB_PER_GIB = 1024 * 1024
#: How long `wait_for_steady_memory` waits at most, between its two readings, and the change in what
#: the check reads below which memory counts as steady: vLLM's profiling run takes seconds (the
#: ``Memory profiling takes %.2f seconds`` of vllm/utils/__init__.py:2660 in 0.10.1.1), and a stopping
#: container or a finishing copy moves memory by GiBs in that time.
STEADY_TIMEOUT_S = 60.0
STEADY_INTERVAL_S = 3.0
STEADY_TOLERANCE_GIB = 0.5
#: What the runbook's vLLM (0.10.1.1) reads, for callers that do not say which vLLM runs.
_RUNBOOK_READS = select(FREE_MEMORY, None)


@dataclass(frozen=True)
class MemInfo:
    """/proc/meminfo's figures in GiB (``Shmem`` 0 when the file has none)."""

    total_gib: float
    free_gib: float
    available_gib: float
    cached_gib: float
    shmem_gib: float = 0.0

    @property
    def droppable_gib(self) -> float:
        """The page cache ``drop_caches`` returns: ``Cached`` without shared memory and tmpfs."""
        return max(0.0, round(self.cached_gib - self.shmem_gib, 2))

    def check_reads_gib(self, free_memory: FreeMemory) -> float:
        """What vLLM's free-memory check reads now: MemFree or MemAvailable (`FREE_MEMORY`)."""
        return self.available_gib if free_memory is FreeMemory.MEM_AVAILABLE else self.free_gib

    def after_drop_gib(self, free_memory: FreeMemory) -> float:
        """What the check would read after a drop: MemFree gains the droppable page cache;
        MemAvailable counts it already, so a drop does not raise it."""
        if free_memory is FreeMemory.MEM_AVAILABLE:
            return self.available_gib
        return round(self.free_gib + self.droppable_gib, 2)

    def released_for(self, utilization: float, free_memory: FreeMemory = _RUNBOOK_READS) -> bool:
        """What the check will see (after the drop a MemFree version needs) covers a start at
        ``utilization``: nothing but droppable page cache stands between us and a start."""
        return self.after_drop_gib(free_memory) >= utilization * self.total_gib


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
        shmem_gib=round(values.get("Shmem", 0.0), 2),
    )


class MemoryReadError(SparkVllmError):
    """The target's memory could not be read; the message says what ran and how to fix it."""


def helper_container_kwargs(machine: TargetMachine, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    """docker-py ``containers.run`` arguments of a throwaway helper on the target's docker host.

    Why a container and not a file read on the worker: the numbers must be the docker host's (a
    Spark, or the machine behind ``docker_base_url``), and a container sees the host's
    /proc/meminfo. It runs the server's own image (present after preflight), with no network, the
    image's entrypoint bypassed (the NVIDIA image prints a banner), the target's extra volumes and
    environment (the imitation's memory ledger and knobs), and our labels, so nothing of it is
    mistaken for someone else's.
    """
    volumes = {}
    for host, target in machine.extra_volumes.items():
        path, mode = split_volume_target(target)
        volumes[host] = {"bind": path, "mode": mode}
    return {
        "image": image,
        "command": list(command),
        "entrypoint": [],
        "remove": True,
        "network_mode": "none",
        "volumes": volumes,
        "environment": dict(machine.extra_env),
        "labels": dict(HELPER_LABELS),
        **extra,
    }


def exec_meminfo(client: docker.DockerClient, container_id: str, command: list[str]) -> MemInfo:
    """The docker host's memory, read by ``command`` inside the running container ``container_id``
    (``docker exec``, about 0.06 s: fast enough to poll once a second while a start runs).

    Raises:
        MemoryReadError: the container does not run, or the command failed or printed no meminfo.
    """
    try:
        code, output = client.containers.get(container_id).exec_run(list(command), stdout=True, stderr=False)
    except (APIError, NotFound) as exc:
        raise MemoryReadError(f"`{' '.join(command)}` could not run in container {container_id[:12]}: {exc}") from None
    if code != 0:
        raise MemoryReadError(f"`{' '.join(command)}` in container {container_id[:12]} exited {code}: {output[:300]!r}")
    return _parse(output, command)


def read_meminfo(client: docker.DockerClient, machine: TargetMachine, image: str) -> MemInfo:
    """The docker host's memory, by the target's ``meminfo_command`` in a throwaway helper container
    of ``image`` (about 0.2 s).

    Raises:
        MemoryReadError: the command failed or printed no meminfo; the message names the fix.
    """
    command = list(machine.meminfo_command)
    try:
        output = client.containers.run(**helper_container_kwargs(machine, image, command))
    except (APIError, ContainerError, ImageNotFound) as exc:
        raise MemoryReadError(
            f"reading the memory of target {machine.name!r} with `{' '.join(command)}` in {image} failed:"
            f" {getattr(exc, 'explanation', None) or exc}. Check the target's meminfo_command"
            f" (a Spark: {' '.join(SPARK_MEMINFO_COMMAND)})."
        ) from None
    return _parse(output, command)


def _parse(output: bytes, command: list[str]) -> MemInfo:
    try:
        return parse_meminfo(output.decode("utf-8", "replace"))
    except ValueError as exc:
        raise MemoryReadError(f"`{' '.join(command)}` printed no meminfo: {exc}") from None


@task(name="read-memory", cache_policy=NO_CACHE, task_run_name="read-memory {machine.name}")
def read_memory(machine: TargetMachine, image: str, unreadable_ok: bool = False) -> MemInfo | None:
    """The target's memory now (a throwaway helper container on its docker host).

    Args:
        machine: the target.
        image: the server image (the helper runs it).
        unreadable_ok: return None, with a warning, when the memory cannot be read (a report
            that says "unknown" is better than none); else raise MemoryReadError.
    """
    try:
        with docker_client(machine.docker_host()) as client:
            info = read_meminfo(client, machine, image)
    except MemoryReadError as exc:
        if not unreadable_ok:
            raise
        get_run_logger().warning("memory of %s unknown: %s", machine.name, exc)
        return None
    get_run_logger().info(
        "memory of %s: %.1f GiB free, %.1f GiB page cache (%.1f shmem), %.1f available of %.1f GiB",
        machine.name,
        info.free_gib,
        info.cached_gib,
        info.shmem_gib,
        info.available_gib,
        info.total_gib,
    )
    return info


@task(name="wait-for-release", cache_policy=NO_CACHE, task_run_name="wait-for-release {machine.name}")
def wait_for_release(
    machine: TargetMachine,
    image: str,
    utilization: float,
    timeout_s: float = 30.0,
    interval_s: float = 0.25,
    version: Version | None = None,
) -> tuple[bool, MemInfo]:
    """Poll until what ``version``'s free-memory check will see covers ``utilization`` (MemFree after
    a drop of the page cache up to 0.10.x, MemAvailable from 0.11.1 on), or the timeout.

    Returns:
        (released, the last reading).
    """
    free_memory = select(FREE_MEMORY, version)
    deadline = time.monotonic() + timeout_s
    with docker_client(machine.docker_host()) as client:
        while True:
            info = read_meminfo(client, machine, image)
            if info.released_for(utilization, free_memory) or time.monotonic() >= deadline:
                return info.released_for(utilization, free_memory), info
            time.sleep(interval_s)


def steady(before: MemInfo, after: MemInfo, free_memory: FreeMemory, tolerance_gib: float) -> bool:
    """Two readings a few seconds apart agree on what vLLM's check reads, within ``tolerance_gib``:
    nothing is releasing or taking memory, so a profiling run now measures what stays."""
    return abs(after.check_reads_gib(free_memory) - before.check_reads_gib(free_memory)) < tolerance_gib


@task(name="wait-for-steady-memory", cache_policy=NO_CACHE, task_run_name="wait-for-steady-memory {machine.name}")
def wait_for_steady_memory(
    machine: TargetMachine,
    image: str,
    version: Version | None = None,
    timeout_s: float = STEADY_TIMEOUT_S,
    interval_s: float = STEADY_INTERVAL_S,
    tolerance_gib: float = STEADY_TOLERANCE_GIB,
) -> tuple[bool, MemInfo]:
    """Poll the docker host's memory until two readings ``interval_s`` apart differ by less than
    ``tolerance_gib`` in what ``version``'s check reads, or the timeout.

    Why: vLLM asserts that free memory did not grow while it profiled (``Error in memory profiling``,
    vllm/v1/worker/gpu_worker.py:248-255 in 0.10.1.1): another process released memory during the
    start. A retry at once can meet the same release; one after memory settled measures what stays.

    Returns:
        (steady, the last reading); not steady after the timeout still returns (the retry decides).
    """
    free_memory = select(FREE_MEMORY, version)
    deadline = time.monotonic() + timeout_s
    with docker_client(machine.docker_host()) as client:
        before = read_meminfo(client, machine, image)
        while True:
            time.sleep(interval_s)
            after = read_meminfo(client, machine, image)
            settled = steady(before, after, free_memory, tolerance_gib)
            if settled or time.monotonic() >= deadline:
                break
            before = after
    get_run_logger().info(
        "memory of %s %s: %s %.1f GiB, then %.1f GiB %.0f s later",
        machine.name,
        "is steady" if settled else f"still moves after {timeout_s:.0f} s, retrying anyway",
        free_memory.value,
        before.check_reads_gib(free_memory),
        after.check_reads_gib(free_memory),
        interval_s,
    )
    return settled, after


def drop_caches_command() -> list[str]:
    """What runs in the helper container: flush dirty pages, then drop page cache, dentries, inodes."""
    return ["sh", "-c", "sync; echo 3 > /drop_caches"]


def drop_page_cache(client: docker.DockerClient, machine: TargetMachine, image: str) -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` on the docker host, with the least privilege.

    A privileged container is not needed (and is refused on some hosts): the one file is bind-
    mounted into a throwaway container with CAP_SYS_ADMIN (docs/imitations.md). The sim target points
    ``drop_caches_path`` at its memory ledger's file; a Spark at /proc/sys/vm/drop_caches.
    """
    # a Mount, not a -v volume: a missing source must fail, not become an empty directory
    kwargs = helper_container_kwargs(
        machine,
        image,
        drop_caches_command(),
        cap_add=["SYS_ADMIN"],
        mounts=[Mount(target="/drop_caches", source=machine.drop_caches_path, type="bind")],
    )
    kwargs["volumes"], kwargs["environment"] = {}, {}
    client.containers.run(**kwargs)


@task(name="drop-page-cache", cache_policy=NO_CACHE, task_run_name="drop-page-cache {machine.name}")
def drop_caches(machine: TargetMachine, image: str) -> None:
    """The fix of vllm issue 35313 (vLLM up to 0.10.x reads MemFree on GB10, so page cache blocks a
    start; unsloth PR 10704): drop the docker host's page cache (see drop_page_cache)."""
    with docker_client(machine.docker_host()) as client:
        drop_page_cache(client, machine, image)
    get_run_logger().info("page cache of %s dropped (sync; echo 3 > drop_caches)", machine.name)


class NotEnoughMemory(ServerDidNotStart):
    """Other processes hold memory a start at this utilization needs; says how much is missing.

    Carries the reading, the utilization and the classified cause vLLM's own check would give
    (`tasks.vllm.failures.free_memory_cause`), so recovery plans from them without a start.
    """

    def __init__(self, message: str, info: MemInfo, utilization: float, cause: FailureCause) -> None:
        super().__init__(message)
        self.info = info
        self.utilization = utilization
        self.cause = cause


def room_for_start(
    info: MemInfo,
    utilization: float,
    margin_gib: float = MARGIN_GIB,
    version: Version | None = None,
    loader: str = "mmap",
    floor_gib: float = 0.0,
    weights_gib: float = QWEN3_32B_FP8_WEIGHTS_GIB,
) -> str:
    """What a start at ``utilization`` needs done first: 'fits' or 'drop-page-cache'.

    vLLM refuses to start when what its free-memory check reads is below utilization x total
    (``vllm/v1/worker/gpu_worker.py:177`` in 0.10.1.1). Up to 0.10.x it reads MemFree on GB10, so the
    previous load's page cache counts as used (vllm issue 35313; unsloth PR 10704): without dropping
    it a redeploy at the runbook's 0.90 fails although nothing else runs. From 0.11.1 on it reads
    MemAvailable (tasks/vllm/versions.py `FREE_MEMORY`): the page cache does not count, and a drop
    would only make the next weight read cold, so the answer is never 'drop-page-cache'.

    Args:
        info: the target's memory now.
        utilization: the spec's gpu_memory_utilization.
        margin_gib: GiB the suggested utilization leaves free (`tasks.recovery.sizing.margin_for`).
        version: the vLLM that will start (None: the runbook's 0.10.1.1).
        loader: the weight loader the start uses (tasks/recovery/load_memory.py `LOADER_MEMORY`): one
            with a buffer of its own (eager, fastsafetensors) must not take MemAvailable under
            ``floor_gib`` while it loads; mmap has none, and the check is today's.
        floor_gib: the readiness gate's host-memory floor (0: no guard, no load check).
        weights_gib: the model's weights, in memory by the end of the load.

    Raises:
        NotEnoughMemory: other processes hold memory that dropping the page cache does not return
            (the message gives the utilization that would fit, tasks/recovery/sizing.py's rule), or
            the loader's buffer would take MemAvailable under the floor while loading (the message
            names the buffer and the loader without one).
    """
    free_memory = select(FREE_MEMORY, version)
    need = utilization * info.total_gib
    seen = info.check_reads_gib(free_memory)
    after_drop = info.after_drop_gib(free_memory)
    if seen >= need or after_drop >= need:
        _room_while_loading(info, utilization, loader, floor_gib, weights_gib)
        return "fits" if seen >= need else "drop-page-cache"
    cause = free_memory_cause(
        seen, info.total_gib, utilization, margin_gib, page_cache_gib=after_drop - seen, version=version
    )
    fits = cause.numbers["suggested_utilization"]
    cache = (
        f" ({info.droppable_gib:.1f} GiB droppable page cache, {info.shmem_gib:.1f} GiB shared memory)"
        if after_drop > seen
        else ""
    )
    raise NotEnoughMemory(
        f"only {seen:.1f} of {info.total_gib:.1f} GiB is {_reads(free_memory)}{cache}; a start at"
        f" gpu_memory_utilization {utilization:.2f} needs {need:.1f} GiB. Other processes hold the rest: stop them"
        " (`docker ps`; the runbook's `docker system prune -f`), or deploy with a lower utilization, e.g."
        f' overrides={{"gpu_memory_utilization": {fits:.2f}}}.',
        info,
        utilization,
        cause,
    )


def _room_while_loading(info: MemInfo, utilization: float, loader: str, floor_gib: float, weights_gib: float) -> None:
    """Raise when the loader's own buffer would take MemAvailable under the floor while the weights
    load (the guard would stop the start then): say so before the start. MemAvailable is what the
    guard reads; a drop does not raise it (it counts the page cache already)."""
    transient = loader_transient_gib(loader)
    if floor_gib <= 0 or transient <= 0:
        return
    left = round(info.available_gib - load_peak_gib(loader, weights_gib), 2)
    if left >= floor_gib:
        return
    cause = loader_guard_cause(loader, left, floor_gib, transient)
    raise NotEnoughMemory(
        f"the {loader} loader holds {transient:.1f} GiB besides the {weights_gib:.1f} GiB of weights while it loads:"
        f" MemAvailable {info.available_gib:.1f} GiB would fall to {left:.1f} GiB, under the host floor"
        f" {floor_gib:.1f} GiB, and the memory guard would stop the start. {cause.fix}",
        info,
        utilization,
        cause,
    )


def _reads(free_memory: FreeMemory) -> str:
    """How a message names what the check reads: 'free' (MemFree) or 'available (MemAvailable)'."""
    return "free" if free_memory is FreeMemory.MEM_FREE else "available (MemAvailable)"


@task(name="make-room-for-start", cache_policy=NO_CACHE, task_run_name="make-room-for-start {machine.name}")
def make_room_for_start(
    machine: TargetMachine,
    image: str,
    utilization: float,
    version: Version | None = None,
    loader: str = "mmap",
    weights_gib: float = QWEN3_32B_FP8_WEIGHTS_GIB,
) -> str:
    """Before a start: fits -> nothing; only page cache in the way (a MemFree version: 0.10.x, where
    the drop is needed) -> drop it; else fail now. A loader with a buffer of its own (eager,
    fastsafetensors) must also leave the host's floor while it loads (`room_for_start`).

    Args:
        machine: the target (its meminfo and drop_caches paths, its docker host, its floor).
        image: an image on the docker host to run the drop-caches helper from (the server's own).
        utilization: the spec's gpu_memory_utilization.
        version: the vLLM that will start (None: the runbook's 0.10.1.1): which memory its check reads.
        loader: the weight loader the start uses ("mmap", the default, is today's check).
        weights_gib: the model's weights (the KV model's, calibrated from a failed start's log).

    Returns:
        What was done: 'fits' or 'dropped-page-cache'.
    """
    logger = get_run_logger()
    free_memory = select(FREE_MEMORY, version)
    with docker_client(machine.docker_host()) as client:
        info = read_meminfo(client, machine, image)
        floor = machine.host_memory_floor_gib
        action = room_for_start(info, utilization, margin_for(floor), version, loader, floor, weights_gib)
        if action == "fits":
            logger.info(
                "memory: %.1f GiB %s (%s, what vLLM's check reads), a start at %.2f needs %.1f GiB; the %s loader"
                " holds %.1f GiB more while loading",
                info.check_reads_gib(free_memory),
                _reads(free_memory),
                free_memory.value,
                utilization,
                utilization * info.total_gib,
                loader,
                loader_transient_gib(loader),
            )
            return action
        logger.info(
            "memory: %.1f GiB free but %.1f GiB is droppable page cache (counted as used on GB10 by this vLLM):"
            " dropping caches",
            info.free_gib,
            info.droppable_gib,
        )
        drop_page_cache(client, machine, image)
    return "dropped-page-cache"
