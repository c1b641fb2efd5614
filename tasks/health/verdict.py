"""The health check's judgement: one observation -> a verdict, the deciding layer and the reason.

Why layers, and why a table
---------------------------
A single probe lies. vLLM's ``/health`` keeps answering 200 while the engine is deadlocked (vllm
issue 39863: a GB10 user sent traffic to a dead backend for 85 minutes), and a liveness probe that
treats "no answer" as dead kills a model that is still loading (kserve 5062: vLLM does not accept
connections for the 3-4 minutes a warm start takes). So the `health-check` flow observes the
target in layers (the container, ``/health``, ``/v1/models``, the 12*17 smoke question,
``/metrics`` against the previous check, the host's memory), each with its own verdict and
numbers (`tasks.health.layers`), and `evaluate` turns one `Observation` into a `HealthReport`. The
flow only observes and reports; it never restarts anything (recovery automations react to its
``unhealthy`` event).

`RULES` is the whole judgement, as `tasks.vllm.failures.RULES` is for failed starts: the first
`HealthRule` whose ``matches`` is true decides the verdict, the deciding layer and the reason; the
others that match with the same verdict are reported too (``also``). The table's order is the
priority, and each rule's ``why`` says why it stands where it does: what the operator asked for
first, then the container, liveness, readiness, progress and function (the first layer that fails
is the cause), then the degraded conditions, most pressing first, and ``healthy`` last. The
verdict values are the names of the health events (`tasks.events.ServiceEvent`: healthy,
degraded, starting, unhealthy); ``stopped`` is stop-qwen's own event, not re-emitted.

Adding a condition: a member of `Condition` and one `HealthRule` in `RULES` at its place, with its
``why``. The table is checked at import (each condition once, desired_stopped first, healthy last).

No I/O, no clock, no Prefect: the flow reads docker, HTTP and meminfo, passes ``now``, and stores
the `tasks.vllm.metrics.MetricsSnapshot` (JSON) for the next check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field

from tasks.health.layers import Finding, Layer, LayerResult, LayerVerdict, layer_results
from tasks.health.observation import Check, Observation, Thresholds
from tasks.health.wording import count, pct, secs, times
from tasks.inference import ARITHMETIC, EXPECTED
from tasks.vllm.versions import DEAD_ENGINE_HEALTH

# recover-vllm (flows/recover.py) imports the recovery cap from here until it imports tasks.recovery.cap.

__all__ = ["RULES", "SERVICE_LEVEL_CONDITIONS", "Condition", "HealthReport", "HealthRule", "Verdict", "evaluate"]


class Verdict(StrEnum):
    """The check's verdict; the values are the health events' names (``vllm.service.<verdict>``)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    STARTING = "starting"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"


class Condition(StrEnum):
    """What the deciding rule found (`RULES` gives the priority order)."""

    DESIRED_STOPPED = "desired_stopped"
    NEVER_DEPLOYED = "never_deployed"
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
    TTFT_P99 = "ttft_p99"
    ITL_P99 = "itl_p99"
    ERROR_RATIO = "error_ratio"
    QUEUE_LONG = "queue_long"
    KV_CACHE_FULL = "kv_cache_full"
    PREEMPTION_RATE = "preemption_rate"
    LOW_HEADROOM = "low_headroom"
    RESTARTED = "restarted"
    RECOVERED_SPEC = "recovered_spec"
    HEALTHY = "healthy"


@dataclass(frozen=True)
class HealthRule:
    """One condition: its verdict, the layer that shows it, when it holds, how to say it, and why it stands here.

    Attributes:
        condition: what the rule found (`HealthReport.condition`).
        verdict: the check's verdict when this rule decides.
        layer: the layer the condition belongs to (and that decides when the rule does).
        matches: true when the condition holds; must accept any observation (None = not observed).
        reason: the operator's words, with the numbers.
        why: why the rule stands at its place in `RULES` (the priority), for the next maintainer.
        held_for: for a condition that must hold a while (Prometheus's ``for:``): how long, from the
            thresholds; the rule fires once ``matches`` was true at every check for that long
            (`Check.held_s`; the streak is `HealthReport.streaks`). None: it fires at once.
    """

    condition: Condition
    verdict: Verdict
    layer: Layer
    matches: Callable[[Check], bool]
    reason: Callable[[Check], str]
    why: str
    held_for: Callable[[Thresholds], float] | None = None


# ============================================================================ reasons


