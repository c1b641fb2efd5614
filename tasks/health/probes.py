"""The health check's read-only probes of one target: what docker says, what the server answers,
what the host has left. Each is a task that takes values and changes nothing; the verdict is the
pure `tasks.health.verdict.evaluate`.

A check is cheap by design: one docker inspect, six small HTTP requests (/health, /version,
/v1/models, /metrics, one 16-token completion, /metrics again) and one `docker exec` of the meminfo
command in the running server. /metrics is read on both sides of the smoke question: the read before
it ends the service-level window (tasks/health/service.py), so the check's own question is never in
the figures; the read after it starts the next window and is the wedge's snapshot.
"""

from __future__ import annotations

import time

import httpx
from docker.errors import NotFound
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect_docker.host import DockerHost
from pydantic import BaseModel

from tasks.container import docker_client, managed_containers
from tasks.inference import completion_request, contains_expected, visible_answer
from tasks.memory import MemInfo, MemoryReadError, exec_meminfo
from tasks.vllm.api import COMPLETIONS_PATH, HEALTH_PATH, METRICS_PATH, auth_headers, lists_model
from tasks.vllm_version import read_server_version


class ContainerFacts(BaseModel):
    """Our server container of a target, as docker reports it (exists=False: there is none)."""

    exists: bool
    container_id: str | None = None
    name: str | None = None
    status: str | None = None
    restart_count: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None  # when docker last started it (epoch seconds)


class EndpointFacts(BaseModel):
    """What the server answered, layer by layer (None: no HTTP answer at all)."""

    health_status: int | None = None
    health_latency_s: float | None = None
    models_listed: bool | None = None
    answer_ok: bool | None = None
    answer: str | None = None
    answer_latency_s: float | None = None
    metrics_text: str | None = None  # /metrics after the smoke question
    metrics_at: float | None = None  # when (epoch seconds)
    metrics_before_text: str | None = None  # /metrics before the smoke question
    metrics_before_at: float | None = None
    vllm_version: str | None = None  # ``GET /version`` (None: no answer)


@task(name="inspect-container", cache_policy=NO_CACHE, task_run_name="inspect-container {target_name}")
def inspect_container(docker_host: DockerHost, target_name: str) -> ContainerFacts:
    """The newest of our containers for the target, with docker's state."""
    with docker_client(docker_host) as client:
        containers = managed_containers(client, target_name)
        if not containers:
            return ContainerFacts(exists=False)
        container = max(containers, key=lambda c: c.attrs.get("Created", ""))
    state = container.attrs.get("State", {})
    return ContainerFacts(
        exists=True,
        container_id=container.id,
        name=container.name,
        status=container.status,
        restart_count=container.attrs.get("RestartCount", 0),
        exit_code=None if state.get("Running") else state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=_epoch(state.get("StartedAt")),
    )


@task(name="probe-endpoints", cache_policy=NO_CACHE, task_run_name="probe-endpoints {base_url}")
def probe_endpoints(base_url: str, served_name: str, api_key: str | None, timeout_s: float = 10.0) -> EndpointFacts:
    """/health, then (whenever the API server answers) /version, then (only when /health answers 200)
    /v1/models, /metrics, one tiny completion and /metrics again.

    vLLM accepts no connection while it loads: no answer is a fact ("starting" or dead, the verdict
    decides from the container's age), not an error.
    """
    facts = EndpointFacts()
    with httpx.Client(base_url=base_url, headers=auth_headers(api_key), timeout=timeout_s) as http:
        try:
            started = time.perf_counter()
            facts.health_status = http.get(HEALTH_PATH).status_code
            facts.health_latency_s = round(time.perf_counter() - started, 4)
        except httpx.HTTPError:
            return facts
        facts.vllm_version = read_server_version(http)  # which vLLM: names the report, picks the metric names
        if facts.health_status != 200:
            return facts
        facts.models_listed = lists_model(http, served_name)
        facts.metrics_before_text, facts.metrics_before_at = _read_metrics(http)
        try:
            started = time.perf_counter()
            # the deploy's smoke question, deterministic (greedy) and a few tokens long
            response = http.post(COMPLETIONS_PATH, json=completion_request(served_name))
            facts.answer_latency_s = round(time.perf_counter() - started, 4)
            text = visible_answer(response.json()["choices"][0].get("text")) if response.status_code == 200 else ""
            facts.answer = text[:80]
            facts.answer_ok = contains_expected(text)
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            facts.answer_ok = False
        facts.metrics_text, facts.metrics_at = _read_metrics(http)
    return facts


def _read_metrics(http: httpx.Client) -> tuple[str | None, float]:
    """/metrics's text (None: no 200 answer) and when it was read (epoch seconds)."""
    at = time.time()
    try:
        answer = http.get(METRICS_PATH)
    except httpx.HTTPError:
        return None, at
    return (answer.text if answer.status_code == 200 else None), at


@task(name="read-host-memory", cache_policy=NO_CACHE)
def read_host_memory(docker_host: DockerHost, container_id: str, meminfo_command: list[str]) -> MemInfo | None:
    """The docker host's memory, read in the running server (`docker exec`); None when it cannot be."""
    with docker_client(docker_host) as client:
        try:
            return exec_meminfo(client, container_id, meminfo_command)
        except (MemoryReadError, NotFound):
            return None


def _epoch(stamp: str | None) -> float | None:
    """docker's RFC 3339 time with nanoseconds (2026-12-01T22:17:13.123456789Z) as epoch seconds."""
    if not stamp or stamp.startswith("0001-"):
        return None
    from datetime import datetime

    main, _, frac = stamp.rstrip("Z").partition(".")
    try:
        base = datetime.fromisoformat(main + "+00:00").timestamp()
    except ValueError:
        return None
    return base + (float("0." + frac[:6]) if frac else 0.0)
