"""What to do after a failed start: one pure planner, one table of recovery classes.

Why classify before fixing
--------------------------
The runbook's answer to "Container Fails with Memory Errors" is a blind ladder: stop everything,
``docker system prune -f``, lower ``--gpu-memory-utilization`` to 0.75, then 0.70, then
``--max-model-len`` to 16384. Each rung is a fresh 3-4 minute start, and most rungs fix nothing:
on the DGX Spark (GB10, unified memory) with the runbook's vLLM 0.10.1.1 the usual cause is the
previous load's page cache, which vLLM up to 0.10.x counts as used (vllm issue 35313; measured on
GB10 in unsloth PR 10704) and which no lower utilization returns; when other processes really hold
memory, vLLM's own error already says how much is free, so the one utilization that fits can be
computed instead of guessed (tasks/recovery/sizing.py).

Which vLLM failed decides what "free" means (tasks/vllm/versions.py `FREE_MEMORY`, carried by
``plan_recovery(..., version=...)`` into `Case.free_memory`, the one place the planner reads it):
from 0.11.1 on the check reads MemAvailable, the page cache never blocks a start, a free-memory
failure means memory is really held, and no step drops the page cache (a drop there only makes the
next weight read cold). Up to 0.10.x a cold read costs KV cache too (vllm issue 35920): the KV
predictions of a step that drops the cache count it (`Case.retry_model`).
`plan_recovery` reads the classified failure (`tasks.vllm.failures.FailureCause`), the machine's
memory as read after the failure (`MachineMemory`) and the spec that failed, and returns the one
next step: what to do to the machine, which spec to start, and why, with the numbers, or that a
person has to act and what they should do.

The class table
---------------
`CLASSES` is the whole planner: the first `RecoveryRule` whose ``matches`` is true builds the step,
as `tasks.vllm.failures.RULES` does for causes. Each rule says next to it, in the table, what it
recognises, what it does and why it sits where it does. Adding a class: a member of
`RecoveryClass` and one `RecoveryRule` in `CLASSES` at its place; the table is checked at import
(each class once, the catch-all last).

Rules every step obeys (applied after the table, in `plan_recovery`): never past
``limits.max_attempts`` (then give up, with what the numbers say a person should do); never below
``limits.floor_utilization``; never the same spec twice in a row after a memory failure unless an
action changed the machine; every retry spec passes `EngineSpec`'s own validation. The planner has
no I/O, no clock and no Prefect: the flows read the machine, run the actions and start the retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from packaging.version import Version

from blocks.engine import EngineSpec
from tasks.recovery.case import (
    Case,
    Plan,
    RecoveryRule,
    batch_text,
    error_text,
    free_it_next_step,
    give_up,
    obey,
    shorter_model_len,
    smaller_batch,
)
from tasks.recovery.kv_model import GIB
from tasks.recovery.sizing import MODEL_LEN_STEP, UTIL_STEP, ceil_utilization, fit_utilization, round_model_len
from tasks.recovery.step import (
    Action,
    MachineMemory,
    RecoveryClass,
    RecoveryLimits,
    RecoveryStep,
    fmt,
)
from tasks.vllm.failures import FailureCause, FailureKind

__all__ = ["CLASSES", "plan_recovery"]

#: activation_peak lowers the utilization by this once the batch settings are at the latency preset.
UTIL_PEAK_STEP = 0.05


# ============================================================================ the class rules

# ---------------------------------------------------------------- stale_container


def _stale_matches(case: Case) -> bool:
    return (
        case.memory_failure
        and bool(case.memory.stale_containers)
        and not case.just_tried(RecoveryClass.STALE_CONTAINER)
    )


def _stale_plan(case: Case) -> Plan:
    names = ", ".join(case.memory.stale_containers)
    mi = case.meminfo
    seen = f" (free {mi.free_gib:.1f} of {mi.total_gib:.1f} GiB)" if mi else ""
    return Plan(
        reason=(
            f"{case.cause.kind.value} at {fmt(case.util)} while our older container(s) {names} still run "
            f"and hold memory{seen}: remove them and retry the same spec"
        ),
        actions=(Action.REMOVE_STALE_CONTAINERS,),
        overrides={},
    )


# ---------------------------------------------------------------- page_cache


def _page_cache_fits(case: Case) -> bool:
    """A drop raises what this vLLM's check reads (never on MemAvailable) enough for the request."""
    mi = case.meminfo
    if mi is None:
        return False
    after = mi.after_drop_gib(case.free_memory)
    return after > mi.check_reads_gib(case.free_memory) and after - case.limits.margin_gib >= case.util * mi.total_gib


