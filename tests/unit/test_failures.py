"""tasks/vllm/failures.py: the failure rules, their priority, and the causes they build from vLLM's exact
texts (each rule citing its source file; the texts of each inspected vLLM, 0.10.1.1 to 0.31.0, built from
that version's format strings) and docker's exit state."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from packaging.version import Version

from tasks.vllm.failures import (
    MAX_EVIDENCE,
    NOT_FROM_LOGS,
    RULES,
    Evidence,
    FailureCause,
    FailureKind,
    FailureRule,
    classify_failure,
    free_memory_cause,
    host_memory_guard_cause,
)
from tasks.vllm.logs import strip_prefix
from tasks.vllm.versions import Variant

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"


def log(name: str, until: str | None = None) -> list[str]:
    """A recorded log; with `until`, only its lines up to the first one containing that text."""
    lines = (LOGS / name).read_text().splitlines()
    if until is not None:
        lines = lines[: next(i for i, line in enumerate(lines) if until in line) + 1]
    return lines


# ------------------------------------------------------------------------------ suggestions


def test_free_memory_0_10():
    cause = classify_failure(log("fail_free_memory.log"))
    assert cause.kind is FailureKind.FREE_MEMORY
    assert cause.numbers["free_gib"] == 85.92 and cause.numbers["total_gib"] == 121.69
    assert cause.numbers["requested_utilization"] == 0.92 and cause.numbers["requested_gib"] == 111.95
    assert cause.numbers["suggested_utilization"] == 0.69  # tasks/recovery/sizing.py: floor((85.92 - 1) / 121.69, 0.01)
    assert cause.suggested == {"gpu_memory_utilization": 0.69}
    assert "Free memory on device (85.92/121.69 GiB)" in cause.evidence[0]
    assert any("Engine core initialization failed" in e for e in cause.evidence)
    assert not any("cuda capability" in e for e in cause.evidence)  # the GB10 warning is cosmetic
    assert "drop_caches" in cause.fix and "page cache" in cause.fix
    assert "docker compose down" in cause.fix and "docker system prune -f" in cause.fix
    assert "0.69" in cause.fix
    with_floor = classify_failure(log("fail_free_memory.log"), margin_gib=5.0)  # the target's guarded margin
    assert with_floor.suggested == {"gpu_memory_utilization": 0.66} and "0.66" in with_floor.fix


def test_free_memory_0_17_cuda0_form():
    cause = classify_failure(log("fail_free_memory_v017.log"))
    assert cause.kind is FailureKind.FREE_MEMORY
    assert cause.numbers["free_gib"] == 85.92 and cause.numbers["requested_gib"] == 112.0
    assert "cuda:0" in cause.summary


def test_kv_too_small():
    cause = classify_failure(log("fail_kv_too_small.log"))
    assert cause.kind is FailureKind.KV_TOO_SMALL
    assert cause.numbers == {
        "max_model_len": 32000, "needed_gib": 7.81, "available_gib": 3.10,
        "estimated_max_model_len": 12688, "suggested_max_model_len": 12544,
    }  # fmt: skip
    assert cause.suggested == {"max_model_len": 12544}  # rounded down to 256, as the planner does
    assert "12544" in cause.fix and "gpu_memory_utilization" in cause.fix
    assert "models's max seq len (32000)" in cause.evidence[0]


def test_no_kv_memory():
    cause = classify_failure(log("fail_no_kv_memory.log"))
    assert cause.kind is FailureKind.NO_KV_MEMORY
    assert "Available KV cache memory: -1.25 GiB" in cause.evidence[0]  # the budget vLLM computed, just before
    assert "No available memory for the cache blocks" in cause.evidence[1]
    assert cause.numbers == {"available_gib": -1.25} and "-1.25 GiB" in cause.summary


def test_cuda_oom():
    cause = classify_failure(log("fail_cuda_oom.log"))
    assert cause.kind is FailureKind.CUDA_OOM
    assert cause.numbers["tried_to_allocate_gib"] == 0.75
    assert cause.numbers["total_capacity_gib"] == 119.70
    assert cause.numbers["after_ready"] == 0.0
    assert "torch.OutOfMemoryError: CUDA out of memory" in cause.evidence[0]


@pytest.mark.parametrize("name", ["fail_missing_model.log", "fail_missing_shard.log"])
def test_missing_model_files(name):
    cause = classify_failure(log(name))
    assert cause.kind is FailureKind.MISSING_MODEL_FILES
    assert "staging" in cause.fix and "df -h /opt/hf" in cause.fix and ".incomplete" in cause.fix


@pytest.mark.parametrize(
    "line",
    [
        "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for the specified revision on the local disk and outgoing traffic has been disabled. ...",  # noqa: E501
        "FileNotFoundError: [Errno 2] No such file or directory: '/root/.cache/huggingface/models--Qwen--Qwen3-32B-FP8/snapshots/abc/model-00003-of-00007.safetensors'",  # noqa: E501
        "safetensors_rust.SafetensorError: Error while deserializing header: HeaderTooLarge",
        "RuntimeError: Cannot find any model weights with `Qwen/Qwen3-32B-FP8`",
        "OSError: Can't load tokenizer for 'Qwen/Qwen3-32B-FP8'. If you were trying to load it from 'https://huggingface.co/models', ...",  # noqa: E501
    ],
)
def test_missing_model_file_texts(line):
    assert classify_failure([line]).kind is FailureKind.MISSING_MODEL_FILES


def test_fp8_kernel_is_the_runbook_entry():
    cause = classify_failure(log("fail_fp8_kernel.log"))
    assert cause.kind is FailureKind.FP8_KERNEL
    assert any("cutlass_scaled_mm failed" in e for e in cause.evidence)
    assert any("RuntimeError: Error Internal" in e for e in cause.evidence)
    assert "Qwen/Qwen3-32B-FP8" in cause.fix and "--quantization fp8" in cause.fix


def test_gpu_runtime_missing():
    cause = classify_failure(log("fail_gpu_runtime.log"))
    assert cause.kind is FailureKind.GPU_RUNTIME_MISSING
    assert "NVIDIA Container Toolkit" in cause.fix
    assert classify_failure(["RuntimeError: Failed to infer device type"]).kind is FailureKind.GPU_RUNTIME_MISSING


def test_bad_arguments():
    cause = classify_failure(log("fail_bad_args.log"))
    assert cause.kind is FailureKind.BAD_ARGUMENTS
    assert cause.evidence == ["vllm serve: error: unrecognized arguments: --max-model-length 32000"]
    assert (
        classify_failure(["api_server.py: error: argument --max-model-len: invalid int value: 'x'"]).kind
        is FailureKind.BAD_ARGUMENTS
    )


def test_engine_dead_after_ready():
    cause = classify_failure(log("engine_dead.log"))
    assert cause.kind is FailureKind.ENGINE_DEAD
    assert cause.numbers["after_ready"] == 1.0
    assert any("EngineDeadError" in e for e in cause.evidence)
    assert any("illegal memory access" in e for e in cause.evidence)  # the root cause comes along


def test_unknown_and_the_cosmetic_warning_is_never_a_failure():
    lines = [
        "WARNING: Found GPU0 NVIDIA GB10 which is of cuda capability 12.1",
        "Maximum cuda capability supported is 12.0",
    ]
    cause = classify_failure(lines, exit_code=1)
    assert cause.kind is FailureKind.UNKNOWN
    assert cause.evidence == [] and cause.numbers == {"exit_code": 1.0}
    other = classify_failure(
        lines
        + [
            "(EngineCore_0 pid=2) ERROR 01-01 00:00:00 [core.py:1] EngineCore failed to start.",
            "(EngineCore_0 pid=2) ZeroDivisionError: division by zero",
        ]
    )
    assert other.kind is FailureKind.UNKNOWN
    assert other.evidence == ["(EngineCore_0 pid=2) ZeroDivisionError: division by zero"]
    killed = classify_failure([], exit_code=137)  # now a kind of its own (was unknown, same texts)
    assert killed.kind is FailureKind.KILLED and "137" in killed.summary and "OOM" in killed.summary


def test_classify_accepts_one_text_and_scrubs_secrets():
    text = (
        (LOGS / "fail_bad_args.log")
        .read_text()
        .replace("--max-model-length 32000", "--api-key sk-123456 hf_abcdefghijkl1234")
    )
    cause = classify_failure(text, secrets=["sk-123456"])
    assert cause.kind is FailureKind.BAD_ARGUMENTS
    joined = "\n".join(cause.evidence)
    assert "sk-123456" not in joined and "hf_abcdefghijkl1234" not in joined


def test_failure_cause_is_serialisable_and_readable():
    cause = classify_failure(log("fail_kv_too_small.log"))
    assert isinstance(cause, FailureCause)
    dumped = cause.model_dump(mode="json")
    assert dumped["kind"] == "kv_too_small" and dumped["suggested"] == {"max_model_len": 12544}
    assert str(cause).startswith("kv_too_small: ")
    assert "**Fix:**" in cause.markdown() and "12544" in cause.markdown()


# ------------------------------------------------------------------------------ the table

# (recorded log, cut after the first line with this text, classify_failure keywords) -> kind
RECORDED = [
    ("fail_gpu_runtime.log", None, {}, FailureKind.GPU_RUNTIME_MISSING),
    ("fail_bad_args.log", None, {}, FailureKind.BAD_ARGUMENTS),
    ("fail_fp8_kernel.log", None, {}, FailureKind.FP8_KERNEL),
    ("fail_free_memory.log", None, {}, FailureKind.FREE_MEMORY),
    ("fail_free_memory_v017.log", None, {}, FailureKind.FREE_MEMORY),
    ("fail_memory_profiling.log", None, {}, FailureKind.MEMORY_PROFILING),
    ("fail_kv_too_small.log", None, {}, FailureKind.KV_TOO_SMALL),
    ("fail_no_kv_memory.log", None, {}, FailureKind.NO_KV_MEMORY),
    ("fail_cuda_oom.log", None, {}, FailureKind.CUDA_OOM),
    ("fail_missing_model.log", None, {}, FailureKind.MISSING_MODEL_FILES),
    ("fail_missing_shard.log", None, {}, FailureKind.MISSING_MODEL_FILES),
    ("engine_dead.log", None, {}, FailureKind.ENGINE_DEAD),
    ("engine_dead_v031.log", None, {}, FailureKind.ENGINE_DEAD),
    # killed while loading the shards: the log just stops, docker's state names the cause
    ("startup_success.log", "43% Completed", {"exit_code": 137, "oom_killed": True}, FailureKind.OOM_KILLED),
    ("startup_success.log", "43% Completed", {"oom_killed": True}, FailureKind.OOM_KILLED),
    ("startup_success.log", "43% Completed", {"exit_code": 137}, FailureKind.KILLED),
    ("startup_success.log", None, {"exit_code": 137, "oom_killed": True}, FailureKind.OOM_KILLED),  # while serving
    ("startup_success.log", "43% Completed", {"exit_code": 1}, FailureKind.UNKNOWN),
    ("startup_success.log", "43% Completed", {}, FailureKind.UNKNOWN),
    # a vLLM error in the log wins over the exit state
    ("fail_free_memory.log", None, {"exit_code": 137, "oom_killed": True}, FailureKind.FREE_MEMORY),
    ("fail_cuda_oom.log", None, {"exit_code": 137, "oom_killed": True}, FailureKind.CUDA_OOM),
    ("engine_dead.log", None, {"exit_code": 137}, FailureKind.ENGINE_DEAD),
    ("engine_dead.log", None, {"exit_code": 137, "oom_killed": True}, FailureKind.OOM_KILLED),  # docker's word wins
]


@pytest.mark.parametrize(
    "name,until,kwargs,kind", RECORDED, ids=[f"{n}{'[:' + u + ']' if u else ''}-{k}" for n, u, k, _ in RECORDED]
)
def test_recorded_logs(name, until, kwargs, kind):
    cause = classify_failure(log(name, until), **kwargs)
    assert cause.kind is kind
    assert cause.summary and cause.fix and len(cause.evidence) <= MAX_EVIDENCE


def test_every_rule_is_exercised_by_a_recorded_log():
    assert {kind for *_, kind in RECORDED} == {rule.kind for rule in RULES} == set(FailureKind) - NOT_FROM_LOGS


def test_the_table_names_each_kind_once_with_the_catch_all_last():
    kinds = [rule.kind for rule in RULES]
    assert len(kinds) == len(set(kinds)) == len(FailureKind) - len(NOT_FROM_LOGS)
    assert kinds[-1] is FailureKind.UNKNOWN
    assert RULES[kinds.index(FailureKind.OOM_KILLED)].evidence is Evidence.ERRORS
    with pytest.raises(ValueError):
        FailureRule(kind=FailureKind.UNKNOWN, summary="s", fix="f")  # matches nothing
    with pytest.raises(ValueError):
        FailureRule(kind=FailureKind.UNKNOWN, patterns=(re.compile("x"),), summary="s")  # no fix


def test_every_rule_cites_where_its_texts_come_from():
    """A rule read from logs names the file that prints its texts (vLLM's file:line, or the library's
    file); a rule read from docker's exit names the State field; only the catch-all cites nothing."""
    names_a_file = re.compile(r"\b[\w/]+\.(?:py|cpp|hpp)\b")
    for rule in RULES[:-1]:
        assert rule.source, rule.kind
        if rule.patterns:
            assert names_a_file.search(rule.source), rule.kind
        else:
            assert "docker State." in rule.source, rule.kind
    assert re.search(r"vllm/\S+\.py:\d+", next(r.source for r in RULES if r.kind is FailureKind.FREE_MEMORY))


