"""Write one bench script's section of docs/benchmarks.md, keeping every other section."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nMeasured results; each section is written by its script under `bench/`.\n"


def machine_line() -> str:
    """Where and when a figure was measured: it is not a DGX Spark's figure unless this says so."""
    return (
        f"Measured {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()},"
        f" {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}."
    )


def write_section(heading: str, body: str, path: Path = BENCHMARKS) -> Path:
    """Replace the section that starts with ``## heading`` (up to the next ``## ``) or append it."""
    title = f"## {heading}"
    text = f"{title}\n\n{body.strip()}\n"
    old = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _m: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")
    return path
