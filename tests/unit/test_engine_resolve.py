"""`load_engine_spec`: the one path from (engine block, preset, overrides) to a validated spec."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from blocks.engine import PRESETS, EngineSpec, load_engine_spec

ROOT = Path(__file__).resolve().parents[2]


def test_nothing_given_is_the_runbook_service():
    assert load_engine_spec(None, None, None) == EngineSpec()
    assert load_engine_spec("", "", {}) == EngineSpec()  # what an empty UI parameter sends


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_sets_its_fields_and_nothing_else(name):
    spec = load_engine_spec(None, name, None)
    for field, value in PRESETS[name].items():
        assert getattr(spec, field) == value
    untouched = set(EngineSpec.model_fields) - set(PRESETS[name])
    assert spec.model_dump(include=untouched) == EngineSpec().model_dump(include=untouched)


def test_overrides_come_after_the_preset_and_are_validated():
    spec = load_engine_spec(None, "latency", {"max_num_seqs": 8, "served_model_name": "fast"})
    assert (spec.max_model_len, spec.max_num_seqs, spec.served_name) == (16384, 8, "fast")
    with pytest.raises(ValidationError, match="gpu_memory_utilization"):
        load_engine_spec(None, None, {"gpu_memory_utilization": 1.5})
    with pytest.raises(ValidationError, match="max_num_seqs"):  # cross-field rule, on the merged values
        load_engine_spec(None, "latency", {"max_num_seqs": 9000})


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError) as info:
        load_engine_spec(None, "fastest", None)
    message = str(info.value)
    assert "unknown preset 'fastest'" in message
    assert all(name in message for name in PRESETS)


def test_unknown_override_field_is_refused_with_the_valid_ones():
    # A Prefect block keeps unknown keys as extra attributes: the spec alone would not complain.
    assert EngineSpec(max_num_seq=8).max_num_seq == 8
    with pytest.raises(ValueError) as info:
        load_engine_spec(None, None, {"max_num_seq": 8})
    message = str(info.value)
    assert "'max_num_seq'" in message and "did you mean 'max_num_seqs'" in message
    assert "gpu_memory_utilization" in message and "container_name" in message  # the valid fields
    with pytest.raises(ValueError, match="block_type_slug"):
        load_engine_spec(None, None, {"block_type_slug": "secret"})
    with pytest.raises(ValueError, match="unknown engine spec fields 'a', 'b'"):
        load_engine_spec(None, None, {"a": 1, "b": 2})


def test_preset_classmethod_is_the_same_path():
    assert EngineSpec.preset("throughput", max_num_seqs=32) == load_engine_spec(
        None, "throughput", {"max_num_seqs": 32}
    )
    with pytest.raises(ValueError, match="unknown engine spec field 'max_num_seq'"):
        EngineSpec.preset("latency", max_num_seq=8)


def test_a_saved_block_then_preset_then_overrides(monkeypatch):
    saved = EngineSpec(max_num_seqs=32, served_model_name="qwen", env={"VLLM_LOGGING_LEVEL": "DEBUG"})
    saved._block_document_name = "qwen3-32b-fp8"  # as Block.load leaves it
    loaded: list[str] = []

    def fake_load(name: str) -> EngineSpec:
        loaded.append(name)
        return saved

    monkeypatch.setattr(EngineSpec, "load", staticmethod(fake_load))
    assert load_engine_spec("qwen3-32b-fp8", None, None).hashed_fields() == saved.hashed_fields()
    spec = load_engine_spec("qwen3-32b-fp8", "latency", {"max_model_len": 8192})
    assert loaded == ["qwen3-32b-fp8", "qwen3-32b-fp8"]
    assert (spec.max_num_seqs, spec.max_model_len, spec.served_name) == (16, 8192, "qwen")  # preset beats block
    assert spec.env == {"VLLM_LOGGING_LEVEL": "DEBUG"}
    assert spec._block_document_name is None  # a save cannot overwrite the block by accident


def test_engine_module_imports_nothing_from_target():
    """No import cycle, not even one hidden under TYPE_CHECKING."""
    for module in ("engine", "shared"):
        tree = ast.parse((ROOT / "blocks" / f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        assert "blocks.target" not in imported and "blocks.render" not in imported, module
