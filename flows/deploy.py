"""deploy-qwen: take a machine from nothing to a verified vLLM server, as the runbook does by hand.

    prefect deployment run deploy-qwen/spark      # the DGX Spark, NVIDIA image, real Hub
    prefect deployment run deploy-qwen/sim        # the same flow on the imitations

Runbook steps -> flow steps: prerequisites (.env, /opt/hf) -> preflight; model download -> stage;
`docker compose up -d` -> replace-or-keep + start; "Monitor Loading" and `curl /health` ->
wait-until-ready; "Test inference" -> smoke-inference; "Key Metrics" -> the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger
from prefect_docker.host import DockerHost
from pydantic import BaseModel, Field

from blocks.engine import EngineSpec, load_engine_spec
from blocks.render import container_kwargs, redacted, secret_environment
from blocks.target import TargetMachine
from tasks.container import (
    arm_restart_policy,
    remove_container,
    replace_or_keep,
    restart_policy_after_ready,
    start_vllm_container,
)
from tasks.events import ServiceEvent, emit_service_event
from tasks.health import Readiness, ReadinessTimeouts, endpoint_ready, wait_until_ready
from tasks.inference import smoke_inference
from tasks.locks import gpu_lock
from tasks.memory import make_room_for_start
from tasks.preflight import preflight
from tasks.report import artifact_key, fenced, publish_report
from tasks.secrets import DOTENV, HF_TOKEN_ENV_VARS, load_secret, scrub
from tasks.staging.stage import stage_steps


class DeployResult(BaseModel):
    """What the fleet and health flows need to know about the deployed server."""

    target: str
    status: str  # "deployed" | "unchanged"
    endpoint: str
    served_model: str
    container: str
    image: str
    spec_hash: str
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    load_s: float | None = None
    time_to_ready_s: float | None = None
    ready_at: datetime | None = None
    smoke_answer: str
    smoke_latency_s: float
    staged_commit: str | None = None
    duration_s: float
    warnings: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Secrets:
    """The HF token and the optional API key, resolved once; only their values are ever masked."""

    hf_token: str | None
    api_key: str | None

    @classmethod
    def for_target(cls, machine: TargetMachine) -> "Secrets":
        token = load_secret(machine.hf_token_secret, HF_TOKEN_ENV_VARS, DOTENV)
        key = load_secret(machine.api_key_secret, ("VLLM_API_KEY",), DOTENV) if machine.api_key_secret else None
        return cls(token.get_secret_value() if token else None, key.get_secret_value() if key else None)

    @property
    def values(self) -> list[str]:
        return [v for v in (self.hf_token, self.api_key) if v]


@flow(name="deploy-qwen", flow_run_name="deploy-{target}", log_prints=True)
def deploy_qwen(
    target: str = "spark",
    engine: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    stage: bool = True,
    timeouts: ReadinessTimeouts = ReadinessTimeouts(),
) -> DeployResult:
    """Deploy the engine spec on the target machine and prove it answers.

    Args:
        target: name of the TargetMachine block (e.g. "spark", "sim").
        engine: name of an EngineSpec block; None = the runbook's compose file.
        preset: one of the runbook's tuning blocks: "throughput", "latency", "max-context".
        overrides: EngineSpec fields to change for this run only, e.g. {"gpu_memory_utilization": 0.75}.
        stage: stage the model first (skipped in seconds when the cache's manifest verifies).
        timeouts: per-phase readiness limits.
    """
    started = time.monotonic()
    machine = TargetMachine.load(target)
    spec = machine.apply_to(load_engine_spec(engine, preset, overrides))
    secrets = Secrets.for_target(machine)
    spec_hash = spec.spec_hash(machine)
    docker_host = machine.docker_host()
    try:
        # Prerequisites: docker on this machine, GPU runtime, port, image. Changes nothing.
        warnings = preflight(machine, spec.image)
        # Model download into /opt/hf: resumable, verified, skipped when the manifest verifies. Outside
        # the GPU lock (staging has file locks of its own): a 32 GB download must not hold up stop-qwen.
        # stage-model's steps run as tasks of this flow run, not as a subflow: a subflow costs
        # ~1.3 s here (its own run, and Prefect's heartbeat thread joined at its exit).
        staged = stage_steps(
            repo_id=spec.model, revision=spec.revision or "main", cache_dir=machine.cache_dir,
            endpoint=machine.hub_endpoint, token_secret_block=machine.hf_token_secret,
        ) if stage else None
        with gpu_lock(machine.name):
            # `docker compose up -d`: keep a healthy identical server, else replace ours and gate on health.
            healthy = endpoint_ready(machine.endpoint, spec.served_name, secrets.api_key)
            kept = replace_or_keep(docker_host, machine.name, spec.container_name, spec_hash, healthy)
            readiness = None
            if kept is None:
                container_id, readiness = _start_and_gate(docker_host, spec, machine, secrets, timeouts)
            # "Test inference", checked instead of read by eye.
            try:
                smoke = smoke_inference(machine.endpoint, spec.served_name, secrets.api_key)
            except Exception:
                if readiness is not None:  # a server we just started and that answers wrongly does not stay
                    remove_container(docker_host, container_id, stop_timeout=10)
                raise
    except Exception as exc:
        _report_failure(machine, spec, spec_hash, exc, secrets)
        raise
    stats = readiness.stats if readiness else None
    result = DeployResult(
        target=machine.name, status="unchanged" if readiness is None else "deployed", endpoint=machine.endpoint,
        served_model=spec.served_name, container=spec.container_name, image=spec.image, spec_hash=spec_hash,
        kv_cache_tokens=stats.kv_cache_tokens if stats else None,
        max_concurrency=stats.max_concurrency if stats else None,
        load_s=round(stats.model_load_seconds, 2) if stats and stats.model_load_seconds else None,
        time_to_ready_s=round(readiness.time_to_ready_s, 3) if readiness else None,
        ready_at=datetime.fromtimestamp(readiness.ready_wall, timezone.utc) if readiness else None,
        smoke_answer=smoke.chat_answer, smoke_latency_s=smoke.chat_latency_s,
        staged_commit=staged.commit if staged else None, duration_s=round(time.monotonic() - started, 3),
        warnings=warnings,
    )
    _report(result, spec, readiness)
    emit_service_event(machine.name, ServiceEvent(result.status), {"endpoint": result.endpoint, "spec_hash": spec_hash, "served_model": spec.served_name})
    get_run_logger().info("vLLM %s on %s: %s (served model %s)", result.status, machine.name, result.endpoint, spec.served_name)
    return result


def _start_and_gate(
    docker_host: DockerHost, spec: EngineSpec, machine: TargetMachine, secrets: Secrets, timeouts: ReadinessTimeouts
) -> tuple[str, Readiness]:
    """Make room in memory, start the container, wait until it serves; remove it if it never does."""
    kwargs = container_kwargs(spec, machine, secret_env=secret_environment(hf_token=secrets.hf_token, api_key=secrets.api_key))
    make_room_for_start(machine, spec.image, spec.gpu_memory_utilization)
    first_start, restart_policy = restart_policy_after_ready(kwargs)
    container_id = start_vllm_container(docker_host, first_start, redacted(first_start))
    try:
        readiness = wait_until_ready(
            docker_host, container_id, machine.endpoint, spec.served_name, secrets.api_key, timeouts, secrets.values,
            artifact_key("vllm-load", machine.name),
        )
        arm_restart_policy(docker_host, container_id, restart_policy)  # the runbook's `restart: unless-stopped`, from now on
    except BaseException:
        remove_container(docker_host, container_id, stop_timeout=None)  # it never served: kill, its log is in the run's
        raise
    return container_id, readiness


def _report_failure(machine: TargetMachine, spec: EngineSpec, spec_hash: str, exc: BaseException, secrets: Secrets) -> None:
    """A failed deploy still reports: the event for automations, an artifact for the operator."""
    message = scrub(str(exc), secrets.values)
    cause = getattr(exc, "cause", None)
    kind = str(cause.kind) if cause is not None else type(exc).__name__
    emit_service_event(machine.name, ServiceEvent.FAILED, {"kind": kind, "reason": message[:1000], "spec_hash": spec_hash})
    sections = {"What happened": cause.markdown() if cause is not None else fenced(message.splitlines())}
    publish_report(artifact_key("deploy", machine.name), f"deploy-qwen on {machine.name}: FAILED",
                   {"target": machine.name, "image": spec.image, "failure": kind}, sections)


def _report(result: DeployResult, spec: EngineSpec, readiness) -> None:
    rows = {
        "status": result.status, "endpoint": result.endpoint, "served model": result.served_model,
        "image": result.image, "container": result.container, "spec hash": result.spec_hash,
        "staged commit": result.staged_commit,
        "KV cache tokens": f"{result.kv_cache_tokens:,}" if result.kv_cache_tokens else None,
        "max concurrency (at max-model-len)": result.max_concurrency, "model load (s)": result.load_s,
        "time to ready (s)": result.time_to_ready_s, "smoke answer (12*17)": result.smoke_answer,
        "smoke latency (s)": result.smoke_latency_s, "flow duration (s)": result.duration_s,
    }
    if result.warnings:
        rows = {"warning": " ".join(result.warnings), **rows}
    sections = {"Command": fenced([" ".join(spec.vllm_command())])}
    if readiness:
        sections["Phases (s)"] = fenced(f"{k}: {v}" for k, v in readiness.phase_seconds.items())
    publish_report(artifact_key("deploy", result.target), f"deploy-qwen on {result.target}: {result.status}", rows, sections)