def _page_cache_matches(case: Case) -> bool:
    return case.cause.kind is FailureKind.FREE_MEMORY and _page_cache_fits(case) and case.drop_can_help()


def _page_cache_plan(case: Case) -> Plan:
    mi = case.meminfo
    assert mi is not None
    need = case.util * mi.total_gib
    shmem = f" ({mi.shmem_gib:.1f} GiB shared memory left out: a drop cannot free it)" if mi.shmem_gib else ""
    return Plan(
        reason=(
            f"{error_text(case)}; {mi.droppable_gib:.1f} GiB is page cache{shmem}, which {case.vllm} counts "
            f"as used on GB10 (vllm issue 35313; unsloth PR 10704): free {mi.free_gib:.1f} + page cache "
            f"{mi.droppable_gib:.1f} GiB covers the {need:.1f} GiB of {fmt(case.util)} x {mi.total_gib:.1f} GiB and"
            f" keeps the {case.limits.margin_gib:.1f} GiB margin: drop the page cache and retry the same spec"
        ),
        actions=(Action.DROP_PAGE_CACHE,),
        overrides={},
    )


# ---------------------------------------------------------------- held_by_others / shortage


def _others_hold_memory(case: Case) -> bool:
    others = case.memory.others_gib
    return others is None or others > case.limits.margin_gib


def _held_matches(case: Case) -> bool:
    return (
        case.cause.kind is FailureKind.FREE_MEMORY
        and _others_hold_memory(case)
        and not case.ever_tried(RecoveryClass.HELD_BY_OTHERS)
    )


def _held_plan(case: Case) -> Plan:
    return _lower_utilization(case, prune=True)


def _shortage_matches(case: Case) -> bool:
    return case.cause.kind is FailureKind.FREE_MEMORY


def _shortage_plan(case: Case) -> Plan:
    return _lower_utilization(case, prune=False)


def _lower_utilization(case: Case, prune: bool) -> Plan:
    """The utilization that fits what is free, and a max_model_len the KV cache then holds."""
    free, total, drop, how = case.best_free()
    limits = case.limits
    if total <= 0:
        return give_up(
            f"{error_text(case)}; no free-memory figure to compute a utilization from", free_it_next_step(case)
        )
    fit = fit_utilization(free, total, limits.margin_gib)
    held = case.held_by_others_gib()
    if prune:
        held_text = f"{held:.1f} GiB are held by other processes" if held is not None else "other processes hold memory"
    else:
        held_text = f"only {free:.1f} of {total:.1f} GiB can be free and nothing more can be freed"
        if held is not None:
            held_text += f" ({held:.1f} GiB held by others)"
    if fit < limits.floor_utilization:
        floor_gib = limits.floor_utilization * total + limits.margin_gib
        return give_up(
            f"{error_text(case)}: {held_text} ({how}); the utilization that fits, {fmt(fit)}, is below "
            f"the floor {fmt(limits.floor_utilization)} (a start needs {floor_gib:.1f} GiB free with the "
            f"{limits.margin_gib:.1f} GiB margin)",
            free_it_next_step(case),
        )
    actions = ((Action.DROP_PAGE_CACHE,) if drop else ()) + ((Action.PRUNE,) if prune else ())
    if prune and fit >= case.util:
        # memory came back after the failure (meminfo shows more than vLLM saw): the prune changes
        # the machine, so the requested utilization may run again
        return Plan(
            reason=f"{error_text(case)}, but the memory came back since ({how}): retry at {fmt(case.util)} after "
            "the runbook's `docker system prune -f` (it frees disk, not memory: stopped containers hold none)",
            actions=actions,
            overrides={},
        )
    # with nothing done to the machine, never the same utilization again: the check failed at it
    new_util = min(fit, case.util if prune else round(case.util - UTIL_STEP, 2))
    if new_util < limits.floor_utilization:
        return give_up(
            f"{error_text(case)}: already at the floor {fmt(limits.floor_utilization)}",
            free_it_next_step(case),
        )
    overrides: dict[str, Any] = {"gpu_memory_utilization": new_util}
    reason = f"requested {fmt(case.util)}, retry at {fmt(new_util)}: {held_text} ({how})"
    fitted = shorter_model_len(
        case, new_util, total, case.spec.max_num_batched_tokens, case.spec.max_num_seqs, drop=drop
    )
    if isinstance(fitted, Plan):
        return give_up(f"{reason}; {fitted.reason}", fitted.next_step or "")
    if fitted is not None:
        overrides["max_model_len"] = fitted[0]
        reason += f"; {fitted[1]}"
    if prune:
        reason += (
            "; the runbook's `docker system prune -f` first (it frees disk, not memory: stopped containers hold none)"
        )
    return Plan(reason=reason, actions=actions, overrides=overrides)


