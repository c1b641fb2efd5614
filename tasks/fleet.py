"""The fleet flows' pieces: run a target's deployment and wait, read what it left, one row per target.

Why through deployments: each target's flows must run on that target's machine (its worker polls
the queue named after it), so a fleet flow never deploys anything itself. It asks Prefect to run
`deploy-qwen/<target>` (or `health-check/<target>`) and waits for the flow run's final state; the
facts it reports come back through the Prefect server (the run's state and artifacts, the targets'
Variables), never from the remote machine's memory.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from blocks.engine import EngineSpec
from tasks.report import artifact_key

#: How often a waiting fleet flow asks for the state of a target's run (Prefect's default is 5 s).
POLL_INTERVAL_S = 1.0


class TargetRun(BaseModel):
    """One target's flow run, as the fleet flow saw it end."""

    target: str
    deployment: str
    flow_run_id: UUID | None = None
    state: str  # "COMPLETED", "FAILED", "CRASHED", "CANCELLED", ... or "NOT STARTED"
    message: str = ""
    outcome: str = ""  # the run's own report title after "deploy-qwen on <target>: ", when it left one
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"


_ENGINE_PREFIX = "Flow run encountered an exception: "
_EXCEPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*: ")


def run_message(message: str | None) -> str:
    """A failed run's state message as the flow raised it: without Prefect's "Flow run encountered
    an exception: " and the exception's class name ("DeployFailed: rolled back: ..." -> "rolled back: ...")."""
    text = (message or "").removeprefix(_ENGINE_PREFIX)
    return _EXCEPTION_NAME.sub("", text, count=1)


def _report_title(flow_run_id: UUID, key: str) -> str:
    """The description (title) of the artifact `key` the flow run published, "" when none."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])
            ),
            limit=1,
        )
    return (found[0].description or "") if found else ""


@task(name="run-on-target", task_run_name="{deployment} on {target}")
def run_on_target(
    deployment: str, target: str, parameters: Mapping[str, Any] | None = None, report_key: str | None = None
) -> TargetRun:
    """Run `deployment` with `target` (and `parameters`) through its worker; wait for its final state.

    Never raises for the run's failure: a fleet flow reports every target, and one failure must not
    stop the others. A missing deployment is a "NOT STARTED" run whose message says how to register it.
    """
    started = time.monotonic()
    try:
        run = run_deployment(
            name=deployment,
            parameters={"target": target, **dict(parameters or {})},
            timeout=None,
            poll_interval=POLL_INTERVAL_S,
        )
    except ObjectNotFound:
        return TargetRun(
            target=target,
            deployment=deployment,
            state="NOT STARTED",
            message=f"no deployment {deployment}: register the fleet (python -m deployments.fleet register "
            "<targets file>) or check the target's name",
        )
    state = run.state
    outcome = ""
    if report_key:
        title = _report_title(run.id, artifact_key(report_key, target))
        outcome = title.split(": ", 1)[1] if ": " in title else title
    result = TargetRun(
        target=target,
        deployment=deployment,
        flow_run_id=run.id,
        state=state.type.value if state else "UNKNOWN",
        message=run_message(state.message)[:500] if state else "",
        outcome=outcome,
        seconds=round(time.monotonic() - started, 2),
    )
    logger = get_run_logger()
    if result.ok:
        logger.info("%s on %s: %s in %.1f s", deployment, target, outcome or "completed", result.seconds)
    else:
        logger.warning("%s on %s: %s: %s", deployment, target, result.state, result.message)
    return result


def spec_summary(record: Mapping[str, Any]) -> str:
    """A spec as the fleet table shows it: its serving hash (the same on every machine) and the
    fields presets change."""
    spec_fields = record.get("spec")
    if not isinstance(spec_fields, dict):
        return ""
    try:
        spec = EngineSpec(**spec_fields)
    except ValueError:
        return "(unreadable)"
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
    target: str, endpoint: str, run: TargetRun | None, record: Mapping[str, Any], health: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """One target's row of a fleet table (pure): this run's verdict, what serves, its last check."""
    if run is None:
        verdict = ""
    elif run.ok:
        verdict = run.outcome or "completed"
    else:
        verdict = f"{run.state}: {run.message}"[:300]
    spec = record.get("spec") if isinstance(record.get("spec"), dict) else {}
    served = spec.get("served_model_name") or spec.get("model") or ""
    checked = health.get("checked_at")
    last_check = f"{health['verdict']} ({_ago(checked, now)})" if health.get("verdict") else "never"
    return {
        "target": target,
        "verdict": verdict,
        "endpoint": endpoint,
        "model": served,
        "spec": spec_summary(record),
        "degraded": record.get("degraded") or "",
        "kv_cache_tokens": record.get("kv_cache_tokens"),
        "last_health_check": last_check,
    }


def now_epoch() -> float:
    return datetime.now(UTC).timestamp()
