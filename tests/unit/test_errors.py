"""Every exception the project defines derives from its one root (tasks/errors.py)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from tasks.errors import ServerDidNotStart, SparkVllmError

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    paths = [p for package in ("tasks", "flows", "blocks") for p in sorted((ROOT / package).rglob("*.py"))]
    return [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in paths]


def test_every_exception_class_derives_from_the_projects_root():
    defined = [
        cls
        for name in _modules()
        for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == name
    ]
    assert len(defined) > 20  # the scan found them
    assert [f"{c.__module__}.{c.__qualname__}" for c in defined if not issubclass(c, SparkVllmError)] == []


def test_a_server_that_did_not_start_has_one_base():
    from tasks.memory import NotEnoughMemory
    from tasks.readiness import ReadinessFailed
    from tasks.serve import StartFailed

    assert all(issubclass(c, ServerDidNotStart) for c in (NotEnoughMemory, ReadinessFailed, StartFailed))