# ---------------------------------------------------------------- kv_too_small


def _kv_matches(case: Case) -> bool:
    return case.cause.kind is FailureKind.KV_TOO_SMALL


def _kv_plan(case: Case) -> Plan:
    limits = case.limits
    needed, available = case.number("needed_gib"), case.number("available_gib")
    length = int(case.number("max_model_len") or case.spec.max_model_len)
    estimate = case.number("estimated_max_model_len")
    if estimate is None and available is not None:  # vLLM's estimate: the block-aligned length that fits
        estimate = available * GIB // limits.kv_bytes_per_token // 16 * 16
    said = f"max_model_len {length} does not fit the KV cache at {fmt(case.util)}"
    if needed is not None and available is not None:
        said = (
            f"max_model_len {length} needs {needed:.2f} GiB of KV cache,"
            f" {available:.2f} GiB was left at {fmt(case.util)}"
        )
    total = case.total_gib()
    missing = needed - available if needed is not None and available is not None else None
    raise_to, drop = _raise_for(case, missing, total)

    # 1. keep the context and raise the utilization, when free memory covers the missing GiB. Not
    #    twice in a row: if a raise was not enough, vLLM's new estimate is the better guide.
    raised_before = (
        case.just_tried(RecoveryClass.KV_TOO_SMALL) and "gpu_memory_utilization" in case.history[-1].overrides
    )
    why_not_raise = " (no meminfo shows free memory for a higher utilization)"
    if raise_to is not None and case.meminfo is not None and not raised_before:
        afford, _, how = case.affordable_util()
        if case.util < raise_to <= min(afford, 1.0):
            cold = case.retry_model(drop).charged_page_cache_gib
            charge = f" + {cold:.2f} GiB of page cache the cold read after the drop fills (vllm issue 35920)"
            return Plan(
                reason=(
                    f"{said}: keep max_model_len {length} and raise gpu_memory_utilization {fmt(case.util)} -> "
                    f"{fmt(raise_to)} for the missing {missing:.2f} GiB{charge if drop and cold else ''}, since free"
                    f" memory allows up to {fmt(afford)} ({how}, {limits.margin_gib:.1f} GiB margin)"
                ),
                actions=(Action.DROP_PAGE_CACHE,) if drop else (),
                overrides={"gpu_memory_utilization": raise_to},
            )
        why_not_raise = f" (raising to {fmt(raise_to)} needs more than is free: up to {fmt(afford)}, {how})"
    elif raised_before:
        why_not_raise = " (the last retry raised the utilization already)"
    return _lower_to_estimate(case, said, length, estimate, raise_to, missing, why_not_raise)


def _raise_for(case: Case, missing: float | None, total: float | None) -> tuple[float | None, bool]:
    """The utilization that adds ``missing`` GiB of KV cache, and whether the page cache must be
    dropped for it. A drop only when what the check reads does not cover the raise; a drop on a
    MemFree version makes the retry cold, whose refilled page cache vLLM charges (vllm issue 35920):
    the raise then covers it too."""
    if missing is None or not total:
        return None, False
    warm = ceil_utilization(case.util + missing / total)
    if not case.drop_needed_for(warm):
        return warm, False
    cold = ceil_utilization(case.util + (missing + case.retry_model(True).charged_page_cache_gib) / total)
    afford, drop, _ = case.affordable_util()
    return (cold, True) if drop and cold <= afford else (warm, False)  # else: reported as not free