def _never_deployed(c: Check) -> str:
    found = "; a container of ours runs all the same (the check touches nothing)" if c.running else ""
    return f"never deployed: no deploy-qwen or recover-vllm has served on this target, so none is wanted{found}"


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
        what = f"docker is restarting the container (restarted {times(total)} since the deploy{c.exit_words()})"
    elif grew is not None and grew >= c.limits.crash_loop_growth:
        what = (
            f"the container restarted {times(grew)} since the previous check ({total} since the deploy): "
            "no run lived long enough to finish a 3-4 min load"
        )
    else:
        what = (
            f"the container restarted {times(total)} since the deploy (limit {c.limits.crash_loop_restarts}) "
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
    if code in {variant.value for variant in DEAD_ENGINE_HEALTH}:
        by_version = ", ".join(f"vLLM {v.versions} answers {v.value}" for v in DEAD_ENGINE_HEALTH)
        return f"/health answered {code}: the engine core is dead ({by_version} on a dead engine)"
    return f"/health answered HTTP {code}, not 200: the server on the port is not a healthy vLLM"


def _loading(c: Check) -> str:
    return (
        f"no HTTP answer {secs(c.age_s or 0.0)} after the container started, within the startup budget of "
        f"{secs(c.limits.startup_budget_s)}: vLLM accepts no connection while it loads (a warm start takes "
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
            f"{secs(age)} after the container started, past the startup budget of "
            f"{secs(c.limits.startup_budget_s)} (a warm start takes 3-4 min)"
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
    if c.obs.stalled_s is not None:
        in_flight = max(1, cur.in_flight or 0)  # the check's own at least (a frozen gauge may say 0)
        return (
            f"no token for {secs(c.obs.stalled_s)}, generation_tokens_total unchanged at "
            f"{count(cur.generation_tokens_total)} with {count(in_flight)} request(s) in flight (the check's own "
            f"{ARITHMETIC} included): the engine is wedged while {health} (vllm issue 39863)"
        )
    return (
        f"requests running {count(cur.requests_running or 0)}, waiting {count(cur.requests_waiting or 0)}, "
        f"but generation_tokens_total stayed at {count(cur.generation_tokens_total)} for {secs(c.window_s or 0.0)}: "
        f"the engine is wedged while {health} (vllm issue 39863)"
    )


def _wrong_answer(c: Check) -> str:
    detail = f" ({c.obs.answer_detail})" if c.obs.answer_detail else ""
    took = f" after {secs(c.obs.answer_latency_s)}" if c.obs.answer_latency_s is not None else ""
    return (
        f"the smoke question {ARITHMETIC} got no correct answer ({EXPECTED}){took}{detail}: the server answers "
        "but does not work"
    )


def _answer_too_slow(c: Check) -> str:
    return (
        f"the smoke question {ARITHMETIC} was answered correctly but took {secs(c.obs.answer_latency_s or 0.0)}, "
        f"beyond the budget of {secs(c.limits.answer_budget_s)} for a few tokens (~1.5 s when idle): as good as no "
        "service"
    )


def _slow_answer(c: Check) -> str:
    return (
        f"the smoke answer took {secs(c.obs.answer_latency_s or 0.0)}, more than {secs(c.limits.answer_slow_s)} "
        "(~1.5 s when idle): a saturated batch or a long queue"
    )


def _slow_health(c: Check) -> str:
    return (
        f"/health took {secs(c.obs.health_latency_s or 0.0)}, more than {secs(c.limits.health_slow_s)}: "
        "the API server's event loop is starved"
    )


def _window(c: Check) -> str:
    return f"the last {secs(c.levels.window_s or 0.0)} (between this check and the previous one)"


def _ttft_p99(c: Check) -> str:
    return (
        f"p99 time to first token was {secs(c.levels.ttft_p99_s or 0.0)} over the {count(c.levels.requests)} "
        f"requests of {_window(c)}, above {secs(c.limits.ttft_p99_s)}: users wait before any text (a long queue, "
        "long prompts or a saturated prefill)"
    )


def _itl_p99(c: Check) -> str:
    return (
        f"p99 inter-token latency was {secs(c.levels.itl_p99_s or 0.0)} over the {count(c.levels.requests)} "
        f"requests of {_window(c)}, above {secs(c.limits.itl_p99_s)}: streams stall between tokens (a batch too "
        "large for the memory bandwidth, or preemptions)"
    )


def _error_ratio(c: Check) -> str:
    return (
        f"{pct(c.levels.error_ratio or 0.0)} of the {count(c.levels.finished)} requests finished in {_window(c)} "
        f"were aborted or failed by the engine, above {pct(c.limits.error_ratio)}: read the server's log"
    )


def _queue_long(c: Check) -> str:
    return (
        f"{count(c.levels.requests_waiting)} requests waiting, above {count(c.limits.waiting_requests)}, at every "
        f"check for {secs(c.held_s(Condition.QUEUE_LONG))}: the batch (max_num_seqs) or the KV cache is full; "
        "lower the load or add a server"
    )


def _kv_cache_full(c: Check) -> str:
    return (
        f"KV cache usage is {pct(c.levels.kv_cache_usage or 0.0)}, above {pct(c.limits.kv_cache_full)} at every "
        f"check for {secs(c.held_s(Condition.KV_CACHE_FULL))}: new requests wait and running ones get preempted "
        "(lower max_num_seqs or the load)"
    )


def _preemption_rate(c: Check) -> str:
    return (
        f"the engine preempted {count(c.levels.preemptions)} request(s) in {_window(c)}, "
        f"{c.levels.preemptions_per_s or 0.0:.2f}/s, above {c.limits.preemptions_per_s:g}/s: the KV cache runs out "
        "and their work is redone"
    )


def _over(value: float | int | None, limit: float) -> bool:
    """A service-level figure above its limit; a figure not judged (None) is never a breach."""
    return value is not None and value > limit


def _low_headroom(c: Check) -> str:
    mem = c.obs.memory
    assert mem is not None
    return (
        f"the host's MemAvailable is {mem.available_gib:.2f} of {mem.total_gib:.2f} GiB, below the floor of "
        f"{c.obs.memory_floor_gib:.2f} GiB (the target's host_memory_floor_gib): on GB10 GPU and CPU share "
        "memory and a host out of memory can hang (vllm issue 46307)"
    )


def _restarted(c: Check) -> str:
    n = c.obs.restart_count_since_deploy
    return (
        f"the container restarted {times(n)} since the deploy (docker's restart policy brought it back): "
        "it serves, but the earlier run died; its log is gone with the restart"
    )


def _recovered_spec(c: Check) -> str:
    return f"the server runs a recovered spec, not the requested one: {c.obs.degraded}"


def _healthy(c: Check) -> str:
    seen = [f"the container runs, /health answers {c.obs.health_status}"]
    if c.obs.models_listed:
        seen.append("/v1/models lists the served model")
    if c.obs.answer_ok:
        took = f" in {secs(c.obs.answer_latency_s)}" if c.obs.answer_latency_s is not None else ""
        seen.append(f"{ARITHMETIC} -> {EXPECTED}{took}")
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

#: The health rules, highest priority first; each ``why`` says why it stands where it does.
RULES: tuple[HealthRule, ...] = (
    HealthRule(
        Condition.DESIRED_STOPPED,
        Verdict.STOPPED,
        Layer.DESIRED,
        lambda c: c.obs.desired == "stopped",
        _stopped,
        why="what the operator asked for outranks everything the container does: a target stop-qwen recorded "
        "stopped is never anything else, so no automation ever 'recovers' a target someone stopped",
    ),
    HealthRule(
        Condition.NEVER_DEPLOYED,
        Verdict.STOPPED,
        Layer.DESIRED,
        lambda c: c.obs.desired == "never-deployed",
        _never_deployed,
        why="a target no deploy ever served on has no desired state: nothing is missing, so nothing is unhealthy "
        "and no automation recovers a server (or a machine) that was never there",
    ),
    HealthRule(
        Condition.NO_CONTAINER,
        _U,
        Layer.CONTAINER,
        lambda c: not c.obs.exists,
        _no_container,
        why="the container comes before every layer above it: nothing can serve if it is not there",
    ),
    HealthRule(
        Condition.CRASH_LOOP,
        _U,
        Layer.CONTAINER,
        _crash_looping,
        _crash_loop,
        why="before not_running, since a looping container is often caught between runs, and before loading, "
        "since waiting out one more load only hides the loop (Thresholds.crash_loop_restarts, crash_loop_growth)",
    ),
    HealthRule(
        Condition.NOT_RUNNING,
        _U,
        Layer.CONTAINER,
        lambda c: c.obs.exists and not c.running,
        _not_running,
        why="exited, dead, paused or created: nothing above the container can serve; docker's exit code and "
        "OOMKilled say why",
    ),
    HealthRule(
        Condition.HEALTH_ERROR,
        _U,
        Layer.LIVENESS,
        lambda c: c.obs.health_status is not None and c.obs.health_status != 200,
        _health_error,
        why=(
            "liveness next: /health answered, but not 200 (500 or 503 by version, DEAD_ENGINE_HEALTH): the engine "
            "core is dead, whatever the later layers say"
        ),
    ),
    HealthRule(
        Condition.LOADING,
        Verdict.STARTING,
        Layer.LIVENESS,
        lambda c: c.no_answer and c.within_startup,
        _loading,
        why="no HTTP answer within Thresholds.startup_budget_s of the start is vLLM loading; before every later "
        "rule, so a loading model is never judged unhealthy",
    ),
    HealthRule(
        Condition.NO_ANSWER,
        _U,
        Layer.LIVENESS,
        lambda c: c.no_answer and not c.within_startup,
        _no_answer,
        why="no HTTP answer past the startup budget (or with no start time to show it is loading): not serving",
    ),
    HealthRule(
        Condition.MODELS_MISSING,
        _U,
        Layer.READINESS,
        lambda c: c.obs.models_listed is False,
        _models_missing,
        why="readiness after liveness: the process lives, but clients asking for the served model get 404",
    ),
    HealthRule(
        Condition.WEDGED,
        _U,
        Layer.PROGRESS,
        lambda c: c.wedged,
        _wedged,
        why="the engine behind a /health that may lie (vllm issue 39863): the check's own question got no token "
        "for Thresholds.first_token_stall_s while generation_tokens_total stood still, or requests stayed in "
        "flight without a token across Thresholds.wedge_window_s between checks; before the function rules: a "
        "wedged engine also fails the smoke question, and the wedge is the root cause",
    ),
    HealthRule(
        Condition.WRONG_ANSWER,
        _U,
        Layer.FUNCTION,
        lambda c: c.obs.answer_ok is False,
        _wrong_answer,
        why="the function layer: the smoke question not answered correctly (or not at all): the server answers but "
        "does not work",
    ),
    HealthRule(
        Condition.ANSWER_TOO_SLOW,
        _U,
        Layer.FUNCTION,
        lambda c: _answer_latency_over(c, c.limits.answer_budget_s),
        _answer_too_slow,
        why="answered beyond Thresholds.answer_budget_s: a minute for a few tokens is as good as no service; the "
        "last unhealthy rule",
    ),
    HealthRule(
        Condition.TTFT_P99,
        _D,
        Layer.SERVICE,
        lambda c: _over(c.levels.ttft_p99_s, c.limits.ttft_p99_s),
        _ttft_p99,
        why="the degraded rules, most pressing first; the service levels first of them, what users feel, measured "
        "on their own requests (not one smoke sample): p99 TTFT over the window between checks "
        "(Thresholds.ttft_p99_s, vLLM's VllmTTFTP99TooHigh, llm-d's LLMDExtremeTTFT); no hold: "
        "the window, minutes long, is already the span the sources' rate[5m] and for: 2m cover",
    ),
    HealthRule(
        Condition.ITL_P99,
        _D,
        Layer.SERVICE,
        lambda c: _over(c.levels.itl_p99_s, c.limits.itl_p99_s),
        _itl_p99,
        why="users feel it too: streams stall (Thresholds.itl_p99_s, vLLM's VllmITLP99TooHigh); after TTFT, "
        "which comes first in a request",
    ),
    HealthRule(
        Condition.ERROR_RATIO,
        _D,
        Layer.SERVICE,
        lambda c: _over(c.levels.error_ratio, c.limits.error_ratio),
        _error_ratio,
        why="requests that end without an answer (Thresholds.error_ratio, llm-d's LLMDHighErrorRate); judged "
        "only where vLLM exports the abort or error label set of request_success_total",
    ),
    HealthRule(
        Condition.QUEUE_LONG,
        _D,
        Layer.SERVICE,
        lambda c: _over(c.levels.requests_waiting, c.limits.waiting_requests),
        _queue_long,
        why="about to hurt, held a while (vLLM's VllmHighQueueDepth: for 3m): a queue that stays long is the "
        "cause the latency rules above show next",
        held_for=lambda t: t.waiting_requests_for_s,
    ),
    HealthRule(
        Condition.KV_CACHE_FULL,
        _D,
        Layer.SERVICE,
        lambda c: _over(c.levels.kv_cache_usage, c.limits.kv_cache_full),
        _kv_cache_full,
        why="about to hurt, held a while (vLLM's VllmKVCacheNearFull: for 5m): new requests wait and running ones "
        "get preempted; a single full sample is a busy moment, not a breach",
        held_for=lambda t: t.kv_cache_full_for_s,
    ),
    HealthRule(
        Condition.PREEMPTION_RATE,
        _D,
        Layer.SERVICE,
        lambda c: _over(c.levels.preemptions_per_s, c.limits.preemptions_per_s),
        _preemption_rate,
        why="about to hurt: work redone since the KV cache ran out, as a rate over the window (vLLM's "
        "VllmPreemptionSpike, llm-d's LLMDHighPreemptions: > 1/s); a few preemptions are the scheduler working",
    ),
    HealthRule(
        Condition.SLOW_ANSWER,
        _D,
        Layer.FUNCTION,
        lambda c: _answer_latency_over(c, c.limits.answer_slow_s),
        _slow_answer,
        why="after the service levels: one smoke answer is one sample, and when every request is slow (a long "
        "queue, slow first tokens) the service-level rule that says why must decide, or no incident opens",
    ),
    HealthRule(
        Condition.SLOW_HEALTH,
        _D,
        Layer.LIVENESS,
        lambda c: c.serving and c.obs.health_latency_s is not None and c.obs.health_latency_s > c.limits.health_slow_s,
        _slow_health,
        why="users feel it now too: a starved event loop delays every request",
    ),
    HealthRule(
        Condition.LOW_HEADROOM,
        _D,
        Layer.HOST,
        lambda c: c.low_headroom,
        _low_headroom,
        why="about to hurt: MemAvailable below the target's host_memory_floor_gib; on GB10 a host out of memory "
        "can hang (vllm issue 46307)",
    ),
    HealthRule(
        Condition.RESTARTED,
        _D,
        Layer.CONTAINER,
        lambda c: c.obs.exists and c.obs.restart_count_since_deploy > 0,
        _restarted,
        why="history: it serves, but an earlier run died since the deploy",
    ),
    HealthRule(
        Condition.RECOVERED_SPEC,
        _D,
        Layer.DESIRED,
        lambda c: bool(c.obs.degraded),
        _recovered_spec,
        why="history: the last deploy or recovery runs a lowered spec, not the requested one",
    ),
    HealthRule(
        Condition.HEALTHY,
        Verdict.HEALTHY,
        Layer.FUNCTION,
        lambda c: True,
        _healthy,
        why="the catch-all, last: nothing observed is off",
    ),
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

#: The conditions that are service-level breaches (the figures users get, from /metrics between checks):
#: a breach is verdict degraded with one of these as the condition (the health event's payload carries it).
SERVICE_LEVEL_CONDITIONS: frozenset[Condition] = frozenset(
    rule.condition for rule in RULES if rule.layer is Layer.SERVICE
)
if any(rule.verdict is not Verdict.DEGRADED for rule in RULES if rule.condition in SERVICE_LEVEL_CONDITIONS):
    raise ValueError("a service-level rule's verdict is degraded: it breaches a service level, nothing is down")


# ============================================================================ the verdict

#: How a matched rule's verdict shows on its layer (healthy and stopped leave the layer ok).
_LAYER_VERDICT = {
    Verdict.UNHEALTHY: LayerVerdict.FAIL,
    Verdict.STARTING: LayerVerdict.WARN,
    Verdict.DEGRADED: LayerVerdict.WARN,
}

#: The default thresholds (frozen, so sharing one is safe).
_DEFAULTS = Thresholds()


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
    #: the vLLM the server runs (``GET /version``, else the last healthy record's); None: unknown.
    vllm_version: str | None = None
    #: since when (epoch seconds) each condition with a hold time (`HealthRule.held_for`) has held at every
    #: check, this one included; the flow stores it for the next check (`Observation.held_since`).
    streaks: dict[str, float] = Field(default_factory=dict)

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

    A rule with a hold time (`HealthRule.held_for`) fires only once its condition has held at every
    check for that long: ``obs.held_since`` is the previous check's `HealthReport.streaks`, and a check
    without the condition (or that could not judge it) ends the streak.

    Returns:
        The report. ``starting`` is never ``unhealthy``: a model within its startup budget is not
        judged dead; ``stopped`` (desired stopped) is never anything else.
    """
    check = Check(obs=obs, limits=thresholds)
    holding = [rule for rule in RULES if rule.matches(check)]
    matched = [r for r in holding if r.held_for is None or check.held_s(r.condition) >= r.held_for(thresholds)]
    decider = matched[0]  # the healthy rule always matches
    reasons = {rule.condition: rule.reason(check) for rule in matched}
    findings = [
        Finding(rule.layer, _LAYER_VERDICT[rule.verdict], reasons[rule.condition])
        for rule in matched
        if rule.verdict in _LAYER_VERDICT
    ]
    return HealthReport(
        verdict=decider.verdict,
        layer=decider.layer,
        condition=decider.condition,
        reason=reasons[decider.condition],
        also=[reasons[r.condition] for r in matched[1:] if r.verdict is decider.verdict],
        layers=layer_results(check, findings),
        at=obs.now,
        streaks={r.condition.value: obs.now - check.held_s(r.condition) for r in holding if r.held_for is not None},
    )
