"""What to do after a failed start: one pure planner, one table of recovery classes.

Why classify before fixing
--------------------------
The runbook's answer to "Container Fails with Memory Errors" is a blind ladder: stop everything,
``docker system prune -f``, lower ``--gpu-memory-utilization`` to 0.75, then 0.70, then
``--max-model-len`` to 16384. Each rung is a fresh 3-4 minute start, and most rungs fix nothing:
on the DGX Spark (GB10, unified memory) the usual cause is the previous load's page cache, which
vLLM 0.10.1.1 counts as used (vllm issue 48140) and which no lower utilization returns; when other
processes really hold memory, vLLM's own error already says how much is free, so the one
utilization that fits can be computed instead of guessed. `plan_recovery` reads the classified
failure (`tasks.vllm.failures.FailureCause`), the machine's memory as read after the failure
(`MachineMemory`) and the spec that failed, and returns the one next step: what to do to the
machine, which spec to start, and why, with the numbers, or that a person has to act and what
they should do.

The class table
---------------
`CLASSES` is the whole planner: the first `RecoveryRule` whose ``matches`` is true builds the step,
as `tasks.vllm.failures.RULES` does for causes. The order, first to last:

1. `stale_container`: a memory failure while an older container of ours for this target still
   runs: removing it returns its memory, and is right even when a page-cache drop alone would do
   (the old server would take memory back while the new one loads).
2. `page_cache`: the free-memory check failed, but free + page cache (minus the margin) covers the
   requested utilization: drop the page cache, same spec.
3. `held_by_others`: the free-memory check failed and other processes hold memory: the runbook's
   prune, then the utilization that fits the error's own numbers (`fit_utilization`).
4. `shortage`: the free-memory check failed and nothing can be freed (or the prune already ran):
   the utilization that fits, and a lower max_model_len when the KV cache would not hold it.
5. `kv_too_small`: vLLM's KV sizing check: raise the utilization when free memory covers the
   missing GiB, else lower max_model_len to vLLM's estimate (rounded down to 256).
6. `no_kv_memory`: no room for any KV block: raise the utilization when free memory allows, else
   shrink the profiling peak (the batch settings), else give up.
7. `activation_peak`: a CUDA OOM, a kill (OOM killer, SIGKILL) or the flow's host-memory guard
   (``guard_tripped``): one step of the batch settings toward the runbook's latency preset, then
   utilization -0.05.
8. `engine_died`: the engine died after the server was ready: restart the same spec once an hour.
9. `unrecoverable`: everything else (model files, arguments, FP8 kernel, GPU runtime, unknown):
   a person fixes the cause named by its own fix.

Adding a class: a member of `RecoveryClass` and one `RecoveryRule` in `CLASSES` at its place; the
table is checked at import (each class once, the catch-all last).

Rules every step obeys (applied after the table, in `plan_recovery`): never past
``limits.max_attempts`` (then give up, with what the numbers say a person should do); never below
``limits.floor_utilization``; never the same spec twice in a row after a memory failure unless an
action changed the machine; every retry spec passes `EngineSpec`'s own validation. The planner has
no I/O, no clock and no Prefect: the flows read the machine, run the actions and start the retry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from blocks.engine import PRESETS, EngineSpec, format_utilization
from tasks.vllm.failures import FailureCause, FailureKind
from tasks.vllm.logs import summarize_startup
from tasks.memory import MemInfo

__all__ = [
    "CLASSES",
    "MACHINE_ACTIONS",
    "MEMORY_KINDS",
    "RUNBOOK_LADDER",
    "Action",
    "MachineMemory",
    "RecoveryClass",
    "RecoveryLimits",
    "RecoveryRule",
    "RecoveryStep",
    "fit_utilization",
    "plan_recovery",
    "retry_spec",
    "round_model_len",
    "runbook_ladder",
]

GIB = 1024**3
#: max_model_len proposals are multiples of this (vLLM's KV blocks are 16 tokens; 256 reads well).
MODEL_LEN_STEP = 256
#: utilization proposals are multiples of this.
UTIL_STEP = 0.01
#: activation_peak lowers the utilization by this once the batch settings are at the latency preset.
UTIL_PEAK_STEP = 0.05
#: GiB kept above the host-memory floor by a computed retry: vLLM's CUDA-graph pool (~0.3 GiB at 64
#: sequences) and what other processes may take between the reading and the start.
GUARD_SLACK_GIB = 1.0
_EPS = 1e-9
_HOLDERS = "(`docker ps`, `ps aux --sort=-rss`)"


class RecoveryClass(StrEnum):
    """What kind of recovery a failure needs (`CLASSES` gives the priority order)."""

    STALE_CONTAINER = "stale_container"
    PAGE_CACHE = "page_cache"
    HELD_BY_OTHERS = "held_by_others"
    SHORTAGE = "shortage"
    KV_TOO_SMALL = "kv_too_small"
    NO_KV_MEMORY = "no_kv_memory"
    ACTIVATION_PEAK = "activation_peak"
    ENGINE_DIED = "engine_died"
    UNRECOVERABLE = "unrecoverable"


class Action(StrEnum):
    """What the flow does to the machine before the retry, in the step's order."""

    #: ``sync; echo 3 > /proc/sys/vm/drop_caches`` (`tasks.memory.drop_page_cache`).
    DROP_PAGE_CACHE = "drop_page_cache"
    #: remove our own running containers named in `MachineMemory.stale_containers`, then check
    #: that their memory came back.
    REMOVE_STALE_CONTAINERS = "remove_stale_containers"
    #: the runbook's ``docker system prune -f`` (`tasks.prune.prune_docker`): frees disk, not memory.
    PRUNE = "prune"


