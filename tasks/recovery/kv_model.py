"""How much KV cache a spec gets: vLLM's memory arithmetic for the served model.

vLLM sizes its cache after loading the weights and profiling one forward pass
(``vllm/v1/worker/gpu_worker.py``, ``determine_available_memory``)::

    KV GiB = util x total - weights - overhead - activation peak - charged page cache
    activation peak = max_num_batched_tokens x activation_bytes_per_batched_token
                      + max_num_seqs x sampler_bytes_per_seq
    tokens = KV bytes / kv_bytes_per_token

The defaults are Qwen3-32B-FP8 on a DGX Spark. The weights are the checkpoint's size; the overhead
(non-torch memory: CUDA context, cuBLAS workspaces, GB10's accounting) is not a figure of its own but
what the runbook's measured KV cache (271,360 tokens at 0.90, 16384 batched tokens, 64 sequences)
leaves after weights and activations. A flow overrides the weights with the failed start's own
``Model loading took X GiB`` line (`KvModel.calibrated`).

Cold and warm starts (vllm issue 35920). The overhead is vLLM's "non-torch increase since
init_device" (``vllm/utils/__init__.py:2742``, ``memory_profiling``, in 0.10.1.1), measured as used
memory minus torch's: ``total - free`` with ``free`` from ``torch.cuda.mem_get_info()`` (:2622), which
is MemFree on GB10 up to 0.10.x. Page cache that the start's own weight reads fill counts as used
there, so a start that reads its weights cold (not in page cache: after a drop, or the first load)
gets up to the checkpoint's size less KV cache than a warm one. From 0.11.1 on vLLM reads MemAvailable
(tasks/vllm/versions.py `FREE_MEMORY`) and the page cache is never charged. The term
``charged_page_cache_gib`` carries it: 0 for a warm start and on MemAvailable versions; the planner
sets it (`KvModel.cold`) for a retry that reads the weights cold on a MemFree version, to
``cold_load_charge`` x the weights. That fraction is 0 by default, because the reference this model is
calibrated on is itself a cold 0.10.1.1 start: the runbook's 271,360 tokens at 0.90 could only pass
0.10.1.1's MemFree check with the weights out of the page cache (0.90 x 119.7 GiB needs all but 12 GiB
free), and it shows no charge; the overhead above already holds whatever that start was charged. A
Spark that shows the charge (vllm issue 35920 reports up to the checkpoint's size) sets the fraction up
to 1; the imitation models the same knob (`VLLM_SIM_COLD_LOAD_CHARGE`, docs/imitations.md).

The loader's own buffer while the shards load (eager, fastsafetensors) is no term here: it is
released before vLLM profiles, so it never shrinks the KV cache; it counts for the host's floor
during the load (tasks/recovery/load_memory.py `load_peak_gib`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

from pydantic import BaseModel, ConfigDict, Field

from tasks.recovery.sizing import ceil_utilization, round_model_len
from tasks.vllm.logs import summarize_startup

__all__ = [
    "GIB",
    "QWEN3_32B_FP8_WEIGHTS_GIB",
    "RUNBOOK_KV_CACHE_TOKENS",
    "SPARK_TOTAL_GIB",
    "KvModel",
]

GIB = 1024**3

#: Qwen/Qwen3-32B-FP8's weights: its checkpoint's ``metadata.total_size``, 34,322,434,048 bytes
#: (FP8 projections, BF16 block scales, norms, embeddings and the untied lm_head), which vLLM reports
#: as ``Model loading took 31.97 GiB`` (``vllm/v1/worker/gpu_model_runner.py``, ``load_model``); the
#: runbook's "Model: ~32 GB".
QWEN3_32B_FP8_WEIGHTS_GIB = round(34_322_434_048 / GIB, 2)
#: The DGX Spark's device total as vLLM sees it on GB10: CUDA's total is the host's MemTotal, which
#: varies with the OS image by about 2 GiB (119.7 GiB = 125,515,968 kB in tests/unit/test_memory.py's
#: sample; vLLM's own free-memory error on a Spark prints 121.69 GiB). Used only to turn the runbook's
#: measured KV cache into an overhead; a flow plans with the total it read from the machine.
SPARK_TOTAL_GIB = 119.7
#: The runbook's measurement on the Spark: "KV Cache Usage: 271,360 tokens capacity" with its
#: compose file's settings (gpu_memory_utilization 0.90, max_num_batched_tokens 16384, max_num_seqs 64).
RUNBOOK_KV_CACHE_TOKENS = 271_360
_RUNBOOK_SETTINGS = (0.90, 16384, 64)
#: Qwen3-32B: 64 layers x 8 KV heads x 128 head dim x 2 (K, V) x 2 bytes = 0.25 MiB per token.
_KV_BYTES_PER_TOKEN = 64 * 8 * 128 * 2 * 2
#: Qwen3-32B's profiling peak per batched token: (4 x 5120 + 2 x 25600 + (64 + 2 x 8) x 128) x 2 bytes.
_ACTIVATION_BYTES_PER_BATCHED_TOKEN = (4 * 5120 + 2 * 25600 + (64 + 2 * 8) * 128) * 2
#: The sampler's warm-up logits per sequence: vocab 151,936 x 4 bytes x 2.
_SAMPLER_BYTES_PER_SEQ = 151_936 * 4 * 2


def _runbook_overhead_gib() -> float:
    """The non-torch overhead the runbook's measured KV cache implies: util x total - weights -
    activation peak - KV: 6.94 GiB."""
    util, batched, seqs = _RUNBOOK_SETTINGS
    activation = (batched * _ACTIVATION_BYTES_PER_BATCHED_TOKEN + seqs * _SAMPLER_BYTES_PER_SEQ) / GIB
    kv = RUNBOOK_KV_CACHE_TOKENS * _KV_BYTES_PER_TOKEN / GIB
    return util * SPARK_TOTAL_GIB - QWEN3_32B_FP8_WEIGHTS_GIB - activation - kv


class KvModel(BaseModel):
    """The served model's memory: what vLLM leaves for the KV cache at a utilization."""

    model_config = ConfigDict(frozen=True)

    weights_gib: float = Field(
        QWEN3_32B_FP8_WEIGHTS_GIB, ge=0, description="the model's weights (vLLM's `Model loading took X GiB`)"
    )
    overhead_gib: float = Field(
        round(_runbook_overhead_gib(), 2),
        ge=0,
        description="non-torch memory in vLLM's profile (CUDA context, cuBLAS, GB10 accounting): what the "
        "runbook's 271,360 KV tokens at 0.90 leave after weights and activations",
    )
    activation_bytes_per_batched_token: int = Field(
        _ACTIVATION_BYTES_PER_BATCHED_TOKEN, ge=0, description="profiling peak per batched token (Qwen3-32B)"
    )
    sampler_bytes_per_seq: int = Field(
        _SAMPLER_BYTES_PER_SEQ, ge=0, description="sampler warm-up logits per sequence: vocab 151,936 x 4 bytes x 2"
    )
    kv_bytes_per_token: int = Field(_KV_BYTES_PER_TOKEN, gt=0, description="Qwen3-32B: 0.25 MiB per token")
    charged_page_cache_gib: float = Field(
        0.0,
        ge=0,
        description="page cache the start's weight reads fill that vLLM charges as non-torch memory: a cold "
        "start on a MemFree version (0.10.x on GB10, vllm issue 35920); 0 when warm and from 0.11.1 on",
    )

    cold_load_charge: float = Field(
        0.0,
        ge=0,
        le=1,
        description="the share of a cold load's page cache (the weights) a MemFree vLLM charges; 0: the runbook's "
        "cold 0.10.1.1 start, which this model is calibrated on, shows none",
    )

    def cold(self) -> Self:
        """This model for a start that reads its weights cold on a vLLM that charges the page cache
        it fills: ``cold_load_charge`` of the checkpoint's size (the weights)."""
        return self.model_copy(update={"charged_page_cache_gib": round(self.weights_gib * self.cold_load_charge, 2)})

    def calibrated(self, lines: Iterable[str]) -> Self:
        """This model with ``weights_gib`` from a startup log's ``Model loading took X GiB``.

        A failed start that got past the load (KV too small, no KV memory, a later OOM) prints it;
        an earlier failure does not, and the model comes back unchanged.
        """
        model_gib = summarize_startup(lines).model_gib
        return self.model_copy(update={"weights_gib": float(model_gib)}) if model_gib else self

    def activation_gib(self, max_num_batched_tokens: int, max_num_seqs: int) -> float:
        """The profiling forward pass's peak for these batch settings (2.57 GiB at 16384 / 64)."""
        peak = (
            max_num_batched_tokens * self.activation_bytes_per_batched_token + max_num_seqs * self.sampler_bytes_per_seq
        )
        return peak / GIB

    def kv_gib(self, utilization: float, total_gib: float, max_num_batched_tokens: int, max_num_seqs: int) -> float:
        """GiB left for the KV cache at ``utilization`` of ``total_gib`` (negative: none)."""
        return (
            utilization * total_gib
            - self.weights_gib
            - self.overhead_gib
            - self.activation_gib(max_num_batched_tokens, max_num_seqs)
            - self.charged_page_cache_gib
        )

    def max_len_at(self, utilization: float, total_gib: float, max_num_batched_tokens: int, max_num_seqs: int) -> int:
        """The longest max_model_len one request can have at this utilization, rounded down to 256."""
        kv = self.kv_gib(utilization, total_gib, max_num_batched_tokens, max_num_seqs)
        if kv <= 0:
            return 0
        return round_model_len(int(kv * GIB // self.kv_bytes_per_token))

    def utilization_for(
        self, max_model_len: int, total_gib: float, max_num_batched_tokens: int, max_num_seqs: int
    ) -> float:
        """The smallest utilization (a multiple of 0.01) whose KV cache holds one max_model_len request."""
        need = (
            self.weights_gib
            + self.overhead_gib
            + self.activation_gib(max_num_batched_tokens, max_num_seqs)
            + self.charged_page_cache_gib
            + max_model_len * self.kv_bytes_per_token / GIB
        )
        return ceil_utilization(need / total_gib)
