"""What differs between the vLLM versions the imitation speaks: one table, selected by version.

Why one table: the imitation stands for several NGC images (25.09's vLLM 0.10.1.1 up to 26.10's
0.31.0, docs/imitations.md "Versions"), and what differs between them is data — a log line's text
and source, an error's wording, which metrics exist, what the free-memory check reads, the status
of /health on a dead engine. Every module asks `behaviour()` for the row of the running version;
nothing else branches on a version.

Each row holds from its version up to the next row's; any version string selects the row of the
range it falls in (`VLLM_SIM_VERSION=0.13.0` speaks 0.11.1, `0.24` speaks 0.17.1). Every text
is vLLM's own, read in the wheel of the row's version (path:line under vllm/, cited next to it;
a log line's `where` is the `[file:line]` vLLM prints, the line of the logger call). Rows 0.10.2
and 0.17.1 change only the fields cited for them; their other lines keep the previous row's
`[file:line]`. Standard library only (the imitation runs in an image with python3 alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

#: NVIDIA's 25.09 image reports this (`vllm --version`, `vllm.__version__`): the default.
DEFAULT_VERSION = "0.10.1.1+381074ae.nv25.09"

Line = tuple[str, str]  # (the `[file:line]` vLLM prints, the message as a str.format template)

#: 0.17+ vllm/logging's logo (vllm/entrypoints/utils.py:284-289 in 0.17.1;
#: vllm/entrypoints/serve/utils/api_utils.py:329-334 in 0.31.0), monochrome as without a terminal;
#: the message starts with a newline, so its first line is empty.
LOGO = (
    "\n       █     █     █▄   ▄█\n"
    " ▄▄ ▄█ █     █     █ ▀▄▀ █  version {version}\n"
    "  █▄█▀ █     █     █     █  model   {model}\n"
    "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀\n"
)


@dataclass(frozen=True)
class Behaviour:
    """One version's forms. Templates take the named fields shown in their text."""

    since: str  # the first inspected version that shows this row
    engine_proc: str  # the EngineCore process name: log prefix and "Failed core proc(s)"
    raw_prefixed: bool  # decorate_logs wraps stdout/stderr (tracebacks, uvicorn, warnings get the prefix)
    version_line: Line  # {version} {model}
    loading_weights: Line  # {seconds}
    model_loading: Line  # {gib} (float) {gib_r} (format_gib) {seconds}
    compile_total: Line  # {seconds}
    available_kv: Line  # {gib} {gib_r}
    kv_size: tuple[Line, ...]  # {tokens} {max_len} {concurrency}
    graphs: Line  # {seconds} {gib}
    init_engine: Line  # {seconds} {compile}
    server_start: Line  # {url}
    free_memory_reads: str  # "MemFree" | "MemAvailable": what the startup check and the profiler read on GB10
    free_memory_device: str  # "" | " cuda:0" after "Free memory on device"
    requested_ceil: bool  # requested = ceil(total x util) (else total x util)
    gib_format: str  # "round" (round(x, 2) in gpu_worker) | "format_gib" (the same, via mem_utils.format_gib)
    kv_no_memory: str
    kv_too_small: str  # {max_len} {needed} {available} {estimate}
    kv_estimate: str  # {estimate}; left out when the estimate is 0
    kv_number: str  # "fixed" (%.2f) | "format_gib"
    profiling_where: str
    profiling_strict: bool  # 0.10-0.11: assert init > after (equal fails too); 0.17+: init >= after
    profiling_number: str  # "raw" (b / GiB_bytes, unrounded) | "format_gib"
    dead_health: int  # GET /health once the engine core died
    dead_monitor: tuple[str, str, str]  # (level, where, message {proc}) the API server logs as the engine dies
    gpu_cache_metric: bool  # vllm:gpu_cache_usage_perc served
    tpot_metric: bool  # vllm:time_per_output_token_seconds served
    itl_metric: bool  # vllm:inter_token_latency_seconds (and TPOT's help says DEPRECATED)
    request_tpot_metric: bool  # vllm:request_time_per_output_token_seconds
    finish_reasons: tuple[str, ...]  # vllm:request_success_total's finished_reason label sets (FINISH_REASON_STRINGS)
    # --- loaders (loaders.py) ---
    load_strategy_choices: tuple[str, ...] | None  # --safetensors-load-strategy: None = no such flag; () = any text
    load_strategy_default: str | None
    mmap_desc: str  # the shard bar's desc with mmap (lazy)
    eager_desc: str  # ... with --safetensors-load-strategy eager
    fastsafetensors_desc: str  # ... with --load-format fastsafetensors
    fastsafetensors_missing: tuple[str, str, str]  # (exception, message, where) when the package does not import
    # --- the torch.compile cache (compile_cache.py) ---
    compile_key_fields: tuple[str, ...]  # the config fields vLLM hashes into the cache directory's name
    compile_hash: str  # "md5" | "sha256" (the digest of the factors, first 10 hex digits)
    cache_dir_line: Line  # {path}
    cache_disabled_line: Line
    cache_hit_line: Line  # {seconds} {max_tokens} (non-AOT) | {path} (AOT)
    aot_compile: bool  # torch.compile runs ahead of time and saves one artifact per rank (decorators.py)
    aot_saved_line: Line  # {path}


