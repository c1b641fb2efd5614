"""The health check's layers: what each shows in the status artifact, judged or not.

A check observes a target in layers, from the operator's wish down to the host (`LAYERS`, in
display order), and shows every layer, not only the deciding one. A layer's own verdict comes from
the rules of `tasks.health.verdict` that matched it (`Finding`): it fails when one of them says
unhealthy, warns when one says starting or degraded, is ok otherwise, and is skipped when the flow
did not observe it. When the operator stopped the target nothing is judged: every layer but the
desired one is skipped, with the facts seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, Field

from tasks.health.observation import Check
from tasks.health.wording import count, pct, secs
from tasks.inference import ARITHMETIC, EXPECTED

__all__ = ["LAYERS", "Finding", "Layer", "LayerResult", "LayerSpec", "LayerVerdict", "layer_results"]


class Layer(StrEnum):
    """What was observed, from the operator's wish down to the host (`LAYERS` gives the display order)."""

    DESIRED = "desired"
    CONTAINER = "container"
    LIVENESS = "liveness"
    READINESS = "readiness"
    FUNCTION = "function"
    PROGRESS = "progress"
    SERVICE = "service"
    HOST = "host"


class LayerVerdict(StrEnum):
    """One layer's own verdict."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


class LayerResult(BaseModel):
    """One layer's own verdict, in words and numbers, for the status artifact."""

    name: Layer
    verdict: LayerVerdict
    detail: str
    numbers: dict[str, float] = Field(default_factory=dict)


def _numbers(**values: float | int | bool | None) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None}


def _desired_ok(c: Check) -> str:
    return {"running": "desired running", "stopped": "desired stopped (stop-qwen)"}.get(
        c.obs.desired, "never deployed (no desired state)"
    )


def _container_ok(c: Check) -> str:
    age = f", started {secs(c.age_s)} ago" if c.age_s is not None else ""
    return f"running{age}, no restart since the deploy"


def _container_facts(c: Check) -> str:
    if not c.obs.exists:
        return "no container"
    exit_words = "" if c.running else c.exit_words()
    return (
        f"{c.obs.status or 'unknown state'}, {c.obs.restart_count_since_deploy} restart(s) since the deploy{exit_words}"
    )


def _liveness_ok(c: Check) -> str:
    took = f" in {secs(c.obs.health_latency_s)}" if c.obs.health_latency_s is not None else ""
    return f"/health {c.obs.health_status}{took}"


def _progress_ok(c: Check) -> str:
    m = c.obs.metrics
    assert m is not None
    parts = [f"running {count(m.requests_running)}, waiting {count(m.requests_waiting)}"]
    tokens = f"generation tokens {count(m.generation_tokens_total)}"
    moved = c.delta("generation_tokens_total")
    if moved is not None and c.window_s is not None:
        tokens += f" (+{count(moved)} in {secs(c.window_s)})"
    parts.append(tokens)
    if m.kv_cache_usage is not None:
        parts.append(f"KV cache {pct(m.kv_cache_usage)}")
    if c.obs.previous is None:
        parts.append("no previous snapshot: a wedge cannot be judged yet")
    return ", ".join(parts)


def _service_ok(c: Check) -> str:
    lv = c.levels
    parts = []
    if lv.ttft_p99_s is not None or lv.itl_p99_s is not None:
        p99s = [
            f"p99 {name} {secs(v)}" for name, v in (("TTFT", lv.ttft_p99_s), ("ITL", lv.itl_p99_s)) if v is not None
        ]
        parts.append(f"{' and '.join(p99s)} over {count(lv.requests)} requests in {secs(lv.window_s or 0.0)}")
    if lv.error_ratio is not None:
        parts.append(f"{pct(lv.error_ratio)} of {count(lv.finished)} finished requests aborted or failed")
    if lv.preemptions_per_s is not None:
        parts.append(f"{lv.preemptions_per_s:.2f} preemptions/s")
    if lv.kv_cache_usage is not None:
        parts.append(f"KV cache {pct(lv.kv_cache_usage)}")
    if lv.requests_waiting is not None:
        parts.append(f"waiting {count(lv.requests_waiting)}")
    return ", ".join(parts) or "nothing judged"


