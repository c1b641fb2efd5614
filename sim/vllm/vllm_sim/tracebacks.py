"""Realistic traceback tails for the failures the imitation raises.

Why: operators (and the project's classifier) see vLLM failures as a block of
tracebacks — the root cause inside the EngineCore process, then the API
server's `RuntimeError: Engine core initialization failed ...`.  The frames
below follow vLLM 0.10.1.1's call paths as installed in the NVIDIA image
(python 3.12, dist-packages); line numbers are those of 0.10.1.x where known
and plausible otherwise.  Only the final exception lines are contractual.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import failures as F
from .failures import StartupFailure
from .logs import API, ENGINE, VllmLog

PY = "/usr/lib/python3.12"
SITE = "/usr/local/lib/python3.12/dist-packages"
V = f"{SITE}/vllm"

Frame = tuple[str, int, str, str]  # file, line, function, source line (may carry a caret line after \n)


def _f(path: str, line: int, func: str, src: str) -> Frame:
    return (path, line, func, src)


_ENGINE_HEAD: list[Frame] = [
    _f(
        f"{V}/v1/engine/core.py",
        691,
        "run_engine_core",
        "engine_core = EngineCoreProc(*args, **kwargs)\n              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    ),
    _f(f"{V}/v1/engine/core.py", 492, "__init__", "super().__init__(vllm_config, executor_class, log_stats,"),
]
_EXECUTOR: list[Frame] = [
    _f(
        f"{V}/v1/engine/core.py",
        80,
        "__init__",
        "self.model_executor = executor_class(vllm_config)\n                      ^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    ),
    _f(f"{V}/executor/executor_base.py", 54, "__init__", "self._init_executor()"),
]


def _rpc(method: str, line: int) -> list[Frame]:
    return [
        _f(f"{V}/executor/uniproc_executor.py", line, "_init_executor", f'self.collective_rpc("{method}")'),
        _f(
            f"{V}/executor/uniproc_executor.py",
            58,
            "collective_rpc",
            "answer = run_method(self.driver_worker, method, args, kwargs)\n"
            "         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{V}/utils/__init__.py", 3007, "run_method", "return func(*args, **kwargs)\n       ^^^^^^^^^^^^^^^^^^^^^"),
    ]


_LOAD_MODEL: list[Frame] = _rpc("load_model", 50) + [
    _f(f"{V}/v1/worker/gpu_worker.py", 211, "load_model", "self.model_runner.load_model(eep_scale_up=eep_scale_up)"),
    _f(
        f"{V}/v1/worker/gpu_model_runner.py",
        1986,
        "load_model",
        "self.model = model_loader.load_model(\n             ^^^^^^^^^^^^^^^^^^^^^^^^",
    ),
    _f(f"{V}/model_executor/model_loader/base_loader.py", 49, "load_model", "self.load_weights(model, model_config)"),
    _f(
        f"{V}/model_executor/model_loader/default_loader.py",
        259,
        "load_weights",
        "loaded_weights = model.load_weights(\n                 ^^^^^^^^^^^^^^^^^^^",
    ),
    _f(f"{V}/model_executor/models/qwen3.py", 325, "load_weights", "return loader.load_weights(weights)"),
    _f(
        f"{V}/model_executor/models/utils.py",
        291,
        "load_weights",
        'autoloaded_weights = set(self._load_module("", self.module, weights))',
    ),
    _f(f"{V}/model_executor/models/utils.py", 249, "_load_module", "yield from self._load_module(prefix,"),
    _f(f"{V}/model_executor/models/utils.py", 222, "_load_module", "loaded_params = module_load_weights(weights)"),
    _f(f"{V}/model_executor/models/qwen2.py", 412, "load_weights", "for name, loaded_weight in weights:"),
    _f(
        f"{V}/model_executor/model_loader/default_loader.py",
        235,
        "get_all_weights",
        "yield from self._get_weights_iterator(primary_weights)",
    ),
]

_ENGINE_FRAMES = {
    F.STAGE_INIT_DEVICE: _ENGINE_HEAD
    + _EXECUTOR
    + _rpc("init_device", 48)
    + [
        _f(f"{V}/worker/worker_base.py", 603, "init_device", "self.worker.init_device()  # type: ignore"),
        _f(f"{V}/v1/worker/gpu_worker.py", 166, "init_device", "raise ValueError("),
    ],
    F.STAGE_WEIGHTS: _ENGINE_HEAD
    + _EXECUTOR
    + _LOAD_MODEL[:-1]
    + [
        _f(
            f"{V}/model_executor/model_loader/default_loader.py",
            229,
            "get_all_weights",
            "hf_folder, hf_weights_files, use_safetensors = self._prepare_weights(\n"
            "                                                ^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/model_executor/model_loader/default_loader.py",
            101,
            "_prepare_weights",
            "hf_folder = download_weights_from_hf(\n            ^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/model_executor/model_loader/weight_utils.py",
            292,
            "download_weights_from_hf",
            "hf_folder = snapshot_download(\n            ^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{SITE}/huggingface_hub/utils/_validators.py",
            114,
            "_inner_fn",
            "return fn(*args, **kwargs)\n       ^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{SITE}/huggingface_hub/_snapshot_download.py", 235, "snapshot_download", "raise LocalEntryNotFoundError("),
    ],
    F.STAGE_SHARD: _ENGINE_HEAD
    + _EXECUTOR
    + _LOAD_MODEL
    + [
        _f(
            f"{V}/model_executor/model_loader/default_loader.py",
            219,
            "<genexpr>",
            "return ((source.prefix + name, tensor)",
        ),
        _f(
            f"{V}/model_executor/model_loader/weight_utils.py",
            497,
            "safetensors_weights_iterator",
            'with safe_open(st_file, framework="pt") as f:\n     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^',
        ),
    ],
    F.STAGE_LOAD_OOM: _ENGINE_HEAD
    + _EXECUTOR
    + _LOAD_MODEL
    + [
        _f(
            f"{V}/model_executor/model_loader/default_loader.py",
            219,
            "<genexpr>",
            "return ((source.prefix + name, tensor)",
        ),
        _f(
            f"{V}/model_executor/model_loader/weight_utils.py",
            500,
            "safetensors_weights_iterator",
            "param = f.get_tensor(name)\n        ^^^^^^^^^^^^^^^^^^",
        ),
    ],
    F.STAGE_LOADER: _ENGINE_HEAD
    + _EXECUTOR
    + _LOAD_MODEL
    + [
        _f(
            f"{V}/model_executor/model_loader/default_loader.py",
            219,
            "<genexpr>",
            "return ((source.prefix + name, tensor)",
        ),
        _f(
            f"{V}/model_executor/model_loader/weight_utils.py",
            524,
            "fastsafetensors_weights_iterator",
            "loader = SafeTensorsFileLoader(pg, device)\n             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{V}/utils/__init__.py", 2348, "__call__", 'return self.__getattr__("__call__")'),
        _f(f"{V}/utils/__init__.py", 2504, "__getattr__", 'getattr(self.__module, f"{self.__attr_path}.{key}")'),
        _f(f"{V}/utils/__init__.py", 2482, "__getattr__", "raise ImportError(msg) from exc"),
    ],
    F.STAGE_KV_CACHE: _ENGINE_HEAD
    + [
        _f(
            f"{V}/v1/engine/core.py",
            89,
            "__init__",
            "num_gpu_blocks, num_cpu_blocks, kv_cache_config = self._initialize_kv_caches(\n"
            "                                                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/v1/engine/core.py",
            188,
            "_initialize_kv_caches",
            "get_kv_cache_config(vllm_config, kv_cache_spec_one_worker,",
        ),
        _f(
            f"{V}/v1/core/kv_cache_utils.py",
            1095,
            "get_kv_cache_config",
            "check_enough_kv_cache_memory(vllm_config, kv_cache_spec, available_memory)",
        ),
        _f(f"{V}/v1/core/kv_cache_utils.py", 699, "check_enough_kv_cache_memory", "raise ValueError("),
    ],
    F.STAGE_PROFILE: _ENGINE_HEAD
    + [
        _f(
            f"{V}/v1/engine/core.py",
            89,
            "__init__",
            "num_gpu_blocks, num_cpu_blocks, kv_cache_config = self._initialize_kv_caches(\n"
            "                                                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/v1/engine/core.py",
            169,
            "_initialize_kv_caches",
            "self.model_executor.determine_available_memory())\n    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/v1/executor/abstract.py",
            76,
            "determine_available_memory",
            'output = self.collective_rpc("determine_available_memory")',
        ),
        _f(
            f"{V}/executor/uniproc_executor.py",
            58,
            "collective_rpc",
            "answer = run_method(self.driver_worker, method, args, kwargs)\n"
            "         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{V}/utils/__init__.py", 3007, "run_method", "return func(*args, **kwargs)\n       ^^^^^^^^^^^^^^^^^^^^^"),
        _f(
            f"{SITE}/torch/utils/_contextlib.py",
            116,
            "decorate_context",
            "return func(*args, **kwargs)\n       ^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/v1/worker/gpu_worker.py",
            248,
            "determine_available_memory",
            "assert self.init_snapshot.free_memory > free_gpu_memory, (\n"
            "       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
    ],
}

_API_HEAD: list[Frame] = [
    _f("/usr/local/bin/vllm", 8, "<module>", "sys.exit(main())\n         ^^^^^^"),
    _f(f"{V}/entrypoints/cli/main.py", 54, "main", "args.dispatch_function(args)"),
    _f(f"{V}/entrypoints/cli/serve.py", 50, "cmd", "uvloop.run(run_server(args))"),
    _f(f"{SITE}/uvloop/__init__.py", 109, "run", "return __asyncio.run(\n       ^^^^^^^^^^^^^^"),
    _f(f"{PY}/asyncio/runners.py", 195, "run", "return runner.run(main)\n       ^^^^^^^^^^^^^^^^"),
    _f(
        f"{PY}/asyncio/runners.py",
        118,
        "run",
        "return self._loop.run_until_complete(task)\n       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    ),
    _f("uvloop/loop.pyx", 1518, "uvloop.loop.Loop.run_until_complete", ""),
    _f(f"{SITE}/uvloop/__init__.py", 61, "wrapper", "return await main\n       ^^^^^^^^^^"),
    _f(
        f"{V}/entrypoints/openai/api_server.py",
        1850,
        "run_server",
        "await run_server_worker(listen_address, sock, args, **uvicorn_kwargs)",
    ),
    _f(f"{V}/entrypoints/openai/api_server.py", 1870, "run_server_worker", "async with build_async_engine_client("),
    _f(f"{PY}/contextlib.py", 210, "__aenter__", "return await anext(self.gen)\n       ^^^^^^^^^^^^^^^^^^^^^"),
    _f(
        f"{V}/entrypoints/openai/api_server.py",
        178,
        "build_async_engine_client",
        "async with build_async_engine_client_from_engine_args(",
    ),
    _f(f"{PY}/contextlib.py", 210, "__aenter__", "return await anext(self.gen)\n       ^^^^^^^^^^^^^^^^^^^^^"),
]
_API_ENGINE_START: list[Frame] = _API_HEAD + [
    _f(
        f"{V}/entrypoints/openai/api_server.py",
        220,
        "build_async_engine_client_from_engine_args",
        "async_llm = AsyncLLM.from_vllm_config(\n            ^^^^^^^^^^^^^^^^^^^^^^^^^^",
    ),
    _f(f"{V}/utils/__init__.py", 1557, "inner", "return fn(*args, **kwargs)\n       ^^^^^^^^^^^^^^^^^^^"),
    _f(f"{V}/v1/engine/async_llm.py", 174, "from_vllm_config", "return cls(\n       ^^^^"),
]
_API_FRAMES = {
    "engine_start": _API_ENGINE_START
    + [
        _f(
            f"{V}/v1/engine/async_llm.py",
            120,
            "__init__",
            "self.engine_core = EngineCoreClient.make_async_mp_client(\n"
            "                   ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/v1/engine/core_client.py",
            102,
            "make_async_mp_client",
            "return AsyncMPClient(*client_args)\n       ^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{V}/v1/engine/core_client.py", 767, "__init__", "super().__init__("),
        _f(f"{V}/v1/engine/core_client.py", 446, "__init__", "with launch_core_engines(vllm_config, executor_class,"),
        _f(f"{PY}/contextlib.py", 144, "__exit__", "next(self.gen)"),
        _f(f"{V}/v1/engine/utils.py", 706, "launch_core_engines", "wait_for_engine_startup("),
        _f(
            f"{V}/v1/engine/utils.py",
            759,
            "wait_for_engine_startup",
            'raise RuntimeError("Engine core initialization failed. "',
        ),
    ],
    F.STAGE_CONFIG: _API_HEAD
    + [
        _f(
            f"{V}/entrypoints/openai/api_server.py",
            206,
            "build_async_engine_client_from_engine_args",
            "vllm_config = engine_args.create_engine_config(usage_context=usage_context)\n"
            "              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/engine/arg_utils.py",
            1062,
            "create_engine_config",
            "model_config = self.create_model_config()\n               ^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{V}/engine/arg_utils.py", 906, "create_model_config", "return ModelConfig(\n       ^^^^^^^^^^^^"),
        _f(
            f"{V}/config/__init__.py",
            565,
            "__post_init__",
            "hf_config = get_config(self.hf_config_path or self.model,\n            "
            "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/transformers_utils/config.py",
            368,
            "get_config",
            "config_dict, _ = PretrainedConfig.get_config_dict(\n                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{SITE}/transformers/utils/hub.py", 533, "cached_files", "raise LocalEntryNotFoundError("),
    ],
    F.STAGE_TOKENIZER: _API_ENGINE_START
    + [
        _f(
            f"{V}/v1/engine/async_llm.py",
            112,
            "__init__",
            "self.tokenizer = init_tokenizer_from_configs(\n                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/transformers_utils/tokenizer_group.py",
            111,
            "init_tokenizer_from_configs",
            "return TokenizerGroup(\n       ^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/transformers_utils/tokenizer.py",
            221,
            "get_tokenizer",
            "tokenizer = AutoTokenizer.from_pretrained(\n            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{SITE}/transformers/tokenization_utils_base.py", 2070, "from_pretrained", "raise EnvironmentError("),
    ],
}
_API_FRAMES[F.STAGE_ARGS] = _API_FRAMES[F.STAGE_CONFIG][:-2]
_API_FRAMES[F.STAGE_PORT] = _API_HEAD[:8] + [
    _f(
        f"{V}/entrypoints/openai/api_server.py",
        1841,
        "run_server",
        "listen_address, sock = setup_server(args)\n                          ^^^^^^^^^^^^^^^^^^",
    ),
    _f(
        f"{V}/entrypoints/openai/api_server.py",
        1819,
        "setup_server",
        "sock = create_server_socket(sock_addr)\n       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    ),
    _f(f"{V}/entrypoints/openai/api_server.py", 1781, "create_server_socket", "sock.bind(addr)"),
]

_PROCESS_BOOTSTRAP: list[Frame] = [
    _f(f"{PY}/multiprocessing/process.py", 314, "_bootstrap", "self.run()"),
    _f(f"{PY}/multiprocessing/process.py", 108, "run", "self._target(*self._args, **self._kwargs)"),
    _f(f"{V}/v1/engine/core.py", 704, "run_engine_core", "raise e"),
]

_CAUSE_FRAMES: list[Frame] = [
    _f(f"{SITE}/requests/adapters.py", 700, "send", "raise ConnectionError(e, request=request)"),
]
#: The chained cause's frames where it is not the Hub's connection error: vLLM's PlaceholderModule importing
#: the missing package (vllm/utils/__init__.py:2476-2477 in 0.10.1.1)
_STAGE_CAUSE_FRAMES: dict[str, list[Frame]] = {
    F.STAGE_LOADER: [
        _f(f"{V}/utils/__init__.py", 2477, "__getattr__", "importlib.import_module(name)"),
        _f(
            "/usr/lib/python3.12/importlib/__init__.py",
            90,
            "import_module",
            "return _bootstrap._gcd_import(name[level:], package, level)",
        ),
        _f("<frozen importlib._bootstrap>", 1387, "_gcd_import", ""),
        _f("<frozen importlib._bootstrap>", 1360, "_find_and_load", ""),
        _f("<frozen importlib._bootstrap>", 1324, "_find_and_load_unlocked", ""),
    ],
}


def frame_lines(frames: Sequence[Frame]) -> list[str]:
    """Python's traceback body for `frames`."""
    out: list[str] = []
    for path, line, func, src in frames:
        out.append(f'  File "{path}", line {line}, in {func}')
        for part in src.split("\n") if src else []:
            out.append(f"    {part}")
    return out


