"""The compile and kernel caches a server keeps across containers: create, measure, bound, clear.

With ``persistent_caches`` (blocks/engine.py) every server mounts the subdirectories of the target's
``vllm_cache_dir`` that `blocks.render.CACHE_MOUNTS` lists (vLLM's compile cache, Triton's and
FlashInfer's kernels). vLLM keys each compile-cache entry by its config (a hash of the config, the code
and the compiler: vllm/compilation/backends.py:500-530 in 0.10.1.1), so a restart of the same spec
loads its compiled graphs instead of compiling again, and two targets (or specs, or vLLM versions)
that share the directory each find their own entries.

Every operation runs in a throwaway helper container of the server image on the target's docker
host, with ``vllm_cache_dir`` mounted at `HELPER_MOUNT`, as the memory reader and the drop-caches
helper do (tasks/memory.py `helper_container_kwargs`). Why not plain file operations on the worker:
the entries are written by the server's root user, so only root may remove them, and the directory
belongs to the docker host (docker creates a missing bind source there, root-owned, mode 0755, which
the server, as root, can write). Nothing here ever runs on a stop or a prune: those touch containers
only (flows/stop.py, tasks/prune.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from blocks.render import CACHE_MOUNTS
from blocks.target import TargetMachine
from tasks.container import docker_client
from tasks.errors import SparkVllmError
from tasks.memory import helper_container_kwargs
from tasks.vllm.versions import Variant, variants_for

__all__ = [
    "ENTRY_ROOTS",
    "HELPER_MOUNT",
    "CacheEntry",
    "CacheError",
    "CacheListing",
    "CacheReport",
    "bound_caches",
    "clear_caches",
    "evict_cache_entries",
    "list_caches",
    "pick_evictions",
]

_GIB = 1024**3
#: Where the helper container sees the target's ``vllm_cache_dir``.
HELPER_MOUNT = "/caches"

#: The directories (relative to ``vllm_cache_dir``) whose children are one cache entry each, removed
#: whole by the bound: one config's compiled graphs for vLLM, one kernel for Triton, one version's JIT
#: kernels for FlashInfer. Every version's layout, since versions may share the directory.
ENTRY_ROOTS: tuple[Variant[str], ...] = (
    Variant(
        "",
        "vllm/torch_compile_cache",
        "VLLM_CACHE_ROOT/torch_compile_cache/<hash>: vllm/compilation/backends.py:527-530 (0.10.1.1), :517-521"
        " (0.10.2), :608-612 (0.11.1), :896-898 (0.17.1), :1042-1044 (0.20.1), :1063-1065 (0.31.0)",
    ),
    Variant(
        ">=0.11.1,<0.17.1",
        "vllm/torch_aot_compile",
        "VLLM_CACHE_ROOT/torch_aot_compile/<hash>: vllm/compilation/decorators.py:362-366 (0.11.1)",
    ),
    Variant(
        ">=0.17.1",
        "vllm/torch_compile_cache/torch_aot_compile",
        "VLLM_CACHE_ROOT/torch_compile_cache/torch_aot_compile/<hash>: vllm/compilation/decorators.py:425-430"
        " (0.17.1), :503-508 (0.20.1), :543-548 (0.31.0)",
    ),
    Variant("", "triton", "Triton's file cache: one directory per kernel key under its cache dir"),
    Variant("", "flashinfer", "FlashInfer's JIT cache: one directory per FlashInfer version"),
)

#: The helper's program (python3: in the NVIDIA image and the imitation alike). ``list`` creates the
#: cache subdirectories and prints the total and every entry (size, newest mtime inside) as JSON;
#: ``remove`` deletes entries; ``clear`` empties every cache subdirectory (they stay, empty).
_HELPER = """
import json, os, shutil, sys
ROOT = "/caches"
mode, args = sys.argv[1], json.loads(sys.argv[2])

def usage(path):
    total, newest = 0, os.lstat(path).st_mtime
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            total += st.st_size if name in files else 0
            newest = max(newest, st.st_mtime)
    return total, newest

