"""The pure core of the scheduled health check: metrics text -> numbers, observations -> a verdict.

Why layers, and why a table
---------------------------
A single probe lies. vLLM's ``/health`` keeps answering 200 while the engine is deadlocked (vllm
issue 39863: a GB10 user sent traffic to a dead backend for 85 minutes), and a liveness probe that
treats "no answer" as dead kills a model that is still loading (kserve 5062: vLLM does not accept
connections for the 3-4 minutes a warm start takes). So the `health-check` flow observes the
target in layers (the container, ``/health``, ``/v1/models``, the 12*17 smoke question,
``/metrics`` against the previous check, the host's memory), each with its own verdict and
numbers, and `evaluate` turns one `Observation` into a `HealthReport`. The flow only observes and
reports; it never restarts anything (recovery automations react to its ``unhealthy`` event).

`RULES` is the whole judgement, as `tasks.vllm.failures.RULES` is for failed starts: the first
`HealthRule` whose ``matches`` is true decides the verdict, the deciding layer and the reason.
The order, first to last (the reasons why are in each group):

desired state: what the operator asked for outranks everything the container does.
  1. `desired_stopped` (stopped): stop-qwen recorded "stopped"; never anything else, so no
     automation ever "recovers" a target someone stopped.
the container: nothing above it can serve if it is not there or not running.
  2. `no_container` (unhealthy): desired running, no container.
  3. `crash_loop` (unhealthy): docker is restarting it, it restarted `Thresholds.crash_loop_growth`
     times since the previous check, or `Thresholds.crash_loop_restarts` times since the deploy
     and is not serving now. Before `not_running`, since a looping container is often caught
     between runs, and before `loading`, since waiting out one more load only hides the loop.
  4. `not_running` (unhealthy): exited, dead, paused or created, with docker's exit code and OOMKilled.
liveness: ``/health``.
  5. `health_error` (unhealthy): ``/health`` answered, but not 200 (500 in 0.10.x, 503 in 0.11+:
     the engine core is dead).
  6. `loading` (starting): no HTTP answer, the container started less than
     `Thresholds.startup_budget_s` ago: vLLM is loading. Before every later rule, so a loading
     model is never judged unhealthy.
  7. `no_answer` (unhealthy): no HTTP answer past the startup budget (or with no start time).
readiness: ``/v1/models``.
  8. `models_missing` (unhealthy): ``/v1/models`` does not list the served model.
progress: the engine behind a ``/health`` that may lie.
  9. `wedged` (unhealthy): requests in flight at both snapshots, at least `Thresholds.wedge_window_s`
     apart, and ``generation_tokens_total`` did not move (vllm issue 39863). Before the function
     rules: a wedged engine also fails the smoke question, and the wedge is the root cause.
function: the smoke question.
  10. `wrong_answer` (unhealthy): 12*17 was not answered 204 (or not at all).
  11. `answer_too_slow` (unhealthy): answered, beyond `Thresholds.answer_budget_s`.
degraded: it answers, but something is off. Most pressing first: what users feel now (slow),
then what is about to hurt (KV full, preemptions, low headroom), then history (restarts, a
recovered spec).
  12. `slow_answer`: the smoke answer took longer than `Thresholds.answer_slow_s`.
  13. `slow_health`: ``/health`` took longer than `Thresholds.health_slow_s`.
  14. `kv_cache_full`: KV cache usage above `Thresholds.kv_cache_full`.
  15. `preemptions`: the engine preempted requests since the previous check.
  16. `low_headroom`: the host's MemAvailable is below `Thresholds.headroom_floor_gib`.
  17. `restarted`: the container restarted since the deploy.
  18. `recovered_spec`: the last deploy runs a recovered spec ("requested X, running Y").
  19. `healthy`: always matches.

Every layer is shown, not only the deciding one: `HealthReport.layers` holds each layer's
`LayerResult`, derived from the same rules (a layer fails when one of its unhealthy rules matches,
warns when a starting or degraded rule does, is ok otherwise, and is skipped when the flow did
not observe it). The verdict values are the names of the health events (`tasks.events.ServiceEvent`:
healthy, degraded, starting, unhealthy); ``stopped`` is stop-qwen's own event, not re-emitted.

Adding a condition: a member of `Condition` and one `HealthRule` in `RULES` at its place, then
extend the list above. The table is checked at import (each condition once, healthy last).

No I/O, no clock, no Prefect: the flow reads docker, HTTP and meminfo, passes ``now``, and stores
the `MetricsSnapshot` (JSON) for the next check.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, model_validator

# A real import, not a TYPE_CHECKING one: Prefect validates task parameters with pydantic, which
# must resolve every annotation of `Observation`. Nothing of tasks.memory's I/O is used here.
from tasks.memory import MemInfo

__all__ = [
    "LAYERS",
    "RULES",
    "Check",
    "Condition",
    "HealthReport",
    "HealthRule",
    "Layer",
    "LayerResult",
    "LayerSpec",
    "LayerVerdict",
    "MetricsSnapshot",
    "Observation",
    "Thresholds",
    "Verdict",
    "counter_delta",
    "evaluate",
    "history_row",
    "needs_operator",
    "parse_metrics",
    "rule_for",
    "summarise_history",
]


# ============================================================================ /metrics


class MetricsSnapshot(BaseModel):
    """The numbers of one ``/metrics`` read that the health check compares between checks.

    JSON-able and frozen: the flow stores it (e.g. in a Variable) and passes it back as
    `Observation.previous` at the next check. Every number is summed over vLLM's label sets
    (``model_name``, ``engine``), except the KV cache usage, the fullest engine's (summing
    fractions of several engines would exceed 1 and mean nothing). None: the server did not
    export that metric (older or newer vLLM, or not vLLM).
    """

    model_config = ConfigDict(frozen=True)

    taken_at: float = Field(description="when the flow read /metrics (epoch seconds; the caller's clock)")
    requests_running: int | None = Field(None, description="vllm:num_requests_running")
    requests_waiting: int | None = Field(None, description="vllm:num_requests_waiting")
    kv_cache_usage: float | None = Field(
        None,
        description="vllm:kv_cache_usage_perc (else the deprecated vllm:gpu_cache_usage_perc); a fraction 0-1",
    )
    generation_tokens_total: int | None = Field(None, description="vllm:generation_tokens_total")
    prompt_tokens_total: int | None = Field(None, description="vllm:prompt_tokens_total")
    preemptions_total: int | None = Field(None, description="vllm:num_preemptions_total")
    prefix_cache_queries_total: int | None = Field(None, description="vllm:prefix_cache_queries_total")
    prefix_cache_hits_total: int | None = Field(None, description="vllm:prefix_cache_hits_total")
    requests_succeeded_total: int | None = Field(None, description="vllm:request_success_total (all finish reasons)")
    queue_time_sum: float | None = Field(None, description="vllm:request_queue_time_seconds_sum (seconds)")
    queue_time_count: int | None = Field(None, description="vllm:request_queue_time_seconds_count")

    @property
    def in_flight(self) -> int | None:
        """Requests running plus waiting; None when the server exports neither gauge."""
        if self.requests_running is None and self.requests_waiting is None:
            return None
        return (self.requests_running or 0) + (self.requests_waiting or 0)


#: Which samples feed which field, in order of preference: the first name that has samples wins
#: (``vllm:kv_cache_usage_perc`` over the deprecated ``vllm:gpu_cache_usage_perc``). Counters are
#: listed by their sample name (``..._total``, kept by the parser on samples while it strips it from
#: the family name) and by the bare name (an untyped exposition, or a parser that keeps it).
_METRIC_SAMPLES: dict[str, tuple[str, ...]] = {
    "requests_running": ("vllm:num_requests_running",),
    "requests_waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "generation_tokens_total": ("vllm:generation_tokens_total", "vllm:generation_tokens"),
    "prompt_tokens_total": ("vllm:prompt_tokens_total", "vllm:prompt_tokens"),
    "preemptions_total": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "prefix_cache_queries_total": ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"),
    "prefix_cache_hits_total": ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),
    "requests_succeeded_total": ("vllm:request_success_total", "vllm:request_success"),
    "queue_time_sum": ("vllm:request_queue_time_seconds_sum",),
    "queue_time_count": ("vllm:request_queue_time_seconds_count",),
}
#: Fields whose label sets are combined by max, not sum (a fraction per engine).
_MAX_FIELDS = frozenset({"kv_cache_usage"})
_FLOAT_FIELDS = frozenset({"kv_cache_usage", "queue_time_sum"})


def parse_metrics(text: str, taken_at: float) -> MetricsSnapshot:
    """The health check's numbers from vLLM's Prometheus text (prometheus_client's parser).

    Args:
        text: the body of ``GET /metrics`` (vLLM renders it with prometheus_client; the imitation
            renders the same exposition).
        taken_at: when it was read (epoch seconds), from the caller's clock.

    Returns:
        The snapshot; a metric the text lacks is None (an empty text gives all None).

    Raises:
        ValueError: the text is not Prometheus exposition (the parser's error, with context).
    """
    wanted = {name for names in _METRIC_SAMPLES.values() for name in names}
    found: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted and not math.isnan(sample.value):
                    found.setdefault(sample.name, []).append(float(sample.value))
    except ValueError as exc:
        raise ValueError(f"/metrics is not Prometheus text: {exc}") from exc
    values: dict[str, float | int | None] = {}
    for field, names in _METRIC_SAMPLES.items():
        samples = next((found[name] for name in names if name in found), None)
        if samples is None:
            values[field] = None
            continue
        total = max(samples) if field in _MAX_FIELDS else sum(samples)
        values[field] = float(total) if field in _FLOAT_FIELDS else int(round(total))
    return MetricsSnapshot(taken_at=taken_at, **values)


def counter_delta(now: int | float | None, before: int | float | None) -> int | float | None:
    """How much a counter grew between two reads; a counter that went down was reset (the server
    restarted in between), so all of its current value is new. None when either read lacks it."""
    if now is None or before is None:
        return None
    return now - before if now >= before else now


# ============================================================================ vocabulary


class Verdict(StrEnum):
    """The check's verdict; the values are the health events' names (``vllm.service.<verdict>``)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    STARTING = "starting"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"


class Layer(StrEnum):
    """What was observed, from the operator's wish down to the host (`LAYERS` gives the display order)."""

    DESIRED = "desired"
    CONTAINER = "container"
    LIVENESS = "liveness"
    READINESS = "readiness"
    FUNCTION = "function"
    PROGRESS = "progress"
    HOST = "host"


class LayerVerdict(StrEnum):
    """One layer's own verdict."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


class Condition(StrEnum):
    """What the deciding rule found (`RULES` gives the priority order)."""

    DESIRED_STOPPED = "desired_stopped"
    NO_CONTAINER = "no_container"
    CRASH_LOOP = "crash_loop"
    NOT_RUNNING = "not_running"
    HEALTH_ERROR = "health_error"
    LOADING = "loading"
    NO_ANSWER = "no_answer"
    MODELS_MISSING = "models_missing"
    WEDGED = "wedged"
    WRONG_ANSWER = "wrong_answer"
    ANSWER_TOO_SLOW = "answer_too_slow"
    SLOW_ANSWER = "slow_answer"
    SLOW_HEALTH = "slow_health"
    KV_CACHE_FULL = "kv_cache_full"
    PREEMPTIONS = "preemptions"
    LOW_HEADROOM = "low_headroom"
    RESTARTED = "restarted"
    RECOVERED_SPEC = "recovered_spec"
    HEALTHY = "healthy"


# ============================================================================ inputs


class Thresholds(BaseModel):
    """Where the health check draws its lines; each default says why it is where it is."""

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
        description="/health slower than this -> degraded: it does no work, so seconds mean the API server's event loop is starved",
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
    headroom_floor_gib: float = Field(
        4.0,
        ge=0,
        description=(
            "host MemAvailable below this -> degraded: GPU and CPU share memory on GB10, and a host out of memory "
            "can hang (vllm issue 46307); the same floor as the targets' host_memory_floor_gib during a start"
        ),
    )
    kv_cache_full: float = Field(
        0.95,
        gt=0,
        le=1,
        description="KV cache usage above this fraction -> degraded: new requests wait and running ones get preempted",
    )
    crash_loop_restarts: int = Field(
        1,
        ge=1,
        description=(
            "this many restarts since the deploy and not serving now -> crash loop (unhealthy). One: deploy-qwen "
            "arms the restart policy only once the server has served, so any docker restart means it died "
            "after serving, and on GB10 that restart fails on the page cache the first load left (vllm issue "
            "48140); a start that failed fails the same way, so waiting out another load only hides it"
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


#: The default thresholds (frozen).
_DEFAULTS = Thresholds()


@dataclass(frozen=True)
class Observation:
    """Everything one check observed of one target; the flow fills it, `evaluate` judges it.

    None always means "not observed" (the flow did not or could not look), never "bad".

    Attributes:
        desired: ``"running"``, or ``"stopped"`` when stop-qwen recorded the target stopped.
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
        metrics: this check's ``/metrics`` (`parse_metrics`).
        previous: the previous check's snapshot.
        memory: the docker host's meminfo (`tasks.memory.MemInfo`).
        degraded: the last deploy's "requested X, running Y, because Z" for a recovered spec.
    """

    desired: Literal["running", "stopped"]
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
    memory: MemInfo | None = None
    degraded: str | None = None

    def __post_init__(self) -> None:
        if self.desired not in ("running", "stopped"):
            raise ValueError(f"desired must be 'running' or 'stopped' (got {self.desired!r})")


# ============================================================================ the facts rules read


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

    @property
    def preempted(self) -> int:
        delta = self.delta("preemptions_total")
        return int(delta) if delta else 0

    @property
    def kv_full(self) -> bool:
        usage = self.obs.metrics.kv_cache_usage if self.obs.metrics else None
        return usage is not None and usage > self.limits.kv_cache_full

    # ---------------------------------------------------------------- host
    @property
    def low_headroom(self) -> bool:
        mem = self.obs.memory
        return mem is not None and mem.available_gib < self.limits.headroom_floor_gib


def _secs(seconds: float) -> str:
    """75 s, 1.4 s, 12 ms: whole seconds from 10 s up, milliseconds below one."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _count(value: float | int | None) -> str:
    if value is None:
        return "?"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


# ============================================================================ the rule type


@dataclass(frozen=True)
class HealthRule:
    """One condition: its verdict, the layer that shows it, when it holds, and how to say it.

    Attributes:
        condition: what the rule found (`HealthReport.condition`).
        verdict: the check's verdict when this rule decides.
        layer: the layer the condition belongs to (and that decides when the rule does).
        matches: true when the condition holds; must accept any observation (None = not observed).
        reason: the operator's words, with the numbers.
    """

    condition: Condition
    verdict: Verdict
    layer: Layer
    matches: Callable[[Check], bool]
    reason: Callable[[Check], str]


# ============================================================================ reasons


def _stopped(c: Check) -> str:
    if c.running:
        state = "a container of ours still runs all the same (the check reports it and touches nothing)"
    elif c.obs.exists:
        state = f"its container is {c.obs.status or 'in an unknown state'}"
    else:
        state = "no container exists"
    return f"stop-qwen recorded the target stopped: {state}; a stopped target is never recovered"


def _no_container(c: Check) -> str:
    return (
        "no container exists for the target while its desired state is running (the last deploy started one "
        "and no stop-qwen recorded it stopped): it was removed outside the flows"
    )


def _crash_loop(c: Check) -> str:
    total = c.obs.restart_count_since_deploy
    grew = c.restarts_since_previous
    if c.obs.exists and c.obs.status == "restarting":
        what = f"docker is restarting the container (restarted {_times(total)} since the deploy{c.exit_words()})"
    elif grew is not None and grew >= c.limits.crash_loop_growth:
        what = (
            f"the container restarted {_times(grew)} since the previous check ({total} since the deploy): "
            "no run lived long enough to finish a 3-4 min load"
        )
    else:
        what = (
            f"the container restarted {_times(total)} since the deploy (limit {c.limits.crash_loop_restarts}) "
            "and is not serving now"
        )
    return (
        f"{what}: a crash loop; the same arguments fail the same way, so waiting out another load only hides it. "
        "Read the first failure's log (recover-vllm classifies it)"
    )


def _not_running(c: Check) -> str:
    status = c.obs.status or "in an unknown state"
    return f"the container is {status}{c.exit_words()} while its desired state is running: nothing serves"


def _health_error(c: Check) -> str:
    code = c.obs.health_status
    if code in (500, 503):
        return (
            f"/health answered {code}: the engine core is dead (vLLM 0.10.x answers 500 and then exits, 0.11+ "
            "answers 503)"
        )
    return f"/health answered HTTP {code}, not 200: the server on the port is not a healthy vLLM"


def _loading(c: Check) -> str:
    return (
        f"no HTTP answer {_secs(c.age_s or 0.0)} after the container started, within the startup budget of "
        f"{_secs(c.limits.startup_budget_s)}: vLLM accepts no connection while it loads (a warm start takes "
        "3-4 min); not judged dead before the budget runs out"
    )


def _no_answer(c: Check) -> str:
    age = c.age_s
    if not c.running:
        when = "and the container is not running"
    elif age is None:
        when = "and the container's start time is unknown, so it cannot be shown to be loading"
    else:
        when = (
            f"{_secs(age)} after the container started, past the startup budget of "
            f"{_secs(c.limits.startup_budget_s)} (a warm start takes 3-4 min)"
        )
    return f"no HTTP answer from /health {when}: the server is not serving"


def _models_missing(c: Check) -> str:
    return (
        f"/health answered {c.obs.health_status} but /v1/models does not list the served model: clients "
        "asking for it get 404 (a wrong served name, or a different server on the port)"
    )


def _wedged(c: Check) -> str:
    cur = c.obs.metrics
    assert cur is not None
    health = f"/health says {c.obs.health_status}" if c.obs.health_status is not None else "/health does not answer"
    return (
        f"requests running {_count(cur.requests_running or 0)}, waiting {_count(cur.requests_waiting or 0)}, "
        f"but generation_tokens_total stayed at {_count(cur.generation_tokens_total)} for {_secs(c.window_s or 0.0)}: "
        f"the engine is wedged while {health} (vllm issue 39863)"
    )


def _wrong_answer(c: Check) -> str:
    detail = f" ({c.obs.answer_detail})" if c.obs.answer_detail else ""
    took = f" after {_secs(c.obs.answer_latency_s)}" if c.obs.answer_latency_s is not None else ""
    return f"the smoke question 12*17 got no correct answer (204){took}{detail}: the server answers but does not work"


def _answer_too_slow(c: Check) -> str:
    return (
        f"the smoke question 12*17 was answered correctly but took {_secs(c.obs.answer_latency_s or 0.0)}, beyond "
        f"the budget of {_secs(c.limits.answer_budget_s)} for a few tokens (~1.5 s when idle): as good as no service"
    )


def _slow_answer(c: Check) -> str:
    return (
        f"the smoke answer took {_secs(c.obs.answer_latency_s or 0.0)}, more than {_secs(c.limits.answer_slow_s)} "
        "(~1.5 s when idle): a saturated batch or a long queue"
    )


def _slow_health(c: Check) -> str:
    return (
        f"/health took {_secs(c.obs.health_latency_s or 0.0)}, more than {_secs(c.limits.health_slow_s)}: "
        "the API server's event loop is starved"
    )


def _kv_cache_full(c: Check) -> str:
    usage = c.obs.metrics.kv_cache_usage if c.obs.metrics else None
    return (
        f"KV cache usage is {_pct(usage or 0.0)}, above {_pct(c.limits.kv_cache_full)}: new requests wait and "
        "running ones get preempted (lower max_num_seqs or the load, or raise max_model_len headroom)"
    )


def _preemptions(c: Check) -> str:
    window = f" in {_secs(c.window_s)}" if c.window_s is not None else ""
    return (
        f"the engine preempted {_count(c.preempted)} request(s) since the previous check{window}: the KV cache "
        "ran out and their work is redone"
    )


def _low_headroom(c: Check) -> str:
    mem = c.obs.memory
    assert mem is not None
    return (
        f"the host's MemAvailable is {mem.available_gib:.2f} of {mem.total_gib:.2f} GiB, below the floor of "
        f"{c.limits.headroom_floor_gib:.2f} GiB: on GB10 GPU and CPU share memory and a host out of memory can "
        "hang (vllm issue 46307)"
    )


def _restarted(c: Check) -> str:
    n = c.obs.restart_count_since_deploy
    return (
        f"the container restarted {_times(n)} since the deploy (docker's restart policy brought it back): "
        "it serves, but the earlier run died; its log is gone with the restart"
    )


def _recovered_spec(c: Check) -> str:
    return f"the server runs a recovered spec, not the requested one: {c.obs.degraded}"


def _healthy(c: Check) -> str:
    seen = [f"the container runs, /health answers {c.obs.health_status}"]
    if c.obs.models_listed:
        seen.append("/v1/models lists the served model")
    if c.obs.answer_ok:
        took = f" in {_secs(c.obs.answer_latency_s)}" if c.obs.answer_latency_s is not None else ""
        seen.append(f"12*17 -> 204{took}")
    if c.obs.metrics is not None:
        seen.append("no wedge since the previous check" if c.obs.previous is not None else "/metrics read")
    if c.obs.memory is not None:
        seen.append(f"MemAvailable {c.obs.memory.available_gib:.1f} GiB")
    unseen = [
        name
        for name, missing in (
            ("readiness", c.obs.models_listed is None),
            ("function", c.obs.answer_ok is None),
            ("progress", c.obs.metrics is None),
            ("host", c.obs.memory is None),
        )
        if missing
    ]
    tail = f" (not observed: {', '.join(unseen)})" if unseen else ""
    return ", ".join(seen) + f"; nothing observed is off{tail}"


# ============================================================================ predicates


def _crash_looping(c: Check) -> bool:
    if not c.obs.exists:
        return False
    if c.obs.status == "restarting":
        return True
    grew = c.restarts_since_previous
    if grew is not None and grew >= c.limits.crash_loop_growth:
        return True
    return c.obs.restart_count_since_deploy >= c.limits.crash_loop_restarts and not c.serving


def _answer_latency_over(c: Check, limit: float) -> bool:
    return c.obs.answer_ok is True and c.obs.answer_latency_s is not None and c.obs.answer_latency_s > limit


# ============================================================================ the table

_U, _D = Verdict.UNHEALTHY, Verdict.DEGRADED

#: The health rules, highest priority first (the module docstring says why this order).
RULES: tuple[HealthRule, ...] = (
    HealthRule(
        Condition.DESIRED_STOPPED, Verdict.STOPPED, Layer.DESIRED, lambda c: c.obs.desired == "stopped", _stopped
    ),
    HealthRule(Condition.NO_CONTAINER, _U, Layer.CONTAINER, lambda c: not c.obs.exists, _no_container),
    HealthRule(Condition.CRASH_LOOP, _U, Layer.CONTAINER, _crash_looping, _crash_loop),
    HealthRule(Condition.NOT_RUNNING, _U, Layer.CONTAINER, lambda c: c.obs.exists and not c.running, _not_running),
    HealthRule(
        Condition.HEALTH_ERROR,
        _U,
        Layer.LIVENESS,
        lambda c: c.obs.health_status is not None and c.obs.health_status != 200,
        _health_error,
    ),
    HealthRule(
        Condition.LOADING, Verdict.STARTING, Layer.LIVENESS, lambda c: c.no_answer and c.within_startup, _loading
    ),
    HealthRule(Condition.NO_ANSWER, _U, Layer.LIVENESS, lambda c: c.no_answer and not c.within_startup, _no_answer),
    HealthRule(Condition.MODELS_MISSING, _U, Layer.READINESS, lambda c: c.obs.models_listed is False, _models_missing),
    HealthRule(Condition.WEDGED, _U, Layer.PROGRESS, lambda c: c.wedged, _wedged),
    HealthRule(Condition.WRONG_ANSWER, _U, Layer.FUNCTION, lambda c: c.obs.answer_ok is False, _wrong_answer),
    HealthRule(
        Condition.ANSWER_TOO_SLOW,
        _U,
        Layer.FUNCTION,
        lambda c: _answer_latency_over(c, c.limits.answer_budget_s),
        _answer_too_slow,
    ),
    HealthRule(
        Condition.SLOW_ANSWER,
        _D,
        Layer.FUNCTION,
        lambda c: _answer_latency_over(c, c.limits.answer_slow_s),
        _slow_answer,
    ),
    HealthRule(
        Condition.SLOW_HEALTH,
        _D,
        Layer.LIVENESS,
        lambda c: c.serving and c.obs.health_latency_s is not None and c.obs.health_latency_s > c.limits.health_slow_s,
        _slow_health,
    ),
    HealthRule(Condition.KV_CACHE_FULL, _D, Layer.PROGRESS, lambda c: c.kv_full, _kv_cache_full),
    HealthRule(Condition.PREEMPTIONS, _D, Layer.PROGRESS, lambda c: c.preempted > 0, _preemptions),
    HealthRule(Condition.LOW_HEADROOM, _D, Layer.HOST, lambda c: c.low_headroom, _low_headroom),
    HealthRule(
        Condition.RESTARTED,
        _D,
        Layer.CONTAINER,
        lambda c: c.obs.exists and c.obs.restart_count_since_deploy > 0,
        _restarted,
    ),
    HealthRule(Condition.RECOVERED_SPEC, _D, Layer.DESIRED, lambda c: bool(c.obs.degraded), _recovered_spec),
    HealthRule(Condition.HEALTHY, Verdict.HEALTHY, Layer.FUNCTION, lambda c: True, _healthy),
)


def _check_rules(rules: Sequence[HealthRule]) -> None:
    """Fail at import, not in a check, when the table loses or doubles a condition or its catch-all."""
    conditions = [rule.condition for rule in rules]
    if sorted(conditions) != sorted(Condition):
        raise ValueError(f"RULES must name every Condition exactly once, got {conditions}")
    if rules[0].condition is not Condition.DESIRED_STOPPED:
        raise ValueError("desired_stopped must come first: a stopped target is never anything else")
    if rules[-1].condition is not Condition.HEALTHY or rules[-1].verdict is not Verdict.HEALTHY:
        raise ValueError("the catch-all rule (healthy) must come last")


_check_rules(RULES)


def rule_for(condition: Condition | str) -> HealthRule:
    """The rule of one condition."""
    condition = Condition(condition)
    return next(rule for rule in RULES if rule.condition is condition)


# ============================================================================ layers


class LayerResult(BaseModel):
    """One layer's own verdict, in words and numbers, for the status artifact."""

    name: Layer
    verdict: LayerVerdict
    detail: str
    numbers: dict[str, float] = Field(default_factory=dict)


def _numbers(**values: float | int | bool | None) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None}


def _desired_ok(c: Check) -> str:
    return "desired running" if c.obs.desired == "running" else "desired stopped (stop-qwen)"


def _container_ok(c: Check) -> str:
    age = f", started {_secs(c.age_s)} ago" if c.age_s is not None else ""
    return f"running{age}, no restart since the deploy"


def _container_facts(c: Check) -> str:
    if not c.obs.exists:
        return "no container"
    exit_words = "" if c.running else c.exit_words()
    return (
        f"{c.obs.status or 'unknown state'}, {c.obs.restart_count_since_deploy} restart(s) since the deploy{exit_words}"
    )


def _liveness_ok(c: Check) -> str:
    took = f" in {_secs(c.obs.health_latency_s)}" if c.obs.health_latency_s is not None else ""
    return f"/health {c.obs.health_status}{took}"


def _progress_ok(c: Check) -> str:
    m = c.obs.metrics
    assert m is not None
    parts = [f"running {_count(m.requests_running)}, waiting {_count(m.requests_waiting)}"]
    tokens = f"generation tokens {_count(m.generation_tokens_total)}"
    moved = c.delta("generation_tokens_total")
    if moved is not None and c.window_s is not None:
        tokens += f" (+{_count(moved)} in {_secs(c.window_s)})"
    parts.append(tokens)
    if m.kv_cache_usage is not None:
        parts.append(f"KV cache {_pct(m.kv_cache_usage)}")
    if c.obs.previous is None:
        parts.append("no previous snapshot: a wedge cannot be judged yet")
    return ", ".join(parts)


def _host_ok(c: Check) -> str:
    mem = c.obs.memory
    assert mem is not None
    return f"MemAvailable {mem.available_gib:.2f} of {mem.total_gib:.2f} GiB (floor {c.limits.headroom_floor_gib:.2f})"


@dataclass(frozen=True)
class LayerSpec:
    """How to show one layer: when it was not observed, what "ok" says, which numbers it carries."""

    layer: Layer
    #: why the layer was not observed (skipped), or None when it was.
    unobserved: Callable[[Check], str | None]
    ok_detail: Callable[[Check], str]
    numbers: Callable[[Check], dict[str, float]]
    #: the facts to show when the layer is not judged (desired stopped).
    facts: Callable[[Check], str] | None = None


#: The layers in display order: the operator's wish first, then down from the container to the host.
LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec(Layer.DESIRED, lambda c: None, _desired_ok, lambda c: {}),
    LayerSpec(
        Layer.CONTAINER,
        lambda c: None,
        _container_ok,
        lambda c: _numbers(
            restarts_since_deploy=c.obs.restart_count_since_deploy,
            restarts_since_previous=c.restarts_since_previous,
            exit_code=c.obs.exit_code,
            oom_killed=c.obs.oom_killed,
            age_s=c.age_s,
        ),
        facts=_container_facts,
    ),
    LayerSpec(
        Layer.LIVENESS,
        lambda c: None,
        _liveness_ok,
        lambda c: _numbers(
            health_status=c.obs.health_status,
            health_latency_s=c.obs.health_latency_s,
            age_s=c.age_s,
            startup_budget_s=c.limits.startup_budget_s,
        ),
        facts=lambda c: f"/health {c.obs.health_status}" if c.obs.health_status is not None else "no HTTP answer",
    ),
    LayerSpec(
        Layer.READINESS,
        lambda c: None if c.obs.models_listed is not None else "/v1/models not asked",
        lambda c: "/v1/models lists the served model",
        lambda c: _numbers(models_listed=c.obs.models_listed),
    ),
    LayerSpec(
        Layer.FUNCTION,
        lambda c: None if c.obs.answer_ok is not None else "smoke question not asked",
        lambda c: (
            f"12*17 -> 204 in {_secs(c.obs.answer_latency_s)}" if c.obs.answer_latency_s is not None else "12*17 -> 204"
        ),
        lambda c: _numbers(
            answer_ok=c.obs.answer_ok,
            answer_latency_s=c.obs.answer_latency_s,
            answer_slow_s=c.limits.answer_slow_s,
            answer_budget_s=c.limits.answer_budget_s,
        ),
    ),
    LayerSpec(
        Layer.PROGRESS,
        lambda c: None if c.obs.metrics is not None else "/metrics not read",
        _progress_ok,
        lambda c: _numbers(
            requests_running=c.obs.metrics.requests_running if c.obs.metrics else None,
            requests_waiting=c.obs.metrics.requests_waiting if c.obs.metrics else None,
            generation_tokens_total=c.obs.metrics.generation_tokens_total if c.obs.metrics else None,
            generation_tokens_delta=c.delta("generation_tokens_total"),
            window_s=c.window_s,
            kv_cache_usage=c.obs.metrics.kv_cache_usage if c.obs.metrics else None,
            preemptions_delta=c.delta("preemptions_total"),
        ),
    ),
    LayerSpec(
        Layer.HOST,
        lambda c: None if c.obs.memory is not None else "meminfo not read",
        _host_ok,
        lambda c: _numbers(
            available_gib=c.obs.memory.available_gib if c.obs.memory else None,
            total_gib=c.obs.memory.total_gib if c.obs.memory else None,
            floor_gib=c.limits.headroom_floor_gib,
        ),
    ),
)