def _lower_to_estimate(
    case: Case,
    said: str,
    length: int,
    estimate: float | None,
    raise_to: float | None,
    missing: float | None,
    why_not_raise: str,
) -> Plan:
    """vLLM's own estimate of the max_model_len that fits, rounded down; give up below the minimum.
    The failed start measured it, and the retry is no colder (no drop), so it holds."""
    limits = case.limits

    # 2. lower the context to vLLM's own estimate
    if estimate is None:
        return give_up(f"{said}, and vLLM gave no estimate of what fits", case.cause.fix)
    new_len = round_model_len(int(estimate))
    if new_len < limits.min_model_len or new_len >= case.spec.max_model_len:
        if raise_to is not None:
            then = (
                f"deploy with gpu_memory_utilization {fmt(raise_to)}"
                f" (max_model_len {length} needs {missing:.2f} GiB more)"
            )
        elif missing is not None:
            then = f"deploy with a gpu_memory_utilization that leaves {missing:.2f} GiB more for the KV cache"
        else:
            then = ""
        return give_up(
            f"{said}; vLLM estimates {int(estimate)} tokens fit, below the minimum max_model_len "
            f"{limits.min_model_len}{why_not_raise}",
            free_it_next_step(case, then=then),
        )
    return Plan(
        reason=(
            f"{said}: lower max_model_len {length} -> {new_len} (vLLM's estimate {int(estimate)} rounded down "
            f"to a multiple of {MODEL_LEN_STEP}){why_not_raise}"
        ),
        overrides={"max_model_len": new_len},
    )


# ---------------------------------------------------------------- no_kv_memory


def _no_kv_matches(case: Case) -> bool:
    return case.cause.kind is FailureKind.NO_KV_MEMORY


def _no_kv_plan(case: Case) -> Plan:
    spec = case.spec
    total = case.total_gib()
    said = f"no memory was left for the KV cache at {fmt(case.util)}"
    if total and case.meminfo is not None:
        afford, _, how = case.affordable_util()
        new_util, drop, want = _no_kv_util(case, afford, total)
        if new_util > case.util:
            overrides: dict[str, Any] = {"gpu_memory_utilization": new_util}
            reason = (
                f"{said}: raise gpu_memory_utilization {fmt(case.util)} -> {fmt(new_util)} (max_model_len "
                f"{spec.max_model_len} needs {fmt(want)} by the KV model;"
                f" free memory allows up to {fmt(afford)}: {how})"
            )
            fitted = shorter_model_len(case, new_util, total, spec.max_num_batched_tokens, spec.max_num_seqs, drop)
            if not isinstance(fitted, Plan):
                if fitted is not None:
                    overrides["max_model_len"] = fitted[0]
                    reason += f"; {fitted[1]}"
                return Plan(reason=reason, actions=(Action.DROP_PAGE_CACHE,) if drop else (), overrides=overrides)
        said += f"; free memory allows no more than {fmt(afford)} ({how})"
    # free memory does not allow more: shrink the profiling peak instead
    smaller = smaller_batch(spec)
    if smaller:
        return Plan(
            reason=f"{said}: {batch_text(case, smaller)}, which leaves more of {fmt(case.util)} for the KV cache",
            overrides=smaller,
        )
    return give_up(
        f"{said}, and the batch settings are already at the latency preset",
        free_it_next_step(case),
    )


def _no_kv_util(case: Case, afford: float, total: float) -> tuple[float, bool, float]:
    """(the utilization to retry at, whether it needs a drop, what the KV model wants): the least that
    holds one max_model_len request, at least one step up, within what free memory allows; counted
    as a cold start's (`Case.retry_model`) when it needs the drop."""
    spec = case.spec

    def pick(drop: bool) -> tuple[float, float]:
        want = case.retry_model(drop).utilization_for(
            spec.max_model_len, total, spec.max_num_batched_tokens, spec.max_num_seqs
        )
        return min(afford, max(want, round(case.util + UTIL_STEP, 2)), 1.0), want

    new_util, want = pick(False)
    drop = case.drop_needed_for(new_util)
    if drop:
        new_util, want = pick(True)
    return new_util, drop, want


