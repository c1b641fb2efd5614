"""deploy-qwen: take a machine from nothing to a verified vLLM server, as the runbook does by hand.

    prefect deployment run deploy-qwen/spark      # the DGX Spark, NVIDIA image, real Hub
    prefect deployment run deploy-qwen/sim        # the same flow on the imitations

Runbook steps -> flow steps: prerequisites (.env, /opt/hf) -> preflight; model download -> stage;
`docker compose up -d` -> replace-or-keep + start; "Monitor Loading" and `curl /health` ->
wait-until-ready; "Troubleshooting: Container Fails with Memory Errors" -> recovery (classify the
failure, act once, retry: tasks/serve.py); "Test inference" -> smoke-inference; "Key Metrics" ->
the report. A deploy that cannot start a new spec rolls back to the last spec that served on the
target, so a failed deploy does not leave the target without a server.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from blocks.engine import EngineSpec
from blocks.target import TargetMachine
from tasks.container import remove_container, replace_or_keep
from tasks.errors import SparkVllmError
from tasks.events import ServiceEvent, emit_service_event
from tasks.inference import smoke_inference
from tasks.loadtest.run import GateResult, run_gate
from tasks.locks import gpu_lock
from tasks.memory import NotEnoughMemory
from tasks.preflight import preflight
from tasks.readiness import ReadinessFailed, ReadinessTimeouts, endpoint_ready
from tasks.recovery.planner import RecoveryLimits
from tasks.report import artifact_key, fenced, key_value_table, publish_report
from tasks.secrets import scrub
from tasks.serve import Served, ServerSecrets, StartFailed, load_target, serve
from tasks.staging.stage import stage_steps
from tasks.state import clear_recover_runs, last_healthy, last_healthy_record, record_healthy


class DeployResult(BaseModel):
    """What the fleet and health flows need to know about the deployed server."""

    target: str
    status: str  # "deployed" | "unchanged"
    endpoint: str
    served_model: str
    container: str
    image: str
    spec_hash: str
    requested_spec_hash: str
    degraded: str | None = None  # "requested X, running Y, because Z" when recovery changed the spec
    attempts: int = 0
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    load_s: float | None = None
    time_to_ready_s: float | None = None
    ready_at: datetime | None = None
    smoke_answer: str
    smoke_latency_s: float
    staged_commit: str | None = None
    gate: GateResult | None = None
    duration_s: float
    warnings: list[str] = Field(default_factory=list)


class DeployFailed(SparkVllmError):
    """The requested spec did not start; the first line says whether the target still has a server."""


class BenchGateFailed(SparkVllmError):
    """The new server answers but misses its spec's benchmark gate (`on_failure: fail`)."""

    def __init__(self, target: str, gate: GateResult, stays: bool) -> None:
        where = "the server keeps serving (no other healthy spec to roll back to)" if stays else ""
        super().__init__(
            f"benchmark gate failed on {target}: " + "; ".join(gate.problems) + (f"; {where}" if where else "")
        )
        self.gate = gate


