"""What the server says about a benchmark level: /metrics before, during and after it.

Why: the client's figures say how fast answers came; the server's counters say why (prefix cache
hits, KV cache pressure, preemptions, time queued behind `--max-num-seqs`), and its token counters
check the client: the prompt and generation tokens the engine counted must be the ones the client
sent and received, or the run measured something else (other traffic, a restart, lost chunks).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from tasks.vllm.metrics import MetricsSnapshot, counter_delta, parse_metrics


class ServerSide(BaseModel):
    """The server's own account of one level (None: the server does not export that metric)."""

    prompt_tokens: int | None = Field(None, description="vllm:prompt_tokens_total, growth over the level")
    generation_tokens: int | None = Field(None, description="vllm:generation_tokens_total, growth over the level")
    requests: int | None = Field(None, description="vllm:request_success_total, growth over the level")
    preemptions: int | None = Field(None, description="vllm:num_preemptions_total, growth over the level")
    prefix_cache_hit_rate: float | None = Field(None, description="hits / queries over the level (0-1)")
    queue_time_mean_ms: float | None = Field(None, description="mean vllm:request_queue_time_seconds over the level")
    kv_cache_peak: float | None = Field(None, description="highest vllm:kv_cache_usage_perc seen while it ran (0-1)")
    waiting_peak: int | None = Field(None, description="most requests waiting (queued beyond max-num-seqs)")
    running_peak: int | None = Field(None, description="most requests running at once")


def server_side(before: MetricsSnapshot, after: MetricsSnapshot, during: Sequence[MetricsSnapshot]) -> ServerSide:
    """The level's server-side figures from the counters before and after and the gauges during it."""
    queries = counter_delta(after.prefix_cache_queries_total, before.prefix_cache_queries_total)
    hits = counter_delta(after.prefix_cache_hits_total, before.prefix_cache_hits_total)
    q_sum = counter_delta(after.queue_time_sum, before.queue_time_sum)
    q_count = counter_delta(after.queue_time_count, before.queue_time_count)
    snapshots = [*during, after]

    def peak(name: str):
        values = [getattr(s, name) for s in snapshots if getattr(s, name) is not None]
        return max(values) if values else None

    return ServerSide(
        prompt_tokens=counter_delta(after.prompt_tokens_total, before.prompt_tokens_total),
        generation_tokens=counter_delta(after.generation_tokens_total, before.generation_tokens_total),
        requests=counter_delta(after.requests_succeeded_total, before.requests_succeeded_total),
        preemptions=counter_delta(after.preemptions_total, before.preemptions_total),
        prefix_cache_hit_rate=(hits / queries) if queries and hits is not None else None,
        queue_time_mean_ms=(q_sum / q_count * 1000) if q_count and q_sum is not None else None,
        kv_cache_peak=peak("kv_cache_usage"),
        waiting_peak=peak("requests_waiting"),
        running_peak=peak("requests_running"),
    )


def snapshots(texts: Sequence[tuple[float, str]]) -> list[MetricsSnapshot]:
    """Parse the /metrics bodies the load generator kept while a level ran (unparseable ones skipped)."""
    parsed = []
    for taken_at, text in texts:
        try:
            parsed.append(parse_metrics(text, taken_at))
        except ValueError:
            continue
    return parsed


def token_disagreement(server: ServerSide, client_input: int, client_output: int) -> str | None:
    """None when the engine counted the tokens the client sent and received, else what differs.

    A server that counts more saw other traffic during the run (a health check's completion, another
    client); fewer means requests or chunks the client counted never went through the engine.
    """
    problems = []
    for what, counted, sent in (
        ("prompt", server.prompt_tokens, client_input),
        ("generation", server.generation_tokens, client_output),
    ):
        if counted is not None and counted != sent:
            side = "other traffic during the run?" if counted > sent else "tokens the engine never counted"
            problems.append(f"{what} tokens: server {counted:,}, client {sent:,} ({side})")
    return "; ".join(problems) or None
