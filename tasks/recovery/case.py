"""What one recovery decision looks at (`Case`: the failure, the machine's memory, the spec, the
history) and the helpers the class rules of tasks/recovery/planner.py share: the free memory a start
can count on, the max_model_len the KV cache holds, one step of the batch settings, the give-up texts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from packaging.version import Version
from pydantic import ValidationError

from blocks.engine import PRESETS, EngineSpec
from tasks.memory import MemInfo
from tasks.recovery.sizing import fit_utilization
from tasks.recovery.step import (
    MACHINE_ACTIONS,
    MEMORY_KINDS,
    Action,
    MachineMemory,
    RecoveryClass,
    RecoveryLimits,
    RecoveryStep,
    describe_overrides,
    fmt,
    retry_spec,
)
from tasks.vllm.failures import FailureCause, FailureKind
from tasks.vllm.versions import FREE_MEMORY, RUNBOOK_VERSION, FreeMemory, select

__all__ = [
    "Case",
    "Plan",
    "RecoveryRule",
    "batch_text",
    "error_text",
    "shorter_model_len",
    "free_it_next_step",
    "give_up",
    "obey",
    "smaller_batch",
]

_HOLDERS = "(`docker ps`, `ps aux --sort=-rss`)"
#: Failures that come after vLLM read the weights (its KV sizing): they are in the page cache now.
_READ_THE_WEIGHTS = frozenset({FailureKind.KV_TOO_SMALL, FailureKind.NO_KV_MEMORY})


@dataclass(frozen=True)
class Case:
    """Everything one decision looks at; the rules read it, never change it."""

    cause: FailureCause
    memory: MachineMemory
    spec: EngineSpec
    attempt: int
    limits: RecoveryLimits
    history: tuple[RecoveryStep, ...]
    guard_tripped: bool
    now: datetime | None
    #: the vLLM that failed (None: the runbook's 0.10.1.1): what its free-memory check reads.
    version: Version | None = None

    # ---------------------------------------------------------------- facts

    @property
    def free_memory(self) -> FreeMemory:
        """What this vLLM's free-memory check reads on GB10: MemFree (0.10.x) or MemAvailable (0.11.1+)."""
        return select(FREE_MEMORY, self.version)

    @property
    def vllm(self) -> str:
        """ "vLLM 0.10.1.1", for the reasons."""
        return f"vLLM {(self.version or RUNBOOK_VERSION).base_version}"

    @property
    def util(self) -> float:
        """The utilization of the spec that failed."""
        return self.spec.gpu_memory_utilization

    @property
    def meminfo(self) -> MemInfo | None:
        return self.memory.meminfo

    @property
    def memory_failure(self) -> bool:
        return self.guard_tripped or self.cause.kind in MEMORY_KINDS

    def number(self, name: str) -> float | None:
        return self.cause.numbers.get(name)

    def total_gib(self) -> float | None:
        """The device total: vLLM's own (the free-memory error), else meminfo's (= CUDA's on GB10)."""
        total = self.number("total_gib")
        if total:
            return total
        return self.meminfo.total_gib if self.meminfo else None

    def just_tried(self, klass: RecoveryClass) -> bool:
        """The previous step was of this class, and the start after it failed again."""
        return bool(self.history) and self.history[-1].klass is klass

    def ever_tried(self, klass: RecoveryClass) -> bool:
        return any(step.klass is klass and not step.give_up for step in self.history)

    def drop_can_help(self) -> bool:
        """False when the last step dropped the page cache and the start failed vLLM's free-memory
        check again: that check runs before any weights are read, so the cache meminfo shows now
        survived the drop (shared memory, tmpfs) and another drop would not return it."""
        dropped = bool(self.history) and Action.DROP_PAGE_CACHE in self.history[-1].actions
        return not (dropped and self.cause.kind is FailureKind.FREE_MEMORY)

    def held_by_others_gib(self) -> float | None:
        """What others hold: the flow's figure, else what meminfo says is neither free nor page
        cache, else what vLLM found not free."""
        if self.memory.others_gib is not None:
            return self.memory.others_gib
        if self.meminfo is not None:  # neither what the check reads nor what a drop returns
            mi = self.meminfo
            return max(0.0, round(mi.total_gib - mi.after_drop_gib(self.free_memory), 2))
        held = self.number("held_gib")
        return held

    def drop_needed_for(self, util: float) -> bool:
        """A start at ``util`` needs the page cache dropped first: what the check reads now, minus the
        margin, does not cover it (never on a MemAvailable version: there a drop raises nothing)."""
        mi = self.meminfo
        if mi is None or mi.after_drop_gib(self.free_memory) <= mi.check_reads_gib(self.free_memory):
            return False
        return fit_utilization(mi.check_reads_gib(self.free_memory), mi.total_gib, self.limits.margin_gib) < util

    def retry_model(self, drop: bool) -> RecoveryLimits:
        """The limits whose KV model predicts the retry: a cold start's (`KvModel.cold`) when this vLLM
        charges the page cache its load fills (MemFree versions, vllm issue 35920) and the retry reads
        the weights cold: the step drops the cache, or the failed start did not read them and meminfo
        shows less page cache than they take. Without meminfo the retry is predicted warm, as the
        runbook's measured KV cache (the model's reference) was."""
        if self.free_memory is FreeMemory.MEM_AVAILABLE:
            return self.limits
        mi = self.meminfo
        cached = self.cause.kind in _READ_THE_WEIGHTS or mi is None or mi.droppable_gib >= self.limits.weights_gib
        return self.limits.cold() if drop or not cached else self.limits

    def best_free(self) -> tuple[float, float, bool, str]:
        """The most memory a start can count on, by the measure that shows most.

        Returns (free GiB, total GiB, whether it needs a page-cache drop first, how it was read).
        Candidates: vLLM's error (free/total), what the version's check reads in meminfo (MemFree or
        MemAvailable), and, on a MemFree version, MemFree + the page cache a drop returns (Cached -
        Shmem).
        """
        candidates: list[tuple[float, float, bool, str]] = []
        free, total = self.number("free_gib"), self.number("total_gib")
        if free is not None and total:
            candidates.append((free, total, False, f"vLLM found {free:.2f} of {total:.2f} GiB free"))
        if self.meminfo is not None:
            mi, reads = self.meminfo, self.free_memory
            seen, after_drop = mi.check_reads_gib(reads), mi.after_drop_gib(reads)
            named = "free" if reads is FreeMemory.MEM_FREE else f"available ({reads.value}, what {self.vllm} reads)"
            candidates.append((seen, mi.total_gib, False, f"meminfo: {seen:.1f} of {mi.total_gib:.1f} GiB {named}"))
            if after_drop > seen and self.drop_can_help():
                shmem = f", {mi.shmem_gib:.1f} GiB shared memory left out" if mi.shmem_gib else ""
                candidates.append(
                    (
                        after_drop,
                        mi.total_gib,
                        True,
                        f"meminfo: {mi.free_gib:.1f} GiB free + {mi.droppable_gib:.1f} GiB page cache"
                        f" of {mi.total_gib:.1f} GiB{shmem}",
                    )
                )
        if not candidates:
            return 0.0, 0.0, False, "no free-memory figure (no meminfo, no vLLM numbers)"
        # the largest utilization wins; on a tie, the one without a drop
        return max(candidates, key=lambda c: (fit_utilization(c[0], c[1], self.limits.margin_gib), not c[2]))

    def affordable_util(self) -> tuple[float, bool, str]:
        """The largest utilization free memory (after a drop, if it helps) allows, with the margin."""
        free, total, drop, how = self.best_free()
        if total <= 0:
            return 0.0, False, how
        return fit_utilization(free, total, self.limits.margin_gib), drop, how


