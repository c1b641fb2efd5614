"""Which vLLM runs and the engine-wide facts by version (tasks/vllm/versions.py)."""

from __future__ import annotations

import re

import pytest
from packaging.version import Version

from tasks.vllm.versions import (
    DEAD_ENGINE_HEALTH,
    FREE_MEMORY,
    NGC_IMAGES,
    RUNBOOK_VERSION,
    FreeMemory,
    Variant,
    VersionInfo,
    VersionUnknown,
    parse_vllm_version,
    select,
    variants_for,
    version_from_probe,
    version_of_image,
)

#: The vLLM of every NGC image in the table: the versions whose wheels the tables were read from.
INSPECTED = sorted({image.vllm for image in NGC_IMAGES}, key=Version)
ENGINE_WIDE = {"FREE_MEMORY": FREE_MEMORY, "DEAD_ENGINE_HEALTH": DEAD_ENGINE_HEALTH}


def test_nvidia_builds_parse_and_compare_by_their_release():
    version = parse_vllm_version("0.10.1.1+381074ae.nv25.09")
    assert version.public == "0.10.1.1" and version.local == "381074ae.nv25.9"
    assert version == Version("0.10.1.1+381074ae.nv25.09") and version >= RUNBOOK_VERSION
    with pytest.raises(VersionUnknown, match="not a vLLM version"):
        parse_vllm_version("latest")


@pytest.mark.parametrize("name", ENGINE_WIDE)
@pytest.mark.parametrize("version", [*INSPECTED, "0.9.2", "0.13.0", "0.24.0", "0.40.0", "0.11.1rc2"])
def test_every_engine_wide_table_gives_one_value_for_every_version(name, version):
    """No gap and no overlap: an inspected version, one between two (0.13, 0.24), or one outside
    the tested span (0.9.2, 0.40) falls in exactly one range."""
    assert len(variants_for(ENGINE_WIDE[name], parse_vllm_version(version))) == 1


@pytest.mark.parametrize(
    "version,free,dead",
    [
        ("0.10.1.1+381074ae.nv25.09", FreeMemory.MEM_FREE, 500),
        ("0.10.2", FreeMemory.MEM_FREE, 500),
        ("0.11.1", FreeMemory.MEM_AVAILABLE, 503),
        ("0.11.1rc2", FreeMemory.MEM_AVAILABLE, 503),  # a pre-release of 0.11.1 is 0.11.1
        ("0.13.0", FreeMemory.MEM_AVAILABLE, 503),
        ("0.31.0", FreeMemory.MEM_AVAILABLE, 503),
    ],
)
def test_free_memory_semantics_and_dead_engine_status_by_version(version, free, dead):
    parsed = parse_vllm_version(version)
    assert select(FREE_MEMORY, parsed) is free
    assert select(DEAD_ENGINE_HEALTH, parsed) == dead


def test_unknown_version_gets_the_runbooks_facts_but_every_form():
    assert select(FREE_MEMORY, None) is FreeMemory.MEM_FREE
    forms = (Variant("<0.31", "takes", "a.py:1"), Variant(">=0.31", "took", "a.py:2"))
    assert variants_for(forms, None) == ["takes", "took"]
    assert variants_for(forms, Version("0.31.0")) == ["took"]
    with pytest.raises(LookupError, match="2 variants"):
        select((*forms, Variant("", "any", "b.py:3")), Version("0.31.0"))


def test_every_fact_cites_a_vllm_file_and_line():
    for table in ENGINE_WIDE.values():
        for variant in table:
            assert re.search(r"vllm/\S+\.py:\d+", variant.source), variant


@pytest.mark.parametrize(
    "image,expected",
    [
        ("nvcr.io/nvidia/vllm:25.09-py3", "0.10.1.1"),
        ("nvcr.io/nvidia/vllm:25.10-py3", "0.10.2"),
        ("nvcr.io/nvidia/vllm:26.01-py3", "0.11.1"),
        ("nvcr.io/nvidia/vllm:26.10-py3", "0.31.0"),
        ("nvcr.io/nvidia/vllm:26.02-py3", None),  # not in the table: the image's own probe says
        ("vllm/vllm-openai:latest", None),
        ("spark-vllm/vllm-sim:latest", None),
    ],
)
def test_ngc_tags_name_their_vllm(image, expected):
    found = version_of_image(image)
    assert (str(found) if found else None) == expected


def test_the_probe_output_is_read_past_torchs_warnings():
    assert version_from_probe("/usr/lib/python3/warnings.py: UserWarning: x\n0.10.1.1+381074ae.nv25.09\n") == Version(
        "0.10.1.1+381074ae.nv25.09"
    )
    with pytest.raises(VersionUnknown, match="printed no vLLM version"):
        version_from_probe("ModuleNotFoundError: No module named 'vllm'\n")


def test_version_info_keeps_nvidias_text_and_says_when_untested():
    info = VersionInfo(version="0.10.1.1+381074ae.nv25.09", source="image", image="nvcr.io/nvidia/vllm:25.09-py3")
    assert info.label() == "vLLM 0.10.1.1+381074ae.nv25.09 (image)" and info.tested
    assert info.parsed == Version("0.10.1.1+381074ae.nv25.09")
    assert "untested" in VersionInfo(version="0.40.0", source="server").label()
    assert not VersionInfo(version="0.9.2", source="image").tested
