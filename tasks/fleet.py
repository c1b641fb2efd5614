"""The fleet flows' pieces: run a target's deployment and wait, read its outcome, one row per target.

Why through deployments: each target's flows must run on that target's machine (its worker polls
the queue named after it), so a fleet flow never deploys anything itself. It asks Prefect to run
`deploy-qwen/<target>` (or `health-check/<target>`) and waits for the flow run's final state; the
facts it reports come back through the Prefect server (the run's state, its `DeployOutcome`
artifact, the targets' Variables), never from the remote machine's memory.

Why an outcome artifact and not the run's result: a flow run's result reaches another machine only
through result storage every worker can read (a shared storage block: S3, a network share), one
more thing an operator must set up and secure; the result itself stays on the deploying machine by
default. The outcome is small, so deploy-qwen publishes it as a one-row table artifact of its run
(`deploy-outcome-<target>`), which any flow reads back as data through the API it already talks to
(docs/fleet.md, "How results travel").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, cast
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.artifacts import Artifact, create_table_artifact
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.client.schemas.objects import Artifact as ArtifactResponse
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, ValidationError

from blocks.engine import EngineSpec
from tasks.report import artifact_key, table_rows
from tasks.state import HealthState, HealthyRecord

#: How often a waiting fleet flow asks for the state of a target's run (Prefect's default is 5 s).
POLL_INTERVAL_S = 1.0
#: The artifact (key `deploy-outcome-<target>`) that carries a deploy-qwen run's `DeployOutcome`.
OUTCOME_KEY = "deploy-outcome"


class DeployOutcome(BaseModel):
    """What a deploy-qwen run tells the flow that started it, as data (published by the run itself)."""

    target: str
    verdict: Literal["deployed", "unchanged", "failed"]
    message: str = ""  # failed: the error as raised ("rolled back: ..."), secrets scrubbed
    endpoint: str = ""
    spec_hash: str | None = None  # the spec that serves now (after recovery or a rollback)
    degraded: str | None = None  # "requested X, running Y, because Z" when recovery changed the spec
    kv_cache_tokens: int | None = None
    vllm_version: str | None = None  # the vLLM that serves (the server's word, else what was learnt)

    @property
    def summary(self) -> str:
        """The verdict as a fleet table shows it: "deployed", "unchanged (DEGRADED)", "failed: ..."."""
        if self.verdict == "failed":
            return f"failed: {self.message}"
        return self.verdict + (" (DEGRADED)" if self.degraded else "")


def publish_outcome(outcome: DeployOutcome) -> None:
    """Publish the run's outcome as a one-row table artifact (data a fleet flow reads back)."""
    create_table_artifact(
        table=[outcome.model_dump(mode="json")],
        key=artifact_key(OUTCOME_KEY, outcome.target),
        description=f"deploy-qwen on {outcome.target}: {outcome.summary}"[:200],
    )


def read_outcome(flow_run_id: UUID, target: str) -> DeployOutcome | None:
    """The outcome the flow run published (None: it published none, e.g. it crashed)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=[artifact_key(OUTCOME_KEY, target)]),
            ),
            limit=1,
        )
    rows = table_rows(found[0].data) if found else []
    try:
        return DeployOutcome.model_validate(rows[0]) if rows else None
    except ValidationError:  # not an outcome: none published
        return None


def latest_outcome(target: str) -> tuple[DeployOutcome, float] | None:
    """The target's last deploy-qwen outcome, whoever ran it, and when it was published (epoch s)."""
    artifact = cast(ArtifactResponse | None, Artifact.get(artifact_key(OUTCOME_KEY, target)))  # sync/async dual
    rows = table_rows(artifact.data) if artifact is not None else []
    try:
        outcome = DeployOutcome.model_validate(rows[0]) if rows else None
    except ValidationError:
        return None
    return (outcome, artifact.created.timestamp()) if outcome is not None and artifact and artifact.created else None