# ============================================================================ plans and shared helpers


@dataclass(frozen=True)
class Plan:
    """What a rule decided; `plan_recovery` adds the class and applies the rules every step obeys."""

    reason: str
    actions: tuple[Action, ...] = ()
    overrides: dict[str, Any] | None = None
    give_up: bool = False
    next_step: str | None = None


@dataclass(frozen=True)
class RecoveryRule:
    """One recovery class: how it is recognised and what it does."""

    klass: RecoveryClass
    matches: Callable[[Case], bool]
    plan: Callable[[Case], Plan]
    #: one line for the docs and the tests: recognised by / done / retried with.
    doc: str = ""
    #: why the rule sits where it does in the table (the table's order is the priority).
    why: str = ""


def give_up(reason: str, next_step: str) -> Plan:
    """A plan that stops: no retry helps, ``next_step`` says what a person does."""
    return Plan(reason=reason, give_up=True, next_step=next_step)


def free_it_next_step(case: Case, then: str = "") -> str:
    """The next step after a memory failure: stop what holds the memory (or ``then``)."""
    held = case.held_by_others_gib()
    holder = f"stop the process holding {held:.1f} GiB {_HOLDERS}" if held else f"free memory on the target {_HOLDERS}"
    return holder + (f" or {then}" if then else f", then deploy again at {fmt(case.util)}")


def error_text(case: Case) -> str:
    """vLLM's free-memory error in one clause, with its numbers when the cause has them."""
    free, total, req = case.number("free_gib"), case.number("total_gib"), case.number("requested_gib")
    if free is not None and total and req is not None:
        return f"requested {fmt(case.util)} ({req:.2f} GiB) but vLLM found {free:.2f} of {total:.2f} GiB free"
    return f"requested {fmt(case.util)} but vLLM found too little free memory"