def _service_note(c: Check) -> str | None:
    """What the service layer could not judge (a metric the server does not export, no window, little traffic)."""
    return f"not judged: {'; '.join(c.levels.not_judged)}" if c.levels.not_judged else None


def _host_ok(c: Check) -> str:
    mem = c.obs.memory
    assert mem is not None
    return f"MemAvailable {mem.available_gib:.2f} of {mem.total_gib:.2f} GiB (floor {c.obs.memory_floor_gib:.2f})"


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
    #: what the layer could not judge, appended to its detail whenever it is judged (None: nothing to add).
    note: Callable[[Check], str | None] | None = None


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
            f"{ARITHMETIC} -> {EXPECTED} in {secs(c.obs.answer_latency_s)}"
            if c.obs.answer_latency_s is not None
            else f"{ARITHMETIC} -> {EXPECTED}"
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
            stalled_s=c.obs.stalled_s,
            kv_cache_usage=c.obs.metrics.kv_cache_usage if c.obs.metrics else None,
        ),
    ),
    LayerSpec(
        Layer.SERVICE,
        lambda c: None if c.obs.service is not None else "/metrics not read before the smoke question",
        _service_ok,
        lambda c: _numbers(
            window_s=c.levels.window_s,
            window_requests=c.levels.requests,
            ttft_p99_s=c.levels.ttft_p99_s,
            itl_p99_s=c.levels.itl_p99_s,
            error_ratio=c.levels.error_ratio,
            preemptions_per_s=c.levels.preemptions_per_s,
            kv_cache_usage=c.levels.kv_cache_usage,
            requests_waiting=c.levels.requests_waiting,
        ),
        note=_service_note,
    ),
    LayerSpec(
        Layer.HOST,
        lambda c: None if c.obs.memory is not None else "meminfo not read",
        _host_ok,
        lambda c: _numbers(
            available_gib=c.obs.memory.available_gib if c.obs.memory else None,
            floor_gib=c.obs.memory_floor_gib,
        ),
    ),
)


class Finding(NamedTuple):
    """A rule that matched, as its layer shows it: FAIL (unhealthy) or WARN (starting, degraded)."""

    layer: Layer
    verdict: LayerVerdict
    reason: str


def layer_results(check: Check, findings: Sequence[Finding]) -> list[LayerResult]:
    """Every layer of `LAYERS`, in order, with its own verdict from the findings that name it.

    Args:
        check: the observation under its thresholds.
        findings: the matched rules that fail or warn a layer, in the table's order.
    """
    return [_layer_result(spec, check, findings) for spec in LAYERS]


def _layer_result(spec: LayerSpec, check: Check, findings: Sequence[Finding]) -> LayerResult:
    numbers = spec.numbers(check)
    if check.obs.desired != "running":  # nothing is judged; the desired layer says why
        if spec.layer is Layer.DESIRED:
            return LayerResult(name=spec.layer, verdict=LayerVerdict.OK, detail=spec.ok_detail(check), numbers=numbers)
        facts = f": {spec.facts(check)}" if spec.facts else ""
        return LayerResult(
            name=spec.layer,
            verdict=LayerVerdict.SKIPPED,
            detail=f"not judged, {_desired_ok(check)}{facts}",
            numbers=numbers,
        )
    mine = [f for f in findings if f.layer is spec.layer]
    note = spec.note(check) if spec.note else None
    if mine:
        verdict = LayerVerdict.FAIL if any(f.verdict is LayerVerdict.FAIL for f in mine) else LayerVerdict.WARN
        detail = "; ".join([*(f.reason for f in mine), *([note] if note else [])])
        return LayerResult(name=spec.layer, verdict=verdict, detail=detail, numbers=numbers)
    why_not = spec.unobserved(check)
    if why_not is not None:
        return LayerResult(name=spec.layer, verdict=LayerVerdict.SKIPPED, detail=why_not, numbers=numbers)
    detail = spec.ok_detail(check) + (f"; {note}" if note else "")
    return LayerResult(name=spec.layer, verdict=LayerVerdict.OK, detail=detail, numbers=numbers)