#: Actions that change the machine, so retrying the same spec after them is not a blind repeat.
MACHINE_ACTIONS: frozenset[Action] = frozenset(Action)

#: Failure kinds that are about memory (a stale container of ours is then the first suspect).
MEMORY_KINDS: frozenset[FailureKind] = frozenset(
    {
        FailureKind.FREE_MEMORY,
        FailureKind.KV_TOO_SMALL,
        FailureKind.NO_KV_MEMORY,
        FailureKind.CUDA_OOM,
        FailureKind.OOM_KILLED,
        FailureKind.KILLED,
        FailureKind.HOST_MEMORY_GUARD,
    }
)


# ============================================================================ inputs


@dataclass(frozen=True)
class MachineMemory:
    """The target's memory as the flow read it after the failure, before any action.

    Attributes:
        meminfo: /proc/meminfo (or the imitation's ledger) read after the failed container
            stopped; None when the target has none to read (then only the error's numbers count).
        stale_containers: names of our own containers for this target that still run and are not
            the one that just failed (a server the deploy should have replaced, a killed flow's).
        others_gib: memory held by processes and containers that are not ours, when the flow
            knows it (total - baseline - free - cached - ours); None when unknown.
    """

    meminfo: MemInfo | None = None
    stale_containers: tuple[str, ...] = ()
    others_gib: float | None = None


