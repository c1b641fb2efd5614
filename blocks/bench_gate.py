"""The benchmark gate of an engine spec: the figures a deploy must reach to count as a success.

Why in the spec: the thresholds belong to what is served (a latency preset promises other figures
than a throughput one), and operators edit them where they edit the spec (UI: Blocks -> vLLM Engine
Spec -> Benchmark gate). None of these fields shape the container, so they are not in the spec hash:
changing a threshold never replaces a running server.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: What a deploy does when the gate's figures are not reached.
GateAction = Literal["fail", "degraded"]


class BenchGate(BaseModel):
    """Thresholds checked by a short benchmark right after the deploy's smoke test.

    The runbook's own figures for Qwen3-32B-FP8 on a DGX Spark are single request ~6-7 tok/s,
    64 concurrent ~300-400 tok/s (estimated), TTFT 200-500 ms: a gate of 5 tok/s, 250 tok/s at 64 and
    a p99 TTFT of 1000 ms catches a server that is clearly off without failing on noise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_single_stream_tps: float | None = Field(
        None,
        gt=0,
        title="Min single-stream tokens/s",
        description="one request alone must decode at least this fast (1000 / median TPOT in ms); runbook ~6-7",
    )
    max_p99_ttft_ms: float | None = Field(
        None,
        gt=0,
        title="Max p99 TTFT (ms)",
        description="p99 time to first token of the single-stream requests; runbook 200-500 ms",
    )
    min_aggregate_tps: float | None = Field(
        None,
        gt=0,
        title="Min aggregate tokens/s",
        description="output tokens/s of all requests at the gate's concurrency; runbook ~300-400 at 64",
    )
    concurrency: int = Field(64, ge=2, title="Concurrency of the aggregate check")
    input_len: int = Field(128, ge=1, title="Prompt tokens per request")
    output_len: int = Field(
        64, ge=2, title="Output tokens per request", description="at least 2: TPOT needs a second token"
    )
    single_requests: int = Field(3, ge=1, title="Single-stream requests")
    on_failure: GateAction = Field(
        "fail",
        title="When a threshold is missed",
        description="fail: the deploy fails and rolls back to the last healthy spec (the new server stays only "
        "when there is none); degraded: the server stays, the deploy is marked DEGRADED",
    )

    @model_validator(mode="after")
    def _something_to_check(self) -> BenchGate:
        if self.min_single_stream_tps is None and self.max_p99_ttft_ms is None and self.min_aggregate_tps is None:
            raise ValueError(
                "a benchmark gate needs at least one threshold: set min_single_stream_tps, "
                "max_p99_ttft_ms or min_aggregate_tps (e.g. 5, 1000, 250 for the runbook's Spark), "
                "or remove the gate"
            )
        return self

    @property
    def needs_single(self) -> bool:
        return self.min_single_stream_tps is not None or self.max_p99_ttft_ms is not None