_LAYER_VERDICT = {
    Verdict.UNHEALTHY: LayerVerdict.FAIL,
    Verdict.STARTING: LayerVerdict.WARN,
    Verdict.DEGRADED: LayerVerdict.WARN,
}


def _layer_result(spec: LayerSpec, check: Check, matched: Sequence[HealthRule]) -> LayerResult:
    numbers = spec.numbers(check)
    if check.obs.desired == "stopped":  # nothing is judged; the desired layer says why
        if spec.layer is Layer.DESIRED:
            return LayerResult(name=spec.layer, verdict=LayerVerdict.OK, detail=spec.ok_detail(check), numbers=numbers)
        facts = f": {spec.facts(check)}" if spec.facts else ""
        return LayerResult(
            name=spec.layer, verdict=LayerVerdict.SKIPPED, detail=f"not judged, desired stopped{facts}", numbers=numbers
        )
    mine = [r for r in matched if r.layer is spec.layer and r.verdict in _LAYER_VERDICT]
    if mine:
        verdict = (
            LayerVerdict.FAIL
            if any(_LAYER_VERDICT[r.verdict] is LayerVerdict.FAIL for r in mine)
            else LayerVerdict.WARN
        )
        return LayerResult(
            name=spec.layer, verdict=verdict, detail="; ".join(r.reason(check) for r in mine), numbers=numbers
        )
    why_not = spec.unobserved(check)
    if why_not is not None:
        return LayerResult(name=spec.layer, verdict=LayerVerdict.SKIPPED, detail=why_not, numbers=numbers)
    return LayerResult(name=spec.layer, verdict=LayerVerdict.OK, detail=spec.ok_detail(check), numbers=numbers)


