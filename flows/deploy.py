"""deploy-qwen: take a machine from nothing to a verified vLLM server, as the runbook does by hand.

    prefect deployment run deploy-qwen/spark      # the DGX Spark, NVIDIA image, real Hub
    prefect deployment run deploy-qwen/sim        # the same flow on the imitations

Runbook steps -> flow steps: prerequisites (.env, /opt/hf) -> preflight, then what the image offers
(its vLLM, fastsafetensors) and the loader it gets; model download -> stage; `docker compose up -d` ->
replace-or-keep, the compile/kernel caches (create, bound), start; "Monitor Loading" and `curl /health` ->
wait-until-ready; "Troubleshooting: Container Fails with Memory Errors" -> recovery (classify the
failure, act once, retry: tasks/serve.py); "Test inference" -> smoke-inference; "Key Metrics" ->
the report. A deploy that cannot start a new spec rolls back to the last spec that served on the
target, so a failed deploy does not leave the target without a server.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from blocks.engine import RESTART_FIELDS, EngineSpec, extra_args_warnings
from blocks.target import TargetMachine
from tasks.caches import CacheReport, bound_caches, clear_caches, evict_cache_entries, list_caches, pick_evictions
from tasks.cleanup import remove_unserved_container
from tasks.container import remove_container, replace_or_keep
from tasks.errors import ServerDidNotStart, SparkVllmError
from tasks.events import ServiceEvent
from tasks.fleet import DeployOutcome, publish_outcome
from tasks.incidents.track import report_service_event
from tasks.inference import SmokeResult, smoke_inference
from tasks.loader import LoaderChoice, choose_loader, with_loader
from tasks.loadtest.run import GateResult, run_gate
from tasks.locks import gpu_lock
from tasks.preflight import preflight
from tasks.readiness import ReadinessTimeouts, endpoint_ready, serves
from tasks.recovery.planner import RecoveryLimits
from tasks.report import artifact_key, fenced, key_value_table, publish_report
from tasks.secrets import scrub
from tasks.serve import Served, ServerSecrets, Target, load_target, serve
from tasks.staging import StageResult
from tasks.staging.stage import stage_steps
from tasks.state import clear_recover_runs, desired_state, last_healthy, last_healthy_record, record_healthy
from tasks.vllm.versions import VersionInfo
from tasks.vllm_version import (
    ImageFacts,
    confirm_version,
    learn_image,
    recorded_version,
    version_rows,
    version_warnings,
)
from tasks.warmup import WarmResult, warm_page_cache

#: What the deploy report says when a server is replaced only because the project's upgrade added the
#: fast-restart fields to the spec hash (`RESTART_FIELDS`): once per server, never again.
UPGRADE_NOTE = (
    "replaced the running server once for the project's upgrade: the fast-restart defaults (loader auto,"
    " persistent caches) change the command line and the mounts, and so the spec hash; the next deploy of"
    " this spec keeps it. The runbook's exact command is the 'runbook' preset (docs/operator.md)"
)


class DeployResult(BaseModel):
    """What the fleet and health flows need to know about the deployed server."""

    target: str
    status: Literal["deployed", "unchanged"]
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
    vllm_version: str | None = None  # as the server said it (0.10.1.1+381074ae.nv25.09), else as learnt
    gate: GateResult | None = None
    loader: LoaderChoice | None = None  # the loader the spec got on this image, and why
    caches: CacheReport | None = None  # the compile/kernel caches before this start (None: no start, or none kept)
    page_cache_warm: str | None = None  # what the warm before the start did, and why (None: no start)
    compile_cache: str | None = None  # whether the start read an earlier start's torch.compile cache
    duration_s: float
    warnings: list[str] = Field(default_factory=list)


class DeployFailed(SparkVllmError):
    """The requested spec did not start; the first line says whether the target still has a server."""


class RolledBack(DeployFailed):
    """The requested spec failed and the target serves its last healthy spec again, gated again."""

    def __init__(self, message: str, spec_hash: str) -> None:
        super().__init__(message)
        self.spec_hash = spec_hash


class BenchGateFailed(SparkVllmError):
    """The new server answers but misses its spec's benchmark gate (`on_failure: fail`)."""

    def __init__(self, target: str, gate: GateResult, stays: bool) -> None:
        where = "the server keeps serving (no other healthy spec to roll back to)" if stays else ""
        super().__init__(
            f"benchmark gate failed on {target}: " + "; ".join(gate.problems) + (f"; {where}" if where else "")
        )
        self.gate = gate