def test_priority_order_and_every_rule_says_why_it_sits_there():
    assert all(rule.why for rule in RULES)
    assert [rule.kind.value for rule in RULES] == [
        "gpu_runtime_missing", "bad_arguments", "fp8_kernel", "free_memory", "memory_profiling", "kv_too_small",
        "no_kv_memory", "cuda_oom", "missing_model_files", "oom_killed", "engine_dead", "killed", "unknown",
    ]  # fmt: skip


def test_free_memory_wins_over_the_engine_init_context():
    """The API server's `Engine core initialization failed` follows every failed start: context, not a cause."""
    lines = log("fail_free_memory.log")
    assert any("RuntimeError: Engine core initialization failed" in line for line in lines)
    cause = classify_failure(lines, exit_code=1)
    assert cause.kind is FailureKind.FREE_MEMORY
    assert "Engine core initialization failed" in cause.evidence[-1]
    context_only = classify_failure(
        [line for line in lines if "Engine core initialization failed" in line], exit_code=1
    )
    assert context_only.kind is FailureKind.UNKNOWN


# One line per log-matched rule, taken from its recorded log by the rule itself.
PATTERN_RULES = [rule for rule in RULES if rule.patterns]
SAMPLE_LOG = {kind: name for name, until, kwargs, kind in RECORDED if until is None and not kwargs}


