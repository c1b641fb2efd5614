"""Startup failures, carried as data until the log module renders them.

Why: real vLLM fails in one of two processes (the API server or the EngineCore
child) and the traceback shape depends on where.  The checks (model files,
memory, KV cache) only decide *what* failed; `logs.render_failure` decides how it
looks, so the exact texts live next to the code that detects them and the frame
lists live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where the failure surfaces; selects the traceback frames printed before it.
STAGE_CONFIG = "config"  # APIServer: resolving config.json (hub cache)
STAGE_TOKENIZER = "tokenizer"  # APIServer: AsyncLLM tokenizer init
STAGE_INIT_DEVICE = "init_device"  # EngineCore: gpu_worker.init_device free-memory check
STAGE_WEIGHTS = "weights"  # EngineCore: locating the weights snapshot
STAGE_SHARD = "shard"  # EngineCore: opening one safetensors shard
STAGE_LOAD_OOM = "load_oom"  # EngineCore: CUDA OOM while loading weights
STAGE_LOADER = "loader"  # EngineCore: the weights loader's package is missing (fastsafetensors)
STAGE_KV_CACHE = "kv_cache"  # EngineCore: KV cache sizing
STAGE_PROFILE = "profile"  # EngineCore: the memory-profiling assertion (determine_available_memory)
STAGE_ARGS = "args"  # APIServer: engine-args validation
STAGE_PORT = "port"  # APIServer: binding the listening socket

ENGINE_STAGES = frozenset(
    {STAGE_INIT_DEVICE, STAGE_WEIGHTS, STAGE_SHARD, STAGE_LOAD_OOM, STAGE_LOADER, STAGE_KV_CACHE, STAGE_PROFILE}
)


@dataclass
class StartupFailure(Exception):
    """A failure that ends startup with vLLM's text and a non-zero exit."""

    stage: str
    exc_type: str  # as Python prints it, e.g. "ValueError", "torch.OutOfMemoryError"
    message: str  # the exception text, exactly as vLLM / its libraries word it
    cause_line: str = ""  # optional "direct cause" exception line printed first

    def __str__(self) -> str:
        return f"{self.exc_type}: {self.message}"

    @property
    def in_engine(self) -> bool:
        """True when the real failure happens inside the EngineCore process."""
        return self.stage in ENGINE_STAGES