class TargetRun(BaseModel):
    """One target's flow run, as the fleet flow saw it end."""

    target: str
    deployment: str
    flow_run_id: UUID | None = None
    state: str  # "COMPLETED", "FAILED", "CRASHED", "CANCELLED", ... or "NOT STARTED"
    message: str = ""  # the final state's message, as Prefect wrote it
    outcome: DeployOutcome | None = None  # what a deploy-qwen run published about itself
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"

    @property
    def why(self) -> str:
        """Why it failed: the run's own words when it published them, else Prefect's state message."""
        return self.outcome.message if self.outcome and self.outcome.message else self.message


@task(name="run-on-target", task_run_name="{deployment} on {target}")
def run_on_target(
    deployment: str, target: str, parameters: Mapping[str, Any] | None = None, with_outcome: bool = False
) -> TargetRun:
    """Run `deployment` with `target` (and `parameters`) through its worker; wait for its final state.

    Never raises for the run's failure: a fleet flow reports every target, and one failure must not
    stop the others. A missing deployment is a "NOT STARTED" run whose message says how to register it.
    ``with_outcome``: read the `DeployOutcome` the run published (deploy-qwen's runs).
    """
    started = time.monotonic()
    try:
        run = cast(
            FlowRun,
            run_deployment(
                name=deployment,
                parameters={"target": target, **dict(parameters or {})},
                timeout=None,
                poll_interval=POLL_INTERVAL_S,
            ),
        )  # sync/async dual: a FlowRun in sync code
    except ObjectNotFound:
        return TargetRun(
            target=target,
            deployment=deployment,
            state="NOT STARTED",
            message=f"no deployment {deployment}: register the fleet (python -m deployments.fleet register "
            "<targets file>) or check the target's name",
        )
    state = run.state
    result = TargetRun(
        target=target,
        deployment=deployment,
        flow_run_id=run.id,
        state=state.type.value if state else "UNKNOWN",
        message=(state.message or "")[:500] if state else "",
        outcome=read_outcome(run.id, target) if with_outcome else None,
        seconds=round(time.monotonic() - started, 2),
    )
    logger = get_run_logger()
    if result.ok:
        done = result.outcome.summary if result.outcome else "completed"
        logger.info("%s on %s: %s in %.1f s", deployment, target, done, result.seconds)
    else:
        logger.warning("%s on %s: %s: %s", deployment, target, result.state, result.why)
    return result


def spec_summary(spec: EngineSpec | None) -> str:
    """A spec as the fleet table shows it: its serving hash (the same on every machine) and the
    fields presets change."""
    if spec is None:
        return ""
    return (
        f"{spec.serving_hash()} (seqs {spec.max_num_seqs}, util {spec.gpu_memory_utilization:.2f}, "
        f"len {spec.max_model_len})"
    )


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "never"
    seconds = max(0, int(now - epoch))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def fleet_row(
    target: str, endpoint: str, run: TargetRun | None, record: HealthyRecord, health: HealthState, now: float
) -> dict[str, Any]:
    """One target's row of a fleet table (pure): this run's verdict, what serves, its last check."""
    if run is None:
        verdict = ""
    elif run.ok:
        verdict = run.outcome.summary if run.outcome else "completed"
    else:
        verdict = f"{run.state}: {run.why}"[:300]
    last_check = f"{health.verdict} ({_ago(health.checked_at, now)})" if health.verdict else "never"
    return {
        "target": target,
        "verdict": verdict,
        "endpoint": endpoint,
        "model": record.spec.served_name if record.spec else "",
        "spec": spec_summary(record.spec),
        "degraded": record.degraded or "",
        "kv_cache_tokens": record.kv_cache_tokens,
        "vllm": record.vllm_version or "",
        "last_health_check": last_check,
    }


def now_epoch() -> float:
    return datetime.now(UTC).timestamp()
