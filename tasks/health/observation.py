"""One health check's input: what it observed of a target, where it draws its lines, and the facts the rules read.

`Observation` is what the flow saw (docker, HTTP, /metrics, meminfo; None = not observed),
`Thresholds` (tasks/health/limits.py) where the lines are drawn, and `Check` the two together
with the facts the rules of `tasks.health.verdict` derive from them (the container's age, a
counter's growth, a wedge, the service-level figures of `tasks.health.service`). The host's memory
floor is not a threshold: it is the target machine's `host_memory_floor_gib` (blocks/target.py),
the same floor the start's memory guard uses, and the flow passes it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from tasks.health.limits import Thresholds
from tasks.health.service import ServiceLevels, service_levels

# Real imports, not TYPE_CHECKING ones: Prefect validates task parameters with pydantic, which must
# resolve every annotation of `Observation`. Nothing of tasks.memory's I/O is used here.
from tasks.memory import MemInfo
from tasks.vllm.metrics import MetricsSnapshot, counter_delta

__all__ = ["Check", "Observation", "Thresholds"]


@dataclass(frozen=True)
class Observation:
    """Everything one check observed of one target; the flow fills it, `evaluate` judges it.

    None always means "not observed" (the flow did not or could not look), never "bad".

    Attributes:
        desired: ``"running"``, ``"stopped"`` when stop-qwen recorded the target stopped, or
            ``"never-deployed"``: no deploy or recovery ever served on it, so nothing is wanted of it.
        now: the flow's clock (epoch seconds), for the container's age.
        exists: a container of ours exists for the target.
        status: docker's ``State.Status`` (created, running, paused, restarting, removing, exited, dead).
        restart_count_since_deploy: docker's ``RestartCount`` growth since the last deploy.
        exit_code: ``State.ExitCode`` (meaningful once it stopped).
        oom_killed: ``State.OOMKilled``: the kernel's OOM killer ended it.
        started_at: ``State.StartedAt`` as epoch seconds (a restart resets it).
        previous_restart_count: ``restart_count_since_deploy`` at the previous check (the flow stores
            it with the snapshot), for a crash loop seen as fast growth.
        health_status: ``GET /health``'s status code; None = no HTTP answer (refused, reset, empty
            reply, timeout): what vLLM gives while it loads.
        health_latency_s: how long ``/health`` took.
        models_listed: ``/v1/models`` lists the served model.
        answer_ok: the smoke question (12*17) was answered 204; False also for an error or a timeout.
        answer_latency_s: how long the smoke answer took.
        answer_detail: what went wrong with it, in words (e.g. "answered '203'", "timed out after 60 s").
        stalled_s: the smoke question waited this long without a token while ``generation_tokens_total``
            did not move (tasks/health/smoke.py `engine_stalled`), and the check stopped waiting; None: not
            stalled. ``metrics`` is then the read that showed it.
        metrics: this check's ``/metrics``, read after the smoke question (`tasks.vllm.metrics.parse_metrics`).
        previous: the previous check's snapshot (read after its smoke question): the wedge's reference and
            the start of the service-level window.
        service: this check's ``/metrics`` read before its smoke question: the end of the service-level
            window (`tasks.health.service`), so the check's own question is never counted.
        held_since: since when (epoch seconds) each service-level condition has held at every check, as
            the previous check left it (`HealthReport.streaks`): a rule with a hold time fires once its
            condition has held that long.
        memory: the docker host's meminfo (`tasks.memory.MemInfo`).
        memory_floor_gib: the target's ``host_memory_floor_gib`` (blocks/target.py): MemAvailable
            below it is low headroom, as it stops a start; 0 = no floor (the target's guard is off).
        degraded: the last deploy's "requested X, running Y, because Z" for a recovered spec.
    """

    desired: Literal["running", "stopped", "never-deployed"]
    now: float
    exists: bool = False
    status: str | None = None
    restart_count_since_deploy: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    previous_restart_count: int | None = None
    health_status: int | None = None
    health_latency_s: float | None = None
    models_listed: bool | None = None
    answer_ok: bool | None = None
    answer_latency_s: float | None = None
    answer_detail: str | None = None
    stalled_s: float | None = None
    metrics: MetricsSnapshot | None = None
    previous: MetricsSnapshot | None = None
    service: MetricsSnapshot | None = None
    held_since: dict[str, float] = field(default_factory=dict)
    memory: MemInfo | None = None
    memory_floor_gib: float = 0.0
    degraded: str | None = None

    def __post_init__(self) -> None:
        if self.desired not in ("running", "stopped", "never-deployed"):
            raise ValueError(f"desired must be 'running', 'stopped' or 'never-deployed' (got {self.desired!r})")
        if self.memory_floor_gib < 0:
            raise ValueError(f"memory_floor_gib must be >= 0 GiB (got {self.memory_floor_gib}); 0 means no floor")


@dataclass(frozen=True)
class Check:
    """One observation under its thresholds, with the facts the rules derive from it."""

    obs: Observation
    limits: Thresholds

    # ---------------------------------------------------------------- container
    @property
    def running(self) -> bool:
        return self.obs.exists and self.obs.status == "running"

    @property
    def age_s(self) -> float | None:
        """Seconds since the container (last) started; None when unknown."""
        if self.obs.started_at is None:
            return None
        return max(0.0, self.obs.now - self.obs.started_at)

    @property
    def restarts_since_previous(self) -> int | None:
        if self.obs.previous_restart_count is None:
            return None
        return self.obs.restart_count_since_deploy - self.obs.previous_restart_count

    @property
    def serving(self) -> bool:
        return self.obs.health_status == 200

    def exit_words(self) -> str:
        """Docker's exit state in words: ", exit code 137, OOMKilled" (empty when it says nothing)."""
        parts = []
        if self.obs.exit_code is not None:
            parts.append(f"exit code {self.obs.exit_code}")
        if self.obs.oom_killed:
            parts.append("OOMKilled (the kernel's OOM killer)")
        return "".join(f", {p}" for p in parts)

    # ---------------------------------------------------------------- liveness
    @property
    def no_answer(self) -> bool:
        return self.obs.health_status is None

    @property
    def within_startup(self) -> bool:
        age = self.age_s
        return self.running and age is not None and age <= self.limits.startup_budget_s

    # ---------------------------------------------------------------- progress
    @property
    def window_s(self) -> float | None:
        """Seconds between the previous snapshot and this one."""
        if self.obs.metrics is None or self.obs.previous is None:
            return None
        return self.obs.metrics.taken_at - self.obs.previous.taken_at

    def delta(self, field: str) -> int | float | None:
        """A counter's growth since the previous snapshot (`counter_delta`)."""
        if self.obs.metrics is None or self.obs.previous is None:
            return None
        return counter_delta(getattr(self.obs.metrics, field), getattr(self.obs.previous, field))

    @property
    def stalled(self) -> bool:
        """The check's own question got no token for `Thresholds.first_token_stall_s` while the engine
        generated for no one (`Observation.stalled_s`)."""
        return self.obs.stalled_s is not None

    @property
    def wedged(self) -> bool:
        """Stalled within this check, or work in flight at both snapshots, far enough apart, and not one
        token generated.

        For the snapshots, both ends, not only now: requests that arrived a second ago after an idle spell
        have not produced a token yet, and that is no wedge. A counter that went down (a restart in
        between) moved.
        """
        if self.stalled:
            return True
        cur, prev, window = self.obs.metrics, self.obs.previous, self.window_s
        if cur is None or prev is None or window is None or window < self.limits.wedge_window_s:
            return False
        if not cur.in_flight or not prev.in_flight:
            return False
        if cur.generation_tokens_total is None or prev.generation_tokens_total is None:
            return False
        return cur.generation_tokens_total == prev.generation_tokens_total

    # ---------------------------------------------------------------- service levels
    @cached_property
    def levels(self) -> ServiceLevels:
        """The service-level figures of the window (`tasks.health.service`)."""
        return service_levels(self.obs.service, self.obs.previous, self.limits.min_window_requests)

    def held_s(self, condition: str) -> float:
        """How long ``condition`` has held at every check: since the previous check's streak, or 0 (new)."""
        return max(0.0, self.obs.now - self.obs.held_since.get(condition, self.obs.now))

    # ---------------------------------------------------------------- host
    @property
    def low_headroom(self) -> bool:
        """MemAvailable below the target's floor (`Observation.memory_floor_gib`)."""
        mem = self.obs.memory
        return mem is not None and mem.available_gib < self.obs.memory_floor_gib
