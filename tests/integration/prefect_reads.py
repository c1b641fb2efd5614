"""Read back what a flow run left on the Prefect server: its logs and artifacts (test helpers)."""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import ArtifactSort, LogSort


def flow_run_logs(flow_run_id: UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), sort=LogSort.TIMESTAMP_ASC, limit=200
        )
        offset = len(logs)
        while True:
            more = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                sort=LogSort.TIMESTAMP_ASC,
                limit=200,
                offset=offset,
            )
            if not more:
                break
            logs += more
            offset += len(more)
    return [log.message for log in logs]


def flow_run_artifacts(flow_run_id: UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return [str(a.data) + str(a.description) for a in artifacts]


def latest_artifact(key: str):
    """The newest version of the artifact ``key`` (what the UI's /artifacts/key/<key> page shows)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    assert found, f"no artifact with key {key}"
    return found[0]


def table_rows(key: str) -> list[dict]:
    """The rows of the newest table artifact ``key`` (the API returns its data as a JSON string)."""
    import json

    data = latest_artifact(key).data
    return json.loads(data) if isinstance(data, str) else data


def flush_logs() -> None:
    """Logs reach the server in batches; send what is queued before reading them back."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