def _sample_line(rule: FailureRule) -> str:
    line = rule.first_match([strip_prefix(line) for line in log(SAMPLE_LOG[rule.kind])])
    assert line is not None
    return line


@pytest.mark.parametrize(
    "high,low",
    list(itertools.combinations(PATTERN_RULES, 2)),
    ids=[f"{a.kind}>{b.kind}" for a, b in itertools.combinations(PATTERN_RULES, 2)],
)
def test_each_rule_wins_over_every_later_one(high, low):
    lines = [_sample_line(low), _sample_line(high)]  # the later rule's error even comes first in the log
    assert classify_failure(lines).kind is high.kind
    assert classify_failure(lines, exit_code=137, oom_killed=True).kind is high.kind


# ------------------------------------------------------------------------------ killed by the kernel


def test_oom_killed_without_a_vllm_error():
    lines = log("startup_success.log", until="43% Completed")
    cause = classify_failure(lines, exit_code=137, oom_killed=True)
    assert cause.kind is FailureKind.OOM_KILLED
    assert "OOM killer" in cause.summary and "OOMKilled" in cause.summary and "exit code 137" in cause.summary
    assert "host memory was exhausted" in cause.summary and "GPU and CPU share one memory" in cause.summary
    assert "docker kill" not in cause.summary  # docker's flag says it was the kernel
    assert cause.fix == (
        "Check `dmesg` for the OOM killer. On the DGX Spark GPU and CPU share memory: drop the page "
        "cache, stop other memory users, and lower gpu_memory_utilization before retrying; "
        "do not retry in a loop (pushing memory on GB10 can hang the host)."
    )
    assert cause.numbers == {"exit_code": 137.0, "oom_killed": 1.0} and cause.suggested == {}
    assert cause.evidence[-1] == lines[-1]  # no error line: the log's last lines show where it stopped
    assert classify_failure(lines, oom_killed=True).numbers == {"oom_killed": 1.0}