def traceback_lines(frames: Sequence[Frame], failure: StartupFailure) -> list[str]:
    """A complete traceback, with the chained cause first when there is one."""
    lines: list[str] = []
    if failure.cause_line:
        lines += (
            ["Traceback (most recent call last):"]
            + frame_lines(_STAGE_CAUSE_FRAMES.get(failure.stage, _CAUSE_FRAMES))
            + [failure.cause_line, "", "The above exception was the direct cause of the following exception:", ""]
        )
    lines += ["Traceback (most recent call last):"] + frame_lines(frames) + [str(failure)]
    return lines


def engine_failed_start_message(log: VllmLog, failure: StartupFailure) -> None:
    """EngineCore's `logger.exception("EngineCore failed to start.")` plus multiprocessing's dump."""
    frames = _ENGINE_FRAMES[failure.stage]
    body = traceback_lines(frames, failure)
    log.error(ENGINE, "core.py:700", "\n".join(["EngineCore failed to start."] + body))
    log.raw(ENGINE, "\n".join([f"Process {log.engine_proc}:"] + traceback_lines(_PROCESS_BOOTSTRAP + frames, failure)))


def api_engine_init_failed(log: VllmLog) -> None:
    """The API server's own traceback once the EngineCore process exited with 1 (the process name
    is the version's: v1/engine/utils.py:759-762 in 0.10.1.1, :1349-1352 in 0.31.0)."""
    runtime = StartupFailure(
        "engine_start",
        "RuntimeError",
        f"Engine core initialization failed. See root cause above. Failed core proc(s): {{'{log.engine_proc}': 1}}",
    )
    log.raw(API, "\n".join(traceback_lines(_API_FRAMES["engine_start"], runtime)))


