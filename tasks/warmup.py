"""Warm the page cache before a start: read the staged shards once the previous server is gone, so
the next load reads them from memory instead of the disk.

Why: a Spark reads the weights through mmap at about 155 MB/s (the runbook's 32 GB in 3.4 min); a
file already in the page cache is read at memory speed. After an earlier server the weights are
often no longer cached: its KV cache took the memory and the kernel evicted them.

When (`warm_decision`, pure; then `warm_fits` on the memory read just before):
- only on a vLLM whose free-memory check reads MemAvailable (0.11.1+, tasks/vllm/versions.py
  `FREE_MEMORY`): there page cache is reclaimable and counts as free. Up to 0.10.x the check reads
  MemFree, so warmed page cache would count as used: the pre-start check would refuse the start, or
  `tasks.memory.make_room_for_start` would drop the cache again (the drop is needed there);
- only for a loader that reads through the page cache (tasks/recovery/load_memory.py
  `LOADER_MEMORY`): mmap and eager do; fastsafetensors reads with GDS past it, so it may not;
- only when the shards fit in MemFree above the host floor (``margin_for``): the read then takes
  free memory only and evicts nothing. Page cache is reclaimable, but MemAvailable counts it only
  down to the kernel's low watermark, and a read that must evict to fit, near the floor, competes
  with vLLM's own allocations while the readiness gate's guard watches MemAvailable: skipped then.

The read runs on the docker host, in a throwaway helper container of the server's image with the
model cache mounted read-only (as tasks/memory.py runs its helpers): the page cache is the host's.
"""

from __future__ import annotations

import time
from pathlib import Path

from docker import DockerClient
from docker.errors import APIError, ContainerError, ImageNotFound
from packaging.version import Version
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.engine import EngineSpec
from blocks.target import TargetMachine
from tasks.container import docker_client
from tasks.memory import MemInfo, MemoryReadError, helper_container_kwargs, read_meminfo
from tasks.recovery.load_memory import loader_memory
from tasks.recovery.sizing import margin_for
from tasks.staging.cache import RepoCache
from tasks.vllm.versions import FREE_MEMORY, RUNBOOK_VERSION, FreeMemory, select

__all__ = ["WarmResult", "snapshot_shards", "warm_command", "warm_decision", "warm_fits", "warm_page_cache"]

_GIB = 1024**3


class WarmResult(BaseModel):
    """What `warm_page_cache` did and why: for the deploy report."""

    warmed: bool
    why: str
    gib: float = 0.0
    seconds: float = 0.0
    shards: int = 0

    @property
    def summary(self) -> str:
        """One line for the report: "read 31.97 GiB (7 shards) in 12.3 s: ..." or "skipped: ..."."""
        if self.warmed:
            return f"read {self.gib:.2f} GiB ({self.shards} shards) in {self.seconds:.1f} s: {self.why}"
        return f"skipped: {self.why}"


def warm_decision(version: Version | None, loader: str) -> tuple[bool, str]:
    """Whether warming can help a start of ``loader`` on ``version`` (None: the runbook's 0.10.1.1),
    and why, before looking at the memory.

    Raises:
        ValueError: an unknown loader.
    """
    named = f"vLLM {(version or RUNBOOK_VERSION).base_version}"
    if select(FREE_MEMORY, version) is FreeMemory.MEM_FREE:
        return False, (
            f"{named} reads MemFree on GB10: warmed page cache would count as used, and the pre-start check"
            " would drop it again (vllm issue 35313)"
        )
    memory = loader_memory(loader)
    if not memory.reads_page_cache:
        return False, f"the {loader} loader does not read through the page cache for sure: {memory.held}"
    return True, f"{named} counts page cache as available (MemAvailable) and the {loader} loader reads through it"


def warm_fits(info: MemInfo, shards_gib: float, floor_gib: float) -> tuple[bool, str]:
    """Whether the shards fit in free memory with the floor's margin left (`margin_for`), and why."""
    margin = margin_for(floor_gib)
    left = round(info.free_gib - shards_gib, 2)
    if left >= margin:
        return True, f"{shards_gib:.1f} GiB of shards fit in {info.free_gib:.1f} GiB free ({left:.1f} GiB left)"
    return False, (
        f"{shards_gib:.1f} GiB of shards do not fit in {info.free_gib:.1f} GiB free with {margin:.1f} GiB left above"
        f" the host floor {floor_gib:.1f} GiB: the read would evict other page cache near the floor"
    )


