"""How long things take on a DGX Spark: the startup timeline and the decode roofline.

Why: health gates, startup windows and benchmarks are tuned against these
durations, so they come from a model of the machine rather than constants in
the server: loading is bound by the shard read rate (~3.4 min for the 32 GB of
Qwen3-32B-FP8), each decode step by reading every weight once from LPDDR5x at
273 GB/s (plus the KV of the running sequences), prefill by compute.
"""

from __future__ import annotations

from dataclasses import dataclass

from .knobs import Knobs

# Seconds at VLLM_SIM_TIME_SCALE=1 between the startup log lines (measured order on a Spark).
PLATFORM_S = 2.0  # python + torch import -> "vLLM API server version"
CONFIG_S = 4.0  # args -> "Resolved architecture" (config, model registry inspection)
ENGINE_SPAWN_S = 2.5  # tokenizer + EngineCore process spawn
ENGINE_INIT_S = 1.0  # init message -> CUDA init
DEVICE_INIT_S = 1.5  # CUDA context, distributed env
DYNAMO_S = 7.5  # "Dynamo bytecode transform time"
INDUCTOR_S = 9.5  # compile for dynamic shape; with DYNAMO_S -> ~17 s torch.compile
PROFILE_S = 1.5  # profiling run -> "Available KV cache memory"
GRAPH_S_PER_SIZE = 0.21  # CUDA graph capture per batch size (19 sizes -> ~4 s)
API_READY_S = 0.5  # routes, uvicorn start


@dataclass(frozen=True)
class StartupTimeline:
    """Durations (already scaled) of each startup phase."""

    scale: float
    per_shard_s: float

    def __call__(self, seconds: float) -> float:
        """Scale one phase duration."""
        return seconds * self.scale


def startup_timeline(knobs: Knobs, weights_bytes: int, num_shards: int) -> StartupTimeline:
    """Shard loading at the modelled read rate; everything scaled by TIME_SCALE x SLOW_START."""
    load_s = weights_bytes / (knobs.load_gbps * 1e9)
    return StartupTimeline(scale=knobs.startup_scale, per_shard_s=load_s / max(1, num_shards) * knobs.startup_scale)


@dataclass(frozen=True)
class Roofline:
    """Step time of the engine on the modelled machine (unscaled seconds)."""

    weights_bytes: int
    kv_bytes_per_token: int
    flops_per_token: float
    mem_bytes_per_s: float
    flops_per_s: float
    step_overhead_s: float
    frontend_overhead_s: float

    @classmethod
    def from_knobs(cls, knobs: Knobs, weights_bytes: int, kv_bytes_per_token: int, active_params: int) -> Roofline:
        return cls(
            weights_bytes=weights_bytes,
            kv_bytes_per_token=kv_bytes_per_token,
            flops_per_token=2.0 * active_params,
            mem_bytes_per_s=knobs.mem_bw_gbps * 1e9 * knobs.bw_efficiency,
            flops_per_s=knobs.compute_tflops * 1e12,
            step_overhead_s=knobs.step_overhead_ms / 1000.0,
            frontend_overhead_s=knobs.frontend_overhead_ms / 1000.0,
        )

    def step_seconds(self, batch_tokens: int, context_tokens: int) -> float:
        """One engine step: max(memory time, compute time) + fixed overhead.

        Memory: every weight once plus the KV of all running sequences.
        Compute: 2 x active params FLOPs per token in the batch (prefill chunks
        and one token per decoding sequence).
        """
        mem = (self.weights_bytes + context_tokens * self.kv_bytes_per_token) / self.mem_bytes_per_s
        compute = batch_tokens * self.flops_per_token / self.flops_per_s
        return max(mem, compute) + self.step_overhead_s
