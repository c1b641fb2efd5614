"""vllm-router's HTTP API, as this project uses it: its worker list, its health, its metrics.

Facts from vllm-router 0.1.17 (the Rust server in the wheel's ``vllm_router_rs``; its source is not
in the wheel, so each was tried here against the real binary and the vLLM imitation):

- ``POST /add_worker?url=<worker>``: 200 "Successfully added worker: <url>" once the worker's
  /health answers (it waits for it, up to ``--worker-startup-timeout-secs``, 600 s by default,
  router_args.py:37); ``POST /remove_worker?url=``: 200 "Successfully removed worker: <url>", and the
  requests already sent there still finish; ``GET /list_workers``: ``{"urls": [...]}``; ``GET
  /workers``: ``{"workers": [{"url", "is_healthy", "load", ...}], "total"}``.
- ``GET /health``: 200 "All servers healthy" (also with no worker), 503 "Unhealthy servers: [...]";
  ``GET /readiness``: 503 while no worker is healthy; ``GET /liveness``: 200 once it listens.
- None of them asks for a key: vllm-router 0.1.17 checks no client key. The OpenAI routes carry the
  client's ``Authorization`` header to the worker, which answers 401 without the target's key, so a
  fleet whose targets have an API key refuses keyless requests at the router (docs/router.md says
  what that leaves open).
- Prometheus on its own port: ``vllm_router_requests_total``, ``vllm_router_processed_requests_total``
  and ``vllm_router_worker_health`` (labelled ``worker``), ``vllm_router_active_workers``, and more.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tasks.errors import SparkVllmError
from tasks.router.membership import normalize
from tasks.tls import default_tls
from tasks.vllm.api import HEALTH_PATH, auth_headers

#: How long an add may wait for the worker's /health (the target passed its gate: it answers at once).
ADD_TIMEOUT_S = 30.0


class RouterUnreachable(SparkVllmError):
    """The router did not answer (not started, wrong address, or down)."""


@contextmanager
def router_client(url: str, api_key: str | None = None, timeout: float = 10.0) -> Iterator[httpx.Client]:
    """An HTTP client for the router at ``url``; a refused connection becomes `RouterUnreachable`."""
    with httpx.Client(verify=default_tls(), base_url=url, headers=auth_headers(api_key), timeout=timeout) as http:
        try:
            yield http
        except httpx.TransportError as err:
            raise RouterUnreachable(
                f"the router at {url} does not answer ({type(err).__name__}): is it running? "
                "(python -m deployments.router serve --fleet <fleet>, docs/router.md)"
            ) from err


def list_workers(http: httpx.Client) -> list[str]:
    """The router's worker URLs."""
    response = http.get("/list_workers")
    response.raise_for_status()
    return [normalize(u) for u in response.json().get("urls", [])]


def add_worker(http: httpx.Client, url: str) -> None:
    """Add a worker (the router checks its /health first)."""
    http.post("/add_worker", params={"url": normalize(url)}, timeout=ADD_TIMEOUT_S).raise_for_status()


def remove_worker(http: httpx.Client, url: str) -> None:
    """Remove a worker; its requests in flight still finish."""
    http.post("/remove_worker", params={"url": normalize(url)}).raise_for_status()


@dataclass(frozen=True)
class RouterStatus:
    """The router as health-check-fleet reports it."""

    health: str  # "ok", "unhealthy workers: ...", "unreachable: ..."
    workers: dict[str, bool] = field(default_factory=dict)  # url -> the router's own health check
    requests_total: int | None = None
    per_worker: dict[str, int] = field(default_factory=dict)  # url -> requests it processed


def read_status(http: httpx.Client, metrics_url: str) -> RouterStatus:
    """/health, /workers and the metrics of the router (metrics missing: counts are None)."""
    health = http.get(HEALTH_PATH)  # the router's own, on the route it probes its workers at (vLLM's)
    workers = http.get("/workers")
    workers.raise_for_status()
    listed = {normalize(w["url"]): bool(w.get("is_healthy")) for w in workers.json().get("workers", [])}
    text = health.text.strip() if health.status_code != 200 else "ok"
    try:
        metrics = http.get(metrics_url)
        metrics.raise_for_status()
    except httpx.HTTPError:
        return RouterStatus(text, listed)
    total, per_worker = parse_router_metrics(metrics.text)
    return RouterStatus(text, listed, total, per_worker)


def parse_router_metrics(text: str) -> tuple[int | None, dict[str, int]]:
    """(requests the router took, requests each worker processed) from its Prometheus text (pure)."""
    total: int | None = None
    per_worker: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm_router_requests_total":
                total = (total or 0) + int(sample.value)
            elif sample.name == "vllm_router_processed_requests_total" and "worker" in sample.labels:
                url = normalize(sample.labels["worker"])
                per_worker[url] = per_worker.get(url, 0) + int(sample.value)
    return total, per_worker
