"""What the flows remember per target between runs, as Prefect Variables.

Variables, not the target block: this is state the flows write after every run, while the block is
the operator's configuration, edited in the UI (a flow that rewrote the block would race with
those edits). Variables show in the UI's Variables page, are JSON, and survive worker restarts.
Every name is defined here, once:

- `vllm-last-healthy-<target>`: the last spec that served (what a rollback returns to);
- `vllm-recoveries-<target>`: the recent recovery steps (the planner's history across runs);
- `vllm-desired-<target>`: "running" (deploy-qwen, recover-vllm) or "stopped" (stop-qwen): a
  stopped target is never recovered;
- `vllm-health-<target>`: the health check's memory: the verdict and since when, the last
  /metrics snapshot and restart count (progress and crash loops are judged between two checks); the
  history itself is the `health-history-<target>` table artifact, read back with `health_history`
  (Prefect refuses a Variable of more than 5,000 characters: every value here stays small);
- `vllm-recover-runs-<target>`: when recover-vllm ran and whether it ended healthy (the cap on
  recoveries that keep failing).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.artifacts import Artifact
from prefect.variables import Variable

from blocks.engine import EngineSpec
from tasks.recovery.planner import RecoveryStep

LAST_HEALTHY_PREFIX = "vllm-last-healthy-"
RECOVERIES_PREFIX = "vllm-recoveries-"
DESIRED_PREFIX = "vllm-desired-"
HEALTH_PREFIX = "vllm-health-"
RECOVER_RUNS_PREFIX = "vllm-recover-runs-"
KEEP_RECOVERIES = 10
HEALTH_HISTORY = 48

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


def record_healthy(
    target_name: str, spec: EngineSpec, spec_hash: str, degraded: str | None = None, kv_cache_tokens: int | None = None
) -> None:
    """Record the spec that serves now (for a rollback; ``degraded``: "requested X, running Y,
    because Z" when recovery changed it; its KV cache size when this run started it, for the fleet
    view), and that the target should be running."""
    previous = last_healthy_record(target_name)
    if kv_cache_tokens is None and previous.get("spec_hash") == spec_hash:
        kv_cache_tokens = previous.get("kv_cache_tokens")  # the same server, kept: its size is unchanged
    Variable.set(
        LAST_HEALTHY_PREFIX + target_name,
        {
            "spec": spec.model_dump(mode="json", include=set(EngineSpec.model_fields)),
            "spec_hash": spec_hash,
            "degraded": degraded,
            "kv_cache_tokens": kv_cache_tokens,
            "at": datetime.now(UTC).isoformat(),
        },
        overwrite=True,
    )
    set_desired(target_name, "running")


def last_healthy_record(target_name: str) -> dict[str, Any]:
    """The raw record of the last healthy spec ({} when none): spec_hash, degraded, at."""
    value = Variable.get(LAST_HEALTHY_PREFIX + target_name, default=None)
    return value if isinstance(value, dict) else {}


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
    """Append steps to the target's recent recoveries (the last KEEP_RECOVERIES are kept).

    Only what the planner reads of its history is kept (class, actions, give-up, time): a whole step
    with its reason is ~500 characters, and Prefect refuses a Variable of more than 5,000.
    """
    kept = [*recent_recoveries(target_name), *steps][-KEEP_RECOVERIES:]
    compact = [
        {
            "klass": s.klass.value,
            "actions": [a.value for a in s.actions],
            "give_up": s.give_up,
            "reason": "(kept: class, actions, outcome, time)",
            "at": s.at.isoformat() if s.at else None,
        }
        for s in kept
    ]
    Variable.set(RECOVERIES_PREFIX + target_name, compact, overwrite=True)


def desired_state(target_name: str) -> DesiredState | None:
    """What the operator last asked of the target: "running", "stopped", or None (never deployed)."""
    value = Variable.get(DESIRED_PREFIX + target_name, default=None)
    return value if value in ("running", "stopped") else None


def set_desired(target_name: str, state: DesiredState) -> None:
    Variable.set(DESIRED_PREFIX + target_name, state, overwrite=True)


def health_state(target_name: str) -> dict[str, Any]:
    """The health check's memory of the target ({} before the first check)."""
    value = Variable.get(HEALTH_PREFIX + target_name, default=None)
    return value if isinstance(value, dict) else {}


def save_health_state(target_name: str, state: dict[str, Any]) -> None:
    """Save the check's small state (no history: see `health_history`)."""
    Variable.set(HEALTH_PREFIX + target_name, {k: v for k, v in state.items() if k != "history"}, overwrite=True)


def health_history(target_name: str, key: str) -> list[dict[str, str]]:
    """The last checks, oldest first, from the latest version of the history table artifact ``key``."""
    artifact = Artifact.get(key)
    if artifact is None or not artifact.data:
        return []
    try:
        rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    except ValueError:
        return []
    return list(reversed([r for r in rows if isinstance(r, dict)]))[-HEALTH_HISTORY:]


def recover_runs(target_name: str) -> list[tuple[float, bool]]:
    """(epoch seconds, ended healthy) of the target's recent recover-vllm runs, oldest first."""
    value = Variable.get(RECOVER_RUNS_PREFIX + target_name, default=None)
    return [(float(at), bool(ok)) for at, ok in value] if isinstance(value, list) else []


def record_recover_run(target_name: str, at: float, ended_healthy: bool) -> None:
    kept = [*recover_runs(target_name), (at, ended_healthy)][-KEEP_RECOVERIES:]
    Variable.set(RECOVER_RUNS_PREFIX + target_name, [list(item) for item in kept], overwrite=True)


def clear_recover_runs(target_name: str) -> None:
    """A person deployed: the cap on failing recoveries starts again."""
    Variable.set(RECOVER_RUNS_PREFIX + target_name, [], overwrite=True)
