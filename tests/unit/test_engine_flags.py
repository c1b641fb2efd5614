"""`ENGINE_FLAGS` by vLLM version: every flag cited in each inspected vLLM, the runbook's command the
same in all six, a flag a version lacks refused before the start (naming the field to clear), a
renamed flag rendered as that version spells it, and ``extra_args`` left as the operator wrote them."""

from __future__ import annotations

import pytest
from packaging.version import Version

from blocks.engine import (
    ENGINE_FLAGS,
    KNOWN_FLAGS,
    MANAGED_FLAGS,
    CliFlag,
    EngineSpec,
    FlagKind,
    FlagUnavailable,
    extra_args_warnings,
)
from blocks.render import compose_yaml, container_kwargs
from blocks.target import TargetMachine
from tasks.vllm.versions import NGC_IMAGES, Variant

INSPECTED = ("0.10.1.1", "0.10.2", "0.11.1", "0.17.1", "0.20.1", "0.31.0")
EVERYTHING_ON = EngineSpec(
    model="Qwen/Qwen3-32B",
    served_model_name="qwen3",
    revision="abc",
    quantization="fp8",
    enable_prefix_caching=False,
    enable_chunked_prefill=False,
    trust_remote_code=False,
    max_num_batched_tokens=32768,
    container_port=8001,
)


def test_every_flag_is_cited_in_every_inspected_version_that_has_it():
    for flag in ENGINE_FLAGS:
        sources = " ".join(v.source for v in flag.spelled)
        having = [v for v in INSPECTED if flag.flag_for(Version(v)) is not None]
        assert all(f"({version}" in sources or f", {version}" in sources for version in having), flag.field
        assert having == list(INSPECTED) or flag.flag == "--safetensors-load-strategy", flag.flag


@pytest.mark.parametrize("version", sorted({i.vllm for i in NGC_IMAGES} | set(INSPECTED) | {"0.13.0", "0.24.1"}))
def test_every_field_renders_in_every_version_of_the_ngc_images(version):
    """All flags of the table are in 0.10.1.1 to 0.31.0 (vllm/engine/arg_utils.py of each): the
    runbook's command and a spec with every optional flag render the same for every version."""
    assert EngineSpec().vllm_command(Version(version)) == EngineSpec().vllm_command()
    assert EVERYTHING_ON.vllm_command(Version(version)) == EVERYTHING_ON.vllm_command()
    assert "--no-enable-chunked-prefill" in EVERYTHING_ON.vllm_command(Version(version))


def test_a_flag_a_version_lacks_is_refused_before_the_start_with_the_field_to_clear():
    gone = CliFlag("revision", FlagKind.OPTIONAL, (Variant("<0.17.1", "--revision", "test"),))
    assert gone.render(EngineSpec(revision="abc"), Version("0.11.1")) == ["--revision", "abc"]
    assert gone.render(EngineSpec(), Version("0.31.0")) == []  # left at vLLM's default: nothing to render
    with pytest.raises(FlagUnavailable) as refused:
        gone.render(EngineSpec(revision="abc"), Version("0.31.0"))
    message = str(refused.value)
    assert (
        "--revision" in message
        and "0.31.0" in message
        and "<0.17.1" in message
        and "clear or reset revision" in message
    )


def test_a_renamed_flag_renders_as_each_version_spells_it():
    renamed = CliFlag(
        "enable_prefix_caching",
        FlagKind.SWITCH,
        (Variant("<0.17.1", "--old-caching", "test"), Variant(">=0.17.1", "--enable-prefix-caching", "test")),
    )
    spec = EngineSpec(enable_prefix_caching=False)
    assert renamed.render(spec, Version("0.10.2")) == ["--no-old-caching"]
    assert renamed.render(spec, Version("0.20.1")) == ["--no-enable-prefix-caching"]
    assert renamed.flag == "--old-caching"  # the runbook's 0.10.1.1 spelling
    assert set(renamed.spellings) == {
        "--old-caching",
        "--no-old-caching",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
    }


def test_managed_flags_are_every_spelling_of_the_table():
    assert set(MANAGED_FLAGS) == {s for f in ENGINE_FLAGS for s in f.spellings}
    assert {"--no-trust-remote-code", "--no-enable-prefix-caching", "--port"} <= set(MANAGED_FLAGS)


@pytest.mark.parametrize(("flag", "absent_in", "present_in"), [("--disable-log-requests", "0.17.1", "0.11.1")])
def test_extra_args_the_version_lacks_are_a_warning_and_stay_as_written(flag, absent_in, present_in):
    args = [flag]
    spec = EngineSpec(extra_args=args)
    (warning,) = extra_args_warnings(spec.extra_args, Version(absent_in))
    assert flag in warning and absent_in in warning and "drop it" in warning
    assert extra_args_warnings(spec.extra_args, Version(present_in)) == []
    assert extra_args_warnings(spec.extra_args, None) == []
    assert spec.vllm_command(Version(absent_in))[-1] == args[-1]  # the operator's, untouched
    assert {k.flag for k in KNOWN_FLAGS} >= {flag}


def test_the_container_and_the_compose_file_render_the_command_for_the_image_s_vllm():
    spark = TargetMachine(name="spark")
    for version in INSPECTED:
        kw = container_kwargs(EVERYTHING_ON, spark, version=Version(version))
        assert kw["command"] == EVERYTHING_ON.vllm_command(Version(version))
        assert "--no-enable-chunked-prefill" in compose_yaml(EVERYTHING_ON, spark, Version(version))


@pytest.mark.parametrize("arg", ["--load-format=fastsafetensors", "--safetensors-load-strategy", "--load-format"])
def test_the_loader_flags_are_the_loader_field_s_not_extra_args(arg):
    with pytest.raises(ValueError, match="field 'loader'"):
        EngineSpec(extra_args=[arg, "eager"])


@pytest.mark.parametrize("version", INSPECTED)
def test_each_loader_renders_its_flag_where_the_version_has_it(version):
    v = Version(version)
    assert EngineSpec(loader="mmap").loader_flags(v) == []  # vLLM's own default: the runbook's command
    assert EngineSpec(loader="auto").loader_flags(v) == []  # unresolved: deploy-qwen resolves it (tasks/loader.py)
    assert EngineSpec(loader="fastsafetensors").loader_flags(v) == ["--load-format", "fastsafetensors"]
    if v >= Version("0.10.2"):
        assert EngineSpec(loader="eager").loader_flags(v) == ["--safetensors-load-strategy", "eager"]
    else:
        with pytest.raises(FlagUnavailable, match="clear or reset loader"):
            EngineSpec(loader="eager").vllm_command(v)