_OLD_KV_TOO_SMALL = (
    # vllm/v1/core/kv_cache_utils.py:699-706 in 0.10.1.1 (typo and f"{estimated_msg} " are vLLM's:
    # two spaces when the estimate is 0); :709-716 in 0.11.1
    "To serve at least one request with the models's max seq len ({max_len}), ({needed} GiB KV cache is "
    "needed, which is larger than the available KV cache memory ({available} GiB). {estimate} Try increasing "
    "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
)

V0_10_1_1 = Behaviour(
    since="0.10.1.1",
    engine_proc="EngineCore_0",  # vllm/v1/engine/utils.py:119 name=f"EngineCore_{global_index}"
    raw_prefixed=True,  # vllm/utils/__init__.py decorate_logs wraps sys.stdout/sys.stderr
    version_line=("api_server.py:1805", "vLLM API server version {version}"),  # entrypoints/openai/api_server.py
    # model_executor/model_loader/default_loader.py:262
    loading_weights=("default_loader.py:262", "Loading weights took {seconds:.2f} seconds"),
    model_loading=("gpu_model_runner.py:2007", "Model loading took {gib:.4f} GiB and {seconds:.6f} seconds"),
    compile_total=("monitor.py:34", "torch.compile takes {seconds:.2f} s in total"),  # compilation/monitor.py
    available_kv=("gpu_worker.py:276", "Available KV cache memory: {gib:.2f} GiB"),  # v1/worker/gpu_worker.py
    kv_size=(  # v1/core/kv_cache_utils.py
        ("kv_cache_utils.py:849", "GPU KV cache size: {tokens:,} tokens"),
        ("kv_cache_utils.py:853", "Maximum concurrency for {max_len:,} tokens per request: {concurrency:.2f}x"),
    ),
    graphs=("gpu_model_runner.py:2708", "Graph capturing finished in {seconds:.0f} secs, took {gib:.2f} GiB"),
    init_engine=("core.py:214", "init engine (profile, create kv cache, warmup model) took {seconds:.2f} seconds"),
    server_start=("api_server.py:1880", "Starting vLLM API server 0 on {url}"),
    free_memory_reads="MemFree",  # vllm/utils/__init__.py:2622 torch.cuda.mem_get_info()
    free_memory_device="",  # v1/worker/gpu_worker.py:177-187
    requested_ceil=False,  # gpu_worker.py:175-176 total_memory * gpu_memory_utilization
    gib_format="round",  # gpu_worker.py:178 GiB = lambda b: round(b / GiB_bytes, 2)
    # v1/core/kv_cache_utils.py:682-684
    kv_no_memory=(
        "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing "
        "the engine."
    ),
    kv_too_small=_OLD_KV_TOO_SMALL,
    kv_estimate="Based on the available memory, the estimated maximum model length is {estimate}.",  # :695-697
    kv_number="fixed",
    profiling_where="gpu_worker.py:248",  # v1/worker/gpu_worker.py:248-255, GiB = lambda b: b / GiB_bytes (:236)
    profiling_strict=True,
    profiling_number="raw",
    dead_health=500,  # entrypoints/openai/api_server.py:446-450, then launcher.py:116 terminate_if_errored
    dead_monitor=("ERROR", "core_client.py:562", "Engine core proc {proc} died unexpectedly, shutting down client."),
    gpu_cache_metric=True,  # v1/metrics/loggers.py:212 (deprecated, still served)
    tpot_metric=True,  # loggers.py:381
    itl_metric=False,
    request_tpot_metric=False,
    # v1/engine/__init__.py:21 (every label set made at start, v1/metrics/loggers.py:298-301); 0.10.2-0.17.1 were not
    # inspected for this and keep it
    finish_reasons=("stop", "length", "abort"),
    load_strategy_choices=None,  # engine/arg_utils.py:566 (load group): no --safetensors-load-strategy in 0.10.1.1
    load_strategy_default=None,
    mmap_desc="Loading safetensors checkpoint shards",  # model_loader/weight_utils.py:469
    eager_desc="Loading safetensors checkpoint shards",  # (no eager strategy)
    fastsafetensors_desc="Loading safetensors using Fastsafetensor loader",  # weight_utils.py:520
    # weight_utils.py:47-53 PlaceholderModule("fastsafetensors"); SafeTensorsFileLoader(pg, device) at :524 imports it
    # and raises vllm/utils/__init__.py:2476-2482 (vllm[fastsafetensors] is an extra of the wheel's metadata)
    fastsafetensors_missing=(
        "ImportError",
        "Please install vllm[fastsafetensors] for fastsafetensors support",
        "vllm/utils/__init__.py:2482",
    ),
    # config/__init__.py:486-502 ModelConfig.compute_hash; scheduler and cache configs add nothing (scheduler.py:176)
    compile_key_fields=("model", "dtype", "quantization", "revision", "max_model_len", "trust_remote_code"),
    compile_hash="md5",  # compilation/backends.py:523-526 hashlib.md5(str(factors))[:10]
    cache_dir_line=("backends.py:548", "Using cache directory: {path} for vLLM's torch.compile"),
    cache_disabled_line=("backends.py:546", "vLLM's torch.compile cache is disabled."),
    cache_hit_line=(
        "backends.py:161",
        "Directly load the compiled graph(s) for dynamic shape from the cache, took {seconds:.3f} s",
    ),
    aot_compile=False,
    aot_saved_line=("", ""),
)