# ============================================================================ the verdict


class HealthReport(BaseModel):
    """One check's answer: the verdict, who decided it and why, and every layer. JSON-able."""

    verdict: Verdict
    #: the deciding layer.
    layer: Layer
    #: what the deciding rule found.
    condition: Condition
    #: the operator's words, with the numbers.
    reason: str
    #: the reasons of the other rules that match with the same verdict (e.g. every degraded condition).
    also: list[str] = Field(default_factory=list)
    layers: list[LayerResult]
    #: the observation's ``now``.
    at: float

    def layer_rows(self) -> list[dict[str, str]]:
        """The layers as rows of a Prefect table artifact."""
        return [{"layer": r.name.value, "verdict": r.verdict.value, "detail": r.detail} for r in self.layers]

    def markdown(self) -> str:
        """The report for a markdown artifact: the verdict and reason, then one line per layer."""
        lines = [f"**{self.verdict.value}** ({self.layer.value}: `{self.condition.value}`): {self.reason}"]
        lines += [f"- also: {reason}" for reason in self.also]
        lines += ["", "| layer | verdict | detail |", "|---|---|---|"]
        lines += [f"| {r.name.value} | {r.verdict.value} | {r.detail.replace('|', '/')} |" for r in self.layers]
        return "\n".join(lines)