def render_failure(log: VllmLog, failure: StartupFailure) -> None:
    """Print a startup failure the way the real server's output ends."""
    if failure.in_engine:
        engine_failed_start_message(log, failure)
        api_engine_init_failed(log)
    else:
        log.raw(API, "\n".join(traceback_lines(_API_FRAMES[failure.stage], failure)))


def engine_dead_lines(log: VllmLog, monitor: tuple[str, str, str] | None = None) -> None:
    """The EngineCore dying while serving: fatal error, EngineDeadError in the API server, then the
    client's liveness monitor noticing the process is gone (`monitor`: the version's line,
    versions.py `dead_monitor`)."""
    fatal = StartupFailure(
        "fatal",
        "RuntimeError",
        "CUDA error: an illegal memory access was encountered\n"
        "CUDA kernel errors might be asynchronously reported at some other API call, so the "
        "stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n",
    )
    frames = [
        _f(f"{V}/v1/engine/core.py", 693, "run_engine_core", "engine_core.run_busy_loop()"),
        _f(f"{V}/v1/engine/core.py", 720, "run_busy_loop", "self._process_engine_step()"),
        _f(
            f"{V}/v1/engine/core.py",
            745,
            "_process_engine_step",
            "outputs, model_executed = self.step_fn()\n                           ^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/v1/engine/core.py",
            288,
            "step",
            "model_output = self.execute_model_with_error_logging(\n               "
            "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(f"{V}/v1/engine/core.py", 274, "execute_model_with_error_logging", "raise err"),
        _f(
            f"{V}/v1/engine/core.py",
            265,
            "execute_model_with_error_logging",
            "return model_fn(scheduler_output)\n       ^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
        _f(
            f"{V}/v1/worker/gpu_model_runner.py",
            1594,
            "execute_model",
            "valid_sampled_token_ids = sampled_token_ids.tolist()\n                          "
            "^^^^^^^^^^^^^^^^^^^^^^^^^^",
        ),
    ]
    log.error(
        ENGINE, "core.py:702", "\n".join(["EngineCore encountered a fatal error."] + traceback_lines(frames, fatal))
    )
    log.error(
        API,
        "async_llm.py:416",
        "\n".join(
            [
                "AsyncLLM output_handler failed.",
                "Traceback (most recent call last):",
            ]
            + frame_lines(
                [
                    _f(
                        f"{V}/v1/engine/async_llm.py",
                        375,
                        "output_handler",
                        "outputs = await engine_core.get_output_async()\n          "
                        "^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
                    ),
                    _f(
                        f"{V}/v1/engine/core_client.py",
                        751,
                        "get_output_async",
                        "raise self._format_exception(outputs) from None",
                    ),
                ]
            )
            + [
                "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
                "See stack trace (above) for the root cause."
            ]
        ),
    )
    if monitor is not None:
        level, where, message = monitor
        log.log(API, level, where, message.format(proc=log.engine_proc))