def snapshot_shards(cache_dir: str, repo_id: str, revision: str | None) -> list[Path]:
    """The staged snapshot's safetensors files, resolved to their blobs under ``cache_dir`` (the
    worker runs on the docker host: preflight refuses another machine's daemon); [] when nothing is
    staged for the revision."""
    cache = RepoCache(Path(cache_dir), repo_id)
    commit = cache.read_ref(revision or "main")
    if commit is None:
        return []
    return [path.resolve() for path in sorted(cache.snapshot_dir(commit).glob("*.safetensors")) if path.exists()]


def warm_command(paths: list[Path]) -> list[str]:
    """What the helper runs: read every file once, output discarded (never through docker's log)."""
    return ["sh", "-c", 'cat -- "$@" > /dev/null', "warm", *[str(path) for path in paths]]


def _read_shards(client: DockerClient, machine: TargetMachine, image: str, shards: list[Path]) -> float:
    """Read ``shards`` in a throwaway helper of ``image`` on the docker host, the model cache mounted
    read-only at its own path (the shards are resolved paths under it); the seconds it took."""
    kwargs = helper_container_kwargs(machine, image, warm_command(shards))
    root = str(Path(machine.cache_dir).resolve())
    kwargs["volumes"], kwargs["environment"] = {root: {"bind": root, "mode": "ro"}}, {}
    started = time.monotonic()
    client.containers.run(**kwargs)
    return round(time.monotonic() - started, 2)


@task(name="warm-page-cache", cache_policy=NO_CACHE, task_run_name="warm-page-cache {machine.name}")
def warm_page_cache(machine: TargetMachine, spec: EngineSpec, version: Version | None, loader: str) -> WarmResult:
    """Read the model's staged shards on the docker host so the next load hits the page cache, when
    that helps (`warm_decision`) and the memory allows (`warm_fits`). Call it once the previous server
    is gone, just before the start.

    Args:
        machine: the target (its docker host, cache_dir, floor and meminfo command).
        spec: the spec about to start (its image runs the helper; its model and revision name the shards).
        version: the vLLM the image runs (None: the runbook's 0.10.1.1, never warmed).
        loader: the loader the start uses (tasks/loader.py's choice): "mmap", "eager" or "fastsafetensors".

    Returns:
        What was done and why, for the deploy report.
    """
    logger = get_run_logger()
    helps, why = warm_decision(version, loader)
    shards = snapshot_shards(machine.cache_dir, spec.model, spec.revision) if helps else []
    if helps and not shards:
        helps, why = False, f"no staged snapshot of {spec.model}@{spec.revision or 'main'} under {machine.cache_dir}"
    if not helps:
        logger.info("page cache of %s not warmed: %s", machine.name, why)
        return WarmResult(warmed=False, why=why)
    gib = round(sum(path.stat().st_size for path in shards) / _GIB, 2)
    try:
        with docker_client(machine.docker_host()) as client:
            fits, room = warm_fits(read_meminfo(client, machine, spec.image), gib, machine.host_memory_floor_gib)
            seconds = _read_shards(client, machine, spec.image, shards) if fits else 0.0
    except (APIError, ContainerError, ImageNotFound, MemoryReadError) as exc:  # a warm is no reason to fail a deploy
        why = f"the helper failed ({getattr(exc, 'explanation', None) or exc}): the load reads from the disk"
        logger.warning("page cache of %s not warmed: %s", machine.name, why)
        return WarmResult(warmed=False, why=why)
    if not fits:
        logger.info("page cache of %s not warmed: %s", machine.name, room)
        return WarmResult(warmed=False, why=room)
    logger.info(
        "page cache of %s warmed: read %.2f GiB (%d shards of %s) in %.1f s; %s",
        machine.name,
        gib,
        len(shards),
        spec.model,
        seconds,
        why,
    )
    return WarmResult(warmed=True, why=f"{why}; {room}", gib=gib, seconds=seconds, shards=len(shards))