@flow(
    name="deploy-qwen",
    flow_run_name="deploy-{target}",
    log_prints=True,
    on_cancellation=[remove_unserved_container],
    on_crashed=[remove_unserved_container],
)
def deploy_qwen(
    target: str = "spark",
    engine: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    stage: bool = True,
    timeouts: ReadinessTimeouts = ReadinessTimeouts(),
    recover: bool = True,
    max_attempts: int = 2,
    clear_caches: bool = False,
) -> DeployResult:
    """Deploy the engine spec on the target machine and prove it answers.

    A failure is reported (event, report, outcome) before the run ends, not from an ``on_failure``
    hook: Prefect runs a flow's hooks after the final state reached the server
    (prefect/flow_engine.py, ``FlowRunEngine.set_state``), and a fleet flow waiting on this run
    reads its outcome as soon as it sees that state.

    Args:
        target: name of the TargetMachine block (e.g. "spark", "sim").
        engine: name of an EngineSpec block; None = the runbook's compose file.
        preset: one of the runbook's tuning blocks: "throughput", "latency", "max-context"; or "runbook":
            the compose file's exact command (vLLM's mmap loader, no cache mounts).
        overrides: EngineSpec fields to change for this run only, e.g. {"gpu_memory_utilization": 0.75}.
        stage: stage the model first (skipped in seconds when the cache's manifest verifies).
        timeouts: per-phase readiness limits.
        recover: on a memory failure, classify it, act once and retry (docs/recovery.md); off: fail.
        max_attempts: retries after the first start, at most.
        clear_caches: empty the target's compile and kernel caches and start afresh (a healthy server of
            the same spec is replaced too): for a cache that is suspect.
    """
    started = time.monotonic()
    resolved = load_target(target, engine, preset, overrides)
    machine, spec = resolved.machine, resolved.spec
    spec_hash = spec.spec_hash(machine)
    vllm: VersionInfo | None = None
    try:
        # Prerequisites: docker on this machine, GPU runtime, port, image. Changes nothing.
        warnings = preflight(machine, spec.image)
        # Which vLLM the image runs and whether it has fastsafetensors (one container; docs/versions.md).
        image = learn_image(machine, spec.image)
        vllm = image.vllm
        # The loader: `auto` becomes the fastest the image has; a pinned one it lacks fails here.
        resolved, loader = _loader(resolved, image)
        spec, spec_hash = resolved.spec, resolved.spec.spec_hash(machine)
        warnings += _version_checks(spec, vllm)
        # Model download into /opt/hf: outside the GPU lock (a 32 GB download must not hold up stop-qwen).
        staged = _stage(machine, spec) if stage else None
        with gpu_lock(machine.name):
            # `docker compose up -d`: keep a healthy identical server, else replace ours and gate on health.
            healthy = endpoint_ready(machine.endpoint, spec.served_name, resolved.secrets.api_key)
            upgraded = healthy and replaced_for_upgrade(last_healthy_record(machine.name).spec_hash, spec, machine)
            keep = healthy and not clear_caches
            kept = replace_or_keep(resolved.docker_host, machine.name, spec.container_name, spec_hash, keep)
            # The compile and kernel caches the new server mounts: created, bounded, cleared when asked.
            caches = _caches(machine, spec, clear_caches) if kept is None else None
            limits = RecoveryLimits(max_attempts=max_attempts)
            warm = None
            if kept is None:  # ours is gone: read the shards into the page cache where that helps (docs/recovery.md)
                warm = warm_page_cache(machine, spec, vllm.parsed, loader.name)
            served = _start(resolved, spec_hash, timeouts, recover, limits, healthy, vllm) if kept is None else None
            # The server's own word on its vLLM (its log's version line, else GET /version) wins.
            logged = served.readiness.stats.version if served and served.readiness.stats else None
            vllm, mismatch = confirm_version(vllm, logged, machine.endpoint)
            warnings += [*version_warnings(vllm), *([mismatch] if mismatch else [])]
            # "Test inference", checked instead of read by eye.
            smoke = _smoke(resolved, served)
            # The spec's benchmark gate, on a server this run started (a kept one passed it already).
            gate, gate_note = _bench_gate(resolved, spec_hash, timeouts, served, had_server=healthy)
            # What serves now is what a rollback returns to.
            _remember(machine, spec, spec_hash, served, gate_note, vllm)
    except Exception as exc:
        _report_failure(machine, spec, spec_hash, exc, resolved.secrets, vllm)
        raise
    warnings += [UPGRADE_NOTE] if upgraded and served else []
    result = _result(machine, spec, spec_hash, served, smoke, staged, warnings, started, gate, gate_note, vllm)
    result = _with_restart_facts(result, spec, served, loader, caches, warm)
    _report(result, spec, served, vllm)
    return result


