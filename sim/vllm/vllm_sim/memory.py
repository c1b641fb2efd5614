"""The Spark's unified memory as vLLM sees it, and the KV-cache arithmetic, by version.

Why: the project's recovery logic classifies memory failures from vLLM's own
numbers, so the imitation must produce them from a model that behaves like the
machine: free memory on GB10 is `torch.cuda.mem_get_info()` in 0.10.x, which counts
other processes *and the Linux page cache* as used (vllm issue 35313; measured on
GB10 in unsloth PR 10704), and MemAvailable from 0.11.1 on. The shared state (who
holds what, which weights sit in page cache) lives in the ledger (`ledger.py`); the
texts' forms per version in `versions.py`; this module is arithmetic and error texts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .failures import STAGE_INIT_DEVICE, STAGE_KV_CACHE, STAGE_PROFILE, StartupFailure
from .model_files import ModelConfig
from .versions import V0_10_1_1, Behaviour, format_gib

GIB = 1024**3
BLOCK_SIZE = 16
GRAPH_GIB_PER_SIZE = 0.033  # CUDA-graph pool per captured batch size (measured order on GB10)


def gib_round(num_bytes: float) -> float:
    """gpu_worker.py's `GiB = lambda b: round(b / GiB_bytes, 2)` (so 119.7, not 119.70)."""
    return round(num_bytes / GIB, 2)


def check_free_memory(free_gib: float, total_gib: float, util: float, b: Behaviour = V0_10_1_1) -> None:
    """gpu_worker.init_device's startup check, with its exact text (versions.py: the form by version)."""
    total = total_gib * GIB
    free = free_gib * GIB
    requested = math.ceil(total * util) if b.requested_ceil else total * util
    if free < requested:
        raise StartupFailure(
            STAGE_INIT_DEVICE,
            "ValueError",
            f"Free memory on device{b.free_memory_device} ({gib_round(free)}/{gib_round(total)} GiB) on startup "
            f"is less than desired GPU memory utilization ({util}, {gib_round(requested)} GiB). Decrease GPU "
            "memory utilization or reduce GPU memory used by other processes.",
        )


def check_profiling(init_free_bytes: int, after_free_bytes: int, b: Behaviour = V0_10_1_1) -> None:
    """gpu_worker.determine_available_memory's assertion: free memory must have fallen while profiling.

    It fails when another process (or the page cache) let go of more than vLLM took since
    init_device: 0.10-0.11 assert `init > after` (gpu_worker.py:248-255 in 0.10.1.1, numbers
    unrounded), 0.17+ `init >= after` (gpu_worker.py:652-660 in 0.31.0, format_gib).
    """
    fails = init_free_bytes <= after_free_bytes if b.profiling_strict else init_free_bytes < after_free_bytes

    def number(x: int) -> str:
        return format_gib(x) if b.profiling_number == "format_gib" else f"{x / GIB}"

    if fails:
        raise StartupFailure(
            STAGE_PROFILE,
            "AssertionError",
            f"Error in memory profiling. Initial free memory {number(init_free_bytes)} GiB, current free memory "
            f"{number(after_free_bytes)} GiB. This happens when other processes sharing the same container release "
            "GPU memory while vLLM is profiling during initialization. To fix this, ensure consistent GPU memory "
            "allocation or isolate vLLM in its own container.",
        )


