"""tasks/vllm/failures.py: the failure rules, their priority, and the causes they build from vLLM's exact
texts (vLLM 0.10.1.1, each rule citing its source file) and docker's exit state."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

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
    assert "No available memory for the cache blocks" in cause.evidence[0]


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