def shorter_model_len(
    case: Case, util: float, total: float, batched: int, seqs: int, drop: bool = False
) -> tuple[int, str] | Plan | None:
    """None when max_model_len fits the KV cache at ``util``; else (the length that fits, why), or
    a give-up Plan when that length is below ``limits.min_model_len``. ``drop``: the step drops the
    page cache first (a cold retry: `Case.retry_model`)."""
    limits = case.retry_model(drop)
    want = case.spec.max_model_len
    fits = limits.max_len_at(util, total, batched, seqs)
    if fits >= want:
        return None
    kv = limits.kv_gib(util, total, batched, seqs)
    charged = (
        f", {limits.charged_page_cache_gib:.2f} page cache a cold load fills, which {case.vllm} charges (vllm issue"
        " 35920)"
        if limits.charged_page_cache_gib
        else ""
    )
    why = (
        f"at {fmt(util)} of {total:.1f} GiB the KV cache gets {max(kv, 0.0):.2f} GiB (minus {limits.weights_gib:.2f} "
        f"GiB weights, {limits.overhead_gib:.2f} overhead, {limits.activation_gib(batched, seqs):.2f} activations"
        f"{charged}), {fits} tokens at {limits.kv_bytes_per_token / 2**20:.2f} MiB/token"
    )
    if fits < limits.min_model_len:
        need = limits.utilization_for(limits.min_model_len, total, batched, seqs)
        return give_up(
            f"{why}: below the minimum max_model_len {limits.min_model_len}",
            free_it_next_step(
                case,
                then=f"deploy with gpu_memory_utilization {fmt(need)} and max_model_len "
                f"{limits.min_model_len} once {need * total + limits.margin_gib:.1f} GiB are free",
            ),
        )
    return fits, f"max_model_len {want} -> {fits}: {why}"


def smaller_batch(spec: EngineSpec) -> dict[str, int]:
    """One step to the runbook's latency preset (8192 batched tokens, 16 sequences): each setting
    above the preset's goes to the preset's at once; {} when both are there already.

    One step, not halving: each retry costs a 3-4 minute start on a Spark, and the activation peak
    the preset leaves is the runbook's own tested value; halving spent both retries of the attempt
    cap on batch settings before utilization, the lever that returns memory, was tried
    (bench/recovery.py, a profiling overshoot)."""
    latency = PRESETS["latency"]
    out: dict[str, int] = {}
    for name in ("max_num_batched_tokens", "max_num_seqs"):
        current, floor = getattr(spec, name), latency[name]
        if current > floor:
            out[name] = floor
    if not spec.enable_chunked_prefill and "max_num_batched_tokens" in out:
        # without chunked prefill a step must hold a whole prompt (EngineSpec refuses less)
        out["max_num_batched_tokens"] = max(out["max_num_batched_tokens"], spec.max_model_len)
        if out["max_num_batched_tokens"] >= spec.max_num_batched_tokens:
            del out["max_num_batched_tokens"]
    return out


def batch_text(case: Case, smaller: dict[str, int]) -> str:
    """What `smaller_batch` changes, with the activation peak before and after."""
    spec, limits = case.spec, case.limits
    parts = [f"{name} {getattr(spec, name)} -> {value}" for name, value in smaller.items()]
    before = limits.activation_gib(spec.max_num_batched_tokens, spec.max_num_seqs)
    after = limits.activation_gib(
        smaller.get("max_num_batched_tokens", spec.max_num_batched_tokens),
        smaller.get("max_num_seqs", spec.max_num_seqs),
    )
    return (
        f"lower {', '.join(parts)} (activation peak {before:.2f} -> {after:.2f} GiB,"
        " toward the runbook's latency preset)"
    )


# ============================================================================ the rules every step obeys


def obey(case: Case, step: RecoveryStep) -> RecoveryStep:
    """The rules above every class, applied to a step the table built: the attempt cap, a valid
    retry spec, and no blind repeat of a spec that just failed on memory."""
    if case.attempt >= case.limits.max_attempts:
        return step.model_copy(
            update={
                "give_up": True,
                "actions": [],
                "overrides": {},
                "reason": (
                    f"{case.attempt} retr{'y' if case.attempt == 1 else 'ies'} made, the limit is "
                    f"{case.limits.max_attempts}; the next step would have been: {step.reason}"
                ),
                "next_step": cap_next_step(case, step),
            }
        )
    try:
        retry_spec(case.spec, step)
    except (ValidationError, ValueError) as exc:
        return step.model_copy(
            update={
                "give_up": True,
                "actions": [],
                "overrides": {},
                "reason": f"{step.reason}; but the retry spec is invalid: {exc}",
                "next_step": "Fix the engine spec so the change above is valid, then deploy again",
            }
        )
    changes_machine = any(action in MACHINE_ACTIONS for action in step.actions)
    if case.memory_failure and not step.overrides and not changes_machine:
        return step.model_copy(
            update={
                "give_up": True,
                "reason": f"{step.reason}; but the same spec with the machine unchanged would fail the same way",
                "next_step": free_it_next_step(case),
            }
        )
    return step


def cap_next_step(case: Case, step: RecoveryStep) -> str:
    """What a person should do once the retries are used up: what the step would have done, by hand."""
    if Action.REMOVE_STALE_CONTAINERS in step.actions:
        names = " ".join(case.memory.stale_containers)
        return f"remove our older container(s) (`docker rm -f {names}`), check `free -g`, then deploy again"
    if Action.DROP_PAGE_CACHE in step.actions and not step.overrides:
        return "drop the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`) and deploy again with the same spec"
    deploy = f"deploy with {describe_overrides(step.overrides)}" if step.overrides else ""
    if case.memory_failure:
        return free_it_next_step(case, then=deploy)
    if deploy:
        return deploy[0].upper() + deploy[1:]
    return case.cause.fix
