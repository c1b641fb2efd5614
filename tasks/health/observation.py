"""One health check's input: what it observed of a target, where it draws its lines, and the facts the rules read.

`Observation` is what the flow saw (docker, HTTP, /metrics, meminfo; None = not observed),
`Thresholds` where the lines are drawn, and `Check` the two together with the facts the rules of
`tasks.health.verdict` derive from them (the container's age, a counter's growth, a wedge). The
host's memory floor is not a threshold: it is the target machine's `host_memory_floor_gib`
(blocks/target.py), the same floor the start's memory guard uses, and the flow passes it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.health.service import ServiceLevels, service_levels

# Real imports, not TYPE_CHECKING ones: Prefect validates task parameters with pydantic, which must
# resolve every annotation of `Observation`. Nothing of tasks.memory's I/O is used here.
from tasks.memory import MemInfo
from tasks.vllm.metrics import MetricsSnapshot, counter_delta

__all__ = ["Check", "Observation", "Thresholds"]


class Thresholds(BaseModel):
    """Where the health check draws its lines; each default says why it is where it is.

    The host's memory floor is not here: it is a property of the machine, the target's
    `host_memory_floor_gib` (`Observation.memory_floor_gib`).
    """

    model_config = ConfigDict(frozen=True)

    startup_budget_s: float = Field(
        600.0,
        gt=0,
        description=(
            "seconds after the container started during which no HTTP answer means 'starting', not dead: vLLM "
            "accepts no connection while it loads, a warm start of Qwen3-32B-FP8 on a Spark takes 3-4 min "
            "(~3.4 min of shards, ~17 s torch.compile, graphs); 600 s leaves a slow disk room and is the "
            "startup window of KServe and the vLLM production stack. The flow may pass the deploy's timeouts."
        ),
    )
    answer_slow_s: float = Field(
        10.0,
        gt=0,
        description=(
            "smoke answer slower than this -> degraded: 12*17 -> 204 is a few tokens, ~1.5 s on an idle Spark "
            "(~7 tokens/s single-stream decode of 32 GB of weights at 273 GB/s, plus prefill); 10 s is over 6x "
            "that: users feel it, usually a saturated batch or a long queue"
        ),
    )
    answer_budget_s: float = Field(
        60.0,
        gt=0,
        description=(
            "smoke answer slower than this -> unhealthy: a minute for a few tokens is as good as no service "
            "(and matches the wedge window); the flow's HTTP timeout should be at least this"
        ),
    )
    health_slow_s: float = Field(
        5.0,
        gt=0,
        description=(
            "/health slower than this -> degraded: it does no work, so seconds mean the API server's event loop "
            "is starved"
        ),
    )
    wedge_window_s: float = Field(
        60.0,
        gt=0,
        description=(
            "requests in flight at two snapshots at least this far apart and generation_tokens_total unchanged "
            "-> wedged (vllm issue 39863); a decode step takes well under a second and the longest chunked "
            "prefill a few seconds, so a minute without one token is not load"
        ),
    )
    # The service-level limits (tasks.health.verdict's service rules): the defaults are vLLM's example
    # PrometheusRule (vllm-project/vllm, examples/online_serving/prometheus_grafana/k8s-monitoring/
    # prometheusrule.yaml) and llm-d's alerting rules (llm-d/llm-d, docs/monitoring/prometheus-alerting-rules.yaml),
    # each named by its alert; docs/operator.md lists them.
    ttft_p99_s: float = Field(
        30.0,
        gt=0,
        description=(
            "p99 time to first token over the window between two checks above this (seconds) -> degraded: vLLM's "
            "VllmTTFTP99TooHigh (> 30, for 2m) and llm-d's LLMDExtremeTTFT (> 30, for 5m; its warning "
            "LLMDHighTTFT says 10)"
        ),
    )
    itl_p99_s: float = Field(
        1.0,
        gt=0,
        description=(
            "p99 inter-token latency over the window above this (seconds) -> degraded: vLLM's VllmITLP99TooHigh "
            "(> 1, for 2m); llm-d's rules have no inter-token alert"
        ),
    )
    error_ratio: float = Field(
        0.05,
        gt=0,
        le=1,
        description=(
            "the window's finished requests that vLLM counts as aborted or failed (request_success_total, "
            "finished_reason abort or error) above this fraction -> degraded: llm-d's LLMDHighErrorRate (> 5 %, "
            "for 2m, on its gateway's error counter); vLLM's example has no error rule and counts no client abort"
        ),
    )
    kv_cache_full: float = Field(
        0.95,
        gt=0,
        le=1,
        description=(
            "KV cache usage above this fraction at every check for kv_cache_full_for_s -> degraded: vLLM's "
            "VllmKVCacheNearFull (> 0.95, for 5m) and llm-d's LLMDDecodeKVCacheCritical (> 0.95, for 5m; its "
            "LLMDKVCacheSaturation warns at 0.90 for 10m)"
        ),
    )
    kv_cache_full_for_s: float = Field(
        300.0,
        ge=0,
        description="how long the KV cache must stay above kv_cache_full, at every check, before it counts (5m)",
    )
    waiting_requests: int = Field(
        50,
        ge=0,
        description=(
            "requests waiting above this at every check for waiting_requests_for_s -> degraded: vLLM's "
            "VllmHighQueueDepth (> 50, for 3m) and llm-d's LLMDRequestQueueBuildup (> 50, for 5m)"
        ),
    )
    waiting_requests_for_s: float = Field(
        180.0,
        ge=0,
        description="how long the queue must stay above waiting_requests, at every check, before it counts (3m)",
    )
    preemptions_per_s: float = Field(
        1.0,
        gt=0,
        description=(
            "preemptions per second over the window between two checks above this -> degraded: vLLM's "
            "VllmPreemptionSpike (rate > 1, for 3m) and llm-d's LLMDHighPreemptions (> 1, for 5m)"
        ),
    )
    min_window_requests: int = Field(
        10,
        ge=1,
        description=(
            "fewer requests than this in the window and the p99s and the error ratio are not judged: a p99 of a "
            "handful of requests is the slowest of them, so a nearly idle server would page on one slow request "
            "(our own choice: Prometheus's rules apply none)"
        ),
    )
    crash_loop_restarts: int = Field(
        1,
        ge=1,
        description=(
            "this many restarts since the deploy and not serving now -> crash loop (unhealthy). One: deploy-qwen "
            "arms the restart policy only once the server has served, so any docker restart means it died "
            "after serving, and on GB10 with vLLM up to 0.10.x that restart fails on the page cache the first "
            "load left (vllm issue 35313; unsloth PR 10704; from 0.11.1 on the check reads MemAvailable, but a "
            "restart that fails on anything else fails the same way too), so waiting out another load only hides it"
        ),
    )
    crash_loop_growth: int = Field(
        2,
        ge=1,
        description=(
            "this many restarts since the previous check -> crash loop: checks are minutes apart, so two "
            "restarts in between means neither run finished a 3-4 min load"
        ),
    )

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.answer_slow_s > self.answer_budget_s:
            raise ValueError(
                f"answer_slow_s ({self.answer_slow_s}) must not exceed answer_budget_s ({self.answer_budget_s}):"
                " slow means degraded, beyond the budget means unhealthy"
            )
        return self


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
    def wedged(self) -> bool:
        """Work in flight at both snapshots, far enough apart, and not one token generated.

        Both ends, not only now: requests that arrived a second ago after an idle spell have not
        produced a token yet, and that is no wedge. A counter that went down (a restart in
        between) moved.
        """
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
