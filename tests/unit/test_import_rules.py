"""The layering rules of docs/design.md, checked on the source: the product (flows, tasks, blocks,
deployments) never imports the imitations (sim/), and a flow never imports another flow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("flows", "tasks", "blocks", "deployments")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def product_files() -> list[Path]:
    return sorted(p for package in PRODUCT for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_product_never_imports_the_imitations(path):
    assert not {m for m in imported_modules(path) if m == "sim" or m.startswith("sim.")}


@pytest.mark.parametrize("path", sorted((ROOT / "flows").glob("*.py")), ids=lambda p: p.name)
def test_flows_do_not_import_other_flows(path):
    assert not {m for m in imported_modules(path) if m == "flows" or m.startswith("flows.")}
