"""The one sizing rule: which gpu_memory_utilization fits the free memory, which max_model_len to
propose. Every suggestion quotes these functions: the planner's retries (tasks/recovery/planner.py),
the failure rules' fixes (tasks/vllm/failures.py) and the pre-start memory check (tasks/memory.py),
so an operator reads one number wherever the same failure is reported.

vLLM 0.10.1.1 refuses a start when free memory < utilization x total (``gpu_worker.py``,
``init_device``: "Free memory on device ... is less than desired GPU memory utilization"), so the
rule is exact: steps of 0.01 (1.2 GiB on a DGX Spark) lose at most 1.2 GiB of KV cache where steps
of 0.05 lose up to 6 GiB (24,000 tokens), and the margin is in GiB because what it protects is
memory a process can grab between the reading and vLLM's check, whatever the machine's size.
"""

from __future__ import annotations

import math

__all__ = [
    "GUARD_SLACK_GIB",
    "MARGIN_GIB",
    "MODEL_LEN_STEP",
    "UTIL_STEP",
    "ceil_utilization",
    "fit_utilization",
    "margin_for",
    "round_model_len",
]

#: utilization proposals are multiples of this.
UTIL_STEP = 0.01
#: max_model_len proposals are multiples of this (vLLM's KV blocks are 16 tokens; 256 reads well).
MODEL_LEN_STEP = 256
#: GiB kept free by a computed utilization on a target without a host-memory guard.
MARGIN_GIB = 1.0
#: GiB kept above the host-memory floor by a computed utilization: vLLM's CUDA-graph pool (~0.3 GiB
#: at 64 sequences) and what other processes may take between the reading and the start.
GUARD_SLACK_GIB = 1.0
_EPS = 1e-9


def margin_for(host_floor_gib: float, margin_gib: float = MARGIN_GIB) -> float:
    """The GiB a computed utilization leaves free on a target whose readiness gate stops a start below
    ``host_floor_gib`` of MemAvailable (0: no guard).

    A margin under the floor makes every computed start one the guard kills as soon as the server
    holds its memory (measured by bench/recovery.py: 0.71 of 119.7 GiB with 86.7 free left 1.7 GiB),
    so it is at least the floor plus ``GUARD_SLACK_GIB``.
    """
    if host_floor_gib <= 0:
        return margin_gib
    return max(margin_gib, host_floor_gib + GUARD_SLACK_GIB)


def fit_utilization(free_gib: float, total_gib: float, margin_gib: float = MARGIN_GIB) -> float:
    """The largest utilization a start can have with ``free_gib`` free: floor((free - margin) / total, 0.01).

    85.92 of 121.69 GiB free with a 1 GiB margin -> 0.69. Returns 0.0 when nothing fits.

    Raises:
        ValueError: ``total_gib`` is not positive.
    """
    if total_gib <= 0:
        raise ValueError(f"total_gib must be positive (got {total_gib})")
    steps = math.floor((free_gib - margin_gib) / total_gib / UTIL_STEP + _EPS)
    return max(0.0, round(steps * UTIL_STEP, 2))


def ceil_utilization(fraction: float) -> float:
    """``fraction`` rounded up to a multiple of `UTIL_STEP` (the smallest utilization that covers it)."""
    return round(math.ceil(fraction / UTIL_STEP - _EPS) * UTIL_STEP, 2)


def round_model_len(tokens: int) -> int:
    """Round a token count down to a multiple of 256 (12688 -> 12544): a little slack under vLLM's
    block-aligned estimate, so the retry does not fail the same check by a block. 0 below 256."""
    return max(0, int(tokens) // MODEL_LEN_STEP * MODEL_LEN_STEP)
