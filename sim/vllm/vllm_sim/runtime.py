"""`vllm serve`: the startup sequence of the version it speaks (versions.py), then serving until SIGTERM.

Why one class walking the phases in order: the log is the product here — the
lines, their order and their timing are what operators and the project's
health gates observe — so the sequence reads top to bottom as the real
server's output does, and each phase calls the pure modules (model_files,
memory, timing) for the facts it prints.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass

from . import faults, loaders, model_files
from .api import Protocol
from .cli import ServeArgs
from .compile_cache import CompileCache, compile_cache, disabled
from .engine import Engine, Pressure
from .failures import STAGE_ARGS, STAGE_LOAD_OOM, STAGE_PORT, StartupFailure
from .knobs import GIB, Knobs
from .ledger import Ledger, MemoryView, default_instance_name
from .logs import API, ENGINE, NONE, VllmLog, shard_bar, tqdm_bar
from .memory import (
    KVPlan,
    check_free_memory,
    check_profiling,
    cuda_graph_sizes,
    plan_kv_cache,
    validate_plan,
)
from .metrics import VllmMetrics
from .server import ROUTES, ServerState, SimHTTPServer
from .timing import (
    API_READY_S,
    CONFIG_S,
    DEVICE_INIT_S,
    DYNAMO_S,
    ENGINE_INIT_S,
    ENGINE_SPAWN_S,
    GRAPH_S_PER_SIZE,
    INDUCTOR_S,
    PLATFORM_S,
    PROFILE_S,
    Roofline,
    StartupTimeline,
)
from .tracebacks import render_failure
from .versions import Line, format_gib

DEFAULT_MAX_BATCHED_TOKENS = 8192  # serve on a >= 70 GiB device (vllm arg_utils)
DEFAULT_MAX_NUM_SEQS = 1024
CUDA_CONTEXT_GIB = 0.5
HEARTBEAT_S = 1.0
GB10_WARNING = (
    "/usr/local/lib/python3.12/dist-packages/torch/cuda/__init__.py:283: UserWarning: \n"
    "    Found GPU0 NVIDIA GB10 which is of cuda capability 12.1.\n"
    "    Minimum and Maximum cuda capability supported by this version of PyTorch is\n"
    "    (8.0) - (12.0)\n"
    "    \n"
    "  warnings.warn("
)


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived while starting up."""


@dataclass
class Settings:
    """Engine settings after vLLM's defaults are applied."""

    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int
    prefix_caching: bool
    quantization: str | None


