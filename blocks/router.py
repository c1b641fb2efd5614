"""The fleet's router: one URL in front of every Spark of a fleet (vLLM's own `vllm-router`).

Clients send to the router; it spreads requests over the targets it lists (its workers), routes by
prompt prefix (``cache_aware``) so each Spark's prefix cache keeps hitting, retries a failed request
on another worker and stops sending to a worker whose /health fails. Which targets it lists is
derived state: the fleet flows add a target after its deploy passed the gate and remove it on an
unhealthy verdict or before a rolling update replaces it (tasks/router/membership.py decides), so a
router restarted empty is rebuilt from the targets' verdicts (docs/router.md).

Facts from vllm-router 0.1.17 (``vllm_router/router_args.py``, the wheel's Python launcher of the
Rust router): the port default 30000 (line 14), the policies (lines 165-173), ``--api-key`` "used for
authorization with workers" (lines 386-390), Prometheus on ``--prometheus-port`` (default 29000,
lines 460-470) bound to ``--prometheus-host`` (127.0.0.1), the health checker's
``--health-check-interval-secs`` (default 60, line 98) and ``--health-failure-threshold`` (3, line 95).
"""

from __future__ import annotations

from typing import Literal, cast

from prefect.blocks.core import Block
from pydantic import Field

from blocks.shared import http_base
from tasks.vllm.api import METRICS_PATH

#: The routing policies this project offers (vllm_router/router_args.py:165-173 has more: kv_aware
#: needs vLLM's KV events, sticky_least_loaded session ids, neither set up here; power_of_two refuses to
#: start without two workers, "Power-of-two policy requires at least 2 workers", and the launcher starts
#: the router empty, then adds the healthy targets).
Policy = Literal["cache_aware", "round_robin", "random", "consistent_hash"]


class FleetRouter(Block):
    """Where the fleet's router listens and how it routes; saved by `deployments.fleet register`."""

    _block_type_name = "vLLM Fleet Router"
    _block_type_slug = "vllm-fleet-router"
    _description = (
        "The vllm-router in front of a fleet: its address, policy, API key Secret block and the targets "
        "it may route to (the fleet flows keep its worker list equal to the healthy ones)."
    )

    fleet: str = Field(title="Fleet", description="The fleet's name (the block is named after it).")
    targets: list[str] = Field(
        default_factory=list,
        title="Targets",
        description="The fleet's targets, in the targets file's order (a router restart re-adds the healthy ones).",
    )
    host: str = Field(
        default="0.0.0.0",
        title="Listen address",
        description="Where the router listens on the front machine (0.0.0.0: every interface, as the runbook).",
    )
    port: int = Field(default=30000, title="Port", description="vllm-router's default (router_args.py:14).")
    client_host: str = Field(
        default="127.0.0.1",
        title="Client host",
        description="Where the flows reach the router (the front machine's address when they run elsewhere).",
    )
    metrics_port: int = Field(
        default=29000,
        title="Prometheus port",
        description="The router's own metrics (vllm_router_*), where the router listens (router_args.py:460).",
    )
    policy: Policy = Field(
        default="cache_aware",
        title="Policy",
        description=(
            "cache_aware: requests sharing a prompt prefix go to the same Spark (its prefix cache hits), "
            "unless the load is unbalanced; round_robin: in turn (docs/benchmarks.md compares them)."
        ),
    )
    api_key_secret: str | None = Field(
        default=None,
        title="API key Secret block",
        description=(
            "The Secret block with the fleet's API key: the targets' own (their api_key_secret). The "
            "router passes the client's key to the Spark, which refuses a request without it."
        ),
    )
    health_check_interval_s: int = Field(
        default=5,
        ge=1,
        title="Health check interval (s)",
        description=(
            "How often the router asks each worker's /health; after 3 failures in a row it stops "
            "routing there (vllm-router's default is 60 s, a minute of errors before it notices)."
        ),
    )
    drain_timeout_s: float = Field(
        default=300.0,
        ge=0,
        title="Drain timeout (s)",
        description=(
            "rolling-update: how long to wait, after removing a target from the router, for its running "
            "requests to finish before replacing its server (then the rest are cut off)."
        ),
    )

    @classmethod
    def named(cls, fleet: str) -> FleetRouter:
        """The saved block of ``fleet``, typed (every caller here is sync)."""
        return cast(FleetRouter, cls.load(fleet))

    @property
    def url(self) -> str:
        """Base URL where the flows and the clients reach the router."""
        return http_base(self.client_host, self.port)

    @property
    def metrics_url(self) -> str:
        """The router's Prometheus endpoint (bound where the router listens)."""
        return http_base(self.client_host, self.metrics_port) + METRICS_PATH  # vllm-router serves vLLM's route

    def router_args(self) -> list[str]:
        """`vllm-router`'s arguments for this block, the API key excepted (it never goes on a command
        line, where `ps` shows it: the launcher sets it in-process, deployments/router.py)."""
        return [
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--policy",
            self.policy,
            "--prometheus-port",
            str(self.metrics_port),
            "--prometheus-host",
            self.host,
            "--health-check-interval-secs",
            str(self.health_check_interval_s),
            "--log-level",
            "info",
        ]