def _with_restart_facts(
    result: DeployResult,
    spec: EngineSpec,
    served: Served | None,
    loader: LoaderChoice,
    caches: CacheReport | None,
    warm: WarmResult | None,
) -> DeployResult:
    """The result with what makes a restart fast (docs/operator.md): the loader and why, the
    caches (and their bound's warning), the page-cache warm, whether the compile cache was read."""
    return result.model_copy(
        update={
            "loader": loader,
            "caches": caches,
            "page_cache_warm": warm.summary if warm else None,
            "compile_cache": compile_cache_row(spec, served),
            "warnings": [*result.warnings, *([caches.warning] if caches and caches.warning else [])],
        }
    )


def compile_cache_row(spec: EngineSpec, served: Served | None) -> str | None:
    """Whether the start read an earlier start's torch.compile cache (its log's "Directly load ..."
    line), for the report: the one figure that says the cache mount works. None without a start."""
    if served is None or served.readiness.stats is None:
        return None
    if not spec.persistent_caches:
        return "not kept: persistent_caches is off (each container compiles again)"
    if served.readiness.stats.compile_cache_hit:
        return "hit: read the compiled graphs an earlier start of this config left in the mounted cache"
    return "miss: compiled, and saved in the mounted cache for the next start of this config"


def _loader(resolved: Target, image: ImageFacts) -> tuple[Target, LoaderChoice]:
    """The spec with its loader chosen for the image (tasks/loader.py), and the choice, logged once.

    Raises:
        LoaderUnavailable: the spec pins a loader the image lacks (before anything starts).
    """
    choice = choose_loader(resolved.spec.loader, image.vllm.parsed, image.fastsafetensors)
    get_run_logger().info("loader: %s", _loader_row(choice))
    return dataclasses.replace(resolved, spec=with_loader(resolved.spec, choice)), choice


def replaced_for_upgrade(recorded_hash: str | None, spec: EngineSpec, machine: TargetMachine) -> bool:
    """True when the serving server (its recorded hash) is ``spec`` as hashed before the fast-restart
    fields existed (`RESTART_FIELDS`): replacing it is the project upgrade's one-time cost (pure)."""
    now = spec.spec_hash(machine)
    return recorded_hash not in (None, now) and recorded_hash == spec.spec_hash(machine, RESTART_FIELDS)


def _caches(machine: TargetMachine, spec: EngineSpec, clear: bool) -> CacheReport | None:
    """Before a start: clear the caches when asked; create them (when the spec mounts them) and keep them
    under the target's bound, oldest entries first. None when the spec keeps no caches (runbook preset)."""
    if clear:
        clear_caches(machine, spec.image)
    if not spec.persistent_caches:
        return None
    listing = list_caches(machine, spec.image)
    evicted = pick_evictions(listing, int(machine.vllm_cache_max_gib * 1024**3))
    if evicted:
        evict_cache_entries(machine, spec.image, evicted)
    report = bound_caches(machine, listing, evicted, cleared=clear)
    if report.warning:
        get_run_logger().warning("%s", report.warning)
    return report


