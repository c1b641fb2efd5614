"""The Spark's unified memory as vLLM 0.10.1.1 sees it, and the KV-cache arithmetic.

Why: the project's recovery logic classifies memory failures from vLLM's own
numbers, so the imitation must produce them from a model that behaves like the
machine: free memory on GB10 is `torch.cuda.mem_get_info()`, which counts other
processes *and the Linux page cache* (vllm issue 48140) as used.  The shared
state (who holds what, which weights sit in page cache) lives in the ledger
(`ledger.py`); this module is pure arithmetic and error texts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .failures import STAGE_INIT_DEVICE, STAGE_KV_CACHE, StartupFailure
from .model_files import ModelConfig

GIB = 1024**3
BLOCK_SIZE = 16
GRAPH_GIB_PER_SIZE = 0.033  # CUDA-graph pool per captured batch size (measured order on GB10)


def gib_round(num_bytes: float) -> float:
    """gpu_worker.py's `GiB = lambda b: round(b / GiB_bytes, 2)` (so 119.7, not 119.70)."""
    return round(num_bytes / GIB, 2)


def check_free_memory(free_gib: float, total_gib: float, util: float) -> None:
    """gpu_worker.init_device's startup check, with its exact text."""
    total = total_gib * GIB
    free = free_gib * GIB
    requested = total * util
    if free < requested:
        raise StartupFailure(
            STAGE_INIT_DEVICE,
            "ValueError",
            f"Free memory on device ({gib_round(free)}/{gib_round(total)} GiB) on startup is less "
            f"than desired GPU memory utilization ({util}, {gib_round(requested)} GiB). Decrease GPU "
            "memory utilization or reduce GPU memory used by other processes.",
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


def check_kv_fits(available_bytes: int, kv_bytes_per_token: int, max_model_len: int) -> None:
    """kv_cache_utils.check_enough_kv_cache_memory, with vLLM 0.10.1.1's texts (typo included)."""
    if available_bytes <= 0:
        raise StartupFailure(
            STAGE_KV_CACHE,
            "ValueError",
            "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
            "initializing the engine.",
        )
    needed = math.ceil(max_model_len / BLOCK_SIZE) * BLOCK_SIZE * kv_bytes_per_token
    if needed > available_bytes:
        estimate = max_len_that_fits(available_bytes, kv_bytes_per_token, max_model_len)
        raise StartupFailure(
            STAGE_KV_CACHE,
            "ValueError",
            f"To serve at least one request with the models's max seq len ({max_model_len}), "
            f"({needed / GIB:.2f} GiB KV cache is needed, which is larger than the available KV cache "
            f"memory ({available_bytes / GIB:.2f} GiB). Based on the available memory, the estimated "
            f"maximum model length is {estimate}. Try increasing `gpu_memory_utilization` or "
            "decreasing `max_model_len` when initializing the engine.",
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


def validate_plan(plan: KVPlan) -> None:
    """Raise the KV errors for a plan (kept apart so the log can print the memory line first)."""
    check_kv_fits(plan.available_bytes, plan.kv_bytes_per_token, plan.max_model_len)
