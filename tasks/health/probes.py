"""The health check's read-only probes of one target: what docker says, what the server answers,
what the host has left. Each is a task that takes values and changes nothing; the verdict is the
pure `tasks.health.verdict.evaluate`.

A check is cheap by design: one docker inspect, six small HTTP requests (/health, /version,
/v1/models, /metrics, one 16-token completion streamed, /metrics again) and one `docker exec` of the
meminfo command in the running server. /metrics is read on both sides of the smoke question: the read
before it ends the service-level window (tasks/health/service.py), so the check's own question is never
in the figures; the read after it starts the next window and is the wedge's snapshot. While no token of
the answer comes, /metrics is read every `Thresholds.first_token_stall_s` too: an engine that generates
for no one is stalled, and the check stops waiting (tasks/health/smoke.py).
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
from tasks.health.limits import Thresholds
from tasks.health.smoke import ask_streamed
from tasks.memory import MemInfo, MemoryReadError, exec_meminfo
from tasks.vllm.api import HEALTH_PATH, METRICS_PATH, lists_model, vllm_client
from tasks.vllm.metrics import MetricsSnapshot, parse_metrics
from tasks.vllm.versions import parse_vllm_version
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
    answer_error: str | None = None  # what went wrong with the answer, in words (None: answered)
    stalled_s: float | None = None  # no token for this long while the engine stood still (tasks/health/smoke.py)
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
def probe_endpoints(
    base_url: str,
    served_name: str,
    api_key: str | None,
    timeout_s: float = 10.0,
    first_token_stall_s: float | None = None,
) -> EndpointFacts:
    """/health, then (whenever the API server answers) /version, then (only when /health answers 200)
    /v1/models, /metrics, the smoke question streamed and /metrics again.

    vLLM accepts no connection while it loads: no answer is a fact ("starting" or dead, the verdict
    decides from the container's age), not an error. The smoke answer may take ``timeout_s``; when no
    token has come for ``first_token_stall_s`` (None: `Thresholds.first_token_stall_s`) and /metrics shows
    the engine generating for no one, the check stops waiting: the engine is stalled (tasks/health/smoke.py).
    """
    stall_s = Thresholds().first_token_stall_s if first_token_stall_s is None else first_token_stall_s
    facts = EndpointFacts()
    with vllm_client(base_url, api_key, timeout_s) as http:
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
        reads: list[tuple[str | None, float]] = []  # /metrics read while waiting for the first token

        def read_now() -> MetricsSnapshot | None:
            reads.append(_read_metrics(http))
            return _parsed(*reads[-1], facts.vllm_version)

        before = _parsed(facts.metrics_before_text, facts.metrics_before_at, facts.vllm_version)
        # the deploy's smoke question, deterministic (greedy) and a few tokens long, streamed
        answer = ask_streamed(
            http, served_name, budget_s=timeout_s, stall_s=stall_s, before=before, read_metrics=read_now
        )
        facts.answer_ok, facts.answer, facts.answer_latency_s = answer.ok, answer.answer, answer.latency_s
        facts.answer_error, facts.stalled_s = answer.error, answer.stalled_s
        # a stall's own read is the read after the question: the wedge's evidence and the next window's start
        facts.metrics_text, facts.metrics_at = reads[-1] if answer.stalled_s is not None else _read_metrics(http)
    return facts


def _parsed(text: str | None, at: float, vllm_version: str | None) -> MetricsSnapshot | None:
    """/metrics's numbers by the server's vLLM (unknown or unreadable: every version's names); None: no
    Prometheus text."""
    if not text:
        return None
    try:
        version = parse_vllm_version(vllm_version) if vllm_version else None
    except ValueError:
        version = None
    try:
        return parse_metrics(text, at, version)
    except ValueError:
        return None


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