def _version_checks(spec: EngineSpec, vllm: VersionInfo) -> list[str]:
    """Before anything starts: every flag the spec renders exists in this vLLM (`FlagUnavailable`
    names the field to clear otherwise); what to know about the ``extra_args`` on it. (What to know
    about the version itself waits for the server's word: an assumption it confirms is no warning.)"""
    spec.vllm_command(vllm.parsed)
    flagged = extra_args_warnings(spec.extra_args, vllm.parsed)
    for warning in flagged:
        get_run_logger().warning("%s", warning)
    return flagged


def _remember(
    machine: TargetMachine,
    spec: EngineSpec,
    spec_hash: str,
    served: Served | None,
    gate_note: str | None,
    vllm: VersionInfo,
) -> None:
    """Record the spec that serves (how it is degraded; a kept server keeps its note) and its vLLM
    as the last healthy one; a person deployed, so the cap on failing recoveries starts again."""
    note = served.degraded(spec) if served else last_healthy_record(machine.name).degraded
    degraded = "; ".join(filter(None, [note, gate_note])) or None
    if served is None:
        record_healthy(machine.name, spec, spec_hash, degraded=degraded, vllm_version=vllm.version)
    else:
        record_healthy(
            machine.name,
            served.spec,
            served.spec_hash,
            degraded=degraded,
            kv_cache_tokens=served.kv_cache_tokens,
            vllm_version=vllm.version,
        )
    clear_recover_runs(machine.name)


def _stage(machine: TargetMachine, spec: EngineSpec) -> StageResult:
    """stage-model's steps, as tasks of this flow run (a subflow costs ~1.3 s here: its own run, and
    Prefect's heartbeat thread joined at its exit); staging has file locks of its own."""
    return stage_steps(
        repo_id=spec.model,
        revision=spec.revision or "main",
        cache_dir=machine.cache_dir,
        endpoint=machine.hub_endpoint,
        token_secret_block=machine.hf_token_secret,
    )


def _start(
    resolved: Target,
    spec_hash: str,
    timeouts: ReadinessTimeouts,
    recover: bool,
    limits: RecoveryLimits,
    had_server: bool,
    vllm: VersionInfo,
) -> Served:
    """Start the spec (with recovery, by the rules of its ``vllm``); when it does not start,
    roll back to the last healthy spec."""
    machine, spec, secrets = resolved.machine, resolved.spec, resolved.secrets
    try:
        return serve(resolved.docker_host, machine, spec, secrets, timeouts, recover=recover, limits=limits, vllm=vllm)
    except ServerDidNotStart as exc:
        # a healthy server was replaced: do not leave the target without one
        outcome = _roll_back(machine, spec_hash, secrets, timeouts, exc, had_server=had_server)
        if outcome is exc:
            raise
        raise outcome from exc


def _smoke(resolved: Target, served: Served | None) -> SmokeResult:
    """The runbook's test inference; a server this run started and that answers wrongly does not stay."""
    try:
        return smoke_inference(resolved.machine.endpoint, resolved.spec.served_name, resolved.secrets.api_key)
    except Exception:
        if served is not None:
            remove_container(resolved.docker_host, served.container_id, stop_timeout=10)
        raise