def test_exit_code_137_without_a_vllm_error():
    lines = log("startup_success.log", until="43% Completed")
    cause = classify_failure(lines, exit_code=137)
    assert cause.kind is FailureKind.KILLED
    assert cause.summary == (
        "the container was killed (exit code 137, SIGKILL) without a vLLM error: the kernel's "
        "OOM killer (host memory exhausted) or a `docker kill`"
    )
    assert "Check `dmesg`" in cause.fix and "do not retry in a loop" in cause.fix
    assert cause.numbers == {"exit_code": 137.0, "oom_killed": 0.0}


def test_killed_shows_the_last_errors_and_scrubs_them():
    lines = [
        "(EngineCore_0 pid=2) ERROR 01-01 00:00:00 [core.py:1] EngineCore failed to start.",
        "(EngineCore_0 pid=2) ZeroDivisionError: division by zero sk-777",
    ]
    cause = classify_failure(lines, exit_code=137, oom_killed=True, secrets=["sk-777"])
    assert cause.kind is FailureKind.OOM_KILLED
    assert cause.evidence == ["(EngineCore_0 pid=2) ZeroDivisionError: division by zero ***"]


def test_the_guard_cause_is_built_from_its_numbers():
    """The readiness gate stopped the start: its own reading is the cause, whatever the log says."""
    cause = host_memory_guard_cause(3.214, 4.0, log("startup_success.log", until="43% Completed"))
    assert cause.kind is FailureKind.HOST_MEMORY_GUARD
    assert cause.numbers == {"available_gib": 3.21, "floor_gib": 4.0}
    assert "46307" in cause.summary and "3.21" in cause.summary and "max_num_batched_tokens" in cause.fix
    assert len(cause.evidence) == MAX_EVIDENCE


