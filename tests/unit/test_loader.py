"""The loader rule (tasks/loader.py): `auto` takes the fastest the image has, a pinned loader the
image lacks is refused before the start with the fix, and the flags are the version's (`ENGINE_FLAGS`)."""

from __future__ import annotations

import pytest
from packaging.version import Version

from blocks.engine import EngineSpec
from tasks.loader import LoaderUnavailable, choose_loader, with_loader

INSPECTED = ("0.10.1.1", "0.10.2", "0.11.1", "0.17.1", "0.20.1", "0.31.0")
FAST = ["--load-format", "fastsafetensors"]
EAGER = ["--safetensors-load-strategy", "eager"]


@pytest.mark.parametrize(
    ("version", "has_fastsafetensors", "name", "flags"),
    [
        ("0.10.1.1", True, "fastsafetensors", FAST),
        ("0.10.1.1", False, "mmap", []),
        ("0.10.2", False, "eager", EAGER),
        ("0.11.1", False, "eager", EAGER),
        ("0.17.1", True, "fastsafetensors", FAST),
        ("0.20.1", False, "eager", EAGER),
        ("0.31.0", False, "eager", EAGER),
        ("0.31.0", True, "fastsafetensors", FAST),
        ("0.10.1.1+381074ae.nv25.09", False, "mmap", []),  # NVIDIA's build of the runbook's vLLM
    ],
)
def test_auto_takes_the_fastest_the_image_has(version, has_fastsafetensors, name, flags):
    choice = choose_loader("auto", Version(version), has_fastsafetensors)
    assert (choice.name, choice.flags) == (name, flags)
    assert choice.why.startswith("auto: ")
    assert ("no fastsafetensors" in choice.why) is (not has_fastsafetensors)


def test_auto_on_the_runbook_s_vllm_says_what_would_load_faster():
    choice = choose_loader("auto", None, has_fastsafetensors=False)  # unknown version: the runbook's
    assert choice.name == "mmap" and "0.10.1.1" in choice.why and "0.10.2 or later" in choice.why


@pytest.mark.parametrize("version", INSPECTED)
def test_pinned_loaders_are_taken_as_they_are_where_the_image_has_them(version):
    v = Version(version)
    assert choose_loader("mmap", v, True).flags == []
    assert choose_loader("fastsafetensors", v, True).flags == FAST
    assert choose_loader("mmap", v, True).why == "pinned in the engine spec"
    if v >= Version("0.10.2"):
        assert choose_loader("eager", v, False).flags == EAGER


def test_eager_pinned_on_a_vllm_without_the_strategy_fails_with_the_fix():
    with pytest.raises(LoaderUnavailable) as refused:
        choose_loader("eager", Version("0.10.1.1"), has_fastsafetensors=True)
    message = str(refused.value)
    assert "--safetensors-load-strategy" in message and "0.10.1.1" in message and ">=0.10.2" in message
    assert "set loader to auto" in message and "NGC 25.10" in message


def test_fastsafetensors_pinned_on_an_image_without_the_package_fails_with_the_fix():
    with pytest.raises(LoaderUnavailable) as refused:
        choose_loader("fastsafetensors", Version("0.31.0"), has_fastsafetensors=False)
    message = str(refused.value)
    assert "import fastsafetensors" in message and "pip install fastsafetensors" in message
    assert "set loader to auto" in message


def test_the_chosen_loader_is_what_the_spec_renders_and_hashes():
    version = Version("0.11.1")
    spec = EngineSpec()
    resolved = with_loader(spec, choose_loader(spec.loader, version, has_fastsafetensors=False))
    assert resolved.loader == "eager" and resolved.vllm_command(version)[-2:] == EAGER
    assert resolved.spec_hash() == EngineSpec(loader="eager").spec_hash() != spec.spec_hash()
    assert with_loader(resolved, choose_loader("eager", version, False)) is resolved  # nothing to change


def test_recover_restarts_auto_with_the_loader_the_last_server_of_the_image_had():
    from tasks.loader import loader_as_served

    served = EngineSpec(loader="eager", max_num_seqs=32)
    assert loader_as_served(EngineSpec(), served).loader == "eager"
    assert loader_as_served(EngineSpec(), EngineSpec(image="other:1", loader="eager")).loader == "auto"
    assert loader_as_served(EngineSpec(loader="mmap"), served).loader == "mmap"  # pinned stays
    assert loader_as_served(EngineSpec(), None).loader == "auto"
