"""Unified memory of the target, as vLLM 0.10.1.1 sees it: /proc/meminfo, page cache included.

On GB10, CUDA's "free" memory is the host's free memory, and the Linux page cache counts as used
(vllm issue 48140). So "is the memory free again?" is read from meminfo: ``MemFree`` is what the
next vLLM start can have, ``MemAvailable - MemFree`` is mostly page cache that only
``drop_caches`` returns.

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
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.shared import HELPER_LABELS
from blocks.target import SPARK_MEMINFO_COMMAND, TargetMachine, split_volume_target
from tasks.container import docker_client
from tasks.errors import ServerDidNotStart, SparkVllmError
from tasks.recovery.sizing import MARGIN_GIB, margin_for
from tasks.vllm.failures import FailureCause, free_memory_cause

KIB_PER_GIB = 1024 * 1024


@dataclass(frozen=True)
class MemInfo:
    total_gib: float
    free_gib: float
    available_gib: float
    cached_gib: float

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
        "memory of %s: %.1f GiB free, %.1f GiB page cache, %.1f available of %.1f GiB",
        machine.name,
        info.free_gib,
        info.cached_gib,
        info.available_gib,
        info.total_gib,
    )
    return info


@task(name="wait-for-release", cache_policy=NO_CACHE, task_run_name="wait-for-release {machine.name}")
def wait_for_release(
    machine: TargetMachine, image: str, utilization: float, timeout_s: float = 30.0, interval_s: float = 0.25
) -> tuple[bool, MemInfo]:
    """Poll until only page cache would stand in a start's way, or the timeout.

    Returns:
        (released, the last reading).
    """
    deadline = time.monotonic() + timeout_s
    with docker_client(machine.docker_host()) as client:
        while True:
            info = read_meminfo(client, machine, image)
            if info.released_for(utilization) or time.monotonic() >= deadline:
                return info.released_for(utilization), info
            time.sleep(interval_s)


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
    """The runbook-free fix of vllm issue 48140: drop the docker host's page cache (see drop_page_cache)."""
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


def room_for_start(info: MemInfo, utilization: float, margin_gib: float = MARGIN_GIB) -> str:
    """What a start at ``utilization`` needs done first: 'fits' or 'drop-page-cache'.

    vLLM 0.10.1.1 refuses to start when free memory is below utilization x total, and on unified
    memory the previous load's page cache counts as used (vllm issue 48140): without dropping it a
    redeploy at the runbook's 0.90 fails although nothing else runs.

    Args:
        info: the target's memory now.
        utilization: the spec's gpu_memory_utilization.
        margin_gib: GiB the suggested utilization leaves free (`tasks.recovery.sizing.margin_for`).

    Raises:
        NotEnoughMemory: other processes hold memory that dropping the page cache does not return;
            the message gives the utilization that would fit (tasks/recovery/sizing.py's rule).
    """
    need = utilization * info.total_gib
    if info.free_gib >= need:
        return "fits"
    reclaimable = info.free_gib + info.cached_gib
    if reclaimable >= need:
        return "drop-page-cache"
    cause = free_memory_cause(info.free_gib, info.total_gib, utilization, margin_gib, page_cache_gib=info.cached_gib)
    fits = cause.numbers["suggested_utilization"]
    raise NotEnoughMemory(
        f"only {info.free_gib:.1f} of {info.total_gib:.1f} GiB is free ({info.cached_gib:.1f} GiB page cache);"
        f" a start at gpu_memory_utilization {utilization:.2f} needs {need:.1f} GiB. Other processes hold the"
        " rest: stop them (`docker ps`; the runbook's `docker system prune -f`), or deploy with a lower"
        f' utilization, e.g. overrides={{"gpu_memory_utilization": {fits:.2f}}}.',
        info,
        utilization,
        cause,
    )


@task(name="make-room-for-start", cache_policy=NO_CACHE, task_run_name="make-room-for-start {machine.name}")
def make_room_for_start(machine: TargetMachine, image: str, utilization: float) -> str:
    """Before a start: fits -> nothing; only page cache in the way -> drop it; else fail now.

    Args:
        machine: the target (its meminfo and drop_caches paths, its docker host).
        image: an image on the docker host to run the drop-caches helper from (the server's own).
        utilization: the spec's gpu_memory_utilization.

    Returns:
        What was done: 'fits' or 'dropped-page-cache'.
    """
    logger = get_run_logger()
    with docker_client(machine.docker_host()) as client:
        info = read_meminfo(client, machine, image)
        action = room_for_start(info, utilization, margin_for(machine.host_memory_floor_gib))
        if action == "fits":
            logger.info(
                "memory: %.1f GiB free, a start at %.2f needs %.1f GiB",
                info.free_gib,
                utilization,
                utilization * info.total_gib,
            )
            return action
        logger.info(
            "memory: %.1f GiB free but %.1f GiB is page cache (counted as used on GB10): dropping caches",
            info.free_gib,
            info.cached_gib,
        )
        drop_page_cache(client, machine, image)
    return "dropped-page-cache"