def test_a_start_refused_before_it_ran_has_the_numbers_of_vllms_own_check():
    """free_memory_cause gives what the classifier reads from vLLM 0.10.1.1's text, same numbers and fix."""
    logged = classify_failure(log("fail_free_memory.log"))
    built = free_memory_cause(85.92, 121.69, 0.92)
    assert built.kind is FailureKind.FREE_MEMORY
    assert built.numbers == logged.numbers and built.suggested == logged.suggested and built.fix == logged.fix
    # the pre-start check counts the page cache a drop would return in its suggestion
    after_drop = free_memory_cause(60.0, 121.69, 0.92, page_cache_gib=25.92)
    assert after_drop.numbers["free_gib"] == 60.0 and after_drop.suggested == {"gpu_memory_utilization": 0.69}


# ------------------------------------------------------------------------------ every inspected vLLM

VERSIONS = ["0.10.1.1", "0.10.2", "0.11.1", "0.17.1", "0.20.1", "0.31.0"]
MEM_FREE_VERSIONS = {"0.10.1.1", "0.10.2"}  # tasks/vllm/versions.py FREE_MEMORY: MemFree before 0.11.1
ENGINE = {"0.10.1.1": "EngineCore_0", "0.10.2": "EngineCore_DP0", "0.11.1": "EngineCore_DP0"}
ENGINE |= {"0.17.1": "EngineCore_DP0", "0.20.1": "EngineCore", "0.31.0": "EngineCore"}


def at(version: str, message: str, process: str = "", level: str = "ERROR") -> str:
    return f"({process or ENGINE[version]} pid=7) {level} 12-05 10:00:00 [x.py:1] {message}"


def free_memory_error(version: str) -> str:
    """vLLM's free-memory error of that version, its f-string filled: gpu_worker.py:180-187 (0.10.1.1, 0.10.2,
    0.11.1: GiB() rounds to 2 places); from 0.17.1 utils.py:414-421 with the device and format_gib."""
    device = "" if Version(version) < Version("0.17.1") else "cuda:0 "
    return (
        f"ValueError: Free memory on device {device}(85.92/121.69 GiB) on startup is less than desired GPU memory "
        "utilization (0.92, 111.95 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
    )


