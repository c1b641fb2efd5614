"""What an operator reads in the Prefect UI: artifact keys, markdown tables and reports, progress.

One implementation of each for every flow (deploy, stop, staging, the readiness gate), so keys
follow one rule, every table escapes its cells the same way, and a progress artifact behaves the
same wherever it is shown. Everything here builds plain text from plain data; only
``publish_report`` and ``ProgressArtifact`` talk to the Prefect API.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext

logger = logging.getLogger(__name__)

_NOT_KEY = re.compile(r"[^a-z0-9]+")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key made of ``parts``: stable, readable, and one the API accepts.

    Prefect accepts keys of lowercase ASCII letters, digits and dashes only. The rule: join the
    parts with ``-``, lowercase, turn every run of other characters (``/``, ``_``, ``.``, spaces,
    non-ASCII letters, dashes) into one dash, and strip dashes at both ends. So
    ``artifact_key("deploy", "Spark_2") == "deploy-spark-2"`` and
    ``artifact_key("staging", "Qwen/Qwen3-32B-FP8") == "staging-qwen-qwen3-32b-fp8"``. The same
    parts always give the same key: the UI groups an artifact's versions by key.

    Raises:
        ValueError: when nothing of ``parts`` survives (a key-less artifact would not show in
            the Artifacts page, and an empty key is surely a caller's bug).
    """
    key = _NOT_KEY.sub("-", "-".join(parts).lower()).strip("-")
    if not key:
        raise ValueError(f"no artifact key can be made of {parts!r}: no letter or digit in them")
    return key


def _cell(value: Any) -> str:
    """One table cell: ``|`` escaped (it would end the cell) and line breaks as ``<br>``
    (a newline would end the row); None is an empty cell."""
    if value is None:
        return ""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("|", "\\|").replace("\n", "<br>")


_RULES = {"left": "---", "right": "---:", "center": ":---:"}


def markdown_table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    align: Sequence[Literal["left", "right", "center"]] | None = None,
) -> str:
    """A GitHub-flavoured markdown table; every cell goes through the same escaping.

    Args:
        header: the column titles.
        rows: one sequence of cell values per row, as many as ``header`` (``str()`` of each;
            None is an empty cell).
        align: per column, ``left`` (default), ``right`` (numbers) or ``center``.

    Raises:
        ValueError: a row or ``align`` whose length is not the header's (a short row would shift
            every later cell under the wrong title).
    """
    width = len(header)
    aligns = list(align) if align is not None else ["left"] * width
    if len(aligns) != width:
        raise ValueError(f"align has {len(aligns)} entries for {width} columns")
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(_RULES[a] for a in aligns) + "|"]
    for row in rows:
        cells = list(row)
        if len(cells) != width:
            raise ValueError(f"a row has {len(cells)} cells for {width} columns: {cells!r}")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def key_value_table(rows: Iterable[tuple[str, Any]], header: tuple[str, str] = ("what", "value")) -> str:
    """A two-column table of ``(key, value)`` pairs, leaving out pairs whose value is None
    (a field a run did not reach reads better absent than as ``None``)."""
    return markdown_table(header, [(k, v) for k, v in rows if v is not None])


def publish_report(
    key: str,
    title: str,
    rows: Mapping[str, Any],
    sections: Mapping[str, str] | None = None,
    *,
    description: str | None = None,
) -> None:
    """One markdown artifact: a title, a key/value table, then optional titled sections.

    Args:
        key: the artifact key (see ``artifact_key``).
        title: the page's heading, and its description unless ``description`` is given.
        rows: the key/value table; None values are left out.
        sections: heading -> markdown, in order, after the table.
        description: the artifact's one-line description in the UI's list.
    """
    body = [f"# {title}", "", key_value_table(rows.items())]
    for heading, text in (sections or {}).items():
        body += ["", f"## {heading}", "", text]
    create_markdown_artifact(markdown="\n".join(body), key=key, description=description or title)


def table_rows(data: Any) -> list[dict[str, Any]]:
    """The rows of a table artifact as the server returns its ``data`` (a JSON string of a list of
    rows, or the list itself); [] for anything else, so a reader treats it as "nothing published"."""
    try:
        rows = json.loads(data) if isinstance(data, str) else data
    except ValueError:
        return []
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def fenced(lines: Iterable[str]) -> str:
    """Lines as a fenced code block (log excerpts keep their spacing and are not read as markdown)."""
    return "```\n" + "\n".join(lines) + "\n```"


def in_prefect_run() -> bool:
    """True inside a flow or task run, where an artifact has a run to belong to.

    Outside one (a task called through ``.fn()`` in a test or a script), creating an artifact
    would need a reachable API and would attach to no run, so callers skip it.
    """
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class ProgressArtifact:
    """A Prefect progress artifact that is created on the first update and updated after that.

    Why a class: Prefect has one call to create a progress artifact and another to update it by
    id; every progress shown in this project (model staging's bytes, vLLM's shard loading) needs
    the same create-then-update, the same skipping of repeated values (each update is an API
    call) and the same rule that a failing artifact never fails the work it reports on.

    Outside a flow or task run ``update`` does nothing (one debug line), so code that reports
    progress runs unchanged in tests and scripts. If the API refuses the artifact, one warning
    is logged and later updates are skipped rather than retried against an API in trouble.
    """

    def __init__(self, key: str, description: str | None = None, *, ndigits: int = 1) -> None:
        """Args:
        key: the artifact key (``artifact_key(...)``).
        description: shown beside the bar; ``update`` may replace it.
        ndigits: the percentage is rounded to this many decimals before it is compared and sent,
            so a slow crawl does not make an API call per byte.
        """
        self.key = key
        self.description = description
        self.ndigits = ndigits
        self.artifact_id: UUID | None = None
        self.last: float | None = None
        self._disabled = False

    def update(self, percent: float, description: str | None = None) -> bool:
        """Show ``percent`` (clamped to 0-100) and, when given, a new description.

        Returns:
            True when the artifact was created or updated, False when nothing was sent (same
            value and description as last time, outside a run, or the artifact is unavailable).
        """
        value = round(min(100.0, max(0.0, float(percent))), self.ndigits)
        text = self.description if description is None else description
        if self._disabled or (value == self.last and text == self.description):
            return False
        if not in_prefect_run():
            logger.debug("progress %s at %s%% (no Prefect run: no artifact)", self.key, value)
            return False
        try:
            if self.artifact_id is None:
                # sync/async dual: the artifact id in sync code
                self.artifact_id = cast(UUID, create_progress_artifact(progress=value, key=self.key, description=text))
            else:
                update_progress_artifact(self.artifact_id, progress=value, description=text)
        except Exception as exc:  # noqa: BLE001 - a slow or failing API must never stop the work itself
            self._disabled = True
            logger.warning("progress artifact %s unavailable (%s); no more updates", self.key, type(exc).__name__)
            return False
        self.last, self.description = value, text
        return True