def activation_peak_bytes(cfg: ModelConfig, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Peak of the profiling forward pass: per-token activations of one layer plus sampler logits.

    Per batched token: residual + norms (4 x hidden), gate/up output
    (2 x intermediate) and q/k/v (heads + 2 kv heads) x head_dim, in bf16; the
    dummy sampler run holds fp32 logits twice for max_num_seqs rows.
    """
    per_token = (
        4 * cfg.hidden_size
        + 2 * cfg.intermediate_size
        + (cfg.num_attention_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    ) * 2
    logits = max_num_seqs * cfg.vocab_size * 4 * 2
    return per_token * max_num_batched_tokens + logits


def cuda_graph_sizes(max_num_seqs: int) -> list:
    """0.10.1.1 default capture list: [1, 2, 4] + multiples of 8 up to min(2 x max_num_seqs, 512)."""
    top = min(max_num_seqs * 2, 512)
    return [s for s in (1, 2, 4) if s <= top] + list(range(8, top + 1, 8))


@dataclass(frozen=True)
class KVPlan:
    """The outcome of vLLM's memory profiling and KV-cache sizing."""

    requested_bytes: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    available_bytes: int
    num_blocks: int
    max_model_len: int
    kv_bytes_per_token: int
    graph_gib: float

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * BLOCK_SIZE

    @property
    def max_concurrency(self) -> float:
        return self.num_blocks / math.ceil(self.max_model_len / BLOCK_SIZE)

    @property
    def available_gib(self) -> float:
        return self.available_bytes / GIB

    @property
    def held_gib(self) -> float:
        """What the running server holds on the device: its budget plus the graph pool."""
        return self.requested_bytes / GIB + self.graph_gib


def available_kv_bytes(
    total_gib: float, util: float, weights_bytes: int, activation_bytes: int, non_torch_gib: float
) -> int:
    """util x total - weights - activation peak - non-torch memory (gpu_worker.determine_available_memory)."""
    requested = total_gib * GIB * util
    return int(requested - weights_bytes - activation_bytes - non_torch_gib * GIB)


def max_len_that_fits(available_bytes: int, kv_bytes_per_token: int, max_model_len: int) -> int:
    """kv_cache_utils.estimate_max_model_len: the largest block-aligned length that fits."""
    fits = (available_bytes // (BLOCK_SIZE * kv_bytes_per_token)) * BLOCK_SIZE
    return int(min(fits, max_model_len))


def kv_gib(num_bytes: float, b: Behaviour) -> str:
    """The KV error's GiB: `%.2f` up to 0.11, format_gib (round(x, 2), no padding) from 0.17."""
    return format_gib(num_bytes) if b.kv_number == "format_gib" else f"{num_bytes / GIB:.2f}"


def check_kv_fits(available_bytes: int, kv_bytes_per_token: int, max_model_len: int, b: Behaviour = V0_10_1_1) -> None:
    """kv_cache_utils.check_enough_kv_cache_memory, with the version's texts (versions.py).

    The estimate sentence is left out when the estimate is 0 (kv_cache_utils.py:693-697 in 0.10.1.1).
    """
    if available_bytes <= 0:
        raise StartupFailure(STAGE_KV_CACHE, "ValueError", b.kv_no_memory)
    needed = math.ceil(max_model_len / BLOCK_SIZE) * BLOCK_SIZE * kv_bytes_per_token
    if needed > available_bytes:
        estimate = max_len_that_fits(available_bytes, kv_bytes_per_token, max_model_len)
        raise StartupFailure(
            STAGE_KV_CACHE,
            "ValueError",
            b.kv_too_small.format(
                max_len=max_model_len,
                needed=kv_gib(needed, b),
                available=kv_gib(available_bytes, b),
                estimate=b.kv_estimate.format(estimate=estimate) if estimate > 0 else "",
            ),
        )


def plan_kv_cache(
    cfg: ModelConfig,
    total_gib: float,
    util: float,
    weights_bytes: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    non_torch_gib: float,
) -> KVPlan:
    """Size the KV cache; raises the vLLM error when it cannot hold one max-length request."""
    activation = activation_peak_bytes(cfg, max_num_batched_tokens, max_num_seqs)
    available = available_kv_bytes(total_gib, util, weights_bytes, activation, non_torch_gib)
    per_token = cfg.kv_bytes_per_token
    plan = KVPlan(
        requested_bytes=int(total_gib * GIB * util),
        weights_bytes=weights_bytes,
        activation_bytes=activation,
        non_torch_bytes=int(non_torch_gib * GIB),
        available_bytes=available,
        num_blocks=max(0, available // (BLOCK_SIZE * per_token)),
        max_model_len=max_model_len,
        kv_bytes_per_token=per_token,
        graph_gib=round(GRAPH_GIB_PER_SIZE * len(cuda_graph_sizes(max_num_seqs)), 2),
    )
    return plan


def validate_plan(plan: KVPlan, b: Behaviour = V0_10_1_1) -> None:
    """Raise the KV errors for a plan (kept apart so the log can print the memory line first)."""
    check_kv_fits(plan.available_bytes, plan.kv_bytes_per_token, plan.max_model_len, b)