class Runtime:
    """One `vllm serve` process."""

    def __init__(self, args: ServeArgs, knobs: Knobs, log: VllmLog | None = None) -> None:
        self.args = args
        self.knobs = knobs
        self.env = knobs.env
        api_pid = os.getpid()
        self.b = knobs.behaviour
        self.log = log or VllmLog(api_pid, api_pid + 215, None, self.b.engine_proc, self.b.raw_prefixed)
        self.stop = threading.Event()
        self.exit_code = 0
        self.ledger = Ledger.open(
            knobs.ledger_dir,
            default_instance_name(knobs.instance_id),
            knobs.heartbeat_stale_s,
            knobs.device_total_gib,
            knobs.system_baseline_gib,
            knobs.shmem_gib,
        )
        self.held_gib = 0.0
        self._init_view: MemoryView | None = None  # the machine at init_device (this server left out)
        self._compile_s = 0.0
        self.held_state = "starting"
        self._held_lock = threading.Lock()  # one writer of our entry at a time, newest value last
        self._overshoot_since: float | None = None
        self._heartbeat: threading.Thread | None = None
        self.httpd: SimHTTPServer | None = None

    # --- helpers -------------------------------------------------------------
    def _line(self, proc: str, line: Line, **fields: object) -> None:
        """One INFO line in the version's form (versions.py: where and template)."""
        where, template = line
        self.log.info(proc, where, template.format(**fields))

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(max(0.0, seconds)):
            raise Interrupted()

    def _install_signals(self) -> None:
        def handler(signum: int, frame: object) -> None:
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def exit_with(self, code: int) -> None:
        self.exit_code = code
        self.stop.set()

    def _hold(self, gib: float, state: str) -> None:
        """Hold `gib` from now on, published at once (the heartbeat repeats it every second)."""
        with self._held_lock:
            self.held_gib, self.held_state = gib, state
            self.ledger.publish(gib, state, self.args.model)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self.stop.is_set():
                with self._held_lock:
                    if self.stop.is_set():
                        break
                    self.ledger.publish(self.held_gib, self.held_state, self.args.model)
                self.stop.wait(HEARTBEAT_S)

        self._heartbeat = threading.Thread(target=beat, name="ledger-heartbeat", daemon=True)
        self._heartbeat.start()

    # --- entry ---------------------------------------------------------------
    def serve(self) -> int:
        self._install_signals()
        try:
            state = self._startup()
        except StartupFailure as failure:
            render_failure(self.log, failure)
            self._teardown()
            return 1
        except Interrupted:
            self._teardown()
            return 0
        faults.arm(self.knobs, state, state.engine, self.log, self.exit_with)
        self._stats_loop(state)
        while not self.stop.wait(0.5):
            pass
        self._shutdown(state)
        return self.exit_code

    def _release_memory(self) -> None:
        """Stop the heartbeat first so it cannot re-publish after the entry is deleted."""
        self.stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(2.0)
        self.ledger.release()

    def _teardown(self) -> None:
        self.stop.set()
        if self.httpd is not None:
            self.httpd.server_close()
        self._release_memory()

    def _shutdown(self, state: ServerState) -> None:
        state.stopping.set()
        self.log.uvicorn("Shutting down")
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        state.engine.stop()
        self.log.uvicorn("Waiting for application shutdown.")
        self.log.uvicorn("Application shutdown complete.")
        self.log.uvicorn(f"Finished server process [{self.log.api_pid}]")
        self._release_memory()

    # --- the startup sequence ------------------------------------------------
    def _startup(self) -> ServerState:
        t = StartupTimeline(self.knobs.startup_scale, 0.0)  # per-shard time comes with the weights
        self.log.info(NONE, "__init__.py:241", "Automatically detected platform cuda.")
        self._sleep(t(PLATFORM_S))
        self._line(API, self.b.version_line, version=self.knobs.version, model=self.args.model)
        self.log.info(API, "utils.py:326", f"non-default args: {self.args.non_default}")
        self._bind()
        self._sleep(t(CONFIG_S))
        cfg = model_files.load_config(self.args.model, self.args.revision, self.env)
        settings = self._settings(cfg)
        self.log.info(API, "__init__.py:711", f"Resolved architecture: {cfg.architecture}")
        self.log.info(API, "__init__.py:1750", f"Using max model len {settings.max_model_len}")
        self.log.info(
            API,
            "scheduler.py:222",
            f"Chunked prefill is enabled with max_num_batched_tokens={settings.max_num_batched_tokens}.",
        )
        model_files.check_tokenizer(self.args.model, self.args.revision, self.env)
        self._sleep(t(ENGINE_SPAWN_S))
        self._engine_intro(settings)
        self._sleep(t(ENGINE_INIT_S))
        self.log.raw(ENGINE, GB10_WARNING)
        self.log.info(
            ENGINE,
            "parallel_state.py:1134",
            "rank 0 in world size 1 is assigned as DP rank 0, PP rank 0, TP rank 0, EP rank 0",
        )
        self._init_device()
        self._sleep(t(DEVICE_INIT_S))
        weights = self._load_weights()
        init_start = time.monotonic()
        self._begin_profile_overshoot()
        self._compile(t, settings)
        plan = self._kv_cache(cfg, settings, weights.total_size, t)
        self._graphs(plan, settings, t)
        self._line(ENGINE, self.b.init_engine, seconds=time.monotonic() - init_start, compile=self._compile_s)
        state = self._build_server(cfg, settings, plan, weights.total_size)
        self._api_ready(plan, t)
        return state

    def _bind(self) -> None:
        """Reserve the port now (a conflict fails here, as in vLLM); listen() only once ready."""
        self.httpd = SimHTTPServer((self.args.host or "", self.args.port), None)  # type: ignore[arg-type]
        try:
            self.httpd.server_bind()
        except OSError as exc:
            self.httpd.server_close()
            self.httpd = None
            raise StartupFailure(STAGE_PORT, "OSError", f"[Errno {exc.errno}] {exc.strerror}") from None

    def _settings(self, cfg: model_files.ModelConfig) -> Settings:
        """Apply vLLM's defaults and its engine-args validation."""
        a = self.args
        if not 0 < a.gpu_memory_utilization <= 1:
            raise StartupFailure(
                STAGE_ARGS,
                "ValueError",
                f"GPU memory utilization must be less than 1.0. Got {a.gpu_memory_utilization}.",
            )
        derived = cfg.max_position_embeddings
        max_len = a.max_model_len or derived
        if max_len > derived and self.env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "") not in ("1", "true", "True"):
            raise StartupFailure(
                STAGE_ARGS,
                "pydantic_core._pydantic_core.ValidationError",
                "1 validation error for ModelConfig\n  Value error, User-specified max_model_len "
                f"({max_len}) is greater than the derived max_model_len (max_position_embeddings={derived} or "
                "model_max_length=None in model's config.json). This may lead to incorrect model outputs or CUDA "
                "errors. To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 "
                "[type=value_error, input_value=ArgsKwargs((), {'model': "
                f"'{a.model}', ...}}), input_type=ArgsKwargs]\n"
                "    For further information visit https://errors.pydantic.dev/2.11/v/value_error",
            )
        return Settings(
            max_model_len=max_len,
            max_num_batched_tokens=a.max_num_batched_tokens or DEFAULT_MAX_BATCHED_TOKENS,
            max_num_seqs=a.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
            prefix_caching=a.enable_prefix_caching is not False,
            quantization=a.quantization or cfg.quant_method,
        )

    def _engine_intro(self, s: Settings) -> None:
        a = self.args
        sizes = sorted(cuda_graph_sizes(s.max_num_seqs), reverse=True)
        compilation = (
            '{"level":3,"debug_dump_path":"","cache_dir":"","backend":"","custom_ops":[],'
            '"splitting_ops":["vllm.unified_attention","vllm.unified_attention_with_output","vllm.mamba_mixer2"],'
            '"use_inductor":true,"compile_sizes":[],"inductor_compile_config":{"enable_auto_functionalized_v2":false},'
            '"inductor_passes":{},"cudagraph_mode":1,"use_cudagraph":true,"cudagraph_num_of_warmups":1,'
            f'"cudagraph_capture_sizes":[{",".join(map(str, sizes))}],"cudagraph_copy_inputs":false,'
            f'"full_cuda_graph":false,"pass_config":{{}},"max_capture_size":{sizes[0]},"local_cache_dir":null}}'
        )
        served = ", ".join(a.served_names) if a.served_model_name else a.model
        self.log.info(NONE, "__init__.py:241", "Automatically detected platform cuda.")
        self.log.info(ENGINE, "core.py:636", "Waiting for init message from front-end.")
        self.log.info(
            ENGINE,
            "core.py:74",
            (
                f"Initializing a V1 LLM engine (v{self.knobs.version}) with config: model={a.model!r}, "
                f"speculative_config=None, "
                f"tokenizer={a.model!r}, skip_tokenizer_init=False, tokenizer_mode=auto, revision={a.revision}, "
                f"override_neuron_config={{}}, tokenizer_revision=None, trust_remote_code={a.trust_remote_code}, "
                f"dtype=torch.bfloat16, max_seq_len={s.max_model_len}, download_dir={a.download_dir!r}, "
                f"load_format={a.load_format}, "
                "tensor_parallel_size=1, pipeline_parallel_size=1, disable_custom_all_reduce=False, "
                f"quantization={s.quantization}, enforce_eager={a.enforce_eager}, kv_cache_dtype=auto, "
                f"device_config=cuda, "
                "decoding_config=DecodingConfig(backend='auto', disable_fallback=False, disable_any_whitespace=False, "
                "disable_additional_properties=False, reasoning_backend=''), "
                "observability_config=ObservabilityConfig(show_hidden_metrics_for_version=None, "
                "otlp_traces_endpoint=None, collect_detailed_traces=None), "
                f"seed={a.seed if a.seed is not None else 0}, served_model_name={served}, "
                f"enable_prefix_caching={s.prefix_caching}, chunked_prefill_enabled=True, use_async_output_proc=True, "
                f"pooler_config=None, compilation_config={compilation}"
            ),
        )

    def _init_device(self) -> None:
        """gpu_worker.init_device: the free-memory check against the shared ledger.

        The same view as `python3 -m vllm_sim meminfo` renders, minus our own entry: MemFree up to
        0.10.x, MemAvailable from 0.11.1 (versions.py `free_memory_reads`).
        """
        view = self.ledger.view(include_self=False)
        self._init_view = view
        free = view.reads(self.b.free_memory_reads)
        check_free_memory(free, self.knobs.device_total_gib, self.args.gpu_memory_utilization, self.b)
        self._hold(CUDA_CONTEXT_GIB, "loading")
        self._start_heartbeat()

    def _load_weights(self) -> model_files.WeightsSnapshot:
        a = self.args
        start = time.monotonic()
        self.log.info(ENGINE, "gpu_model_runner.py:1953", f"Starting to load model {a.model}...")
        self.log.info(ENGINE, "gpu_model_runner.py:1985", "Loading model from scratch...")
        self.log.info(ENGINE, "cuda.py:328", "Using Flash Attention backend on V1 engine.")
        weights = model_files.locate_weights(a.model, a.revision, a.download_dir, self.env)
        if not os.path.isdir(a.model):
            self.log.info(ENGINE, "weight_utils.py:296", "Using model weights format ['*.safetensors']")
        loader = loaders.resolve_loader(a.load_format, a.safetensors_load_strategy, self.b, self.knobs)
        n = len(weights.shard_names)
        key = f"{a.model}@{weights.commit}" if weights.commit != "local" else str(weights.snapshot_dir.resolve())
        weights_gib = weights.total_size / GIB
        warm = loaders.warm_shards(n, weights_gib, self.ledger.page_cache_of(key))
        buffer_gib = loader.buffer_files * weights_gib / max(1, n)  # one file read whole (loaders.py)
        load_start = time.monotonic()
        self.log.bar(shard_bar(0, n, 0.0, loader.desc))
        if loader.name == loaders.FASTSAFETENSORS and self.knobs.no_fastsafetensors:
            raise loaders.missing_package(self.b)
        for i, name in enumerate(weights.shard_names):
            model_files.check_shard(weights.shard_path(name))
            if self.knobs.fault_cuda_oom and i == n // 2:
                raise self._cuda_oom(weights_gib * i / n)
            self._hold(CUDA_CONTEXT_GIB + weights_gib * i / n + buffer_gib, "loading")
            self._sleep(loader.shard_seconds(weights.total_size // max(1, n), warm[i]) * self.knobs.startup_scale)
            loaded = weights_gib * (i + 1) / n
            self._hold(CUDA_CONTEXT_GIB + loaded + (buffer_gib if i + 1 < n else 0.0), "loading")
            self.ledger.record_load(key, loaded)
            self.log.bar(shard_bar(i + 1, n, time.monotonic() - load_start, loader.desc))
        self._line(ENGINE, self.b.loading_weights, seconds=time.monotonic() - load_start)
        self._line(
            ENGINE,
            self.b.model_loading,
            gib=weights_gib,
            gib_r=format_gib(weights.total_size),
            seconds=time.monotonic() - start,
        )
        return weights

    def _cuda_oom(self, loaded_gib: float) -> StartupFailure:
        total = self.knobs.device_total_gib
        in_use = loaded_gib + CUDA_CONTEXT_GIB
        return StartupFailure(
            STAGE_LOAD_OOM,
            "torch.OutOfMemoryError",
            f"CUDA out of memory. Tried to allocate 768.00 MiB. GPU 0 has a total capacity of {total:.2f} GiB of "
            f"which 412.00 MiB is free. Including non-PyTorch memory, this process has {in_use:.2f} GiB memory in use. "
            f"Of the allocated memory {loaded_gib:.2f} GiB is allocated by PyTorch, and 152.00 MiB is reserved by "
            "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
            "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
        )

    def _begin_profile_overshoot(self) -> None:
        """VLLM_SIM_FAULT_PROFILE_OVERSHOOT_GIB=N: the profiling run takes budget + N GiB (vllm issue
        46307: on GB10 the utilization is no hard cap while vLLM profiles), beyond what is free if
        need be, until the profile ends.  A real GB10 may hang there; the imitation goes on."""
        extra = self.knobs.fault_profile_overshoot_gib
        if extra is None:
            return
        budget = self.knobs.device_total_gib * self.args.gpu_memory_utilization
        self._overshoot_since = time.monotonic()
        self._hold(budget + extra, "profiling")

    def _end_profile_overshoot(self) -> None:
        """The overshooting phase lasts at least VLLM_SIM_FAULT_PROFILE_OVERSHOOT_S real seconds."""
        if self._overshoot_since is None:
            return
        self._sleep(self.knobs.fault_profile_overshoot_s - (time.monotonic() - self._overshoot_since))
        self._overshoot_since = None

    def _compile(self, t: StartupTimeline, settings: Settings) -> None:
        """torch.compile, through vLLM's compile cache (compile_cache.py): a hit reads the entry an
        earlier start of the same config left in $VLLM_CACHE_ROOT and takes VLLM_SIM_COMPILE_CACHE_LOAD_S
        instead of the Inductor compile; the 0.31 AOT artifact skips Dynamo as well."""
        if self.args.enforce_eager:
            return
        start = time.monotonic()
        a = self.args
        fields = {
            "model": a.model,
            "dtype": a.dtype,
            "quantization": settings.quantization,
            "revision": a.revision,
            "max_model_len": settings.max_model_len,
            "trust_remote_code": a.trust_remote_code,
            "max_num_batched_tokens": settings.max_num_batched_tokens,
        }
        cache = None if disabled(self.env) else compile_cache(self.env, self.b, self.knobs.version, fields)
        if cache is not None and self.b.aot_compile and cache.hit():
            self._sleep(t(self.knobs.compile_cache_load_s))
            self._line(ENGINE, self.b.cache_hit_line, path=cache.aot_path)
        else:
            self._compile_graphs(t, settings, cache, start)
        self._compile_s = time.monotonic() - start
        self._line(ENGINE, self.b.compile_total, seconds=self._compile_s)

    def _compile_graphs(self, t: StartupTimeline, s: Settings, cache: CompileCache | None, start: float) -> None:
        """Dynamo, then the backend: the graphs loaded from the cache or compiled and stored."""
        hit = cache is not None and cache.hit()
        self._sleep(t(DYNAMO_S))
        if cache is None:
            self._line(ENGINE, self.b.cache_disabled_line)
        else:
            self._line(ENGINE, self.b.cache_dir_line, path=cache.local_dir)
        self.log.info(ENGINE, "backends.py:559", f"Dynamo bytecode transform time: {time.monotonic() - start:.2f} s")
        if hit:
            mid = time.monotonic()
            self._sleep(t(self.knobs.compile_cache_load_s))
            self._line(
                ENGINE, self.b.cache_hit_line, seconds=time.monotonic() - mid, max_tokens=s.max_num_batched_tokens
            )
            return
        self._sleep(t(INDUCTOR_S * 0.25))
        if cache is not None:
            self.log.info(ENGINE, "backends.py:194", "Cache the graph for dynamic shape for later use")
        mid = time.monotonic()
        self._sleep(t(INDUCTOR_S * 0.75))
        self.log.info(
            ENGINE,
            "backends.py:215",
            f"Compiling a graph for dynamic shape takes {time.monotonic() - mid + t(INDUCTOR_S * 0.25):.2f} s",
        )
        if cache is not None:
            cache.write()
            if self.b.aot_compile:
                self._line(ENGINE, self.b.aot_saved_line, path=cache.aot_path)

    def _kv_cache(self, cfg: model_files.ModelConfig, s: Settings, weights_bytes: int, t: StartupTimeline) -> KVPlan:
        self._sleep(t(PROFILE_S))
        self._end_profile_overshoot()
        plan = plan_kv_cache(
            cfg,
            self.knobs.device_total_gib,
            self.args.gpu_memory_utilization,
            weights_bytes,
            s.max_model_len,
            s.max_num_batched_tokens,
            s.max_num_seqs,
            self._non_torch_gib(weights_bytes),
        )
        self._line(ENGINE, self.b.available_kv, gib=plan.available_gib, gib_r=format_gib(plan.available_bytes))
        validate_plan(plan, self.b)
        for line in self.b.kv_size:
            self._line(ENGINE, line, tokens=plan.num_tokens, max_len=s.max_model_len, concurrency=plan.max_concurrency)
        self._hold(plan.requested_bytes / GIB, "profiled")
        return plan

    def _non_torch_gib(self, weights_bytes: int) -> float:
        """memory_profiling's non-torch increase: the calibrated constant plus what the rest of the
        machine changed since init_device, as the version reads free memory.

        vLLM measures it as the change of (total - free - torch) between init_device and the end of
        profiling (vllm/utils/__init__.py:2737-2744 in 0.10.1.1; mem_utils.py:223-228 in 0.11.1), so
        on 0.10.x (free = MemFree) the page cache this start's own load filled is charged as
        non-torch memory (vllm issue 35920; VLLM_SIM_COLD_LOAD_CHARGE scales it), while from 0.11.1
        (MemAvailable) it is not. Memory others released makes it smaller; released beyond what vLLM
        took since init_device, the profiling assertion fails (VLLM_SIM_FAULT_PROFILING_RELEASE_GIB).
        """
        assert self._init_view is not None
        init, end = self._init_view, self.ledger.view(include_self=False)
        semantics = self.b.free_memory_reads
        others_grew = init.reads(semantics) - end.reads(semantics)
        if semantics == "MemFree":
            page_growth = max(0.0, end.page_cache_gib - init.page_cache_gib)
            others_grew -= (1.0 - self.knobs.cold_load_charge) * min(page_growth, max(0.0, others_grew))
        released = self._profiling_release()
        own = weights_bytes / GIB + self.knobs.non_torch_gib
        after_free = init.reads(semantics) - others_grew + released - own
        check_profiling(int(init.reads(semantics) * GIB), int(after_free * GIB), self.b)
        return self.knobs.non_torch_gib + others_grew - released

    def _profiling_release(self) -> float:
        """VLLM_SIM_FAULT_PROFILING_RELEASE_GIB, on the first ..._TIMES starts sharing the ledger."""
        gib = self.knobs.fault_profiling_release_gib
        if gib is None or not self.ledger.take_fault("profiling_release", self.knobs.fault_profiling_release_times):
            return 0.0
        return gib

    def _graphs(self, plan: KVPlan, s: Settings, t: StartupTimeline) -> None:
        if self.args.enforce_eager:
            return
        desc = "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE)"
        n = len(cuda_graph_sizes(s.max_num_seqs))
        start = time.monotonic()
        self.log.bar(tqdm_bar(desc, 0, n, 0.0))
        self._sleep(t(GRAPH_S_PER_SIZE * n))
        elapsed = time.monotonic() - start
        self.log.bar(tqdm_bar(desc, n, n, elapsed))
        self._line(ENGINE, self.b.graphs, seconds=elapsed, gib=plan.graph_gib)
        self._hold(plan.held_gib, "ready")

    def _build_server(self, cfg: model_files.ModelConfig, s: Settings, plan: KVPlan, weights_bytes: int) -> ServerState:
        a = self.args
        metrics = VllmMetrics(
            a.served_names[0],
            {
                "block_size": "16",
                "cache_dtype": "auto",
                "calculate_kv_scales": "False",
                "cpu_offload_gb": "0",
                "enable_prefix_caching": str(s.prefix_caching),
                "gpu_memory_utilization": str(a.gpu_memory_utilization),
                "is_attention_free": "False",
                "num_cpu_blocks": "None",
                "num_gpu_blocks": str(plan.num_blocks),
                "num_gpu_blocks_override": "None",
                "prefix_caching_hash_algo": "builtin",
                "sliding_window": "None",
                "swap_space": "4",
                "swap_space_bytes": str(4 * GIB),
            },
            gpu_cache=self.b.gpu_cache_metric,
            tpot=self.b.tpot_metric,
            itl=self.b.itl_metric,
            request_tpot=self.b.request_tpot_metric,
            finish_reasons=self.b.finish_reasons,
        )
        roofline = Roofline.from_knobs(self.knobs, weights_bytes, cfg.kv_bytes_per_token, cfg.active_params)
        engine = Engine(
            roofline,
            metrics,
            s.max_num_seqs,
            s.max_num_batched_tokens,
            plan.num_blocks,
            self.knobs.decode_time_scale,
            s.prefix_caching,
            Pressure(
                self.knobs.pressure_kv_reserved,
                self.knobs.pressure_first_token_delay_s,
                self.knobs.pressure_token_delay_s,
                self.knobs.pressure_preemptions_per_s,
            ),
        )
        protocol = Protocol(a.served_names, a.model, s.max_model_len, self.knobs.fault_empty_output)
        api_key = a.api_key or self.env.get("VLLM_API_KEY") or None
        state = ServerState(
            protocol,
            engine,
            metrics,
            self.log,
            api_key,
            roofline.frontend_overhead_s * self.knobs.decode_time_scale,
            access_log=not a.disable_uvicorn_access_log,
            version=self.knobs.version,
            dead_health=self.b.dead_health,
        )
        assert self.httpd is not None
        self.httpd.state = state
        engine.start()
        return state

    def _sampling_defaults(self) -> str | None:
        """generation_config.json's sampling keys, as vLLM prints them (None when absent)."""
        try:
            cfg_dir = model_files.config_dir(self.args.model, self.args.revision, self.env)
            gen = json.loads((cfg_dir / "generation_config.json").read_text())
        except (OSError, ValueError, StartupFailure):
            return None
        keys = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p", "max_new_tokens")
        picked = {k: gen[k] for k in keys if k in gen}
        return repr(picked) if picked else None

    def _api_ready(self, plan: KVPlan, t: StartupTimeline) -> None:
        self.log.info(
            API,
            "loggers.py:142",
            f"Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: {plan.num_blocks}",
        )
        self.log.info(API, "api_server.py:1611", "Supported_tasks: ['generate']")
        defaults = self._sampling_defaults()
        if defaults:
            self.log.warning(
                API,
                "__init__.py:1625",
                "Default sampling parameters have been overridden by the model's Hugging Face generation "
                "config recommended from the model creator. If this is not intended, please relaunch vLLM "
                "instance with `--generation-config vllm`.",
            )
            self.log.info(API, "serving_responses.py:120", f"Using default chat sampling params from model: {defaults}")
            self.log.info(API, "serving_chat.py:134", f"Using default chat sampling params from model: {defaults}")
            self.log.info(
                API, "serving_completion.py:77", f"Using default completion sampling params from model: {defaults}"
            )
        host = self.args.host or "0.0.0.0"
        host = f"[{host}]" if ":" in host else host
        self._line(API, self.b.server_start, url=f"http://{host}:{self.args.port}")
        self.log.info(API, "launcher.py:36", "Available routes are:")
        for path, methods in ROUTES:
            self.log.info(API, "launcher.py:44", f"Route: {path}, Methods: {methods}")
        self._sleep(t(API_READY_S))
        assert self.httpd is not None
        self.httpd.server_activate()
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
        ).start()
        self.log.uvicorn(f"Started server process [{self.log.api_pid}]")
        self.log.uvicorn("Waiting for application startup.")
        self.log.uvicorn("Application startup complete.")

    # --- periodic stats ------------------------------------------------------
    def _stats_loop(self, state: ServerState) -> None:
        """`Engine 000: Avg prompt throughput ...` every 10 s (scaled), only around traffic."""
        if self.args.disable_log_stats:
            return
        interval = max(0.05, 10.0 * self.knobs.time_scale)

        def run() -> None:
            last = time.monotonic()
            prev_active = False
            while not self.stop.wait(interval):
                now = time.monotonic()
                window, running, waiting, kv, hit = state.engine.take_window()
                elapsed = max(1e-6, now - last)
                last = now
                prompt_tps = window.prompt_tokens / elapsed
                gen_tps = window.generation_tokens / elapsed
                active = bool(window.prompt_tokens or window.generation_tokens)
                if active or prev_active:
                    self.log.info(
                        API,
                        "loggers.py:123",
                        (
                            f"Engine 000: Avg prompt throughput: {prompt_tps:.1f} tokens/s, Avg generation throughput: "
                            f"{gen_tps:.1f} tokens/s, Running: {running} reqs, Waiting: {waiting} reqs, "
                            f"GPU KV cache usage: {kv * 100:.1f}%, Prefix cache hit rate: {hit * 100:.1f}%"
                        ),
                    )
                prev_active = active

        threading.Thread(target=run, name="stat-logger", daemon=True).start()


def serve(args: ServeArgs) -> int:
    """Run `vllm serve` with the process environment's knobs."""
    return Runtime(args, Knobs.from_env()).serve()