def _bench_gate(
    resolved: Target, spec_hash: str, timeouts: ReadinessTimeouts, served: Served | None, had_server: bool
) -> tuple[GateResult | None, str | None]:
    """Run the spec's benchmark gate on a server this run started: (the gate, a note when it was missed).

    A miss with ``on_failure: fail`` raises: after a rollback to the last healthy spec when there
    is one to go back to, else with the new server left serving.
    """
    machine, spec, secrets = resolved.machine, resolved.spec, resolved.secrets
    if spec.bench_gate is None or served is None:
        return None, None
    gate = run_gate(machine.name, machine.endpoint, spec.served_name, secrets.api_key, spec.bench_gate)
    if gate.passed:
        return gate, None
    if spec.bench_gate.on_failure != "fail":
        return gate, "benchmark gate missed: " + "; ".join(gate.problems)
    previous = last_healthy(machine.name)
    stays = not had_server or previous is None or previous.spec_hash(machine) == spec_hash
    failure = BenchGateFailed(machine.name, gate, stays)
    if stays:
        raise failure
    remove_container(resolved.docker_host, served.container_id, stop_timeout=10)  # its memory is the rollback's
    why = "missed its benchmark gate"
    raise _roll_back(machine, spec_hash, secrets, timeouts, failure, had_server=True, why=why) from failure


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
    record = last_healthy_record(machine.name)
    previous = record.spec
    if not had_server or previous is None or previous.spec_hash(machine) == failed_hash:
        return failure
    previous = machine.apply_to(previous)
    known = recorded_version(previous.image, record.vllm_version_of(previous.image))  # its server's word
    logger.warning(
        "the new spec %s: rolling back to the last spec that served on %s (%s)",
        why,
        machine.name,
        previous.spec_hash(machine),
    )
    try:
        served = serve(
            machine.docker_host(),
            machine,
            previous,
            secrets,
            timeouts,
            recover=True,
            vllm=known,
        )
        smoke_inference(machine.endpoint, previous.served_name, secrets.api_key)
    except Exception as exc:  # noqa: BLE001 - reported: the target is down
        report_service_event(
            machine.name,
            ServiceEvent.FAILED,
            {
                "kind": "rollback_failed",
                "spec_hash": failed_hash,
                "down": True,
                "reason": f"the new spec {why} ({_first_line(failure)}); the rollback failed too ({_first_line(exc)})",
            },
        )
        return DeployFailed(
            f"TARGET {machine.name} IS DOWN: the new spec {why} ({_first_line(failure)}) and the rollback to"
            f" {previous.spec_hash(machine)} failed too ({_first_line(exc)})"
        )
    logged = served.readiness.stats.version if served.readiness.stats else None
    record_healthy(
        machine.name, served.spec, served.spec_hash, kv_cache_tokens=served.kv_cache_tokens, vllm_version=logged
    )
    report_service_event(
        machine.name,
        ServiceEvent.ROLLED_BACK,
        {
            "spec_hash": served.spec_hash,
            "failed_spec_hash": failed_hash,
            "reason": f"the new spec {failed_hash} {why}: {_first_line(failure)}",
        },
        vllm_version=logged,
    )
    return RolledBack(
        f"rolled back: {machine.name} serves its last healthy spec {served.spec_hash} again; the new spec"
        f" {failed_hash} {why}: {_first_line(failure)}",
        served.spec_hash,
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
    vllm: VersionInfo,
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
        vllm_version=vllm.version,
        gate=gate,
        duration_s=round(time.monotonic() - started, 3),
        warnings=warnings,
    )


def _report_failure(
    machine: TargetMachine,
    spec: EngineSpec,
    spec_hash: str,
    exc: BaseException,
    secrets: ServerSecrets,
    vllm: VersionInfo | None,
) -> None:
    """A failed deploy still reports (with the vLLM when it was learnt before the failure): the event
    for automations, an artifact for the operator."""
    version = vllm.version if vllm else None
    message = scrub(str(exc), secrets.values)
    cause = getattr(exc, "cause", None) or getattr(exc.__cause__, "cause", None)
    kind = str(cause.kind) if cause is not None else type(exc).__name__
    report_service_event(
        machine.name,
        ServiceEvent.FAILED,
        {"kind": kind, "reason": message[:1000], "spec_hash": spec_hash, "down": _left_down(machine, spec, secrets)},
        vllm_version=version,
    )
    sections = {"What happened": fenced(message.splitlines())}
    if cause is not None:
        sections["Cause"] = cause.markdown()
    publish_report(
        artifact_key("deploy", machine.name),
        f"deploy-qwen on {machine.name}: FAILED: {_first_line(exc)[:160]}",
        {"target": machine.name, "image": spec.image, **version_rows(vllm), "failure": kind},
        sections,
    )
    publish_outcome(
        DeployOutcome(
            target=machine.name,
            verdict="failed",
            message=message[:500],
            endpoint=machine.endpoint,
            spec_hash=exc.spec_hash if isinstance(exc, RolledBack) else None,  # what serves after the rollback
            vllm_version=version,
        )
    )