def evaluate(obs: Observation, thresholds: Thresholds = _DEFAULTS) -> HealthReport:
    """Judge one observation: the first matching rule of `RULES` decides; every layer is reported.

    Args:
        obs: what the flow observed.
        thresholds: where the lines are drawn (frozen, so the shared default is safe).

    Returns:
        The report. ``starting`` is never ``unhealthy``: a model within its startup budget is not
        judged dead; ``stopped`` (desired stopped) is never anything else.
    """
    check = Check(obs=obs, limits=thresholds)
    matched = [rule for rule in RULES if rule.matches(check)]
    decider = matched[0]  # the healthy rule always matches
    also = [r.reason(check) for r in matched[1:] if r.verdict is decider.verdict]
    return HealthReport(
        verdict=decider.verdict,
        layer=decider.layer,
        condition=decider.condition,
        reason=decider.reason(check),
        also=also,
        layers=[_layer_result(spec, check, matched) for spec in LAYERS],
        at=obs.now,
    )


# ============================================================================ history


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def history_row(report: HealthReport, checked_at: float) -> dict[str, str]:
    """One row of the history table artifact (every value a short string).

    Args:
        report: the check's report.
        checked_at: when the check ran (epoch seconds), shown in UTC.
    """
    return {
        "checked at": _when(checked_at),
        "verdict": report.verdict.value,
        "layer": report.layer.value,
        "condition": report.condition.value,
        "reason": report.reason,
        "layers": ", ".join(f"{r.name.value} {r.verdict.value}" for r in report.layers),
    }