@flow(name="deploy-qwen", flow_run_name="deploy-{target}", log_prints=True)
def deploy_qwen(
    target: str = "spark",
    engine: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    stage: bool = True,
    timeouts: ReadinessTimeouts = ReadinessTimeouts(),
    recover: bool = True,
    max_attempts: int = 2,
) -> DeployResult:
    """Deploy the engine spec on the target machine and prove it answers.

    Args:
        target: name of the TargetMachine block (e.g. "spark", "sim").
        engine: name of an EngineSpec block; None = the runbook's compose file.
        preset: one of the runbook's tuning blocks: "throughput", "latency", "max-context".
        overrides: EngineSpec fields to change for this run only, e.g. {"gpu_memory_utilization": 0.75}.
        stage: stage the model first (skipped in seconds when the cache's manifest verifies).
        timeouts: per-phase readiness limits.
        recover: on a memory failure, classify it, act once and retry (docs/recovery.md); off: fail.
        max_attempts: retries after the first start, at most.
    """
    started = time.monotonic()
    resolved = load_target(target, engine, preset, overrides)
    machine, spec, secrets = resolved.machine, resolved.spec, resolved.secrets
    spec_hash = spec.spec_hash(machine)
    docker_host = resolved.docker_host
    limits = RecoveryLimits(max_attempts=max_attempts)
    try:
        # Prerequisites: docker on this machine, GPU runtime, port, image. Changes nothing.
        warnings = preflight(machine, spec.image)
        # Model download into /opt/hf: resumable, verified, skipped when the manifest verifies. Outside
        # the GPU lock (staging has file locks of its own): a 32 GB download must not hold up stop-qwen.
        # stage-model's steps run as tasks of this flow run, not as a subflow: a subflow costs
        # ~1.3 s here (its own run, and Prefect's heartbeat thread joined at its exit).
        staged = (
            stage_steps(
                repo_id=spec.model,
                revision=spec.revision or "main",
                cache_dir=machine.cache_dir,
                endpoint=machine.hub_endpoint,
                token_secret_block=machine.hf_token_secret,
            )
            if stage
            else None
        )
        with gpu_lock(machine.name):
            # `docker compose up -d`: keep a healthy identical server, else replace ours and gate on health.
            healthy = endpoint_ready(machine.endpoint, spec.served_name, secrets.api_key)
            kept = replace_or_keep(docker_host, machine.name, spec.container_name, spec_hash, healthy)
            served = None
            if kept is None:
                try:
                    served = serve(docker_host, machine, spec, secrets, timeouts, recover=recover, limits=limits)
                except (StartFailed, ReadinessFailed, NotEnoughMemory) as exc:
                    # a healthy server was replaced: do not leave the target without one
                    outcome = _roll_back(machine, spec_hash, secrets, timeouts, exc, had_server=healthy)
                    if outcome is exc:
                        raise
                    raise outcome from exc
            # "Test inference", checked instead of read by eye.
            try:
                smoke = smoke_inference(machine.endpoint, spec.served_name, secrets.api_key)
            except Exception:
                if served is not None:  # a server we just started and that answers wrongly does not stay
                    remove_container(docker_host, served.container_id, stop_timeout=10)
                raise
            # The spec's benchmark gate: a short `vllm bench serve`-style run, judged against its thresholds,
            # on a server this run started (a kept server passed it when it was deployed: a re-run stays a no-op).
            gate = (
                run_gate(machine.name, machine.endpoint, spec.served_name, secrets.api_key, spec.bench_gate)
                if spec.bench_gate is not None and served is not None
                else None
            )
            degraded = served.degraded(spec) if served else last_healthy_record(machine.name).get("degraded")
            gate_note = None
            if gate is not None and not gate.passed:
                if spec.bench_gate.on_failure == "fail":
                    previous = last_healthy(machine.name)
                    stays = not healthy or previous is None or previous.spec_hash(machine) == spec_hash
                    failure = BenchGateFailed(machine.name, gate, stays)
                    if not stays:  # the slow server goes first: its memory is the rollback's
                        remove_container(docker_host, served.container_id, stop_timeout=10)
                        raise _roll_back(
                            machine,
                            spec_hash,
                            secrets,
                            timeouts,
                            failure,
                            had_server=healthy,
                            why="missed its benchmark gate",
                        ) from failure
                    raise failure
                gate_note = "benchmark gate missed: " + "; ".join(gate.problems)
                degraded = "; ".join(filter(None, [degraded, gate_note]))
            running = served.spec if served else spec
            record_healthy(
                machine.name,
                running,
                served.spec_hash if served else spec_hash,
                degraded=degraded,
                kv_cache_tokens=served.kv_cache_tokens if served else None,
            )
            clear_recover_runs(machine.name)  # a person deployed: the cap on failing recoveries starts again
    except Exception as exc:
        _report_failure(machine, spec, spec_hash, exc, secrets)
        raise
    result = _result(machine, spec, spec_hash, served, smoke, staged, warnings, started, gate, gate_note)
    _report(result, served.spec if served else spec, served)
    emit_service_event(
        machine.name,
        ServiceEvent(result.status),
        {
            "endpoint": result.endpoint,
            "spec_hash": result.spec_hash,
            "served_model": spec.served_name,
            "degraded": result.degraded or "",
        },
    )
    get_run_logger().info(
        "vLLM %s on %s: %s (served model %s)%s",
        result.status,
        machine.name,
        result.endpoint,
        spec.served_name,
        f"; {result.degraded}" if result.degraded else "",
    )
    return result