# ---------------------------------------------------------------- unsteady_memory


def _unsteady_matches(case: Case) -> bool:
    return case.cause.kind is FailureKind.MEMORY_PROFILING


def _unsteady_plan(case: Case) -> Plan:
    """Wait until memory is steady and start the same spec once; a second such failure within the
    hour (this recovery's retry, or a recent one) is memory that does not settle: a person looks."""
    if _recent(case, RecoveryClass.UNSTEADY_MEMORY):
        return give_up(
            f"{case.cause.summary}, again after waiting for steady memory: something on the target keeps "
            "releasing memory while vLLM starts",
            case.cause.fix,
        )
    return Plan(
        reason=f"{case.cause.summary}: wait until memory is steady, then start the same spec once more",
        actions=(Action.WAIT_FOR_STEADY_MEMORY,),
        overrides={},
    )


# ---------------------------------------------------------------- activation_peak


def _peak_matches(case: Case) -> bool:
    return case.guard_tripped or case.cause.kind in (FailureKind.CUDA_OOM, FailureKind.OOM_KILLED, FailureKind.KILLED)


def _peak_plan(case: Case) -> Plan:
    buffer = case.number("loader_transient_gib")
    if case.guard_tripped and buffer:
        # the loader's own buffer took the floor while the shards loaded (tasks/recovery/load_memory.py):
        # a smaller batch or utilization does not shrink it, so no retry of this spec can help
        return give_up(
            f"the host-memory guard stopped the start while the shards loaded: {case.cause.summary}",
            case.cause.fix,
        )
    if case.guard_tripped:
        what = "the host-memory guard stopped the start (MemAvailable fell below the host floor)"
    elif case.cause.kind is FailureKind.CUDA_OOM:
        what = case.cause.summary
    else:
        what = f"the container was killed ({case.cause.kind.value}) while memory ran out"
    smaller = smaller_batch(case.spec)
    if smaller:
        return Plan(reason=f"{what}: {batch_text(case, smaller)}", overrides=smaller)
    limits = case.limits
    new_util = round(case.util - UTIL_PEAK_STEP, 2)
    if new_util < limits.floor_utilization:
        return give_up(
            f"{what}; the batch settings are at the latency preset and {fmt(case.util)} - {UTIL_PEAK_STEP} is below "
            f"the floor {fmt(limits.floor_utilization)}",
            free_it_next_step(case, then="check `dmesg` for the OOM killer and what else ran"),
        )
    overrides: dict[str, Any] = {"gpu_memory_utilization": new_util}
    reason = (
        f"{what}; the batch settings are at the latency preset:"
        f" lower gpu_memory_utilization {fmt(case.util)} -> {fmt(new_util)}"
    )
    total = case.total_gib()
    if total:
        fitted = shorter_model_len(case, new_util, total, case.spec.max_num_batched_tokens, case.spec.max_num_seqs)
        if isinstance(fitted, Plan):
            return give_up(f"{reason}; {fitted.reason}", fitted.next_step or "")
        if fitted is not None:
            overrides["max_model_len"] = fitted[0]
            reason += f"; {fitted[1]}"
    return Plan(reason=reason, overrides=overrides)


# ---------------------------------------------------------------- engine_died


def _died_matches(case: Case) -> bool:
    return case.cause.kind is FailureKind.ENGINE_DEAD and case.number("after_ready") == 1


def _recent(case: Case, klass: RecoveryClass) -> list[RecoveryStep]:
    """Steps of ``klass`` taken within the last hour (a step without a time, or without `now`, counts)."""
    hour = timedelta(hours=1)
    return [
        step
        for step in case.history
        if step.klass is klass
        and not step.give_up
        and (step.at is None or case.now is None or case.now - step.at < hour)
    ]