def inside(rel):
    path = os.path.normpath(os.path.join(ROOT, rel))
    if not path.startswith(ROOT + "/"):
        raise SystemExit("refusing a path outside the caches: " + rel)
    return path

if mode == "list":
    for sub in args["subdirs"]:
        os.makedirs(inside(sub), mode=0o755, exist_ok=True)
    roots, entries = set(args["roots"]), []
    for root in args["roots"]:
        base = inside(root)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            rel = root + "/" + name
            if rel not in roots and os.path.isdir(os.path.join(base, name)):
                entries.append([rel, *usage(os.path.join(base, name))])
    print(json.dumps({"total": usage(ROOT)[0], "entries": entries}))
elif mode == "remove":
    for rel in args["paths"]:
        shutil.rmtree(inside(rel), ignore_errors=True)
elif mode == "clear":
    for sub in args["subdirs"]:
        base = inside(sub)
        for name in os.listdir(base) if os.path.isdir(base) else []:
            path = os.path.join(base, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
"""


class CacheError(SparkVllmError):
    """The helper container could not create, read or change the caches; says what to check."""


@dataclass(frozen=True)
class CacheEntry:
    """One config's (or kernel's) cache: its path under ``vllm_cache_dir``, bytes, newest mtime inside."""

    path: str
    bytes: int
    mtime: float


@dataclass(frozen=True)
class CacheListing:
    """What the caches hold: every byte under ``vllm_cache_dir``, and the entries the bound may remove."""

    total_bytes: int
    entries: tuple[CacheEntry, ...]


class CacheReport(BaseModel):
    """The caches as the deploy report shows them (sizes in bytes)."""

    directory: str
    total_bytes: int
    bound_gib: float
    entries: int
    evicted: list[str] = Field(default_factory=list)
    evicted_bytes: int = 0
    cleared: bool = False
    warning: str | None = None

    def summary(self) -> str:
        """One line: size against the bound, entries, what was evicted or cleared."""
        bound = f" of {self.bound_gib:g} GiB" if self.bound_gib > 0 else " (no bound)"
        text = f"{self.directory}: {self.total_bytes / _GIB:.2f} GiB{bound}, {self.entries} entries"
        if self.cleared:
            text += "; cleared before this start"
        if self.evicted:
            text += f"; evicted the {len(self.evicted)} oldest ({self.evicted_bytes / _GIB:.2f} GiB)"
        return text


def parse_listing(output: str) -> CacheListing:
    """The helper's ``list`` output (its last line, JSON) as a `CacheListing`.

    Raises:
        CacheError: no JSON line (the helper printed something else).
    """
    lines = output.strip().splitlines()
    try:
        data = json.loads(lines[-1])
        entries = tuple(CacheEntry(str(p), int(b), float(t)) for p, b, t in data["entries"])
        return CacheListing(total_bytes=int(data["total"]), entries=entries)
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"the cache helper printed no listing ({exc}): {output.strip()[-300:]!r}") from None


def pick_evictions(listing: CacheListing, bound_bytes: int) -> list[CacheEntry]:
    """The oldest entries to remove so that the caches fit ``bound_bytes`` (0: no bound, nothing).

    Oldest by the newest mtime inside an entry (the last time anything in it was written): a config
    that has not started for longest goes first, and its next start compiles again.
    """
    if bound_bytes <= 0 or listing.total_bytes <= bound_bytes:
        return []
    picked, left = [], listing.total_bytes
    for entry in sorted(listing.entries, key=lambda e: (e.mtime, e.path)):
        if left <= bound_bytes:
            break
        picked.append(entry)
        left -= entry.bytes
    return picked


def bound_caches(
    machine: TargetMachine, listing: CacheListing, evicted: list[CacheEntry], cleared: bool = False
) -> CacheReport:
    """The report of the caches after the bound (pure); a warning, with the size and how to clear,
    when evicting every entry does not bring them under it."""
    removed = sum(e.bytes for e in evicted)
    after = listing.total_bytes - removed
    bound = machine.vllm_cache_max_gib
    warning = None
    if bound > 0 and after > bound * _GIB:
        warning = (
            f"the vLLM caches at {machine.vllm_cache_dir} hold {after / _GIB:.1f} GiB, above the target's bound of"
            f" {bound:g} GiB (vllm_cache_max_gib), in files that are no config's entry: clear them with"
            " deploy-qwen clear_caches=true, or raise vllm_cache_max_gib"
        )
    return CacheReport(
        directory=machine.vllm_cache_dir,
        total_bytes=after,
        bound_gib=bound,
        entries=len(listing.entries) - len(evicted),
        evicted=[e.path for e in evicted],
        evicted_bytes=removed,
        cleared=cleared,
        warning=warning,
    )


def _run(machine: TargetMachine, image: str, mode: str, args: dict[str, Any]) -> str:
    """The helper program in a throwaway container of ``image``, ``vllm_cache_dir`` mounted rw."""
    kwargs = helper_container_kwargs(machine, image, ["python3", "-c", _HELPER, mode, json.dumps(args)])
    kwargs["volumes"] = {machine.vllm_cache_dir: {"bind": HELPER_MOUNT, "mode": "rw"}}
    kwargs["environment"] = {}
    try:
        with docker_client(machine.docker_host()) as client:
            output = client.containers.run(**kwargs)
    except Exception as exc:  # noqa: BLE001 - docker's errors and the helper's exit, named with the fix
        said = getattr(exc, "stderr", None) or getattr(exc, "explanation", None) or exc
        said = said.decode("utf-8", "replace").strip() if isinstance(said, bytes) else said
        raise CacheError(
            f"the vLLM caches at {machine.vllm_cache_dir} on target {machine.name!r} could not be changed ({mode}):"
            f" {str(said)[-300:]}. Check that the docker host can create that directory (vllm_cache_dir), or turn"
            " persistent_caches off in the engine spec"
        ) from None
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)


def _subdirs() -> list[str]:
    return [mount.subdir for mount in CACHE_MOUNTS]


@task(name="list-caches", cache_policy=NO_CACHE, task_run_name="list-caches {machine.name}")
def list_caches(machine: TargetMachine, image: str) -> CacheListing:
    """Create the cache subdirectories when missing (before the start that mounts them), then list
    what they hold (one helper container)."""
    roots = variants_for(ENTRY_ROOTS, None)
    listing = parse_listing(_run(machine, image, "list", {"subdirs": _subdirs(), "roots": roots}))
    get_run_logger().info(
        "vLLM caches at %s: %.2f GiB in %d entries",
        machine.vllm_cache_dir,
        listing.total_bytes / _GIB,
        len(listing.entries),
    )
    return listing


@task(name="evict-cache-entries", cache_policy=NO_CACHE, task_run_name="evict-cache-entries {machine.name}")
def evict_cache_entries(machine: TargetMachine, image: str, entries: list[CacheEntry]) -> None:
    """Remove the given entries (the oldest beyond the bound: `pick_evictions`)."""
    _run(machine, image, "remove", {"paths": [e.path for e in entries]})
    get_run_logger().info(
        "vLLM caches at %s over %g GiB: removed the %d oldest entries (%.2f GiB)",
        machine.vllm_cache_dir,
        machine.vllm_cache_max_gib,
        len(entries),
        sum(e.bytes for e in entries) / _GIB,
    )


@task(name="clear-caches", cache_policy=NO_CACHE, task_run_name="clear-caches {machine.name}")
def clear_caches(machine: TargetMachine, image: str) -> None:
    """Empty every cache subdirectory (for a cache that is suspect): the next start compiles afresh.
    A target sharing the directory compiles again too at its next start."""
    _run(machine, image, "clear", {"subdirs": _subdirs()})
    get_run_logger().info("vLLM caches at %s cleared: the next start compiles afresh", machine.vllm_cache_dir)
