"""What an operator reads after a deploy: a markdown artifact, built from plain data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect.artifacts import create_markdown_artifact


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    raw = "-".join(parts).lower()
    return "".join(c if c.isalnum() else "-" for c in raw).strip("-")


def markdown_table(rows: Iterable[tuple[str, Any]]) -> str:
    lines = ["| what | value |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows if value is not None]
    return "\n".join(lines)


def publish_report(key: str, title: str, rows: Mapping[str, Any], sections: Mapping[str, str] | None = None) -> None:
    """One markdown artifact: a title, a key/value table, then optional titled sections."""
    body = [f"# {title}", "", markdown_table(rows.items())]
    for heading, text in (sections or {}).items():
        body += ["", f"## {heading}", "", text]
    create_markdown_artifact(markdown="\n".join(body), key=key, description=title)


def fenced(lines: Iterable[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```"
