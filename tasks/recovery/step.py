"""The planner's vocabulary: what it reads (`MachineMemory`, `RecoveryLimits`), what it answers
(`RecoveryStep`: a `RecoveryClass`, the `Action` list, the spec overrides) and how a step becomes the
next spec (`retry_spec`). The decisions themselves are in tasks/recovery/planner.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_validator

from blocks.engine import EngineSpec, format_utilization
from tasks.memory import MemInfo
from tasks.recovery.kv_model import KvModel
from tasks.recovery.sizing import MARGIN_GIB, MODEL_LEN_STEP, margin_for
from tasks.vllm.failures import FailureKind

__all__ = [
    "MACHINE_ACTIONS",
    "MEMORY_KINDS",
    "Action",
    "MachineMemory",
    "RecoveryClass",
    "RecoveryLimits",
    "RecoveryStep",
    "describe_overrides",
    "fmt",
    "retry_spec",
]


class RecoveryClass(StrEnum):
    """What kind of recovery a failure needs (`CLASSES` gives the priority order)."""

    STALE_CONTAINER = "stale_container"
    PAGE_CACHE = "page_cache"
    HELD_BY_OTHERS = "held_by_others"
    SHORTAGE = "shortage"
    KV_TOO_SMALL = "kv_too_small"
    NO_KV_MEMORY = "no_kv_memory"
    UNSTEADY_MEMORY = "unsteady_memory"
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
    #: poll meminfo until two readings a few seconds apart agree (`tasks.memory.wait_for_steady_memory`):
    #: changes nothing, waits out another process's release of memory.
    WAIT_FOR_STEADY_MEMORY = "wait_for_steady_memory"


#: Actions that change the machine, so retrying the same spec after them is not a blind repeat.
MACHINE_ACTIONS: frozenset[Action] = frozenset(Action) - {Action.WAIT_FOR_STEADY_MEMORY}

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


class RecoveryLimits(KvModel):
    """The planner's bounds, on top of the served model's memory model (tasks/recovery/kv_model.py)."""

    floor_utilization: float = Field(0.50, gt=0, le=1, description="never propose a utilization below this")
    margin_gib: float = Field(
        MARGIN_GIB, ge=0, description="GiB kept free when a utilization is computed from free memory"
    )
    max_attempts: int = Field(2, ge=0, description="retries after the first start; then a person acts")
    engine_restarts_per_hour: int = Field(1, ge=0, description="restarts after an engine death within an hour")
    min_model_len: int = Field(
        4096,
        ge=MODEL_LEN_STEP,
        description="never lower max_model_len below this: a server that short is no recovery",
    )

    def guarded(self, host_floor_gib: float) -> RecoveryLimits:
        """These limits with the margin above the readiness gate's host-memory floor
        (`tasks.recovery.sizing.margin_for` says why)."""
        return self.model_copy(update={"margin_gib": margin_for(host_floor_gib, self.margin_gib)})


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
            "retry with": describe_overrides(self.overrides) or ("-" if self.give_up else "same spec"),
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
        was = ", ".join(f"{k} {fmt(getattr(requested, k))}" for k in changed)
        now = ", ".join(f"{k} {fmt(v)}" for k, v in changed.items())
        return f"requested {was}, running {now}, because {self.reason}"


def fmt(value: Any) -> str:
    """A spec value as the reports write it (a utilization with two decimals)."""
    if isinstance(value, float):
        return format_utilization(value)
    return str(value)


def describe_overrides(overrides: dict[str, Any]) -> str:
    """ "gpu_memory_utilization 0.69 and max_model_len 16384"."""
    return " and ".join(f"{k} {fmt(v)}" for k, v in overrides.items())


def retry_spec(spec: EngineSpec, step: RecoveryStep) -> EngineSpec:
    """The spec to start for ``step``: ``spec`` with the step's overrides, through EngineSpec's validators.

    Raises:
        ValueError: the overrides make an invalid spec (a pydantic ValidationError).
    """
    fields = spec.model_dump(include=set(EngineSpec.model_fields))
    fields.update(step.overrides)
    return EngineSpec(**fields)