class RecoveryLimits(BaseModel):
    """The planner's bounds and the served model's memory model.

    The KV model answers "does max_model_len fit at this utilization" the way vLLM 0.10.1.1 sizes
    its cache (``gpu_worker.determine_available_memory``)::

        KV GiB = util x total - weights - overhead - activation peak
        activation peak = max_num_batched_tokens x activation_bytes_per_batched_token
                          + max_num_seqs x sampler_bytes_per_seq
        tokens = KV bytes / kv_bytes_per_token

    The defaults are Qwen3-32B-FP8 on a DGX Spark; with the runbook's settings (0.90 of 119.7 GiB,
    16384 batched tokens, 64 sequences) they give 66.25 GiB and about 271,350 tokens, the runbook's
    ``GPU KV cache size: 271,360 tokens``. The flow should override ``weights_gib`` from the failed
    start's own ``Model loading took X GiB`` line (`calibrated`).
    """

    model_config = ConfigDict(frozen=True)

    floor_utilization: float = Field(0.50, gt=0, le=1, description="never propose a utilization below this")
    margin_gib: float = Field(1.0, ge=0, description="GiB kept free when a utilization is computed from free memory")
    max_attempts: int = Field(2, ge=0, description="retries after the first start; then a person acts")
    engine_restarts_per_hour: int = Field(1, ge=0, description="restarts after an engine death within an hour")
    min_model_len: int = Field(
        4096,
        ge=MODEL_LEN_STEP,
        description="never lower max_model_len below this: a server that short is no recovery",
    )
    weights_gib: float = Field(31.97, ge=0, description="the model's weights (vLLM's `Model loading took X GiB`)")
    overhead_gib: float = Field(
        6.94,
        ge=0,
        description="non-torch memory in vLLM's profile: CUDA context, cuBLAS, GB10 accounting (the imitation's calibrated figure)",
    )
    activation_bytes_per_batched_token: int = Field(
        163_840,
        ge=0,
        description="profiling peak per batched token: (4 x 5120 + 2 x 25600 + (64 + 2 x 8) x 128) x 2 bytes for Qwen3-32B",
    )
    sampler_bytes_per_seq: int = Field(
        1_215_488,
        ge=0,
        description="sampler warm-up logits per sequence: vocab 151,936 x 4 bytes x 2",
    )
    kv_bytes_per_token: int = Field(
        262_144,
        gt=0,
        description="Qwen3-32B: 64 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 0.25 MiB",
    )

    def guarded(self, host_floor_gib: float) -> RecoveryLimits:
        """These limits with a margin above the readiness gate's host-memory floor.

        A retry's utilization leaves ``margin_gib`` free; the gate stops a start whose host falls
        below ``host_floor_gib`` of MemAvailable. A margin under the floor makes every computed retry
        a start the guard kills as soon as the server holds its memory (measured: 0.71 of 119.7 GiB
        with 86.7 free left 1.7 GiB). So the margin is at least the floor plus the CUDA-graph pool
        and slack (``GUARD_SLACK_GIB``).
        """
        if host_floor_gib <= 0:
            return self
        return self.model_copy(update={"margin_gib": max(self.margin_gib, host_floor_gib + GUARD_SLACK_GIB)})

    def calibrated(self, lines: Iterable[str]) -> RecoveryLimits:
        """These limits with ``weights_gib`` from a startup log's ``Model loading took X GiB``.

        A failed start that got past the load (KV too small, no KV memory, a later OOM) prints it;
        an earlier failure does not, and the limits come back unchanged.
        """
        model_gib = summarize_startup(lines).model_gib
        return self.model_copy(update={"weights_gib": float(model_gib)}) if model_gib else self

    def activation_gib(self, max_num_batched_tokens: int, max_num_seqs: int) -> float:
        """The profiling forward pass's peak for these batch settings (2.57 GiB at 16384 / 64)."""
        peak = (
            max_num_batched_tokens * self.activation_bytes_per_batched_token + max_num_seqs * self.sampler_bytes_per_seq
        )
        return peak / GIB

    def kv_gib(self, utilization: float, total_gib: float, max_num_batched_tokens: int, max_num_seqs: int) -> float:
        """GiB left for the KV cache at ``utilization`` of ``total_gib`` (negative: none)."""
        return (
            utilization * total_gib
            - self.weights_gib
            - self.overhead_gib
            - self.activation_gib(max_num_batched_tokens, max_num_seqs)
        )

    def max_len_at(self, utilization: float, total_gib: float, max_num_batched_tokens: int, max_num_seqs: int) -> int:
        """The longest max_model_len one request can have at this utilization, rounded down to 256."""
        kv = self.kv_gib(utilization, total_gib, max_num_batched_tokens, max_num_seqs)
        if kv <= 0:
            return 0
        return round_model_len(int(kv * GIB // self.kv_bytes_per_token))

    def utilization_for(
        self, max_model_len: int, total_gib: float, max_num_batched_tokens: int, max_num_seqs: int
    ) -> float:
        """The smallest utilization (a multiple of 0.01) whose KV cache holds one max_model_len request."""
        need = (
            self.weights_gib
            + self.overhead_gib
            + self.activation_gib(max_num_batched_tokens, max_num_seqs)
            + max_model_len * self.kv_bytes_per_token / GIB
        )
        return _ceil_util(need / total_gib)


class RecoveryStep(BaseModel):
    """The planner's answer: one step. JSON-able, so it can be a flow's result and an artifact row."""

    klass: RecoveryClass
    #: what to do to the machine before the retry, in order.
    actions: list[Action] = Field(default_factory=list)
    #: EngineSpec fields for the retry; {} = the same spec.
    overrides: dict[str, Any] = Field(default_factory=dict)
    #: why, in operator words with the numbers.
    reason: str
    give_up: bool = False
    #: when giving up: the one concrete thing a person should do.
    next_step: str | None = None
    #: when the flow acted on this step (set by the flow; the planner has no clock). Engine
    #: restarts older than an hour do not count against ``engine_restarts_per_hour``.
    at: datetime | None = None

    @field_validator("overrides")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = [key for key in value if key not in EngineSpec.model_fields]
        if unknown:
            raise ValueError(f"overrides names no EngineSpec field: {', '.join(unknown)}")
        return value

    def row(self) -> dict[str, str]:
        """The step as one row of a Prefect table artifact (every value a short string)."""
        return {
            "class": self.klass.value,
            "actions": ", ".join(a.value for a in self.actions) or "-",
            "retry with": _describe_overrides(self.overrides) or ("-" if self.give_up else "same spec"),
            "give up": "yes" if self.give_up else "no",
            "reason": self.reason,
            "next step": self.next_step or "",
        }

    def degraded(self, requested: EngineSpec) -> str | None:
        """ "requested X, running Y, because Z" for a server recovered with overrides; None when none.

        A recovered server runs this spec until a later deploy starts from the requested spec again:
        the report and the event say so in these words.
        """
        changed = {k: v for k, v in self.overrides.items() if getattr(requested, k) != v}
        if not changed:
            return None
        was = ", ".join(f"{k} {_fmt(getattr(requested, k))}" for k in changed)
        now = ", ".join(f"{k} {_fmt(v)}" for k, v in changed.items())
        return f"requested {was}, running {now}, because {self.reason}"


# ============================================================================ arithmetic


def fit_utilization(free_gib: float, total_gib: float, margin_gib: float) -> float:
    """The largest utilization a start can have with ``free_gib`` free: floor((free - margin) / total, 0.01).

    Not `tasks.memory.suggest_utilization` (free/total minus 0.02, down to a multiple of 0.05): that
    one is an operator's hint; a retry is the planner's one shot, so the rule is exact. vLLM 0.10.1.1
    refuses a start only when free < util x total, so steps of 0.01 (1.2 GiB on the Spark) lose at
    most 1.2 GiB of KV cache where steps of 0.05 lose up to 6 GiB (24,000 tokens), and a margin in
    GiB is what it protects: memory a process can grab between the measurement and the check,
    whatever the machine's size. 85.92 of 121.69 GiB free with a 1 GiB margin -> 0.69.

    Returns 0.0 when nothing fits.
    """
    if total_gib <= 0:
        raise ValueError(f"total_gib must be positive (got {total_gib})")
    steps = math.floor((free_gib - margin_gib) / total_gib / UTIL_STEP + _EPS)
    return max(0.0, round(steps * UTIL_STEP, 2))


def round_model_len(tokens: int) -> int:
    """Round a token count down to a multiple of 256 (12688 -> 12544): a little slack under vLLM's
    block-aligned estimate, so the retry does not fail the same check by a block."""
    return max(0, int(tokens) // MODEL_LEN_STEP * MODEL_LEN_STEP)


def _ceil_util(fraction: float) -> float:
    return round(math.ceil(fraction / UTIL_STEP - _EPS) * UTIL_STEP, 2)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return format_utilization(value)
    return str(value)


def _describe_overrides(overrides: dict[str, Any]) -> str:
    return " and ".join(f"{k} {_fmt(v)}" for k, v in overrides.items())


def retry_spec(spec: EngineSpec, step: RecoveryStep) -> EngineSpec:
    """The spec to start for ``step``: ``spec`` with the step's overrides, through EngineSpec's validators.

    Raises:
        ValueError: the overrides make an invalid spec (a pydantic ValidationError).
    """
    fields = spec.model_dump(include=set(EngineSpec.model_fields))
    fields.update(step.overrides)
    return EngineSpec(**fields)


# ============================================================================ the case


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

    # ---------------------------------------------------------------- facts

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
        if self.meminfo is not None:
            mi = self.meminfo
            return max(0.0, mi.total_gib - mi.free_gib - mi.cached_gib)
        held = self.number("held_gib")
        return held

    def best_free(self) -> tuple[float, float, bool, str]:
        """The most memory a start can count on, by the measure that shows most.

        Returns (free GiB, total GiB, whether it needs a page-cache drop first, how it was read).
        Candidates: vLLM's error (free/total), meminfo's MemFree, and MemFree + Cached after a drop.
        """
        candidates: list[tuple[float, float, bool, str]] = []
        free, total = self.number("free_gib"), self.number("total_gib")
        if free is not None and total:
            candidates.append((free, total, False, f"vLLM found {free:.2f} of {total:.2f} GiB free"))
        if self.meminfo is not None:
            mi = self.meminfo
            candidates.append(
                (mi.free_gib, mi.total_gib, False, f"meminfo: {mi.free_gib:.1f} of {mi.total_gib:.1f} GiB free")
            )
            if mi.cached_gib > 0 and self.drop_can_help():
                candidates.append(
                    (
                        mi.free_gib + mi.cached_gib,
                        mi.total_gib,
                        True,
                        f"meminfo: {mi.free_gib:.1f} GiB free + {mi.cached_gib:.1f} GiB page cache of {mi.total_gib:.1f} GiB",
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


# ============================================================================ the class rules


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


def _give_up(reason: str, next_step: str) -> Plan:
    return Plan(reason=reason, give_up=True, next_step=next_step)


def _free_it_next_step(case: Case, then: str = "") -> str:
    held = case.held_by_others_gib()
    holder = f"stop the process holding {held:.1f} GiB {_HOLDERS}" if held else f"free memory on the target {_HOLDERS}"
    return holder + (f" or {then}" if then else f", then deploy again at {_fmt(case.util)}")


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
            f"{case.cause.kind.value} at {_fmt(case.util)} while our older container(s) {names} still run "
            f"and hold memory{seen}: remove them and retry the same spec"
        ),
        actions=(Action.REMOVE_STALE_CONTAINERS,),
        overrides={},
    )


# ---------------------------------------------------------------- page_cache


def _page_cache_fits(case: Case) -> bool:
    mi = case.meminfo
    if mi is None or mi.cached_gib <= 0:
        return False
    return mi.free_gib + mi.cached_gib - case.limits.margin_gib >= case.util * mi.total_gib


def _page_cache_matches(case: Case) -> bool:
    return case.cause.kind is FailureKind.FREE_MEMORY and _page_cache_fits(case) and case.drop_can_help()


def _page_cache_plan(case: Case) -> Plan:
    mi = case.meminfo
    assert mi is not None
    need = case.util * mi.total_gib
    return Plan(
        reason=(
            f"{_error_text(case)}; {mi.cached_gib:.1f} GiB is page cache, which vLLM 0.10.1.1 counts "
            f"as used on GB10 (vllm issue 48140): free {mi.free_gib:.1f} + cached {mi.cached_gib:.1f} GiB covers "
            f"the {need:.1f} GiB of {_fmt(case.util)} x {mi.total_gib:.1f} GiB and keeps the {case.limits.margin_gib:.1f} "
            "GiB margin: drop the page cache and retry the same spec"
        ),
        actions=(Action.DROP_PAGE_CACHE,),
        overrides={},
    )


def _error_text(case: Case) -> str:
    free, total, req = case.number("free_gib"), case.number("total_gib"), case.number("requested_gib")
    if free is not None and total and req is not None:
        return f"requested {_fmt(case.util)} ({req:.2f} GiB) but vLLM found {free:.2f} of {total:.2f} GiB free"
    return f"requested {_fmt(case.util)} but vLLM found too little free memory"


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
        return _give_up(
            f"{_error_text(case)}; no free-memory figure to compute a utilization from", _free_it_next_step(case)
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
        return _give_up(
            f"{_error_text(case)}: {held_text} ({how}); the utilization that fits, {_fmt(fit)}, is below "
            f"the floor {_fmt(limits.floor_utilization)} (a start needs {floor_gib:.1f} GiB free with the "
            f"{limits.margin_gib:.1f} GiB margin)",
            _free_it_next_step(case),
        )
    actions = ((Action.DROP_PAGE_CACHE,) if drop else ()) + ((Action.PRUNE,) if prune else ())
    if prune and fit >= case.util:
        # memory came back after the failure (meminfo shows more than vLLM saw): the prune changes
        # the machine, so the requested utilization may run again
        return Plan(
            reason=f"{_error_text(case)}, but the memory came back since ({how}): retry at {_fmt(case.util)} after "
            "the runbook's `docker system prune -f` (it frees disk, not memory: stopped containers hold none)",
            actions=actions,
            overrides={},
        )
    # with nothing done to the machine, never the same utilization again: the check failed at it
    new_util = min(fit, case.util if prune else round(case.util - UTIL_STEP, 2))
    if new_util < limits.floor_utilization:
        return _give_up(
            f"{_error_text(case)}: already at the floor {_fmt(limits.floor_utilization)}",
            _free_it_next_step(case),
        )
    overrides: dict[str, Any] = {"gpu_memory_utilization": new_util}
    reason = f"requested {_fmt(case.util)}, retry at {_fmt(new_util)}: {held_text} ({how})"
    fitted = _fit_model_len(case, new_util, total, case.spec.max_num_batched_tokens, case.spec.max_num_seqs)
    if isinstance(fitted, Plan):
        return _give_up(f"{reason}; {fitted.reason}", fitted.next_step or "")
    if fitted is not None:
        overrides["max_model_len"] = fitted[0]
        reason += f"; {fitted[1]}"
    if prune:
        reason += (
            "; the runbook's `docker system prune -f` first (it frees disk, not memory: stopped containers hold none)"
        )
    return Plan(reason=reason, actions=actions, overrides=overrides)


def _fit_model_len(case: Case, util: float, total: float, batched: int, seqs: int) -> tuple[int, str] | Plan | None:
    """None when max_model_len fits the KV cache at ``util``; else (the length that fits, why), or
    a give-up Plan when that length is below ``limits.min_model_len``."""
    limits = case.limits
    want = case.spec.max_model_len
    fits = limits.max_len_at(util, total, batched, seqs)
    if fits >= want:
        return None
    kv = limits.kv_gib(util, total, batched, seqs)
    why = (
        f"at {_fmt(util)} of {total:.1f} GiB the KV cache gets {max(kv, 0.0):.2f} GiB (minus {limits.weights_gib:.2f} "
        f"GiB weights, {limits.overhead_gib:.2f} overhead, {limits.activation_gib(batched, seqs):.2f} activations), "
        f"{fits} tokens at {limits.kv_bytes_per_token / 2**20:.2f} MiB/token"
    )
    if fits < limits.min_model_len:
        need = limits.utilization_for(limits.min_model_len, total, batched, seqs)
        return _give_up(
            f"{why}: below the minimum max_model_len {limits.min_model_len}",
            _free_it_next_step(
                case,
                then=f"deploy with gpu_memory_utilization {_fmt(need)} and max_model_len "
                f"{limits.min_model_len} once {need * total + limits.margin_gib:.1f} GiB are free",
            ),
        )
    return fits, f"max_model_len {want} -> {fits}: {why}"


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
    said = f"max_model_len {length} does not fit the KV cache at {_fmt(case.util)}"
    if needed is not None and available is not None:
        said = f"max_model_len {length} needs {needed:.2f} GiB of KV cache, {available:.2f} GiB was left at {_fmt(case.util)}"
    total = case.total_gib()
    missing = needed - available if needed is not None and available is not None else None
    raise_to = _ceil_util(case.util + missing / total) if missing is not None and total else None

    # 1. keep the context and raise the utilization, when free memory covers the missing GiB. Not
    #    twice in a row: if a raise was not enough, vLLM's new estimate is the better guide.
    raised_before = (
        case.just_tried(RecoveryClass.KV_TOO_SMALL) and "gpu_memory_utilization" in case.history[-1].overrides
    )
    why_not_raise = " (no meminfo shows free memory for a higher utilization)"
    if raise_to is not None and case.meminfo is not None and not raised_before:
        afford, drop, how = case.affordable_util()
        if case.util < raise_to <= min(afford, 1.0):
            return Plan(
                reason=(
                    f"{said}: keep max_model_len {length} and raise gpu_memory_utilization {_fmt(case.util)} -> "
                    f"{_fmt(raise_to)} for the missing {missing:.2f} GiB, since free memory allows up to "
                    f"{_fmt(afford)} ({how}, {limits.margin_gib:.1f} GiB margin)"
                ),
                actions=(Action.DROP_PAGE_CACHE,) if drop else (),
                overrides={"gpu_memory_utilization": raise_to},
            )
        why_not_raise = f" (raising to {_fmt(raise_to)} needs more than is free: up to {_fmt(afford)}, {how})"
    elif raised_before:
        why_not_raise = " (the last retry raised the utilization already)"

    # 2. lower the context to vLLM's own estimate
    if estimate is None:
        return _give_up(f"{said}, and vLLM gave no estimate of what fits", case.cause.fix)
    new_len = round_model_len(int(estimate))
    if new_len < limits.min_model_len or new_len >= case.spec.max_model_len:
        if raise_to is not None:
            then = f"deploy with gpu_memory_utilization {_fmt(raise_to)} (max_model_len {length} needs {missing:.2f} GiB more)"
        elif missing is not None:
            then = f"deploy with a gpu_memory_utilization that leaves {missing:.2f} GiB more for the KV cache"
        else:
            then = ""
        return _give_up(
            f"{said}; vLLM estimates {int(estimate)} tokens fit, below the minimum max_model_len "
            f"{limits.min_model_len}{why_not_raise}",
            _free_it_next_step(case, then=then),
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
    limits, spec = case.limits, case.spec
    total = case.total_gib()
    said = f"no memory was left for the KV cache at {_fmt(case.util)}"
    if total and case.meminfo is not None:
        afford, drop, how = case.affordable_util()
        want = limits.utilization_for(spec.max_model_len, total, spec.max_num_batched_tokens, spec.max_num_seqs)
        new_util = min(afford, max(want, round(case.util + UTIL_STEP, 2)), 1.0)
        if new_util > case.util:
            overrides: dict[str, Any] = {"gpu_memory_utilization": new_util}
            reason = (
                f"{said}: raise gpu_memory_utilization {_fmt(case.util)} -> {_fmt(new_util)} (max_model_len "
                f"{spec.max_model_len} needs {_fmt(want)} by the KV model; free memory allows up to {_fmt(afford)}: {how})"
            )
            fitted = _fit_model_len(case, new_util, total, spec.max_num_batched_tokens, spec.max_num_seqs)
            if not isinstance(fitted, Plan):
                if fitted is not None:
                    overrides["max_model_len"] = fitted[0]
                    reason += f"; {fitted[1]}"
                return Plan(reason=reason, actions=(Action.DROP_PAGE_CACHE,) if drop else (), overrides=overrides)
        said += f"; free memory allows no more than {_fmt(afford)} ({how})"
    # free memory does not allow more: shrink the profiling peak instead
    smaller = _smaller_batch(spec)
    if smaller:
        return Plan(
            reason=f"{said}: {_batch_text(case, smaller)}, which leaves more of {_fmt(case.util)} for the KV cache",
            overrides=smaller,
        )
    return _give_up(
        f"{said}, and the batch settings are already at the latency preset",
        _free_it_next_step(case),
    )


# ---------------------------------------------------------------- activation_peak


def _smaller_batch(spec: EngineSpec) -> dict[str, int]:
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


def _batch_text(case: Case, smaller: dict[str, int]) -> str:
    spec, limits = case.spec, case.limits
    parts = [f"{name} {getattr(spec, name)} -> {value}" for name, value in smaller.items()]
    before = limits.activation_gib(spec.max_num_batched_tokens, spec.max_num_seqs)
    after = limits.activation_gib(
        smaller.get("max_num_batched_tokens", spec.max_num_batched_tokens),
        smaller.get("max_num_seqs", spec.max_num_seqs),
    )
    return f"lower {', '.join(parts)} (activation peak {before:.2f} -> {after:.2f} GiB, toward the runbook's latency preset)"


def _peak_matches(case: Case) -> bool:
    return case.guard_tripped or case.cause.kind in (FailureKind.CUDA_OOM, FailureKind.OOM_KILLED, FailureKind.KILLED)


def _peak_plan(case: Case) -> Plan:
    if case.guard_tripped:
        what = "the host-memory guard stopped the start (MemAvailable fell below the host floor)"
    elif case.cause.kind is FailureKind.CUDA_OOM:
        what = case.cause.summary
    else:
        what = f"the container was killed ({case.cause.kind.value}) while memory ran out"
    smaller = _smaller_batch(case.spec)
    if smaller:
        return Plan(reason=f"{what}: {_batch_text(case, smaller)}", overrides=smaller)
    limits = case.limits
    new_util = round(case.util - UTIL_PEAK_STEP, 2)
    if new_util < limits.floor_utilization:
        return _give_up(
            f"{what}; the batch settings are at the latency preset and {_fmt(case.util)} - {UTIL_PEAK_STEP} is below "
            f"the floor {_fmt(limits.floor_utilization)}",
            _free_it_next_step(case, then="check `dmesg` for the OOM killer and what else ran"),
        )
    overrides: dict[str, Any] = {"gpu_memory_utilization": new_util}
    reason = f"{what}; the batch settings are at the latency preset: lower gpu_memory_utilization {_fmt(case.util)} -> {_fmt(new_util)}"
    total = case.total_gib()
    if total:
        fitted = _fit_model_len(case, new_util, total, case.spec.max_num_batched_tokens, case.spec.max_num_seqs)
        if isinstance(fitted, Plan):
            return _give_up(f"{reason}; {fitted.reason}", fitted.next_step or "")
        if fitted is not None:
            overrides["max_model_len"] = fitted[0]
            reason += f"; {fitted[1]}"
    return Plan(reason=reason, overrides=overrides)


# ---------------------------------------------------------------- engine_died


def _died_matches(case: Case) -> bool:
    return case.cause.kind is FailureKind.ENGINE_DEAD and case.number("after_ready") == 1


def _recent_restarts(case: Case) -> list[RecoveryStep]:
    """Engine restarts within the last hour (a step without a time, or without `now`, counts)."""
    hour = timedelta(hours=1)
    return [
        step
        for step in case.history
        if step.klass is RecoveryClass.ENGINE_DIED
        and not step.give_up
        and (step.at is None or case.now is None or case.now - step.at < hour)
    ]


def _died_plan(case: Case) -> Plan:
    recent = _recent_restarts(case)
    allowed = case.limits.engine_restarts_per_hour
    if len(recent) >= allowed:
        return _give_up(
            f"the engine died after the server was ready, again: {len(recent)} restart(s) within the hour "
            f"(limit {allowed}); a server that keeps dying needs a person",
            "Read the container log before the death (`docker logs <container>`) for its root cause; if it dies "
            f"under load, deploy with lower max_num_seqs ({case.spec.max_num_seqs}) or max_num_batched_tokens "
            f"({case.spec.max_num_batched_tokens}), e.g. the latency preset",
        )
    return Plan(
        reason=f"the engine died after the server was ready (first time within the hour): restart the same spec ({case.cause.summary})",
        overrides={},
    )


# ---------------------------------------------------------------- unrecoverable


def _always(case: Case) -> bool:
    return True


def _unrecoverable_plan(case: Case) -> Plan:
    return _give_up(f"{case.cause.kind.value}: {case.cause.summary}; no retry can fix this", case.cause.fix)


# ============================================================================ the table

#: The recovery classes, highest priority first (the module docstring says why this order).
CLASSES: tuple[RecoveryRule, ...] = (
    RecoveryRule(
        RecoveryClass.STALE_CONTAINER,
        _stale_matches,
        _stale_plan,
        "a memory failure while our older container(s) for this target still run | remove_stale_containers | same spec",
    ),
    RecoveryRule(
        RecoveryClass.PAGE_CACHE,
        _page_cache_matches,
        _page_cache_plan,
        "free_memory, and meminfo free + cached - margin covers util x total | drop_page_cache | same spec",
    ),
    RecoveryRule(
        RecoveryClass.HELD_BY_OTHERS,
        _held_matches,
        _held_plan,
        "free_memory, not page cache, others hold memory (or unknown), no prune yet"
        " | [drop_page_cache,] prune | fit_utilization, maybe max_model_len",
    ),
    RecoveryRule(
        RecoveryClass.SHORTAGE,
        _shortage_matches,
        _shortage_plan,
        "free_memory otherwise | [drop_page_cache] | fit_utilization, maybe max_model_len",
    ),
    RecoveryRule(
        RecoveryClass.KV_TOO_SMALL,
        _kv_matches,
        _kv_plan,
        "kv_too_small | [drop_page_cache] | higher utilization if free, else vLLM's estimate rounded to 256",
    ),
    RecoveryRule(
        RecoveryClass.NO_KV_MEMORY,
        _no_kv_matches,
        _no_kv_plan,
        "no_kv_memory | [drop_page_cache] | higher utilization if free, else smaller batch settings",
    ),
    RecoveryRule(
        RecoveryClass.ACTIVATION_PEAK,
        _peak_matches,
        _peak_plan,
        "cuda_oom, oom_killed, killed, or guard_tripped | -"
        " | batch settings to the latency preset 8192/16 in one step, then utilization -0.05",
    ),
    RecoveryRule(
        RecoveryClass.ENGINE_DIED,
        _died_matches,
        _died_plan,
        "engine_dead after ready | - | same spec, engine_restarts_per_hour times",
    ),
    RecoveryRule(
        RecoveryClass.UNRECOVERABLE,
        _always,
        _unrecoverable_plan,
        "anything else | - | give up with the cause's fix",
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
    limits: RecoveryLimits = RecoveryLimits(),
    history: Sequence[RecoveryStep] = (),
    *,
    guard_tripped: bool = False,
    now: datetime | None = None,
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
            takes the weights from the failed start's log).
        history: the steps already taken on this target, oldest first: this recovery's, and the
            engine restarts of the last hour (their ``at`` set by the flow).
        guard_tripped: the flow stopped the start because MemAvailable fell below the target's
            host_memory_floor_gib (no FailureKind names that: tasks/vllm/failures.py only reads logs and
            exits); planned as an activation peak.
        now: the flow's clock, to age ``history`` (None: every engine restart in it counts).

    Returns:
        The step; ``give_up`` with a ``next_step`` for a person when no retry should run.
    """
    guard_tripped = guard_tripped or cause.kind is FailureKind.HOST_MEMORY_GUARD  # the gate's own stop
    case = Case(cause, memory, spec, attempt, limits, tuple(history), guard_tripped, now)
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
    return _obey(case, step)


def _effective(spec: EngineSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """Only the overrides that change the spec."""
    return {k: v for k, v in overrides.items() if getattr(spec, k) != v}


def _obey(case: Case, step: RecoveryStep) -> RecoveryStep:
    """The rules above every class: attempt cap, a valid spec, no blind repeat."""
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
                "next_step": _cap_next_step(case, step),
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
                "next_step": _free_it_next_step(case),
            }
        )
    return step


def _cap_next_step(case: Case, step: RecoveryStep) -> str:
    """What a person should do once the retries are used up: what the step would have done, by hand."""
    if Action.REMOVE_STALE_CONTAINERS in step.actions:
        names = " ".join(case.memory.stale_containers)
        return f"remove our older container(s) (`docker rm -f {names}`), check `free -g`, then deploy again"
    if Action.DROP_PAGE_CACHE in step.actions and not step.overrides:
        return "drop the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`) and deploy again with the same spec"
    deploy = f"deploy with {_describe_overrides(step.overrides)}" if step.overrides else ""
    if case.memory_failure:
        return _free_it_next_step(case, then=deploy)
    if deploy:
        return deploy[0].upper() + deploy[1:]
    return case.cause.fix


# ============================================================================ the runbook's ladder

#: The runbook's blind ladder ("Container Fails with Memory Errors"), one start per rung, each after
#: `docker compose down` and `docker system prune -f`: the baseline the planner is benchmarked against.
RUNBOOK_LADDER: tuple[dict[str, Any], ...] = (
    {"gpu_memory_utilization": 0.90},
    {"gpu_memory_utilization": 0.75},
    {"gpu_memory_utilization": 0.70},
    {"gpu_memory_utilization": 0.70, "max_model_len": 16384},
)


def runbook_ladder(attempt: int) -> dict[str, Any]:
    """The spec overrides of the runbook's ladder for one start: 0 = the first start (0.90), then
    0.75, 0.70, then 0.70 with max_model_len 16384.

    Raises:
        ValueError: ``attempt`` is past the ladder's last rung (the runbook has no further step).
    """
    if not 0 <= attempt < len(RUNBOOK_LADDER):
        raise ValueError(
            f"the runbook's ladder has {len(RUNBOOK_LADDER)} rungs (0-{len(RUNBOOK_LADDER) - 1}), got {attempt}"
        )
    return dict(RUNBOOK_LADDER[attempt])