def _died_plan(case: Case) -> Plan:
    recent = _recent(case, RecoveryClass.ENGINE_DIED)
    allowed = case.limits.engine_restarts_per_hour
    if len(recent) >= allowed:
        return give_up(
            f"the engine died after the server was ready, again: {len(recent)} restart(s) within the hour "
            f"(limit {allowed}); a server that keeps dying needs a person",
            "Read the container log before the death (`docker logs <container>`) for its root cause; if it dies "
            f"under load, deploy with lower max_num_seqs ({case.spec.max_num_seqs}) or max_num_batched_tokens "
            f"({case.spec.max_num_batched_tokens}), e.g. the latency preset",
        )
    return Plan(
        reason=(
            "the engine died after the server was ready (first time within the hour):"
            f" restart the same spec ({case.cause.summary})"
        ),
        overrides={},
    )


# ---------------------------------------------------------------- unrecoverable


def _always(case: Case) -> bool:
    return True


def _unrecoverable_plan(case: Case) -> Plan:
    return give_up(f"{case.cause.kind.value}: {case.cause.summary}; no retry can fix this", case.cause.fix)


# ============================================================================ the table

#: The recovery classes, highest priority first (the module docstring says why this order).
CLASSES: tuple[RecoveryRule, ...] = (
    RecoveryRule(
        RecoveryClass.STALE_CONTAINER,
        _stale_matches,
        _stale_plan,
        "a memory failure while our older container(s) for this target still run | remove_stale_containers | same spec",
        why=(
            "removing our old server returns its memory; right even when a page-cache drop alone would do (the "
            "old server would take memory back while the new one loads)"
        ),
    ),
    RecoveryRule(
        RecoveryClass.PAGE_CACHE,
        _page_cache_matches,
        _page_cache_plan,
        "free_memory on a MemFree vLLM (0.10.x), and meminfo free + (cached - shmem) - margin covers"
        " util x total | drop_page_cache | same spec",
        why=(
            "the usual cause on GB10 up to vLLM 0.10.x (vllm issue 35313; unsloth PR 10704): free + page cache "
            "covers the request, so the same spec runs after a drop; never from 0.11.1 on, whose check reads "
            "MemAvailable"
        ),
    ),
    RecoveryRule(
        RecoveryClass.HELD_BY_OTHERS,
        _held_matches,
        _held_plan,
        "free_memory, not page cache, others hold memory (or unknown), no prune yet"
        " | [drop_page_cache,] prune | fit_utilization, maybe max_model_len",
        why=(
            "other processes hold memory: the runbook's prune once, then the utilization that fits the error's "
            "own numbers"
        ),
    ),
    RecoveryRule(
        RecoveryClass.SHORTAGE,
        _shortage_matches,
        _shortage_plan,
        "free_memory otherwise | [drop_page_cache] | fit_utilization, maybe max_model_len",
        why=(
            "nothing can be freed (or the prune already ran): only the utilization that fits, and a max_model_len "
            "the KV cache holds"
        ),
    ),
    RecoveryRule(
        RecoveryClass.KV_TOO_SMALL,
        _kv_matches,
        _kv_plan,
        "kv_too_small | [drop_page_cache, 0.10.x only, when the raise needs it]"
        " | higher utilization if free, else vLLM's estimate rounded to 256",
        why=(
            "vLLM's KV sizing check with exact numbers: raise the utilization when free memory covers the missing "
            "GiB, else vLLM's estimate"
        ),
    ),
    RecoveryRule(
        RecoveryClass.NO_KV_MEMORY,
        _no_kv_matches,
        _no_kv_plan,
        "no_kv_memory | [drop_page_cache, 0.10.x only, when the raise needs it]"
        " | higher utilization if free, else smaller batch settings",
        why=(
            "no room for any KV block: more utilization if free memory allows, else a smaller profiling peak, "
            "else give up"
        ),
    ),
    RecoveryRule(
        RecoveryClass.UNSTEADY_MEMORY,
        _unsteady_matches,
        _unsteady_plan,
        "memory_profiling | wait_for_steady_memory | same spec, once",
        why=(
            "vLLM's assertion that free memory grew while it profiled: nothing is wrong with the spec, another "
            "process released memory mid-start; a retry once memory is steady measures what stays"
        ),
    ),
    RecoveryRule(
        RecoveryClass.ACTIVATION_PEAK,
        _peak_matches,
        _peak_plan,
        "cuda_oom, oom_killed, killed, or guard_tripped | -"
        " | batch settings to the latency preset 8192/16 in one step, then utilization -0.05;"
        " give up with the loader fix when the guard names the loader's buffer (loader_transient_gib)",
        why=(
            "a CUDA OOM, a kill or the host-memory guard: the profiling peak overshot, so shrink it before "
            "touching the utilization"
        ),
    ),
    RecoveryRule(
        RecoveryClass.ENGINE_DIED,
        _died_matches,
        _died_plan,
        "engine_dead after ready | - | same spec, engine_restarts_per_hour times",
        why="a death after ready is no sizing problem: restart the same spec, once an hour",
    ),
    RecoveryRule(
        RecoveryClass.UNRECOVERABLE,
        _always,
        _unrecoverable_plan,
        "anything else | - | give up with the cause's fix",
        why="model files, arguments, FP8 kernel, GPU runtime, unknown: a person fixes the cause its own fix names",
    ),
)


