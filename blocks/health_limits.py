"""The health check's limits, where an operator edits them: one Prefect block (UI: Blocks -> vLLM Health Limits).

The fields are `tasks.health.limits.Thresholds` (their one definition, each with its default and why,
the service levels citing vLLM's and llm-d's alert rules); this block only holds them. The
health-check flow loads the block saved as `HEALTH_LIMITS_BLOCK` (``default``, saved with the
defaults by ``python -m deployments.setup``) and its ``limits`` parameter overrides fields for one
run. A missing block is not an error: the defaults apply, and the run says so.
"""

from __future__ import annotations

from typing import cast

from prefect.blocks.core import Block
from pydantic import Field

from tasks.health.limits import Thresholds

__all__ = ["HEALTH_LIMITS_BLOCK", "HealthLimits", "ensure_health_limits", "load_health_limits"]

#: The block document the health check reads (and setup saves).
HEALTH_LIMITS_BLOCK = "default"


class HealthLimits(Block):
    """The health check's limits: startup and answer budgets, the wedge window, the crash loop and the
    service levels (p99 TTFT and inter-token latency, error ratio, KV cache, queue, preemptions)."""

    _block_type_name = "vLLM Health Limits"
    _block_type_slug = "vllm-health-limits"
    _description = (
        "Where the scheduled health check draws its lines. Every check of every target reads the block named "
        "'default'; a run's 'limits' parameter overrides fields for that run only."
    )

    limits: Thresholds = Field(default_factory=Thresholds, title="Limits")


def load_health_limits(name: str = HEALTH_LIMITS_BLOCK) -> Thresholds | None:
    """The saved limits, or None when no such block is saved (or it no longer validates)."""
    try:
        return cast(HealthLimits, HealthLimits.load(name)).limits  # Prefect's sync/async dual: sync here
    except ValueError:  # Prefect: "Unable to find block document named ..."; a validation error too
        return None


def ensure_health_limits(name: str = HEALTH_LIMITS_BLOCK) -> None:
    """Register the block type and save the defaults under ``name`` unless saved already (the operator's)."""
    HealthLimits.register_type_and_schema()
    if load_health_limits(name) is not None:
        print(f"health limits block {name}: already saved, left as it is")
        return
    HealthLimits().save(name, overwrite=True)
    print(f"health limits block {name} saved (the defaults: vLLM's and llm-d's alert rules)")
