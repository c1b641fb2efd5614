"""The shared report helpers (tasks/report.py) staging uses, and the Hub's connection errors.

The keys asserted here are the ones the UI groups artifacts by: a change would split an
artifact's history, so they are pinned.
"""

from __future__ import annotations

import re
from uuid import uuid4

import pytest

import tasks.report as report
from sim.ports import free_port
from tasks.report import ProgressArtifact, artifact_key, key_value_table, markdown_table
from tasks.staging.errors import HubUnreachableError
from tasks.staging.hub import resolve_from_hub


@pytest.mark.parametrize(
    "parts,key",
    [
        (("deploy", "Spark_2"), "deploy-spark-2"),
        (("vllm-load", "sim"), "vllm-load-sim"),
        (("stop", "spark"), "stop-spark"),
        (("staging", "Qwen/Qwen3-32B-FP8"), "staging-qwen-qwen3-32b-fp8"),
        (("staging-progress", "Qwen/Qwen3-32B-FP8"), "staging-progress-qwen-qwen3-32b-fp8"),
        (("deploy", "my__box..2"), "deploy-my-box-2"),  # runs collapse to one dash
        (("deploy", "-Édge box-"), "deploy-dge-box"),  # non-ASCII letters are not key characters
    ],
)
def test_artifact_keys_are_stable_and_valid(parts: tuple[str, ...], key: str) -> None:
    assert artifact_key(*parts) == key
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", key)  # Prefect's rule, and no double dash


def test_artifact_key_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError, match="no artifact key"):
        artifact_key("//", "__")


def test_markdown_table_escapes_pipes_and_newlines() -> None:
    table = markdown_table(("file", "size"), [("a|b.json", 1), ("two\nlines", None)], align=("left", "right"))
    assert table.splitlines() == [
        "| file | size |",
        "|---|---:|",
        "| a\\|b.json | 1 |",
        "| two<br>lines |  |",
    ]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        markdown_table(("a", "b", "c"), [(1, 2)])


def test_key_value_table_leaves_out_missing_values() -> None:
    table = key_value_table([("a", 1), ("b", None), ("c", "x|y")])
    assert "| a | 1 |" in table and "| b |" not in table and "| c | x\\|y |" in table


def test_progress_artifact_is_silent_outside_a_run() -> None:
    progress = ProgressArtifact("staging-progress-x", "d")
    assert progress.update(10) is False and progress.artifact_id is None


def test_progress_artifact_creates_once_then_updates_and_skips_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    artifact_id = uuid4()

    def create(progress: float, key: str | None = None, description: str | None = None):
        calls.append(("create", progress, key, description))
        return artifact_id

    def update(aid, progress: float, description: str | None = None):
        calls.append(("update", aid, progress, description))
        return aid

    monkeypatch.setattr(report, "in_prefect_run", lambda: True)
    monkeypatch.setattr(report, "create_progress_artifact", create)
    monkeypatch.setattr(report, "update_progress_artifact", update)
    progress = ProgressArtifact("k", "loading")
    assert progress.update(12.04) and not progress.update(12.01)  # same value at 1 decimal: no call
    assert progress.update(12.0, "loading (7 shards)")  # same value, new description: sent
    assert progress.update(150)
    assert calls == [
        ("create", 12.0, "k", "loading"),
        ("update", artifact_id, 12.0, "loading (7 shards)"),
        ("update", artifact_id, 100.0, "loading (7 shards)"),
    ]


def test_a_failing_artifact_api_never_fails_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a, **_k):
        raise ConnectionError("api down")

    monkeypatch.setattr(report, "in_prefect_run", lambda: True)
    monkeypatch.setattr(report, "create_progress_artifact", broken)
    progress = ProgressArtifact("k")
    assert progress.update(1) is False and progress.update(2) is False


def test_a_refused_connection_to_the_hub_is_unreachable_not_a_hard_error() -> None:
    """huggingface_hub 2.4 lets httpx2's ConnectError through (not httpx's): it must count as
    transient, so the flow falls back to the manifest instead of failing."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(HubUnreachableError, match="could not be reached .* after 2 attempt"):
        resolve_from_hub(
            "Qwen/Qwen3-32B-FP8", "main", endpoint=endpoint, token=None, allow_patterns=None, attempts=2, backoff_s=0.0
        )


def test_table_rows_reads_a_table_artifacts_data_as_the_server_returns_it():
    rows = [{"a": 1}, {"a": 2}]
    assert report.table_rows('[{"a": 1}, {"a": 2}]') == rows  # a JSON string
    assert report.table_rows(rows) == rows  # already decoded
    assert report.table_rows("not json") == [] and report.table_rows(None) == [] and report.table_rows('{"a": 1}') == []
    assert report.table_rows('[{"a": 1}, "stray", 3]') == [{"a": 1}]  # only rows