def kv_too_small_error(version: str, estimate: int) -> str:
    """kv_cache_utils.py's message of that version (0.10.1.1 :700, 0.11.1 :708, 0.17.1 :642, 0.31.0 :926)."""
    v = Version(version)
    model = "model's" if v >= Version("0.31") else "models's"
    if v < Version("0.17.1"):  # `GiB). {estimated_msg} Try`: two spaces when the estimate is 0
        est = f"Based on the available memory, the estimated maximum model length is {estimate}." if estimate else ""
        tail = (
            f"{est} Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
        )
    else:  # `GiB). {estimated_msg}Try`, the sentence ending with its own space
        est = f"Based on the available memory, the estimated maximum model length is {estimate}. " if estimate else ""
        tail = (
            f"{est}Try increasing `gpu_memory_utilization` ... when initializing the engine. See https://docs.vllm.ai/"
        )
    return (
        f"ValueError: To serve at least one request with the {model} max seq len (32000), (7.81 GiB KV cache is "
        f"needed, which is larger than the available KV cache memory (3.1 GiB). {tail}"
    )


def no_kv_error(version: str) -> str:
    """kv_cache_utils.py:682 (0.10.1.1), :687 (0.11.1), :624 (0.17.1), :906 (0.31.0: the CPU backend's note)."""
    v = Version(version)
    text = "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
    if v < Version("0.17.1"):
        return text + "initializing the engine."
    if v < Version("0.31"):
        return text + "initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/"
    return text + "initializing the engine (this flag also controls CPU memory reservation on the CPU backend, despite"


@pytest.mark.parametrize("version", VERSIONS)
def test_free_memory_of_each_version(version):
    """26.03's (0.17.1) `Free memory on device cuda:0 (...)` as much as 25.09's form; the fix follows what the
    version's check reads: a page-cache drop only where the cache counts as used."""
    lines = [at(version, free_memory_error(version)), at(version, "RuntimeError: Engine core initialization failed.")]
    cause = classify_failure(lines, exit_code=1, version=Version(version))
    assert cause.kind is FailureKind.FREE_MEMORY
    assert cause.numbers["free_gib"] == 85.92 and cause.numbers["total_gib"] == 121.69
    assert cause.numbers["requested_utilization"] == 0.92 and cause.numbers["requested_gib"] == 111.95
    assert cause.suggested == {"gpu_memory_utilization": 0.69}
    assert ("cuda:0" in cause.summary) is (Version(version) >= Version("0.17.1"))
    if version in MEM_FREE_VERSIONS:
        assert "drop_caches" in cause.fix and "MemFree" in cause.fix and "35313" in cause.fix
    else:
        assert "drop_caches" not in cause.fix and "MemAvailable" in cause.fix and "really held" in cause.fix
    assert classify_failure(lines, exit_code=1).kind is FailureKind.FREE_MEMORY  # version unknown: every form


@pytest.mark.parametrize("version", VERSIONS)
def test_a_start_refused_before_it_ran_says_what_the_version_reads(version):
    """The pre-start check's cause: the page cache a drop returns counts only on a MemFree version."""
    cause = free_memory_cause(60.0, 121.69, 0.92, page_cache_gib=25.92, version=Version(version))
    assert cause.kind is FailureKind.FREE_MEMORY and cause.numbers["free_gib"] == 60.0
    if version in MEM_FREE_VERSIONS:
        assert cause.suggested == {"gpu_memory_utilization": 0.69} and "drop_caches" in cause.fix
    else:  # MemAvailable already holds the reclaimable cache: no drop, no extra room
        assert cause.suggested == {"gpu_memory_utilization": 0.48} and "drop_caches" not in cause.fix


@pytest.mark.parametrize("version", VERSIONS)
def test_memory_profiling_of_each_version(version):
    """The same assertion text in every version (gpu_worker.py:249-256 in 0.10.1.1 ... :653 in 0.31.0)."""
    message = (
        "AssertionError: Error in memory profiling. Initial free memory 80.12 GiB, current free memory 84.5 GiB. "
        "This happens when other processes sharing the same container release GPU memory while vLLM is profiling "
        "during initialization. To fix this, ensure consistent GPU memory allocation or isolate vLLM in its own "
        "container."
    )
    cause = classify_failure([at(version, message)], exit_code=1, version=Version(version))
    assert cause.kind is FailureKind.MEMORY_PROFILING
    assert cause.numbers == {"initial_free_gib": 80.12, "current_free_gib": 84.5}
    assert ("page cache" in cause.summary) is (version in MEM_FREE_VERSIONS)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("estimate", [12688, 0])
