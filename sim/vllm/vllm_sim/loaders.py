"""How the weights are read: which loader a command line picks, and how fast each shard goes.

Why a module of its own: on a DGX Spark the loader decides most of a restart's time (mmap reads the
runbook's 34.3 GB in 3.4 min, the eager strategy and fastsafetensors several times faster), and whether
a shard is already in the page cache changes it again. The choice follows vLLM's own branches
(model_executor/model_loader/default_loader.py:190-195 in 0.10.1.1: `--load-format fastsafetensors`
first, else the safetensors iterator with its `--safetensors-load-strategy`); the rates are the
parameters of docs/imitations.md "Startup phases", each with its source and range. Pure functions only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .failures import STAGE_LOADER, StartupFailure
from .knobs import Knobs
from .versions import Behaviour

MMAP = "mmap"
EAGER = "eager"
FASTSAFETENSORS = "fastsafetensors"


@dataclass(frozen=True)
class Loader:
    """One way of reading the shards, with its rates (GB/s) on this machine."""

    name: str  # MMAP | EAGER | FASTSAFETENSORS
    desc: str  # the shard bar's text (versions.py)
    cold_gbps: float  # from disk
    warm_gbps: float  # from the page cache (never slower than from disk)
    buffer_files: int  # whole files held in memory at once besides the weights (eager: CPU, fastsafetensors: device)

    def shard_seconds(self, shard_bytes: int, warm: bool) -> float:
        """Unscaled seconds to read one shard."""
        return shard_bytes / ((self.warm_gbps if warm else self.cold_gbps) * 1e9)


def resolve_loader(load_format: str, strategy: str | None, b: Behaviour, knobs: Knobs) -> Loader:
    """The loader vLLM runs for these flags.

    `--load-format fastsafetensors` wins over the strategy (default_loader.py:192-195 in 0.10.1.1,
    :297-298 in 0.31.0). `eager` reads each whole file with `f.read()` before building its tensors
    (weight_utils.py:535-537 in 0.10.2, :1126-1128 in 0.31.0): one file at a time, in CPU memory.
    fastsafetensors copies each file into one device buffer (`copy_files_to_device`, weight_utils.py:527 in
    0.10.1.1), one file per rank at a time; on GB10 it has no GDS and falls back to `nogds` (pread
    through the page cache). Every other strategy (lazy, None, prefetch, torchao) is mmap here.
    """
    if load_format == FASTSAFETENSORS:
        rate = knobs.fastsafetensors_gbps
        return Loader(FASTSAFETENSORS, b.fastsafetensors_desc, rate, max(rate, knobs.page_cache_gbps), 1)
    if strategy == EAGER:
        rate = knobs.eager_gbps
        return Loader(EAGER, b.eager_desc, rate, max(rate, knobs.page_cache_gbps), 1)
    rate = knobs.load_gbps
    return Loader(MMAP, b.mmap_desc, rate, max(rate, knobs.mmap_warm_gbps), 0)


def warm_shards(num_shards: int, weights_gib: float, cached_gib: float) -> list[bool]:
    """Which shards are already in the page cache: the ledger keeps one figure per snapshot (the GiB an
    earlier load read, shard by shard in order), so the first shards up to that figure are warm."""
    per = weights_gib / max(1, num_shards)
    return [(i + 1) * per <= cached_gib + 1e-6 for i in range(num_shards)]


def missing_package(b: Behaviour) -> StartupFailure:
    """vLLM's failure when `--load-format fastsafetensors` finds no `fastsafetensors` package (versions.py
    `fastsafetensors_missing`: 0.10.1.1-0.2x through PlaceholderModule, chained to the import error;
    0.31.0 a plain import)."""
    exc_type, message, _where = b.fastsafetensors_missing
    cause = "" if exc_type == "ModuleNotFoundError" else "ModuleNotFoundError: No module named 'fastsafetensors'"
    return StartupFailure(STAGE_LOADER, exc_type, message, cause_line=cause)
