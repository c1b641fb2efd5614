"""tasks/recovery/planner.py: the recovery planner on causes classified from the recorded vLLM logs
(tests/data/logs/), with the machine's memory as the tests construct it."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blocks.engine import PRESETS, EngineSpec
from tasks.memory import MemInfo
from tasks.recovery.kv_model import GIB, QWEN3_32B_FP8_WEIGHTS_GIB, RUNBOOK_KV_CACHE_TOKENS, SPARK_TOTAL_GIB, KvModel
from tasks.recovery.planner import CLASSES, plan_recovery
from tasks.recovery.sizing import GUARD_SLACK_GIB, fit_utilization, round_model_len
from tasks.recovery.step import (
    MACHINE_ACTIONS,
    MEMORY_KINDS,
    Action,
    MachineMemory,
    RecoveryClass,
    RecoveryLimits,
    RecoveryStep,
    retry_spec,
)
from tasks.vllm.failures import FailureCause, FailureKind, classify_failure

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"
NO_MEMORY = MachineMemory()
FREE_LINE = "Free memory on device (85.92/121.69 GiB)"


def text(name: str) -> str:
    return (LOGS / name).read_text()


def cause(name: str, **kwargs) -> FailureCause:
    return classify_failure(text(name), **kwargs)


def free_memory_cause(free: str = "85.92", total: str = "121.69") -> FailureCause:
    """The recorded free-memory failure, its exact text with other numbers."""
    found = classify_failure(
        text("fail_free_memory.log").replace(FREE_LINE, f"Free memory on device ({free}/{total} GiB)")
    )
    assert found.kind is FailureKind.FREE_MEMORY and found.numbers["free_gib"] == float(free)
    return found


def mem(total: float = 121.69, free: float = 85.92, cached: float = 0.0, **kwargs) -> MachineMemory:
    return MachineMemory(meminfo=MemInfo(total, free, free + cached, cached), **kwargs)


SPEC_092 = EngineSpec(gpu_memory_utilization=0.92)  # the recorded log's request


def assert_sane(step: RecoveryStep, spec: EngineSpec, memory_failure: bool) -> None:
    """What every step must be: a valid retry spec, and never a blind repeat after a memory failure."""
    retry = retry_spec(spec, step)
    assert isinstance(retry, EngineSpec)
    if step.give_up:
        assert step.next_step and not step.actions and not step.overrides
    elif memory_failure:
        assert step.overrides or any(a in MACHINE_ACTIONS for a in step.actions), step
    assert retry.gpu_memory_utilization >= min(spec.gpu_memory_utilization, RecoveryLimits().floor_utilization)
    assert RecoveryStep.model_validate_json(step.model_dump_json()) == step


# ------------------------------------------------------------------------------ the table


def test_table_names_each_class_once_catch_all_last():
    assert [r.klass for r in CLASSES] == list(RecoveryClass)
    assert CLASSES[-1].klass is RecoveryClass.UNRECOVERABLE
    assert all(rule.doc.count("|") == 2 for rule in CLASSES)  # recognised by | done | retry with


def test_the_docs_list_the_classes_in_the_tables_order():
    text = (Path(__file__).resolve().parents[2] / "docs" / "recovery.md").read_text()
    section = text.split("## The classes", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert documented == [rule.klass.value for rule in CLASSES]
    assert all(rule.why for rule in CLASSES)


def test_one_sizing_rule():
    """Utilization and max_model_len suggestions are sized in tasks/recovery/sizing.py only: a second
    function that sizes them (as tasks/memory.py and tasks/failures.py once had) fails here."""
    root = Path(__file__).resolve().parents[2]
    sizing = re.compile(r"^def (_?(?:suggest|fit|round|ceil)_\w*(?:utilization|model_len))\(", flags=re.MULTILINE)
    found = {
        (path.relative_to(root).as_posix(), name)
        for folder in ("blocks", "tasks", "flows", "bench")
        for path in (root / folder).rglob("*.py")
        for name in sizing.findall(path.read_text())
    }
    assert {path for path, _ in found} == {"tasks/recovery/sizing.py"}, found


def test_fit_utilization_is_exact():
    assert fit_utilization(85.92, 121.69, 1.0) == 0.69  # (85.92 - 1) / 121.69 = 0.698
    assert fit_utilization(60.85, 119.7, 1.0) == 0.50  # exactly 0.50
    assert fit_utilization(60.84, 119.7, 1.0) == 0.49
    assert fit_utilization(0.5, 119.7, 1.0) == 0.0
    with pytest.raises(ValueError):
        fit_utilization(1.0, 0.0, 1.0)


def test_round_model_len():
    assert round_model_len(12688) == 12544
    assert round_model_len(16384) == 16384
    assert round_model_len(255) == 0


def test_kv_model_reproduces_the_runbook_reference():
    limits = RecoveryLimits()
    kv = limits.kv_gib(0.90, 119.7, 16384, 64)
    assert kv == pytest.approx(66.25, abs=0.01)  # "Available KV cache memory: 66.25 GiB"
    assert kv * GIB / limits.kv_bytes_per_token == pytest.approx(271_360, rel=1e-3)
    assert limits.activation_gib(16384, 64) == pytest.approx(2.57, abs=0.01)
    assert limits.activation_gib(8192, 16) == pytest.approx(1.27, abs=0.01)
    assert 271_360 - 2 * 256 < limits.max_len_at(0.90, 119.7, 16384, 64) <= 271_360  # rounded down to 256
    assert limits.utilization_for(32000, 119.7, 16384, 64) == 0.42


def test_the_kv_models_constants_come_from_the_checkpoint_and_the_runbook():
    """Weights: Qwen3-32B-FP8's checkpoint size; overhead: what the runbook's measured KV cache leaves."""
    model = KvModel()
    assert model.weights_gib == QWEN3_32B_FP8_WEIGHTS_GIB == 31.97
    assert model.overhead_gib == 6.94
    kv = model.kv_gib(0.90, SPARK_TOTAL_GIB, 16384, 64)
    assert kv * GIB / model.kv_bytes_per_token == pytest.approx(RUNBOOK_KV_CACHE_TOKENS, rel=1e-4)
    assert isinstance(RecoveryLimits(), KvModel)


def test_limits_calibrated_from_the_startup_log():
    limits = RecoveryLimits()
    assert limits.calibrated(text("fail_kv_too_small.log").splitlines()).weights_gib == 32.1345
    assert limits.calibrated(text("fail_free_memory.log").splitlines()) == limits  # failed before loading


# ------------------------------------------------------------------------------ free memory


@pytest.mark.parametrize("log", ["fail_free_memory.log", "fail_free_memory_v017.log"])
def test_page_cache_is_dropped_and_the_same_spec_retried(log):
    step = plan_recovery(cause(log), mem(cached=30.0), SPEC_092, 0)
    assert step.klass is RecoveryClass.PAGE_CACHE and not step.give_up
    assert step.actions == [Action.DROP_PAGE_CACHE] and step.overrides == {}
    for number in ("0.92", "85.92", "121.69", "30.0", "vllm issue 35313", "unsloth PR 10704"):
        assert number in step.reason
    assert_sane(step, SPEC_092, True)


def test_stale_container_of_ours_is_removed_first():
    step = plan_recovery(cause("fail_free_memory.log"), mem(cached=30.0, stale_containers=("vllm-old",)), SPEC_092, 0)
    assert step.klass is RecoveryClass.STALE_CONTAINER
    assert step.actions == [Action.REMOVE_STALE_CONTAINERS] and step.overrides == {}
    assert "vllm-old" in step.reason
    assert_sane(step, SPEC_092, True)

    # only memory failures: a missing model is no business of a stale container
    other = plan_recovery(cause("fail_missing_model.log"), mem(stale_containers=("vllm-old",)), EngineSpec(), 0)
    assert other.klass is RecoveryClass.UNRECOVERABLE

    # removed, and the start failed again while it still shows: not again, the next class decides
    again = plan_recovery(
        cause("fail_free_memory.log"), mem(cached=30.0, stale_containers=("vllm-old",)), SPEC_092, 1, history=[step]
    )
    assert again.klass is RecoveryClass.PAGE_CACHE


def test_held_by_others_prunes_and_fits_the_errors_own_numbers():
    step = plan_recovery(cause("fail_free_memory.log"), NO_MEMORY, SPEC_092, 0)
    assert step.klass is RecoveryClass.HELD_BY_OTHERS
    assert step.actions == [Action.PRUNE]
    assert step.overrides == {"gpu_memory_utilization": 0.69}  # floor((85.92 - 1) / 121.69, 0.01)
    for number in ("requested 0.92", "retry at 0.69", "35.8 GiB", "85.92 of 121.69"):
        assert number in step.reason
    assert "frees disk, not memory" in step.reason
    assert_sane(step, SPEC_092, True)


def test_held_by_others_with_meminfo_and_a_known_holder():
    step = plan_recovery(cause("fail_free_memory.log"), mem(others_gib=32.0), SPEC_092, 0)
    assert step.klass is RecoveryClass.HELD_BY_OTHERS
    assert step.actions == [Action.PRUNE] and step.overrides == {"gpu_memory_utilization": 0.69}
    assert "32.0 GiB are held by other processes" in step.reason


def test_a_little_page_cache_is_dropped_along_when_it_raises_the_fit():
    step = plan_recovery(cause("fail_free_memory.log"), mem(cached=2.0, others_gib=30.0), SPEC_092, 0)
    assert step.actions == [Action.DROP_PAGE_CACHE, Action.PRUNE]
    assert step.overrides == {"gpu_memory_utilization": 0.71}  # (85.92 + 2 - 1) / 121.69
    assert "2.0 GiB page cache" in step.reason


def test_memory_that_came_back_after_the_failure_is_used_after_the_prune():
    step = plan_recovery(cause("fail_free_memory.log"), mem(free=115.0, others_gib=3.0), SPEC_092, 0)
    assert step.klass is RecoveryClass.HELD_BY_OTHERS and step.actions == [Action.PRUNE] and step.overrides == {}
    assert "came back" in step.reason and "115.0" in step.reason
    nothing_done = plan_recovery(cause("fail_free_memory.log"), mem(free=115.0, others_gib=0.0), SPEC_092, 0)
    assert nothing_done.klass is RecoveryClass.SHORTAGE and nothing_done.overrides == {"gpu_memory_utilization": 0.91}


def test_shortage_when_nothing_else_holds_memory_or_the_prune_ran():
    nobody = plan_recovery(cause("fail_free_memory.log"), mem(others_gib=0.3), SPEC_092, 0)
    assert nobody.klass is RecoveryClass.SHORTAGE and Action.PRUNE not in nobody.actions
    assert nobody.overrides == {"gpu_memory_utilization": 0.69}
    assert "nothing more can be freed" in nobody.reason

    pruned = plan_recovery(cause("fail_free_memory.log"), NO_MEMORY, SPEC_092, 0)
    after = plan_recovery(
        free_memory_cause("80.10"), NO_MEMORY, EngineSpec(gpu_memory_utilization=0.69), 1, history=[pruned]
    )
    assert after.klass is RecoveryClass.SHORTAGE and after.actions == []
    assert after.overrides == {"gpu_memory_utilization": 0.65}  # (80.10 - 1) / 121.69 = 0.650
    assert_sane(after, EngineSpec(gpu_memory_utilization=0.69), True)


def test_the_floor_gives_up_with_the_numbers():
    step = plan_recovery(free_memory_cause("55.00"), NO_MEMORY, SPEC_092, 0)
    assert step.give_up and step.klass is RecoveryClass.HELD_BY_OTHERS
    assert "0.44" in step.reason and "floor 0.50" in step.reason
    assert "stop the process holding 66.7 GiB" in step.next_step and "ps aux --sort=-rss" in step.next_step
    assert_sane(step, SPEC_092, True)

    at_floor = plan_recovery(free_memory_cause("61.85"), NO_MEMORY, SPEC_092, 0)  # (61.85 - 1) / 121.69 = 0.500
    assert not at_floor.give_up and at_floor.overrides == {"gpu_memory_utilization": 0.50}

    lower_floor = plan_recovery(
        free_memory_cause("55.00"), NO_MEMORY, SPEC_092, 0, RecoveryLimits(floor_utilization=0.40)
    )
    assert not lower_floor.give_up and lower_floor.overrides == {"gpu_memory_utilization": 0.44}


def test_the_margin_is_kept_free():
    wide = plan_recovery(cause("fail_free_memory.log"), NO_MEMORY, SPEC_092, 0, RecoveryLimits(margin_gib=6.0))
    assert wide.overrides == {"gpu_memory_utilization": 0.65}  # (85.92 - 6) / 121.69 = 0.657


def test_kv_fit_check_lowers_max_model_len_when_the_new_utilization_cannot_hold_it():
    spec = EngineSpec(gpu_memory_utilization=0.92, max_model_len=131072)
    limits = RecoveryLimits()
    step = plan_recovery(free_memory_cause("70.00"), NO_MEMORY, spec, 0, limits)
    util = step.overrides["gpu_memory_utilization"]
    assert util == 0.56  # (70 - 1) / 121.69 = 0.567
    new_len = step.overrides["max_model_len"]
    assert new_len < 131072 and new_len % 256 == 0 and new_len >= limits.min_model_len
    assert new_len == limits.max_len_at(util, 121.69, 16384, 64)
    assert limits.kv_gib(util, 121.69, 16384, 64) * GIB >= new_len * limits.kv_bytes_per_token
    assert f"max_model_len 131072 -> {new_len}" in step.reason and "MiB/token" in step.reason
    assert_sane(step, spec, True)

    # the runbook's 32000 fits at any utilization above the floor: no change to it
    plain = plan_recovery(free_memory_cause("62.00"), NO_MEMORY, SPEC_092, 0)
    assert "max_model_len" not in plain.overrides


def test_kv_fit_below_the_minimum_context_gives_up():
    limits = RecoveryLimits(floor_utilization=0.30, min_model_len=16384)
    step = plan_recovery(free_memory_cause("45.00"), NO_MEMORY, SPEC_092, 0, limits)  # 0.36: 2.33 GiB of KV
    assert step.give_up and step.reason.startswith("requested 0.92, retry at 0.36")
    assert "9472 tokens" in step.reason and "below the minimum max_model_len 16384" in step.reason
    assert "deploy with gpu_memory_utilization 0.38 and max_model_len 16384" in step.next_step


def test_a_failed_drop_is_not_repeated():
    first = plan_recovery(cause("fail_free_memory.log"), mem(cached=30.0), SPEC_092, 0)
    again = plan_recovery(cause("fail_free_memory.log"), mem(cached=30.0), SPEC_092, 1, history=[first])
    assert again.klass is not RecoveryClass.PAGE_CACHE
    assert again.overrides.get("gpu_memory_utilization", 0.92) < 0.92  # never the same spec again
    assert_sane(again, SPEC_092, True)


# ------------------------------------------------------------------------------ KV cache


SPEC_KV = EngineSpec(gpu_memory_utilization=0.40)  # 3.10 GiB of KV left after 32.13 GiB of weights


def test_kv_too_small_lowers_max_model_len_to_the_estimate():
    step = plan_recovery(cause("fail_kv_too_small.log"), NO_MEMORY, SPEC_KV, 0)
    assert step.klass is RecoveryClass.KV_TOO_SMALL and step.overrides == {"max_model_len": 12544}
    for number in ("12688", "12544", "7.81", "3.10", "no meminfo"):
        assert number in step.reason
    assert_sane(step, SPEC_KV, True)


def test_kv_too_small_keeps_the_context_when_free_memory_covers_the_missing_gib():
    step = plan_recovery(cause("fail_kv_too_small.log"), mem(total=119.7, free=80.0, cached=32.0), SPEC_KV, 0)
    assert step.overrides == {"gpu_memory_utilization": 0.44}  # 0.40 + 4.71 / 119.7, up to 0.01
    assert step.actions == []  # 52.7 GiB fit the 80 free: no drop (it would make the next weight read cold)
    assert "keep max_model_len 32000" in step.reason and "4.71 GiB" in step.reason
    assert_sane(step, SPEC_KV, True)

    scarce = plan_recovery(cause("fail_kv_too_small.log"), mem(total=119.7, free=45.0, cached=1.0), SPEC_KV, 0)
    assert scarce.overrides == {"max_model_len": 12544}
    assert "raising to 0.44 needs more than is free: up to 0.37" in scarce.reason

    # raised once and still too small: vLLM's new estimate decides, not another raise
    again = plan_recovery(
        cause("fail_kv_too_small.log"),
        mem(total=119.7, free=80.0, cached=32.0),
        EngineSpec(gpu_memory_utilization=0.44),
        1,
        history=[step],
    )
    assert again.overrides == {"max_model_len": 12544}


def test_kv_too_small_below_the_minimum_context_gives_up():
    limits = RecoveryLimits(min_model_len=16384)
    step = plan_recovery(cause("fail_kv_too_small.log"), NO_MEMORY, SPEC_KV, 0, limits)
    assert step.give_up and "12688" in step.reason and "16384" in step.reason
    assert "leaves 4.71 GiB more for the KV cache" in step.next_step
    scarce = plan_recovery(cause("fail_kv_too_small.log"), mem(total=119.7, free=45.0), SPEC_KV, 0, limits)
    assert scarce.give_up and "raising to 0.44 needs more than is free" in scarce.reason
    assert "deploy with gpu_memory_utilization 0.44" in scarce.next_step


SPEC_NO_KV = EngineSpec(gpu_memory_utilization=0.35)


def test_no_kv_memory_raises_the_utilization_when_memory_is_free():
    limits = RecoveryLimits().calibrated(text("fail_no_kv_memory.log").splitlines())
    step = plan_recovery(
        cause("fail_no_kv_memory.log"), mem(total=119.7, free=80.0, cached=32.0), SPEC_NO_KV, 0, limits
    )
    assert step.klass is RecoveryClass.NO_KV_MEMORY
    assert step.overrides == {"gpu_memory_utilization": 0.42}  # the least that holds one 32000-token request
    assert limits.max_len_at(0.42, 119.7, 16384, 64) >= 32000
    assert "0.35 -> 0.42" in step.reason
    assert_sane(step, SPEC_NO_KV, True)


def test_no_kv_memory_shrinks_the_peak_else_gives_up():
    step = plan_recovery(cause("fail_no_kv_memory.log"), NO_MEMORY, SPEC_NO_KV, 0)
    assert step.overrides == {"max_num_batched_tokens": 8192, "max_num_seqs": 16}  # the latency preset, in one step
    assert "2.57 -> 1.27 GiB" in step.reason
    latency = EngineSpec.preset("latency", gpu_memory_utilization=0.35)
    done = plan_recovery(cause("fail_no_kv_memory.log"), NO_MEMORY, latency, 0)
    assert done.give_up and "latency preset" in done.reason


# ------------------------------------------------------------------------------ activation peak


def test_cuda_oom_steps_the_batch_settings_to_the_latency_preset_then_utilization():
    """One step to the runbook's latency values, then utilization: halving spent both retries of the
    cap on batch settings (bench/recovery.py, a profiling overshoot)."""
    oom = cause("fail_cuda_oom.log")
    spec = EngineSpec()
    first = plan_recovery(oom, NO_MEMORY, spec, 0)
    assert first.klass is RecoveryClass.ACTIVATION_PEAK
    assert first.overrides == {"max_num_batched_tokens": 8192, "max_num_seqs": 16}
    second_spec = retry_spec(spec, first)
    second = plan_recovery(oom, NO_MEMORY, second_spec, 1, history=[first])
    assert second.overrides == {"gpu_memory_utilization": 0.85}
    latency = PRESETS["latency"]
    at_preset = EngineSpec(
        max_num_batched_tokens=latency["max_num_batched_tokens"], max_num_seqs=latency["max_num_seqs"]
    )
    third = plan_recovery(oom, NO_MEMORY, at_preset, 0)
    assert third.overrides == {"gpu_memory_utilization": 0.85} and "0.90 -> 0.85" in third.reason
    for step, s in ((first, spec), (second, second_spec), (third, at_preset)):
        assert_sane(step, s, True)


def test_activation_peak_never_below_the_floor():
    spec = EngineSpec.preset("latency", gpu_memory_utilization=0.53)
    step = plan_recovery(cause("fail_cuda_oom.log"), NO_MEMORY, spec, 0)
    assert step.give_up and "floor 0.50" in step.reason and "dmesg" in step.next_step


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [(FailureKind.OOM_KILLED, {"exit_code": 137, "oom_killed": True}), (FailureKind.KILLED, {"exit_code": 137})],
)
def test_kills_are_activation_peaks(kind, kwargs):
    killed = classify_failure(text("startup_success.log").splitlines()[:20], **kwargs)
    assert killed.kind is kind
    step = plan_recovery(killed, NO_MEMORY, EngineSpec(), 0)
    assert step.klass is RecoveryClass.ACTIVATION_PEAK and step.overrides["max_num_batched_tokens"] == 8192


def test_a_guard_trip_is_an_activation_peak_whatever_the_log_says():
    unknown = classify_failure(text("startup_success.log").splitlines()[:20], exit_code=143)
    assert unknown.kind is FailureKind.UNKNOWN
    assert plan_recovery(unknown, NO_MEMORY, EngineSpec(), 0).klass is RecoveryClass.UNRECOVERABLE
    step = plan_recovery(unknown, NO_MEMORY, EngineSpec(), 0, guard_tripped=True)
    assert step.klass is RecoveryClass.ACTIVATION_PEAK and "host-memory guard" in step.reason
    stale = plan_recovery(unknown, mem(stale_containers=("vllm-old",)), EngineSpec(), 0, guard_tripped=True)
    assert stale.klass is RecoveryClass.STALE_CONTAINER


def test_batch_step_keeps_a_whole_prompt_without_chunked_prefill():
    spec = EngineSpec(enable_chunked_prefill=False, max_num_batched_tokens=32000, max_model_len=32000)
    step = plan_recovery(cause("fail_cuda_oom.log"), NO_MEMORY, spec, 0)
    assert step.overrides == {"max_num_seqs": 16}
    assert_sane(step, spec, True)


# ------------------------------------------------------------------------------ engine death


NOW = datetime(2025, 11, 7, 14, 0, tzinfo=UTC)


def test_engine_died_restarts_once_an_hour():
    died = cause("engine_dead.log")
    assert died.kind is FailureKind.ENGINE_DEAD and died.numbers["after_ready"] == 1
    first = plan_recovery(died, NO_MEMORY, EngineSpec(), 0, now=NOW)
    assert first.klass is RecoveryClass.ENGINE_DIED and not first.give_up
    assert first.actions == [] and first.overrides == {}  # not a memory failure: the same spec is right
    taken = first.model_copy(update={"at": NOW - timedelta(minutes=20)})

    second = plan_recovery(died, NO_MEMORY, EngineSpec(), 0, history=[taken], now=NOW)
    assert second.give_up and "within the hour" in second.reason
    assert "docker logs" in second.next_step and "max_num_seqs (64)" in second.next_step

    long_ago = first.model_copy(update={"at": NOW - timedelta(hours=2)})
    assert not plan_recovery(died, NO_MEMORY, EngineSpec(), 0, history=[long_ago], now=NOW).give_up
    # without a clock every restart in the history counts
    assert plan_recovery(died, NO_MEMORY, EngineSpec(), 0, history=[long_ago]).give_up
    assert not plan_recovery(
        died, NO_MEMORY, EngineSpec(), 0, RecoveryLimits(engine_restarts_per_hour=2), history=[taken], now=NOW
    ).give_up


def test_an_engine_death_during_startup_is_for_a_person():
    lines = [line for line in text("engine_dead.log").splitlines() if "Application startup complete." not in line]
    died = classify_failure(lines)
    assert died.kind is FailureKind.ENGINE_DEAD and died.numbers["after_ready"] == 0
    step = plan_recovery(died, NO_MEMORY, EngineSpec(), 0)
    assert step.klass is RecoveryClass.UNRECOVERABLE and step.give_up


# ------------------------------------------------------------------------------ unrecoverable


@pytest.mark.parametrize(
    "log",
    [
        "fail_missing_model.log",
        "fail_missing_shard.log",
        "fail_bad_args.log",
        "fail_fp8_kernel.log",
        "fail_gpu_runtime.log",
    ],
)
def test_unrecoverable_gives_up_with_the_causes_own_fix(log):
    found = cause(log)
    step = plan_recovery(found, mem(stale_containers=("vllm-old",)), EngineSpec(), 0)
    assert step.klass is RecoveryClass.UNRECOVERABLE and step.give_up
    assert step.next_step == found.fix and found.kind.value in step.reason
    assert step.actions == [] and step.overrides == {}


# ------------------------------------------------------------------------------ the attempt cap


def test_never_past_max_attempts():
    retry = plan_recovery(cause("fail_free_memory.log"), NO_MEMORY, SPEC_092, 1)
    assert not retry.give_up
    capped = plan_recovery(cause("fail_free_memory.log"), NO_MEMORY, SPEC_092, 2)
    assert capped.give_up and capped.klass is RecoveryClass.HELD_BY_OTHERS
    assert capped.actions == [] and capped.overrides == {}
    assert "2 retries made, the limit is 2" in capped.reason and "retry at 0.69" in capped.reason
    assert capped.next_step == (
        "stop the process holding 35.8 GiB (`docker ps`, `ps aux --sort=-rss`)"
        " or deploy with gpu_memory_utilization 0.69"
    )
    none = plan_recovery(cause("fail_free_memory.log"), mem(cached=30.0), SPEC_092, 0, RecoveryLimits(max_attempts=0))
    assert none.give_up and "sync; echo 3 > /proc/sys/vm/drop_caches" in none.next_step

    kv = plan_recovery(cause("fail_kv_too_small.log"), NO_MEMORY, SPEC_KV, 2)
    assert kv.give_up and "deploy with max_model_len 12544" in kv.next_step


def test_no_step_repeats_a_spec_after_a_memory_failure():
    """Every recorded log x a range of machines: valid specs, never the same spec blindly."""
    machines = [
        NO_MEMORY,
        mem(cached=30.0),
        mem(others_gib=32.0),
        mem(others_gib=0.0),
        mem(total=119.7, free=80.0, cached=32.0),
        mem(total=119.7, free=20.0, cached=0.0),
        mem(stale_containers=("vllm-old",)),
    ]
    specs = [
        EngineSpec(),
        SPEC_092,
        SPEC_KV,
        EngineSpec.preset("latency"),
        EngineSpec.preset("latency", gpu_memory_utilization=0.5),
    ]
    for log, machine, spec, attempt in itertools.product(sorted(LOGS.glob("*.log")), machines, specs, (0, 1, 2)):
        found = classify_failure(log.read_text())
        step = plan_recovery(found, machine, spec, attempt)
        assert_sane(step, spec, found.kind in MEMORY_KINDS)
        if attempt >= 2:
            assert step.give_up


# ------------------------------------------------------------------------------ the result


def test_step_is_json_and_a_table_row_and_says_what_runs_degraded():
    step = plan_recovery(cause("fail_free_memory.log"), NO_MEMORY, SPEC_092, 0)
    data = step.model_dump(mode="json")
    assert data["klass"] == "held_by_others" and data["actions"] == ["prune"]
    row = step.row()
    assert row["retry with"] == "gpu_memory_utilization 0.69" and row["give up"] == "no"
    assert all(isinstance(v, str) for v in row.values())
    degraded = step.degraded(SPEC_092)
    assert degraded.startswith("requested gpu_memory_utilization 0.92, running gpu_memory_utilization 0.69, because ")
    same = plan_recovery(cause("fail_free_memory.log"), mem(cached=30.0), SPEC_092, 0)
    assert same.degraded(SPEC_092) is None and same.row()["retry with"] == "same spec"
    with pytest.raises(ValueError):
        RecoveryStep(klass=RecoveryClass.SHORTAGE, reason="x", overrides={"max_num_seq": 8})


def test_a_computed_retry_keeps_more_free_than_the_host_memory_guard_needs():
    """With the 1 GiB margin under the gate's 4 GiB floor, every computed retry was a start the guard
    killed as soon as the server held its memory: the margin is raised above the floor."""
    limits = RecoveryLimits().guarded(4.0)
    assert limits.margin_gib == 4.0 + GUARD_SLACK_GIB
    util = fit_utilization(86.7, 119.7, limits.margin_gib)
    assert 86.7 - util * 119.7 >= 4.0 + GUARD_SLACK_GIB - 0.01
    assert RecoveryLimits().guarded(0).margin_gib == RecoveryLimits().margin_gib  # no guard, no change
    assert RecoveryLimits(margin_gib=8).guarded(4.0).margin_gib == 8  # a larger margin stays


# ------------------------------------------------------------------------------ the runbook's ladder (bench/)


def test_runbook_ladder():
    from bench.recovery import RUNBOOK_LADDER, runbook_ladder

    assert [runbook_ladder(i) for i in range(4)] == [
        {"gpu_memory_utilization": 0.90},
        {"gpu_memory_utilization": 0.75},
        {"gpu_memory_utilization": 0.70},
        {"gpu_memory_utilization": 0.70, "max_model_len": 16384},
    ]
    runbook_ladder(0)["gpu_memory_utilization"] = 0.1  # a copy
    assert RUNBOOK_LADDER[0] == {"gpu_memory_utilization": 0.90}
    for bad in (-1, 4):
        with pytest.raises(ValueError):
            runbook_ladder(bad)
