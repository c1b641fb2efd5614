"""Where the health check draws its lines: `Thresholds`, the one definition of every limit.

Its own module, with nothing but pydantic, because the operator's block (blocks/health_limits.py
`HealthLimits`) holds it: the block is saved and edited in the UI, and a flow parameter overrides its
fields for one run (`Thresholds.overridden`).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Thresholds"]


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
    first_token_stall_s: float = Field(
        8.0,
        gt=0,
        description=(
            "no token of the smoke answer for this long -> /metrics is read, and generation_tokens_total "
            "unchanged since the read just before the question (the check's own request in flight) -> wedged "
            "(vllm issue 39863), without waiting out answer_budget_s: a decode step takes well under a second "
            "and the 12*17 prompt's prefill milliseconds (V1 schedules it beside other prefills in chunks), and a "
            "busy server keeps generating tokens for its other requests (then the check waits on, up to "
            "answer_budget_s). 8 s keeps a wedge's message within one check interval plus 10 s (issue 18's goal: "
            "the check then ends ~9 s after it starts). One prompt whose prefill alone "
            "outlasts it (tens of thousands of tokens on a Spark, while nothing else decodes) looks the same: "
            "recover-vllm asks again before it restarts anything. Judged at answer_budget_s when that is shorter"
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

    def overridden(self, changes: Mapping[str, float] | None) -> Thresholds:
        """These limits with some fields changed (a flow run's ``limits`` parameter), validated again.

        Raises:
            ValueError: a key that is no limit (naming the valid ones), or a value out of its range.
        """
        if not changes:
            return self
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ValueError(
                f"unknown health limit(s) {', '.join(unknown)}: the limits are {', '.join(type(self).model_fields)}"
            )
        return type(self).model_validate({**self.model_dump(), **changes})