V0_10_2 = replace(
    V0_10_1_1,
    since="0.10.2",
    engine_proc="EngineCore_DP0",  # vllm/v1/engine/utils.py:119 name=f"EngineCore_DP{global_index}" in 0.10.2
    version_line=("api_server.py:1896", "vLLM API server version {version}"),
    dead_monitor=("ERROR", "core_client.py:564", "Engine core proc {proc} died unexpectedly, shutting down client."),
    itl_metric=True,  # v1/metrics/loggers.py:396 in 0.10.2 (time_per_output_token's help: DEPRECATED, :383-386)
    # engine/arg_utils.py:598-599, config/load.py:54 `safetensors_load_strategy: str = "lazy"` (vllm PR 24469): any text
    load_strategy_choices=(),
    load_strategy_default="lazy",
    mmap_desc="Loading safetensors checkpoint shards",  # weight_utils.py:525
    eager_desc="Loading safetensors checkpoint shards (eager)",  # weight_utils.py:525-527
    fastsafetensors_desc="Loading safetensors using Fastsafetensor loader",  # weight_utils.py:617
    cache_dir_line=("backends.py:539", "Using cache directory: {path} for vLLM's torch.compile"),
    cache_disabled_line=("backends.py:537", "vLLM's torch.compile cache is disabled."),
)

V0_11_1 = replace(
    V0_10_2,
    since="0.11.1",
    version_line=("api_server.py:1977", "vLLM API server version {version}"),
    loading_weights=("default_loader.py:314", "Loading weights took {seconds:.2f} seconds"),
    model_loading=("gpu_model_runner.py:3334", "Model loading took {gib:.4f} GiB memory and {seconds:.6f} seconds"),
    compile_total=("monitor.py:34", "torch.compile takes {seconds:.2f} s in total"),
    available_kv=("gpu_worker.py:359", "Available KV cache memory: {gib:.2f} GiB"),
    kv_size=(
        ("kv_cache_utils.py:1229", "GPU KV cache size: {tokens:,} tokens"),
        ("kv_cache_utils.py:1234", "Maximum concurrency for {max_len:,} tokens per request: {concurrency:.2f}x"),
    ),
    graphs=("gpu_model_runner.py:4240", "Graph capturing finished in {seconds:.0f} secs, took {gib:.2f} GiB"),
    init_engine=("core.py:250", "init engine (profile, create kv cache, warmup model) took {seconds:.2f} seconds"),
    server_start=("api_server.py:2052", "Starting vLLM API server 0 on {url}"),
    # vllm/utils/mem_utils.py:85-102: on compute capability (12, 1) free = psutil.virtual_memory().available
    free_memory_reads="MemAvailable",
    profiling_where="gpu_worker.py:332",  # v1/worker/gpu_worker.py:332-340, GiB = b / GiB_bytes (:294)
    dead_health=503,  # entrypoints/openai/api_server.py:366-374 EngineDeadError -> 503
    dead_monitor=("ERROR", "core_client.py:598", "Engine core proc {proc} died unexpectedly, shutting down client."),
    # v1/metrics/loggers.py:448-450 only with --show-hidden-metrics-for-version (0.10)
    gpu_cache_metric=False,
    request_tpot_metric=True,  # loggers.py:803
    fastsafetensors_desc="Loading safetensors using Fastsafetensor loader",  # weight_utils.py:728
    cache_dir_line=("backends.py:631", "Using cache directory: {path} for vLLM's torch.compile"),
    cache_disabled_line=("backends.py:629", "vLLM's torch.compile cache is disabled."),
    cache_hit_line=(
        "backends.py:210",
        "Directly load the compiled graph(s) for dynamic shape from the cache, took {seconds:.3f} s",
    ),
)