def test_kv_too_small_of_each_version(version, estimate):
    """`models's` until 0.20.1, `model's` in 0.31; the estimate sentence left out when it is 0."""
    cause = classify_failure([at(version, kv_too_small_error(version, estimate))], version=Version(version))
    assert cause.kind is FailureKind.KV_TOO_SMALL
    assert cause.numbers["needed_gib"] == 7.81 and cause.numbers["available_gib"] == 3.1
    assert cause.numbers.get("estimated_max_model_len") == (estimate or None)
    assert cause.suggested == ({"max_model_len": 12544} if estimate else {})
    assert ("drop the page cache" in cause.fix) is (version in MEM_FREE_VERSIONS)
    assert classify_failure([at(version, kv_too_small_error(version, estimate))]).kind is FailureKind.KV_TOO_SMALL


def test_the_0_31_kv_wording_is_not_read_as_an_older_version_s():
    line = at("0.31.0", kv_too_small_error("0.31.0", 12688))
    assert classify_failure([line], version=Version("0.10.1.1")).kind is FailureKind.UNKNOWN


@pytest.mark.parametrize("version", VERSIONS)
def test_no_kv_memory_of_each_version(version):
    lines = [
        at(version, "Available KV cache memory: -0.53 GiB", level="INFO"),  # %.2f before 0.17.1, format_gib after
        at(version, no_kv_error(version)),
    ]
    cause = classify_failure(lines, exit_code=1, version=Version(version))
    assert cause.kind is FailureKind.NO_KV_MEMORY and cause.numbers == {"available_gib": -0.53}
    assert ("drop the page cache" in cause.fix) is (version in MEM_FREE_VERSIONS)


# what the engine core's death prints, by version (tasks/vllm/failures.py ENGINE_DEAD cites each line)
DEATH_LINES = {
    "EngineCore encountered a fatal error.": VERSIONS,
    "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the "
    "root cause.": VERSIONS,
    "AsyncLLM output_handler failed.": VERSIONS,
    "Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.": [
        "0.10.1.1",
        "0.10.2",
        "0.11.1",
        "0.17.1",
    ],
    "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup": ["0.31.0"],
    "RuntimeError: Engine core process EngineCore died unexpectedly.": ["0.20.1", "0.31.0"],
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("message", list(DEATH_LINES))
def test_engine_death_lines_of_each_version(version, message):
    lines = [at(version, "Application startup complete.", "APIServer", "INFO"), at(version, message, "APIServer")]
    cause = classify_failure(lines, version=Version(version))
    expected = FailureKind.ENGINE_DEAD if version in DEATH_LINES[message] else FailureKind.UNKNOWN
    assert cause.kind is expected
    assert classify_failure(lines).kind is FailureKind.ENGINE_DEAD  # version unknown: every form


def test_a_0_31_engine_death_is_classified():
    cause = classify_failure(log("engine_dead_v031.log"), version=Version("0.31.0"))
    assert cause.kind is FailureKind.ENGINE_DEAD and cause.numbers["after_ready"] == 1.0
    assert any("MPClient: engine core exited unexpectedly" in line for line in cause.evidence)
    assert "/health answers 503" in cause.summary  # versions.py DEAD_ENGINE_HEALTH
    assert "/health answers 500 or 503" in classify_failure(log("engine_dead_v031.log")).summary  # unknown
    only_the_monitor = [line for line in log("engine_dead_v031.log") if "EngineDead" not in line]
    only_the_monitor = [line for line in only_the_monitor if "output_handler" not in line]
    assert classify_failure(only_the_monitor, version=Version("0.31.0")).kind is FailureKind.ENGINE_DEAD


def test_versioned_patterns_cite_their_source():
    for rule in RULES:
        for pattern in rule.patterns:
            if isinstance(pattern, Variant):
                assert re.search(r"vllm/\S+\.py:\d+", pattern.source) and pattern.versions, (rule.kind, pattern)