def _left_down(machine: TargetMachine, spec: EngineSpec, secrets: ServerSecrets) -> bool:
    """A failed deploy left a target that was wanted running (a desired state or a server that served)
    with no server answering /health: the incident's "target down". A target never deployed is not
    down: the person who ran the first deploy reads its failure."""
    wanted = desired_state(machine.name) == "running" or last_healthy_record(machine.name).at is not None
    return wanted and not serves(machine.endpoint, secrets.api_key)


def _loader_row(choice: LoaderChoice | None) -> str | None:
    """`eager (--safetensors-load-strategy eager): auto: ...`: the loader, its flags and why."""
    if choice is None:
        return None
    flags = f" ({' '.join(choice.flags)})" if choice.flags else ""
    return f"{choice.name}{flags}: {choice.why}"


def _report(result: DeployResult, spec: EngineSpec, served: Served | None, vllm: VersionInfo) -> None:
    """A deploy that serves reports: the report artifact for the operator, the outcome for the flow
    that started it, the event for automations, one log line."""
    rows = {
        "status": result.status,
        "degraded": result.degraded,
        "endpoint": result.endpoint,
        "served model": result.served_model,
        "image": result.image,
        **version_rows(vllm),
        "container": result.container,
        "spec hash": result.spec_hash,
        "requested spec hash": result.requested_spec_hash if result.requested_spec_hash != result.spec_hash else None,
        "starts": result.attempts or None,
        "staged commit": result.staged_commit,
        "KV cache tokens": f"{result.kv_cache_tokens:,}" if result.kv_cache_tokens else None,
        "max concurrency (at max-model-len)": result.max_concurrency,
        "model load (s)": result.load_s,
        "loader": _loader_row(result.loader),
        "vLLM caches": result.caches.summary() if result.caches else None,
        "compile cache": result.compile_cache,
        "page-cache warm": result.page_cache_warm,
        "time to ready (s)": result.time_to_ready_s,
        "smoke answer (12*17)": result.smoke_answer,
        "smoke latency (s)": result.smoke_latency_s,
        "flow duration (s)": result.duration_s,
    }
    if result.warnings:
        rows = {"warning": " ".join(result.warnings), **rows}
    sections = {"Command": fenced([" ".join(spec.vllm_command(vllm.parsed))])}
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
    outcome = DeployOutcome(
        target=result.target,
        verdict=result.status,
        endpoint=result.endpoint,
        spec_hash=result.spec_hash,
        degraded=result.degraded,
        kv_cache_tokens=result.kv_cache_tokens,
        vllm_version=result.vllm_version,
    )
    publish_report(
        artifact_key("deploy", result.target), f"deploy-qwen on {result.target}: {outcome.summary}", rows, sections
    )
    publish_outcome(outcome)
    report_service_event(
        result.target,
        ServiceEvent(result.status),
        {
            "endpoint": result.endpoint,
            "spec_hash": result.spec_hash,
            "served_model": result.served_model,
            "degraded": result.degraded or "",
            "gate": "; ".join(result.gate.problems) if result.gate and not result.gate.passed else "",
        },
        vllm_version=result.vllm_version,
    )
    get_run_logger().info(
        "%s %s on %s: %s (served model %s)%s",
        vllm.label(),
        result.status,
        result.target,
        result.endpoint,
        result.served_model,
        f"; {result.degraded}" if result.degraded else "",
    )