def _check_classes(rules: Sequence[RecoveryRule]) -> None:
    """Fail at import when the table loses or doubles a class, or its catch-all is not last."""
    names = [rule.klass for rule in rules]
    if sorted(names) != sorted(RecoveryClass):
        raise ValueError(f"CLASSES must name every RecoveryClass exactly once, got {names}")
    if names[-1] is not RecoveryClass.UNRECOVERABLE:
        raise ValueError("the catch-all class (unrecoverable) must come last")


_check_classes(CLASSES)


# ============================================================================ the planner


def plan_recovery(
    cause: FailureCause,
    memory: MachineMemory,
    spec: EngineSpec,
    attempt: int,
    limits: RecoveryLimits | None = None,
    history: Sequence[RecoveryStep] = (),
    *,
    guard_tripped: bool = False,
    now: datetime | None = None,
    version: Version | None = None,
) -> RecoveryStep:
    """The one next step after a failed start (or a server that died): pure, no I/O, no clock.

    The first class of `CLASSES` that matches decides; then the rules every step obeys are applied:
    the attempt cap, a valid retry spec, and no blind repeat of a spec that just failed on memory.

    Args:
        cause: the classified failure (`tasks.vllm.failures.classify_failure` of the log and exit).
        memory: the machine's memory read after the failure, before any action.
        spec: the spec that just failed.
        attempt: retries already made in this recovery: 0 after the first start failed. At
            ``limits.max_attempts`` the planner gives up.
        limits: floor, margin, attempt cap, restart rate and the KV model (`RecoveryLimits.calibrated`
            takes the weights from the failed start's log); None: the defaults.
        history: the steps already taken on this target, oldest first: this recovery's, and the
            engine restarts of the last hour (their ``at`` set by the flow).
        guard_tripped: the flow stopped the start because MemAvailable fell below the target's
            host_memory_floor_gib (no FailureKind names that: tasks/vllm/failures.py only reads logs and
            exits); planned as an activation peak.
        now: the flow's clock, to age ``history`` (None: every engine restart in it counts).
        version: the vLLM that failed (None: the runbook's 0.10.1.1): which memory its free-memory
            check reads (tasks/vllm/versions.py `FREE_MEMORY`), so whether a page-cache drop can help.

    Returns:
        The step; ``give_up`` with a ``next_step`` for a person when no retry should run.
    """
    guard_tripped = guard_tripped or cause.kind is FailureKind.HOST_MEMORY_GUARD  # the gate's own stop
    case = Case(cause, memory, spec, attempt, limits or RecoveryLimits(), tuple(history), guard_tripped, now, version)
    rule = next(r for r in CLASSES if r.matches(case))
    plan = rule.plan(case)
    step = RecoveryStep(
        klass=rule.klass,
        actions=list(plan.actions),
        overrides=_effective(spec, plan.overrides or {}),
        reason=plan.reason,
        give_up=plan.give_up,
        next_step=plan.next_step,
    )
    if step.give_up:
        return step.model_copy(update={"actions": [], "overrides": {}})
    return obey(case, step)


def _effective(spec: EngineSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """Only the overrides that change the spec."""
    return {k: v for k, v in overrides.items() if getattr(spec, k) != v}
