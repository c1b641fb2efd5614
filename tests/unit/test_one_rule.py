"""One rule per piece of knowledge (docs/design.md; issue 15), checked on the source.

Two kinds of check, both on the syntax tree (nothing is imported, nothing runs):

1. No public top-level function, class or UPPER_CASE constant of the product (blocks/, tasks/, flows/,
   deployments/) is defined in two modules: the second one is a copy that will drift. A name that
   two modules may both define is in ``ALLOWED``, with the reason.
2. Pieces of knowledge the project once wrote in several places (the bearer header, the smoke
   prompt, the `/v1/models` check, the pool name, the utilization and max-model-len sizers, the
   event's resource-id slicing in prefect.yaml) are written in one module, and everything else
   imports it.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("blocks", "tasks", "flows", "deployments")
CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")

ALLOWED: dict[str, str] = {
    "main": "each script in deployments/ has its own command-line entry point (`python -m deployments.X`)",
    "ROOT": "each script in deployments/ locates the checkout from its own file (Path(__file__).parents[1]): "
    "a path, not a rule",
    "RULES": "two different tables, each its module's one table: the health verdict's rules "
    "(tasks/health/verdict.py) and the failure rules (tasks/vllm/failures.py)",
}
"""Names that more than one product module may define, and why that is not one rule written twice."""


# ------------------------------------------------------------------------------ the scan


def product_files(packages: Iterable[str] = PRODUCT, root: Path = ROOT) -> list[Path]:
    return sorted(p for package in packages for p in (root / package).rglob("*.py"))


@cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def rel(path: Path, root: Path = ROOT) -> str:
    return str(path.relative_to(root))


def top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The module's statements, and those inside its top-level ``if``/``try`` blocks (TYPE_CHECKING,
    optional imports): definitions there are the module's too."""
    for node in body:
        if isinstance(node, ast.If):
            yield from top_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from top_level(node.body + [s for h in node.handlers for s in h.body] + node.orelse)
        else:
            yield node


def defined_names(tree: ast.Module) -> set[str]:
    """Public top-level functions and classes, and UPPER_CASE constants (imports are not definitions)."""
    names: set[str] = set()
    for node in top_level(tree.body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name) and CONSTANT.fullmatch(t.id)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if CONSTANT.fullmatch(node.target.id):
                names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def defined_twice(files: Iterable[Path], root: Path = ROOT) -> dict[str, list[str]]:
    """Each public name defined in more than one of ``files``, with the modules that define it."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in files:
        for name in defined_names(parse(path)):
            where[name].append(rel(path, root))
    return {name: sorted(mods) for name, mods in sorted(where.items()) if len(mods) > 1}


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (of the module, a class or a function)."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def strings(tree: ast.Module) -> Iterator[str]:
    """Every string literal of the code (f-strings' literal parts included), docstrings left out."""
    skip = docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.value


def modules_where(found: Callable[[ast.Module], bool], packages: Iterable[str] = PRODUCT) -> list[str]:
    return [rel(p) for p in product_files(packages) if found(parse(p))]


def functions(packages: Iterable[str] = PRODUCT) -> Iterator[tuple[str, str]]:
    """(module, name) of every function, methods and nested ones included."""
    for path in product_files(packages):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield rel(path), node.name


# ------------------------------------------------------------------------------ 1. one definition per name


def test_the_scan_finds_a_name_defined_in_two_modules(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.py").write_text("LIMIT = 1\ndef size_it(): ...\nclass Plan: ...\n_private = 1\n")
    (tmp_path / "tasks" / "b.py").write_text(
        "from tasks.a import Plan\nif True:\n    LIMIT: int = 2\ndef size_it(): ...\ndef _private(): ...\n"
    )
    files = product_files(("tasks",), tmp_path)
    assert defined_twice(files, tmp_path) == {
        "LIMIT": ["tasks/a.py", "tasks/b.py"],
        "size_it": ["tasks/a.py", "tasks/b.py"],
    }


def test_each_public_name_of_the_product_is_defined_in_one_module():
    twice = {name: mods for name, mods in defined_twice(product_files()).items() if name not in ALLOWED}
    assert not twice, (
        "defined in more than one module (keep one, import it; or, if they are different things, "
        f"give them names that say so): {twice}"
    )


# ------------------------------------------------------------------------------ 2. known pieces of knowledge


def _builds_bearer(tree: ast.Module) -> bool:
    """An ``Authorization`` header value built here: f"Bearer {key}", "Bearer " + key, "Bearer %s"."""
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and str(first.value).startswith("Bearer "):
                return True
        if isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant):
            if str(node.left.value).startswith("Bearer "):
                return True
    return False


def test_the_bearer_header_is_built_in_one_module():
    assert len(where := modules_where(_builds_bearer)) <= 1, f"the bearer header is built in {where}"


SMOKE_PROMPT = re.compile(r"12\s*\*\s*17\s*[=?]")


def test_the_smoke_prompt_is_written_in_one_module():
    where = modules_where(lambda tree: any(SMOKE_PROMPT.search(s) for s in strings(tree)))
    assert len(where) <= 1, f"the 12*17 smoke prompt is written in {where}"


def test_the_served_model_check_asks_v1_models_in_one_module():
    where = modules_where(lambda tree: "/v1/models" in set(strings(tree)))
    assert len(where) <= 1, f"/v1/models is asked in {where}: one function checks that the model is listed"


API_PATHS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")


def test_each_api_path_is_written_in_one_module():
    """tasks/vllm/api.py names vLLM's routes; a version that moves one changes one line."""
    for path in API_PATHS:
        where = modules_where(lambda tree, path=path: path in set(strings(tree)))
        assert len(where) <= 1, f"{path} is written in {where}"


def test_the_pool_name_is_written_in_one_module():
    """bench/ too: the benches deploy to the product's pool and must not retype its name."""
    where = modules_where(lambda tree: "spark-vllm" in set(strings(tree)), (*PRODUCT, "bench"))
    assert len(where) <= 1, f'the work pool name "spark-vllm" is written in {where}'


def test_prefect_yaml_takes_the_target_from_the_event_payload():
    """Slicing the resource id repeats the event's naming (`vllm.service.` is 13 characters) in YAML."""
    text = (ROOT / "prefect.yaml").read_text()
    assert "event.resource.id[" not in text


def test_one_function_sizes_the_utilization():
    sizers = [
        (module, name)
        for module, name in functions()
        if "utilization" in name.lower() and ("suggest" in name.lower() or "fit" in name.lower())
    ]
    assert [name for _, name in sizers] == ["fit_utilization"], f"utilization sizers: {sizers}"


MODEL_LEN_SIZER = re.compile(r"(round|suggest|fit)\w*model_len", re.IGNORECASE)
MODEL_LEN_STEPS = {
    "_fit_model_len": "the recovery planner's step; it sizes through KVLimits.max_len_at -> round_model_len"
}


def test_one_function_sizes_the_max_model_len():
    sizers = [(m, n) for m, n in functions() if MODEL_LEN_SIZER.search(n) and n not in MODEL_LEN_STEPS]
    assert len(sizers) == 1, f"max-model-len sizers (one rounding rule): {sizers}"