def summarise_history(rows: Sequence[Mapping[str, str]]) -> str:
    """One line about a history table (oldest first): how many checks, the verdicts, the last problem.

    E.g. "12 checks from 2025-01-01 10:00:00 UTC to 2025-01-01 11:00:00 UTC: 10 healthy, 2 unhealthy;
    healthy for the last 3; last unhealthy at ...: <reason>".
    """
    if not rows:
        return "no checks yet"
    counts = Counter(row["verdict"] for row in rows)
    order = [v.value for v in Verdict]
    tally = ", ".join(f"{counts[v]} {v}" for v in order if counts[v])
    span = f"{rows[0]['checked at']} to {rows[-1]['checked at']}" if len(rows) > 1 else rows[0]["checked at"]
    current = rows[-1]["verdict"]
    streak = 0
    for row in reversed(rows):
        if row["verdict"] != current:
            break
        streak += 1
    parts = [f"{len(rows)} check{'s' if len(rows) != 1 else ''} ({span}): {tally}", f"{current} for the last {streak}"]
    problem = next((row for row in reversed(rows) if row["verdict"] == Verdict.UNHEALTHY.value), None)
    if problem is not None:
        parts.append(f"last unhealthy at {problem['checked at']}: {problem['reason']}")
    return "; ".join(parts)


# ============================================================================ recovery cap


def needs_operator(
    recent: Iterable[tuple[float, bool]],
    now: float,
    limit: int = 3,
    window_s: float = 3600.0,
) -> bool:
    """Whether recover-vllm should stop recovering and call a person (``vllm.service.needs-operator``).

    Recovery that keeps failing does harm on a Spark: every attempt is a 3-4 min load that pushes
    unified memory again (which can hang the host, vllm issue 46307), and a loop hides the first
    failure's log (the CrashLoopBackOff pattern). So after ``limit`` recoveries within ``window_s``
    that did not end healthy, automation stops and a person acts. Recoveries that ended healthy do
    not count, and neither do failures older than the window: a server that fails once a day is
    recovered every time.

    Args:
        recent: the target's recoveries as ``(at, ended_healthy)``: when it ran (epoch seconds) and
            whether the server was healthy afterwards.
        now: the flow's clock (epoch seconds).
        limit: this many failed recoveries within the window call for an operator (>= 1).
        window_s: how far back they count (seconds).

    Returns:
        True when ``limit`` or more recoveries within the last ``window_s`` did not end healthy.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    failed = sum(1 for at, ended_healthy in recent if not ended_healthy and now - at <= window_s)
    return failed >= limit
