"""Every environment knob of the imitation, read in one place.

Why one module: the knobs are the imitation's whole configuration surface (the
command line must stay identical to vLLM's), so they are documented and parsed
together, and tests can build a `Knobs` from a plain dict instead of patching
`os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .versions import DEFAULT_VERSION, Behaviour, behaviour, release

GIB = 1024**3


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def _opt_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Knobs:
    """The imitation's tunables; defaults reproduce a DGX Spark (GB10)."""

    # --- which vLLM it speaks (versions.py) ---
    version: str = DEFAULT_VERSION  # VLLM_SIM_VERSION: any vLLM version; the row of its range applies
    # --- the device (memory model) ---
    device_total_gib: float = 119.7  # VLLM_SIM_DEVICE_TOTAL_GIB: CUDA total = MemTotal on GB10
    system_baseline_gib: float = 3.0  # VLLM_SIM_SYSTEM_BASELINE_GIB: OS, desktop, docker
    non_torch_gib: float = 6.94  # VLLM_SIM_NON_TORCH_GIB: CUDA context, cuBLAS, GB10 accounting (calibrated)
    shmem_gib: float = 0.5  # VLLM_SIM_SHMEM_GIB: shmem/tmpfs inside the baseline, in Cached, never dropped
    # VLLM_SIM_COLD_LOAD_CHARGE: the fraction of the page cache filled by this start's own load that a
    # MemFree-reading vLLM (0.10.x) charges as non-torch memory (vllm issue 35920). Default 0: the
    # runbook's 271,360 tokens at 0.90 on 0.10.1.1 (necessarily a cold start there) show no charge;
    # 1 charges all of it, as vLLM's arithmetic implies (docs/imitations.md, "Memory model")
    cold_load_charge: float = 0.0
    ledger_dir: str = "/var/lib/vllm-sim"  # VLLM_SIM_LEDGER_DIR: shared state between containers
    instance_id: str = ""  # VLLM_SIM_INSTANCE_ID: ledger name (default: hostname)
    heartbeat_stale_s: float = 5.0  # VLLM_SIM_HEARTBEAT_STALE_S
    # --- time ---
    time_scale: float = 1.0  # VLLM_SIM_TIME_SCALE: startup + stats-log interval
    decode_time_scale: float = 1.0  # VLLM_SIM_DECODE_TIME_SCALE: 0 = instant decoding
    # --- weight loading (loaders.py; docs/imitations.md "Startup phases": each rate's source and range) ---
    load_gbps: float = 0.168  # VLLM_SIM_LOAD_GBPS: mmap (lazy) read rate from disk, GB/s (0.145-0.168)
    eager_gbps: float = 0.91  # VLLM_SIM_EAGER_GBPS: --safetensors-load-strategy eager from disk (0.36-0.91)
    fastsafetensors_gbps: float = 1.1  # VLLM_SIM_FASTSAFETENSORS_GBPS: --load-format fastsafetensors (0.56-2.0)
    page_cache_gbps: float = 2.8  # VLLM_SIM_PAGE_CACHE_GBPS: eager/fastsafetensors from page cache (2.8-4.1)
    mmap_warm_gbps: float = 0.68  # VLLM_SIM_MMAP_WARM_GBPS: mmap from page cache (0.168-2.8)
    no_fastsafetensors: bool = False  # VLLM_SIM_NO_FASTSAFETENSORS=1: the image lacks the package
    # --- the torch.compile cache (compile_cache.py) ---
    compile_cache_load_s: float = 1.8  # VLLM_SIM_COMPILE_CACHE_LOAD_S: reading the compiled graphs (1.8-7.5)
    # --- the roofline ---
    mem_bw_gbps: float = 273.0  # VLLM_SIM_MEM_BW_GBPS: LPDDR5x bandwidth
    bw_efficiency: float = 0.80  # VLLM_SIM_BW_EFFICIENCY: achieved fraction of it
    compute_tflops: float = 100.0  # VLLM_SIM_COMPUTE_TFLOPS: effective FP8 dense TFLOPS
    step_overhead_ms: float = 4.0  # VLLM_SIM_STEP_OVERHEAD_MS: scheduler + sampler per step
    frontend_overhead_ms: float = 60.0  # VLLM_SIM_FRONTEND_OVERHEAD_MS: template, tokenize, detokenize
    # --- faults ---
    fault_die_after_s: float | None = None  # VLLM_SIM_FAULT_DIE_AFTER_S
    fault_hang_after_s: float | None = None  # VLLM_SIM_FAULT_HANG_AFTER_S
    fault_hang_scope: str = "all"  # VLLM_SIM_FAULT_HANG_SCOPE: all | engine
    fault_empty_output: bool = False  # VLLM_SIM_FAULT_EMPTY_OUTPUT
    fault_slow_start: float = 1.0  # VLLM_SIM_FAULT_SLOW_START
    fault_cuda_oom: bool = False  # VLLM_SIM_FAULT_CUDA_OOM
    fault_profile_overshoot_gib: float | None = (
        None  # VLLM_SIM_FAULT_PROFILE_OVERSHOOT_GIB: hold budget + N while profiling
    )
    fault_profile_overshoot_s: float = 5.0  # VLLM_SIM_FAULT_PROFILE_OVERSHOOT_S: least real seconds of that phase
    # VLLM_SIM_FAULT_PROFILING_RELEASE_GIB: GiB another process releases while vLLM profiles
    fault_profiling_release_gib: float | None = None
    # VLLM_SIM_FAULT_PROFILING_RELEASE_TIMES: on the first N starts sharing the ledger (then memory is steady)
    fault_profiling_release_times: int = 1
    # --- outside load that drives the service-level breaches (engine.Pressure; also POST /_sim/pressure) ---
    pressure_kv_reserved: float = 0.0  # VLLM_SIM_PRESSURE_KV_RESERVED: fraction of KV blocks held from outside
    pressure_first_token_delay_s: float = 0.0  # VLLM_SIM_PRESSURE_FIRST_TOKEN_DELAY_S: each request waits that long
    pressure_token_delay_s: float = 0.0  # VLLM_SIM_PRESSURE_TOKEN_DELAY_S: added to every engine step
    pressure_preemptions_per_s: float = 0.0  # VLLM_SIM_PRESSURE_PREEMPTIONS_PER_S: forced preemptions while running
    # --- environment seen by "vLLM" ---
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Knobs:
        """Read the knobs from `env` (default: the process environment)."""
        e: Mapping[str, str] = dict(os.environ) if env is None else dict(env)
        version = e.get("VLLM_SIM_VERSION", "").strip() or cls.version
        release(version)  # a text that is no version fails here, naming the knob
        return cls(
            version=version,
            device_total_gib=_float(e, "VLLM_SIM_DEVICE_TOTAL_GIB", cls.device_total_gib),
            system_baseline_gib=_float(e, "VLLM_SIM_SYSTEM_BASELINE_GIB", cls.system_baseline_gib),
            non_torch_gib=_float(e, "VLLM_SIM_NON_TORCH_GIB", cls.non_torch_gib),
            shmem_gib=max(0.0, _float(e, "VLLM_SIM_SHMEM_GIB", cls.shmem_gib)),
            cold_load_charge=min(1.0, max(0.0, _float(e, "VLLM_SIM_COLD_LOAD_CHARGE", cls.cold_load_charge))),
            ledger_dir=e.get("VLLM_SIM_LEDGER_DIR", "").strip() or cls.ledger_dir,
            instance_id=e.get("VLLM_SIM_INSTANCE_ID", "").strip(),
            heartbeat_stale_s=_float(e, "VLLM_SIM_HEARTBEAT_STALE_S", cls.heartbeat_stale_s),
            time_scale=max(0.0, _float(e, "VLLM_SIM_TIME_SCALE", cls.time_scale)),
            decode_time_scale=max(0.0, _float(e, "VLLM_SIM_DECODE_TIME_SCALE", cls.decode_time_scale)),
            load_gbps=max(1e-6, _float(e, "VLLM_SIM_LOAD_GBPS", cls.load_gbps)),
            eager_gbps=max(1e-6, _float(e, "VLLM_SIM_EAGER_GBPS", cls.eager_gbps)),
            fastsafetensors_gbps=max(1e-6, _float(e, "VLLM_SIM_FASTSAFETENSORS_GBPS", cls.fastsafetensors_gbps)),
            page_cache_gbps=max(1e-6, _float(e, "VLLM_SIM_PAGE_CACHE_GBPS", cls.page_cache_gbps)),
            mmap_warm_gbps=max(1e-6, _float(e, "VLLM_SIM_MMAP_WARM_GBPS", cls.mmap_warm_gbps)),
            no_fastsafetensors=_flag(e, "VLLM_SIM_NO_FASTSAFETENSORS"),
            compile_cache_load_s=max(0.0, _float(e, "VLLM_SIM_COMPILE_CACHE_LOAD_S", cls.compile_cache_load_s)),
            mem_bw_gbps=max(1e-6, _float(e, "VLLM_SIM_MEM_BW_GBPS", cls.mem_bw_gbps)),
            bw_efficiency=min(1.0, max(1e-3, _float(e, "VLLM_SIM_BW_EFFICIENCY", cls.bw_efficiency))),
            compute_tflops=max(1e-6, _float(e, "VLLM_SIM_COMPUTE_TFLOPS", cls.compute_tflops)),
            step_overhead_ms=max(0.0, _float(e, "VLLM_SIM_STEP_OVERHEAD_MS", cls.step_overhead_ms)),
            frontend_overhead_ms=max(0.0, _float(e, "VLLM_SIM_FRONTEND_OVERHEAD_MS", cls.frontend_overhead_ms)),
            fault_die_after_s=_opt_float(e, "VLLM_SIM_FAULT_DIE_AFTER_S"),
            fault_hang_after_s=_opt_float(e, "VLLM_SIM_FAULT_HANG_AFTER_S"),
            fault_hang_scope=(e.get("VLLM_SIM_FAULT_HANG_SCOPE", "").strip().lower() or "all"),
            fault_empty_output=_flag(e, "VLLM_SIM_FAULT_EMPTY_OUTPUT"),
            fault_slow_start=max(0.0, _float(e, "VLLM_SIM_FAULT_SLOW_START", 1.0)),
            fault_cuda_oom=_flag(e, "VLLM_SIM_FAULT_CUDA_OOM"),
            fault_profile_overshoot_gib=_opt_float(e, "VLLM_SIM_FAULT_PROFILE_OVERSHOOT_GIB"),
            fault_profile_overshoot_s=max(
                0.0, _float(e, "VLLM_SIM_FAULT_PROFILE_OVERSHOOT_S", cls.fault_profile_overshoot_s)
            ),
            fault_profiling_release_gib=_opt_float(e, "VLLM_SIM_FAULT_PROFILING_RELEASE_GIB"),
            fault_profiling_release_times=int(
                _float(e, "VLLM_SIM_FAULT_PROFILING_RELEASE_TIMES", cls.fault_profiling_release_times)
            ),
            pressure_kv_reserved=min(1.0, max(0.0, _float(e, "VLLM_SIM_PRESSURE_KV_RESERVED", 0.0))),
            pressure_first_token_delay_s=max(0.0, _float(e, "VLLM_SIM_PRESSURE_FIRST_TOKEN_DELAY_S", 0.0)),
            pressure_token_delay_s=max(0.0, _float(e, "VLLM_SIM_PRESSURE_TOKEN_DELAY_S", 0.0)),
            pressure_preemptions_per_s=max(0.0, _float(e, "VLLM_SIM_PRESSURE_PREEMPTIONS_PER_S", 0.0)),
            env=e,
        )

    @property
    def behaviour(self) -> Behaviour:
        """The forms of the vLLM version this imitation speaks (versions.py)."""
        return behaviour(self.version)

    @property
    def startup_scale(self) -> float:
        """Multiplier applied to every modelled startup duration."""
        return self.time_scale * self.fault_slow_start