def _roll_back(
    machine: TargetMachine,
    failed_hash: str,
    secrets: ServerSecrets,
    timeouts: ReadinessTimeouts,
    failure: BaseException,
    had_server: bool,
    why: str = "did not start",
) -> BaseException:
    """After the requested spec failed to start: start the target's last healthy spec again when a
    serving server was replaced for it. Returns the exception the flow raises (its first line says
    whether the target has a server now)."""
    logger = get_run_logger()
    previous = last_healthy(machine.name)
    if not had_server or previous is None or previous.spec_hash(machine) == failed_hash:
        return failure
    previous = machine.apply_to(previous)
    logger.warning(
        "the new spec %s: rolling back to the last spec that served on %s (%s)",
        why,
        machine.name,
        previous.spec_hash(machine),
    )
    try:
        served = serve(machine.docker_host(), machine, previous, secrets, timeouts, recover=True)
        smoke_inference(machine.endpoint, previous.served_name, secrets.api_key)
    except Exception as exc:  # noqa: BLE001 - reported: the target is down
        emit_service_event(machine.name, ServiceEvent.FAILED, {"kind": "rollback_failed", "spec_hash": failed_hash})
        return DeployFailed(
            f"TARGET {machine.name} IS DOWN: the new spec {why} ({_first_line(failure)}) and the rollback to"
            f" {previous.spec_hash(machine)} failed too ({_first_line(exc)})"
        )
    record_healthy(machine.name, served.spec, served.spec_hash, kv_cache_tokens=served.kv_cache_tokens)
    emit_service_event(
        machine.name, ServiceEvent.ROLLED_BACK, {"spec_hash": served.spec_hash, "failed_spec_hash": failed_hash}
    )
    return DeployFailed(
        f"rolled back: {machine.name} serves its last healthy spec {served.spec_hash} again; the new spec"
        f" {failed_hash} {why}: {_first_line(failure)}"
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _result(
    machine: TargetMachine,
    spec: EngineSpec,
    spec_hash: str,
    served: Served | None,
    smoke,
    staged,
    warnings: list[str],
    started: float,
    gate: GateResult | None,
    gate_note: str | None,
) -> DeployResult:
    readiness = served.readiness if served else None
    stats = readiness.stats if readiness else None
    return DeployResult(
        target=machine.name,
        status="unchanged" if served is None else "deployed",
        endpoint=machine.endpoint,
        served_model=spec.served_name,
        container=spec.container_name,
        image=spec.image,
        spec_hash=served.spec_hash if served else spec_hash,
        requested_spec_hash=spec_hash,
        degraded="; ".join(filter(None, [served.degraded(spec) if served else None, gate_note])) or None,
        attempts=len(served.attempts) if served else 0,
        kv_cache_tokens=stats.kv_cache_tokens if stats else None,
        max_concurrency=stats.max_concurrency if stats else None,
        load_s=round(stats.model_load_seconds, 2) if stats and stats.model_load_seconds else None,
        time_to_ready_s=round(readiness.time_to_ready_s, 3) if readiness else None,
        ready_at=datetime.fromtimestamp(readiness.ready_wall, UTC) if readiness else None,
        smoke_answer=smoke.chat_answer,
        smoke_latency_s=smoke.chat_latency_s,
        staged_commit=staged.commit if staged else None,
        gate=gate,
        duration_s=round(time.monotonic() - started, 3),
        warnings=warnings,
    )


def _report_failure(
    machine: TargetMachine, spec: EngineSpec, spec_hash: str, exc: BaseException, secrets: ServerSecrets
) -> None:
    """A failed deploy still reports: the event for automations, an artifact for the operator."""
    message = scrub(str(exc), secrets.values)
    cause = getattr(exc, "cause", None) or getattr(exc.__cause__, "cause", None)
    kind = str(cause.kind) if cause is not None else type(exc).__name__
    emit_service_event(
        machine.name, ServiceEvent.FAILED, {"kind": kind, "reason": message[:1000], "spec_hash": spec_hash}
    )
    sections = {"What happened": fenced(message.splitlines())}
    if cause is not None:
        sections["Cause"] = cause.markdown()
    publish_report(
        artifact_key("deploy", machine.name),
        f"deploy-qwen on {machine.name}: FAILED: {_first_line(exc)[:160]}",
        {"target": machine.name, "image": spec.image, "failure": kind},
        sections,
    )


def _report(result: DeployResult, spec: EngineSpec, served: Served | None) -> None:
    rows = {
        "status": result.status,
        "degraded": result.degraded,
        "endpoint": result.endpoint,
        "served model": result.served_model,
        "image": result.image,
        "container": result.container,
        "spec hash": result.spec_hash,
        "requested spec hash": result.requested_spec_hash if result.requested_spec_hash != result.spec_hash else None,
        "starts": result.attempts or None,
        "staged commit": result.staged_commit,
        "KV cache tokens": f"{result.kv_cache_tokens:,}" if result.kv_cache_tokens else None,
        "max concurrency (at max-model-len)": result.max_concurrency,
        "model load (s)": result.load_s,
        "time to ready (s)": result.time_to_ready_s,
        "smoke answer (12*17)": result.smoke_answer,
        "smoke latency (s)": result.smoke_latency_s,
        "flow duration (s)": result.duration_s,
    }
    if result.warnings:
        rows = {"warning": " ".join(result.warnings), **rows}
    sections = {"Command": fenced([" ".join(spec.vllm_command())])}
    if served and served.steps:
        sections["Recovery"] = "\n".join(f"- {s.klass.value}: {s.reason}" for s in served.steps)
    if result.gate is not None:
        g = result.gate
        verdict = "passed" if g.passed else "MISSED: " + "; ".join(g.problems)
        sections["Benchmark gate"] = key_value_table(
            [
                ("verdict", verdict),
                ("single stream (tok/s)", g.single_stream_tps),
                ("p99 TTFT (ms)", g.p99_ttft_ms),
                (f"{g.concurrency} concurrent (output tok/s)", g.aggregate_tps),
            ]
        )
    if served:
        sections["Phases (s)"] = fenced(f"{k}: {v}" for k, v in served.readiness.phase_seconds.items())
    title = f"deploy-qwen on {result.target}: {result.status}" + (" (DEGRADED)" if result.degraded else "")
    publish_report(artifact_key("deploy", result.target), title, rows, sections)
