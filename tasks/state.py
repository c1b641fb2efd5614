"""What the flows remember per target between runs, as Prefect Variables.

Variables, not the target block: this is state the flows write after every run, while the block is
the operator's configuration, edited in the UI (a flow that rewrote the block would race with
those edits). Variables show in the UI's Variables page, are JSON, and survive worker restarts.
Every name is defined here, once:

- `vllm-last-healthy-<target>`: the last spec that served (what a rollback returns to);
- `vllm-recoveries-<target>`: the recent recovery steps (the planner's history across runs);
- `vllm-desired-<target>`: "running" (deploy-qwen, recover-vllm) or "stopped" (stop-qwen): a
  stopped target is never recovered.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from prefect.variables import Variable

from blocks.engine import EngineSpec
from tasks.recovery import RecoveryStep

LAST_HEALTHY_PREFIX = "vllm-last-healthy-"
RECOVERIES_PREFIX = "vllm-recoveries-"
DESIRED_PREFIX = "vllm-desired-"
KEEP_RECOVERIES = 20

DesiredState = Literal["running", "stopped"]


def last_healthy(target_name: str) -> EngineSpec | None:
    """The last spec that served on the target (None: none recorded, or it no longer validates)."""
    value = Variable.get(LAST_HEALTHY_PREFIX + target_name, default=None)
    if not isinstance(value, dict) or not isinstance(value.get("spec"), dict):
        return None
    try:
        return EngineSpec(**value["spec"])
    except ValueError:
        return None


def record_healthy(target_name: str, spec: EngineSpec, spec_hash: str) -> None:
    """Record the spec that serves now (for a rollback), and that the target should be running."""
    Variable.set(LAST_HEALTHY_PREFIX + target_name, {
        "spec": spec.model_dump(mode="json", include=set(EngineSpec.model_fields)), "spec_hash": spec_hash,
        "at": datetime.now(timezone.utc).isoformat()}, overwrite=True)
    set_desired(target_name, "running")


def recent_recoveries(target_name: str) -> list[RecoveryStep]:
    """The target's recent recovery steps, oldest first."""
    value = Variable.get(RECOVERIES_PREFIX + target_name, default=None)
    steps = []
    for item in value if isinstance(value, list) else []:
        try:
            steps.append(RecoveryStep.model_validate(item))
        except ValueError:
            continue
    return steps


def remember_recoveries(target_name: str, steps: list[RecoveryStep]) -> None:
    """Append steps to the target's recent recoveries (the last KEEP_RECOVERIES are kept)."""
    kept = [*recent_recoveries(target_name), *steps][-KEEP_RECOVERIES:]
    Variable.set(RECOVERIES_PREFIX + target_name, [s.model_dump(mode="json") for s in kept], overwrite=True)


def desired_state(target_name: str) -> DesiredState | None:
    """What the operator last asked of the target: "running", "stopped", or None (never deployed)."""
    value = Variable.get(DESIRED_PREFIX + target_name, default=None)
    return value if value in ("running", "stopped") else None


def set_desired(target_name: str, state: DesiredState) -> None:
    Variable.set(DESIRED_PREFIX + target_name, state, overwrite=True)