V0_17_1 = replace(
    V0_11_1,
    since="0.17.1",
    version_line=("utils.py:302", LOGO),  # entrypoints/utils.py:280-302 log_version_and_model
    model_loading=("gpu_model_runner.py:4364", "Model loading took {gib_r} GiB memory and {seconds:.6f} seconds"),
    available_kv=("gpu_worker.py:424", "Available KV cache memory: {gib_r} GiB"),  # format_gib
    free_memory_device=" cuda:0",  # v1/worker/utils.py:413-421 f"Free memory on device {init_snapshot.device_} "
    requested_ceil=True,  # v1/worker/utils.py:408-410 math.ceil(total_memory * gpu_memory_utilization)
    gib_format="format_gib",
    # v1/core/kv_cache_utils.py:622-650
    kv_no_memory=(
        "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing "
        "the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    ),
    kv_too_small=(
        "To serve at least one request with the models's max seq len ({max_len}), ({needed} GiB KV cache is "
        "needed, which is larger than the available KV cache memory ({available} GiB). {estimate}Try increasing "
        "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine. See "
        "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    ),
    kv_estimate="Based on the available memory, the estimated maximum model length is {estimate}. ",
    kv_number="format_gib",
    profiling_where="gpu_worker.py:398",  # v1/worker/gpu_worker.py:398-406, format_gib
    profiling_strict=False,
    profiling_number="format_gib",
    tpot_metric=False,  # v1/metrics/loggers.py in 0.17.1: no vllm:time_per_output_token_seconds (ITL :760)
    # config/scheduler.py ScheduleConfig.compute_hash adds max_num_batched_tokens (the compile range's end)
    compile_key_fields=(
        "model",
        "dtype",
        "quantization",
        "revision",
        "max_model_len",
        "trust_remote_code",
        "max_num_batched_tokens",
    ),
    compile_hash="sha256",  # compilation/backends.py hashlib.sha256(str(factors))[:10]
    cache_dir_line=("backends.py:916", "Using cache directory: {path} for vLLM's torch.compile"),
    cache_disabled_line=("backends.py:914", "vLLM's torch.compile cache is disabled."),
    cache_hit_line=(
        "backends.py:266",
        "Directly load the compiled graph(s) for compile range (1, {max_tokens}) from the cache, took {seconds:.3f} s",
    ),
)

V0_31_0 = replace(
    V0_17_1,
    since="0.31.0",
    finish_reasons=("stop", "length", "abort", "error", "repetition"),  # v1/engine/__init__.py:36; loggers.py:734-736
    engine_proc="EngineCore",  # vllm/v1/engine/utils.py:227 "EngineCore" without data parallelism (0.20.1: :145)
    raw_prefixed=False,  # vllm/logger.py:27-31: the prefix is in the log format; streams are not wrapped
    version_line=("api_utils.py:347", LOGO),  # entrypoints/serve/utils/api_utils.py:325-347
    loading_weights=("default_loader.py:484", "Loading weights took {seconds:.2f} seconds"),
    model_loading=("gpu_model_runner.py:5354", "Model loading took {gib_r} GiB memory and {seconds:.6f} seconds"),
    compile_total=("monitor.py:53", "torch.compile took {seconds:.2f} s in total"),  # compilation/monitor.py:20
    available_kv=("gpu_worker.py:692", "Available KV cache memory: {gib_r} GiB"),
    # v1/core/kv_cache_utils.py:2464-2471: one line
    kv_size=(
        (
            "kv_cache_utils.py:2464",
            "GPU KV cache size: {tokens:,} tokens, Maximum concurrency for {max_len:,} tokens per request: "
            "{concurrency:.2f}x",
        ),
    ),
    graphs=("gpu_model_runner.py:6854", "Graph capturing finished in {seconds:.0f} secs, took {gib:.2f} GiB"),
    init_engine=(  # v1/engine/core.py:373-377 (compilation time > 0)
        "core.py:373",
        "init engine (profile, create kv cache, warmup model) took {seconds:.2f} s (compilation: {compile:.2f} s)",
    ),
    server_start=("entry.py:136", "Starting vLLM server on {url}"),  # entrypoints/launchers/api_server/entry.py
    # v1/core/kv_cache_utils.py:904-935
    kv_no_memory=(
        "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing "
        "the engine (this flag also controls CPU memory reservation on the CPU backend, despite its name). See "
        "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    ),
    kv_too_small=(
        "To serve at least one request with the model's max seq len ({max_len}), ({needed} GiB KV cache is "
        "needed, which is larger than the available KV cache memory ({available} GiB). {estimate}Try increasing "
        "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing "
        "`max_model_len` when initializing the engine. See "
        "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
    ),
    profiling_where="gpu_worker.py:652",  # v1/worker/gpu_worker.py:652-660
    dead_health=503,  # entrypoints/serve/instrumentator/health.py:28-33
    # v1/engine/core_client.py:809-811 replaces "Engine core proc %s died unexpectedly"
    dead_monitor=(
        "WARNING",
        "core_client.py:809",
        "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup",
    ),
    # config/load.py:14 Literal["lazy", "eager", "prefetch", "torchao"] | None = None (:65): argparse choices
    # sorted plus "None" (engine/arg_utils.py literal_to_kwargs, optional_type)
    load_strategy_choices=("eager", "lazy", "prefetch", "torchao", "None"),
    load_strategy_default=None,
    mmap_desc="Loading safetensors checkpoint shards",  # weight_utils.py:1049
    eager_desc="Loading safetensors checkpoint shards (eager)",  # weight_utils.py:1049-1051
    # weight_utils.py:1249 hands the files to fastsafetensors' ParallelLoader, whose bar this is
    # (fastsafetensors/parallel_loader.py, _consumer_worker)
    fastsafetensors_desc="Loading fastsafetensors checkpoint shards",
    # weight_utils.py:1249 `from fastsafetensors.parallel_loader import ParallelLoader`: a plain import
    fastsafetensors_missing=(
        "ModuleNotFoundError",
        "No module named 'fastsafetensors'",
        "vllm/model_executor/model_loader/weight_utils.py:1249",
    ),
    cache_dir_line=("backends.py:1090", "Using cache directory: {path} for vLLM's torch.compile"),
    cache_disabled_line=("backends.py:1088", "vLLM's torch.compile cache is disabled."),
    # compilation/decorators.py:312-314, the AOT artifact (envs.py:372-381: on by default with torch >= 2.10)
    cache_hit_line=("decorators.py:312", "Directly load AOT compilation from path {path}"),
    aot_compile=True,
    aot_saved_line=("decorators.py:717", "saved AOT compiled function to {path}"),
)

#: The table: rows in version order; a version uses the last row whose `since` it reaches.
BEHAVIOURS: tuple[Behaviour, ...] = (V0_10_1_1, V0_10_2, V0_11_1, V0_17_1, V0_31_0)


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: `0.10.1.1+381074ae.nv25.09` -> (0, 10, 1, 1).

    A pre-release or local part does not matter (0.11.1rc2 and 0.11.1+nv25.12 are 0.11.1).
    """
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if match is None:
        raise ValueError(f"VLLM_SIM_VERSION={version!r} is not a vLLM version (e.g. 0.10.1.1, 0.11.1, 0.31.0)")
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def behaviour(version: str) -> Behaviour:
    """The row for `version`: the last one whose `since` it reaches (the first row below them all)."""
    found = BEHAVIOURS[0]
    for row in BEHAVIOURS:
        if release(version) >= release(row.since):
            found = row
    return found


def format_gib(num_bytes: float) -> str:
    """vllm/utils/mem_utils.py:30-31 format_gib (0.17+): `f"{round(b / GiB_bytes, 2)}"`."""
    return f"{round(num_bytes / 1024**3, 2)}"
