"""What each weight loader holds in memory while it reads the checkpoint, and whether it reads through
the page cache: one table (`LOADER_MEMORY`), read by the pre-start check (tasks/memory.py
`room_for_start`), the readiness gate's host-memory guard (tasks/readiness.py), the planner's
activation-peak reason (tasks/recovery/planner.py) and the page-cache warm (tasks/warmup.py).

Why it matters on GB10: CPU and GPU share one memory, so a loader's CPU buffer takes the memory the
KV cache and the host's floor need. The loader names are tasks/loader.py's (``mmap``, ``eager``,
``fastsafetensors``). What each holds, read from vLLM's ``safetensors_weights_iterator`` and
``fastsafetensors_weights_iterator`` (vllm/model_executor/model_loader/weight_utils.py):

- ``mmap`` (vLLM's default "lazy" strategy): ``safe_open`` maps each file (weight_utils.py:473 in
  0.10.1.1, :540 in 0.10.2, :618 in 0.11.1, :741 in 0.17.1, :981 in 0.20.1, :1144 in 0.31.0); the
  pages it reads are page cache, which the kernel reclaims and MemAvailable counts as available. No
  buffer of its own.
- ``eager`` (``--safetensors-load-strategy eager``, 0.10.2+): one file at a time,
  ``state_dict = load(f.read())`` (weight_utils.py:536-537 in 0.10.2, :605-606 in 0.11.1, :726-727 in
  0.17.1, :964-965 in 0.20.1, :1127-1128 in 0.31.0): the whole file's bytes, the tensors
  ``safetensors.torch.load`` builds from them, and the previous file's tensors (still bound to
  ``state_dict`` until the assignment) are alive together: up to three shards of anonymous CPU memory.
  ``f.read()`` is a buffered read, so the file lands in the page cache too. The buffer is released
  when the iterator ends, inside ``load_model`` (vllm/v1/worker/gpu_worker.py:210 in 0.10.2), before
  ``determine_available_memory`` profiles (:222, ``profile_run`` at :238): vLLM's KV sizing never
  sees it, only the host during the load does.
- ``fastsafetensors`` (``--load-format fastsafetensors``): ``copy_files_to_device`` copies one file
  (one per rank; tensor parallel 1 here) into a device buffer of the file's size, closed after its
  tensors were yielded (weight_utils.py:524-535 in 0.10.1.1, :735-755 in 0.11.1, :871-891 in 0.17.1,
  :1119-1139 in 0.20.1); 0.31.0 pipelines it, "Peak load-time VRAM is roughly model_weights +
  (1 + queue_size) * shard_size" with ``VLLM_FASTSAFETENSORS_QUEUE_SIZE`` 0 by default (vllm/envs.py:
  1124-1135 in 0.31.0): one shard. It reads with GDS (cuFile, straight into the device buffer, past
  the page cache) and falls back to ``nogds`` (weight_utils.py:737-747 in 0.11.1, "GDS not enabled,
  setting `nogds=True`"), whose pread goes through the page cache with a bounce buffer (16 MiB,
  fastsafetensors' ``SafeTensorsFileLoader(bbuf_size_kb=16 * 1024)``): which one runs shows only in
  the server's log, so the page cache may not help it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tasks.vllm.failures import FailureCause, host_memory_guard_cause

__all__ = [
    "LOADER_MEMORY",
    "QWEN3_32B_FP8_LARGEST_SHARD_GIB",
    "LoaderMemory",
    "load_peak_gib",
    "loader_guard_cause",
    "loader_memory",
    "loader_transient_gib",
]

#: Qwen/Qwen3-32B-FP8's largest shard: 34.3 GB in 7 files averages 4.9 GB, and transformers writes
#: shards of at most its ``max_shard_size`` default, 5 GB: 4.66 GiB. A model parameter, as
#: tasks/recovery/kv_model.py's weights are.
QWEN3_32B_FP8_LARGEST_SHARD_GIB = round(5e9 / 1024**3, 2)


@dataclass(frozen=True)
class LoaderMemory:
    """One loader's memory while it reads the weights.

    Attributes:
        shards_held: how many of the largest shard it holds at most besides the weights already
            loaded (anonymous or device memory: nothing the kernel can reclaim).
        reads_page_cache: its reads go through the page cache, so a warm page cache makes them
            memory-speed (tasks/warmup.py).
        held: what it holds, in operator words.
        source: the vLLM file:line it comes from (the module docstring has every version's).
    """

    shards_held: float
    reads_page_cache: bool
    held: str
    source: str


#: loader -> its memory while loading (the module docstring says where each figure comes from).
LOADER_MEMORY: dict[str, LoaderMemory] = {
    "mmap": LoaderMemory(
        0.0,
        True,
        "nothing of its own: the mapped pages are page cache, which MemAvailable counts as available",
        "vllm/model_executor/model_loader/weight_utils.py:540 (safe_open) in 0.10.2",
    ),
    "eager": LoaderMemory(
        3.0,
        True,
        "up to three shards of CPU memory: a whole file's bytes, the tensors built from them and the previous"
        " file's tensors, released before profiling",
        "vllm/model_executor/model_loader/weight_utils.py:536-537 (load(f.read())) in 0.10.2; :1127-1128 in 0.31.0",
    ),
    "fastsafetensors": LoaderMemory(
        1.0,
        False,
        "one shard-sized device buffer (GDS reads past the page cache; its nogds fallback reads through it)",
        "vllm/model_executor/model_loader/weight_utils.py:524-535 (copy_files_to_device) in 0.10.1.1; "
        "vllm/envs.py:1124-1135 (VLLM_FASTSAFETENSORS_QUEUE_SIZE) in 0.31.0",
    ),
}


def loader_memory(loader: str) -> LoaderMemory:
    """The table's entry for ``loader``.

    Raises:
        ValueError: no such loader; the message lists the known ones.
    """
    try:
        return LOADER_MEMORY[loader]
    except KeyError:
        raise ValueError(f"unknown loader {loader!r}: one of {', '.join(LOADER_MEMORY)}") from None


def loader_transient_gib(loader: str, largest_shard_gib: float = QWEN3_32B_FP8_LARGEST_SHARD_GIB) -> float:
    """GiB ``loader`` holds while loading, besides the weights (0 for mmap): 13.97 for eager."""
    return round(loader_memory(loader).shards_held * largest_shard_gib, 2)


def load_peak_gib(loader: str, weights_gib: float, largest_shard_gib: float = QWEN3_32B_FP8_LARGEST_SHARD_GIB) -> float:
    """What a start holds at most while it loads: the weights and the loader's transient memory."""
    return round(weights_gib + loader_transient_gib(loader, largest_shard_gib), 2)


def loader_guard_cause(
    loader: str, available_gib: float, floor_gib: float, transient_gib: float, evidence: Sequence[str] = ()
) -> FailureCause:
    """The host-memory guard's cause (`tasks.vllm.failures.host_memory_guard_cause`) when the loader's
    own buffer is what takes MemAvailable under the floor: before the start (the pre-start check's
    prediction) or while the shards load (the gate's reading). A smaller batch does not shrink that
    buffer, a loader without one does: the fix says so."""
    cause = host_memory_guard_cause(available_gib, floor_gib, evidence)
    held = loader_memory(loader).held
    return cause.model_copy(
        update={
            "summary": f"{cause.summary}; the {loader} loader holds {held} ({transient_gib:.2f} GiB while the"
            " shards load, on GB10 the same memory as the KV cache)",
            "fix": f"Deploy with loader mmap (no buffer of its own; {transient_gib:.2f} GiB less while loading) or"
            " free that much memory on the target; a smaller batch does not shrink the loader's buffer.",
            "numbers": {**cause.numbers, "loader_transient_gib": round(transient_gib, 2)},
        }
    )
