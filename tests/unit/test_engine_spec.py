"""EngineSpec: defaults are the runbook's compose file, presets its tuning blocks, rendering exact."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.version import Version
from pydantic import ValidationError

from blocks.engine import ENGINE_FLAGS, MANAGED_FLAGS, PRESETS, EngineSpec, FlagKind, format_utilization
from blocks.render import compose_yaml
from blocks.target import TargetMachine

DATA = Path(__file__).resolve().parents[1] / "data"
RUNBOOK_COMPOSE = DATA / "runbook_compose.yaml"
RUNBOOK_TUNING = DATA / "runbook_tuning.yaml"
SEED = Path(__file__).resolve().parents[2] / ".." / "shared" / "seed" / "000_2893f9d7df783e64.txt"
SERVICE = "vllm-qwen3-32b-fp8"


def runbook_service() -> dict:
    return yaml.safe_load(RUNBOOK_COMPOSE.read_text())["services"][SERVICE]


def runbook_tuning() -> dict[str, dict[str, str]]:
    """Preset name -> {title, block}: the runbook's "Performance Tuning" blocks (tests/data copy)."""
    return yaml.safe_load(RUNBOOK_TUNING.read_text())


#: The runbook's flags in the tuning blocks, and the EngineSpec field each one sets.
TUNING_FLAG_FIELD = {
    "--max-model-len": "max_model_len",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--max-num-seqs": "max_num_seqs",
    "--enable-prefix-caching": "enable_prefix_caching",
}


def block_flags(block: str) -> list[tuple[str, str | None]]:
    """``(flag, value or None)`` per line of a tuning block, comments dropped."""
    flags = []
    for line in block.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            assert words[0].startswith("--") and len(words) <= 2, line
            flags.append((words[0], words[1] if len(words) == 2 else None))
    return flags


# ------------------------------------------------------------------------------ defaults


def test_block_identity():
    assert EngineSpec._block_type_name == "vLLM Engine Spec"
    assert EngineSpec.get_block_type_slug() == "vllm-engine-spec"
    assert EngineSpec._description


def test_block_schema_and_document_round_trip():
    from uuid import uuid4

    for block in (EngineSpec(), TargetMachine(name="spark")):
        schema = type(block)._to_block_schema(block_type_id=uuid4())
        assert set(schema.fields["properties"]) == set(type(block).model_fields)
        document = block._to_block_document(name="x", block_schema_id=uuid4(), block_type_id=uuid4())
        assert type(block).model_validate(document.data) == block
    assert EngineSpec._to_block_schema(block_type_id=uuid4()).fields["properties"]["restart_policy"]["enum"] == [
        "no", "always", "on-failure", "unless-stopped",
    ]  # fmt: skip


def test_defaults_are_the_runbook_compose_file():
    spec = EngineSpec()
    service = runbook_service()
    assert spec.image == service["image"] == "nvcr.io/nvidia/vllm:25.09-py3"
    assert spec.container_name == service["container_name"] == SERVICE
    assert spec.restart_policy == service["restart"] == "unless-stopped"
    assert spec.model == "Qwen/Qwen3-32B-FP8"
    assert spec.served_model_name is None and spec.served_name == "Qwen/Qwen3-32B-FP8"
    assert spec.revision is None and spec.quantization is None
    assert spec.download_dir == "/root/.cache/huggingface"
    assert spec.max_model_len == 32000
    assert spec.gpu_memory_utilization == 0.90
    assert spec.max_num_batched_tokens == 16384
    assert spec.max_num_seqs == 64
    assert spec.enable_prefix_caching is True
    assert spec.trust_remote_code is True
    assert spec.enable_chunked_prefill is True
    assert spec.container_port == 8000
    assert spec.extra_args == [] and spec.env == {}
    # the command IS the runbook's command list, item for item
    assert spec.vllm_command() == service["command"]


def test_command_in_runbook_order_and_format():
    assert EngineSpec().vllm_command() == [
        "vllm", "serve", "Qwen/Qwen3-32B-FP8",
        "--download-dir", "/root/.cache/huggingface",
        "--max-model-len", "32000",
        "--gpu-memory-utilization", "0.90",
        "--max-num-batched-tokens", "16384",
        "--max-num-seqs", "64",
        "--enable-prefix-caching",
        "--trust-remote-code",
    ]  # fmt: skip


@pytest.mark.parametrize("value,text", [(0.9, "0.90"), (0.85, "0.85"), (0.7, "0.70"), (1.0, "1.00"), (0.925, "0.925")])
def test_utilization_formatting(value, text):
    assert format_utilization(value) == text


def test_optional_flags_render_after_the_runbook_ones():
    spec = EngineSpec(
        served_model_name="qwen3",
        revision="abc123",
        container_port=8001,
        enable_prefix_caching=False,
        trust_remote_code=False,
        extra_args=["--enable-reasoning", "--reasoning-parser", "qwen3"],
    )
    cmd = spec.vllm_command()
    assert cmd[:12] == EngineSpec().vllm_command()[:12]
    assert "--no-enable-prefix-caching" in cmd and "--enable-prefix-caching" not in cmd
    assert "--trust-remote-code" not in cmd
    assert cmd[cmd.index("--served-model-name") + 1] == "qwen3"
    assert cmd[cmd.index("--revision") + 1] == "abc123"
    assert cmd[cmd.index("--port") + 1] == "8001"
    assert cmd[-3:] == ["--enable-reasoning", "--reasoning-parser", "qwen3"]
    assert spec.served_name == "qwen3"


def test_quantization_and_chunked_prefill_flags():
    spec = EngineSpec(
        model="Qwen/Qwen3-32B", quantization="FP8", enable_chunked_prefill=False, max_num_batched_tokens=32768
    )
    cmd = spec.vllm_command()
    assert cmd[cmd.index("--quantization") + 1] == "fp8"
    assert "--no-enable-chunked-prefill" in cmd


def test_served_name_equal_to_model_is_not_rendered():
    assert "--served-model-name" not in EngineSpec(served_model_name="Qwen/Qwen3-32B-FP8").vllm_command()
    assert EngineSpec(served_model_name="").served_model_name is None


def test_no_api_key_ever_in_the_command():
    assert not any("api-key" in a for a in EngineSpec().vllm_command())
    with pytest.raises(ValidationError, match="extra_args must not carry --api-key"):
        EngineSpec(extra_args=["--api-key", "sk-123"])
    with pytest.raises(ValidationError, match="api_key_secret"):
        EngineSpec(extra_args=["--api-key=sk-123"])


def test_one_table_maps_fields_to_flags():
    """`ENGINE_FLAGS` is the one mapping: each field and each flag once, every field a spec field, and
    every flag the command renders (in any spelling) is one `extra_args` may not repeat."""
    fields = [f.field for f in ENGINE_FLAGS if f.kind is not FlagKind.WHEN]  # WHEN: one field, a flag per value
    assert len(fields) == len(set(fields)) and set(fields) <= set(EngineSpec.model_fields)
    assert len({f.flag for f in ENGINE_FLAGS}) == len(ENGINE_FLAGS)
    assert len(MANAGED_FLAGS) == sum(len(f.spellings) for f in ENGINE_FLAGS)
    everything_on = EngineSpec(
        model="Qwen/Qwen3-32B",
        served_model_name="qwen3",
        revision="abc",
        quantization="fp8",
        enable_prefix_caching=False,
        enable_chunked_prefill=False,
        max_num_batched_tokens=32768,
        container_port=8001,
    )
    rendered = {arg for arg in everything_on.vllm_command() if arg.startswith("--")}
    assert rendered <= set(MANAGED_FLAGS)
    for flag in MANAGED_FLAGS:
        with pytest.raises(ValidationError, match=f"extra_args repeats {flag}"):
            EngineSpec(extra_args=[flag])


# ------------------------------------------------------------------------------ presets


def test_runbook_preset_is_the_default_but_the_loader_and_the_caches():
    runbook = EngineSpec.preset("runbook")
    assert (runbook.loader, runbook.persistent_caches) == ("mmap", False)
    assert (EngineSpec().loader, EngineSpec().persistent_caches) == ("auto", True)
    assert runbook == EngineSpec(loader="mmap", persistent_caches=False)
    assert runbook.spec_hash() != EngineSpec().spec_hash()  # an upgrade replaces a running server once


def test_the_tuning_presets_keep_the_fast_restart_defaults():
    for name in set(PRESETS) - {"runbook"}:
        spec = EngineSpec.preset(name)
        assert (spec.loader, spec.persistent_caches) == ("auto", True), name


@pytest.mark.parametrize(
    "name,expected",
    [
        ("throughput", (32000, 0.90, 20480, 64)),
        ("latency", (16384, 0.85, 8192, 16)),
        ("max-context", (32000, 0.85, 16384, 32)),
    ],
)
def test_presets_are_the_runbook_tuning_blocks(name, expected):
    spec = EngineSpec.preset(name)
    assert (spec.max_model_len, spec.gpu_memory_utilization, spec.max_num_batched_tokens, spec.max_num_seqs) == expected
    # the blocks list only what they change: the rest stays the runbook's service
    assert spec.enable_prefix_caching and spec.trust_remote_code
    assert spec.image == EngineSpec().image and spec.model == EngineSpec().model


def test_preset_values_render_like_the_runbook_blocks():
    """Each tuning block's flags, in the block's order, are in the preset's rendered command."""
    for name, entry in runbook_tuning().items():
        cmd = EngineSpec.preset(name).vllm_command()
        rendered = " ".join(cmd)
        valued = " ".join(f"{flag} {value}" for flag, value in block_flags(entry["block"]) if value is not None)
        assert valued in rendered, name
        for flag, value in block_flags(entry["block"]):
            if value is None:
                assert flag in cmd, (name, flag)


def test_preset_overrides_and_unknown_name():
    spec = EngineSpec.preset("latency", max_num_seqs=8, served_model_name="fast")
    assert spec.max_num_seqs == 8 and spec.max_model_len == 16384 and spec.served_name == "fast"
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        EngineSpec.preset("huge")  # type: ignore[arg-type]
    assert set(PRESETS) == {"runbook", "throughput", "latency", "max-context"}


def test_presets_match_the_runbook_tuning_blocks():
    """Every flag of every tuning block (tests/data copy) is the preset's field value."""
    tuning = runbook_tuning()
    assert set(tuning) == set(PRESETS) - {"runbook"}
    for name, entry in tuning.items():
        spec = EngineSpec.preset(name)
        flags = block_flags(entry["block"])
        assert {flag for flag, _ in flags} >= set(TUNING_FLAG_FIELD) - {"--enable-prefix-caching"}, name
        for flag, value in flags:
            field = TUNING_FLAG_FIELD[flag]
            if value is None:
                assert getattr(spec, field) is True, (name, flag)
            else:
                assert float(getattr(spec, field)) == float(value), (name, flag)


@pytest.mark.skipif(not SEED.exists(), reason="../shared/seed not beside the clone")
def test_runbook_tuning_copy_has_not_drifted():
    """The tests/data copy is still the runbook's text, block for block (only when the seed is here)."""
    text = SEED.read_text()
    tuning_section = text[text.index("## Performance Tuning") :]
    tuning_section = tuning_section[: tuning_section.index("\n## ", 1)]
    titles = re.findall(r"^### (.+)$", tuning_section, re.M)
    copy = runbook_tuning()
    assert titles == [entry["title"] for entry in copy.values()]
    first = RUNBOOK_TUNING.read_text().splitlines()[0]
    assert first.startswith("#") and "000_2893f9d7df783e64.txt" in first
    for entry in copy.values():
        section = tuning_section[tuning_section.index(f"### {entry['title']}\n") :]
        block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
        assert entry["block"] == block, entry["title"]


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 1.2}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": -0.5}, "gpu_memory_utilization"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"max_num_batched_tokens": -1}, "max_num_batched_tokens"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"container_port": 0}, "container_port"),
        ({"container_port": 70000}, "container_port"),
        ({"restart_policy": "sometimes"}, "restart_policy"),
        ({"max_num_seqs": 20000}, "max_num_seqs"),
        ({"enable_chunked_prefill": False}, "max_num_batched_tokens"),
        ({"quantization": "fp8"}, "quantization"),
        ({"container_name": "bad name!"}, "container_name"),
        ({"download_dir": "relative/dir"}, "download_dir"),
        ({"image": ""}, "image"),
        ({"env": {"HF_TOKEN": "hf_x"}}, "env"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"extra_args": ["--max-model-len", "4096"]}, "max_model_len"),
    ],
)
def test_validation_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        EngineSpec(**kwargs)
    assert field in str(info.value)


def test_utilization_bounds_and_fix_text():
    EngineSpec(gpu_memory_utilization=1.0)  # 1 is allowed: (0, 1]
    with pytest.raises(ValidationError, match=r"in \(0, 1\].*0.90"):
        EngineSpec(gpu_memory_utilization=1.01)


def test_batched_tokens_below_model_len_only_with_chunked_prefill():
    assert EngineSpec(max_model_len=32000, max_num_batched_tokens=8192).max_num_batched_tokens == 8192
    with pytest.raises(ValidationError, match=r"max_num_batched_tokens \(8192\) must be >= max_model_len \(32000\)"):
        EngineSpec(max_model_len=32000, max_num_batched_tokens=8192, enable_chunked_prefill=False)
    EngineSpec(max_model_len=16384, max_num_batched_tokens=16384, enable_chunked_prefill=False)


def test_max_num_seqs_at_most_batched_tokens():
    with pytest.raises(ValidationError, match=r"max_num_seqs \(128\) must be <= max_num_batched_tokens \(64\)"):
        EngineSpec(max_num_seqs=128, max_num_batched_tokens=64, max_model_len=64)


def test_fp8_on_an_fp8_model_quotes_the_runbook():
    with pytest.raises(ValidationError) as info:
        EngineSpec(quantization="fp8")
    text = str(info.value)
    assert "already an FP8 checkpoint" in text
    assert "cutlass_scaled_mm failed" in text and "Qwen/Qwen3-32B-FP8" in text
    # the base model with on-the-fly FP8 is allowed (it fails at runtime, classified as fp8_kernel)
    assert EngineSpec(model="Qwen/Qwen3-32B", quantization="fp8").quantization == "fp8"


@pytest.mark.parametrize("policy", ["no", "always", "on-failure", "unless-stopped"])
def test_docker_restart_policies(policy):
    assert EngineSpec(restart_policy=policy).restart_policy == policy


# ------------------------------------------------------------------------------ hash


def test_spec_hash_is_stable_and_short():
    a, b = EngineSpec(), EngineSpec()
    assert a.spec_hash() == b.spec_hash()
    assert re.fullmatch(r"[0-9a-f]{12}", a.spec_hash())
    # a pinned value: the hash must not drift between releases for an unchanged spec
    assert a.spec_hash() == EngineSpec.model_validate(a.model_dump()).spec_hash()


def test_spec_hash_changes_with_every_container_field():
    base = EngineSpec().spec_hash()
    changes = [
        {"image": "nvcr.io/nvidia/vllm:25.10-py3"},
        {"max_model_len": 16384},
        {"gpu_memory_utilization": 0.85},
        {"max_num_batched_tokens": 20480},
        {"max_num_seqs": 32},
        {"enable_prefix_caching": False},
        {"served_model_name": "qwen"},
        {"revision": "main"},
        {"container_port": 8001},
        {"restart_policy": "always"},
        {"extra_args": ["--enforce-eager"]},
        {"env": {"VLLM_LOGGING_LEVEL": "DEBUG"}},
    ]
    hashes = {EngineSpec(**change).spec_hash() for change in changes}
    assert base not in hashes and len(hashes) == len(changes)


def test_spec_hash_with_target_covers_the_container_shape():
    spec = EngineSpec()
    spark = TargetMachine(name="spark")
    assert spec.spec_hash(spark) != spec.spec_hash()
    assert spec.spec_hash(spark) == spec.spec_hash(TargetMachine(name="spark"))
    assert spec.spec_hash(spark) != spec.spec_hash(TargetMachine(name="spark", host_port=8001))
    assert spec.spec_hash(spark) != spec.spec_hash(TargetMachine(name="spark", cache_dir="/srv/hf"))
    assert spec.spec_hash(spark) != spec.spec_hash(TargetMachine(name="spark", api_key_secret="vllm-api-key"))
    # the target's name and docker address do not change the container itself
    assert spec.spec_hash(spark) == spec.spec_hash(TargetMachine(name="other", docker_base_url="ssh://me@spark"))


# ------------------------------------------------------------------------------ compose


def test_compose_yaml_equals_the_runbook_service_plus_offline_env():
    ours = yaml.safe_load(compose_yaml(EngineSpec.preset("runbook"), TargetMachine(name="spark")))
    assert list(ours) == ["services"] and list(ours["services"]) == [SERVICE]
    mine, runbook = ours["services"][SERVICE], runbook_service()
    assert set(mine) == set(runbook)
    for key in ("image", "container_name", "restart", "ports", "command", "volumes", "deploy"):
        assert mine[key] == runbook[key], key
    assert mine["command"] == runbook["command"]  # EXACTLY, as strings
    assert mine["ports"] == ["8000:8000"]
    assert mine["volumes"] == ["/opt/hf:/root/.cache/huggingface"]
    assert mine["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    # the token lines are the runbook's; the only additions are the two offline settings
    for key, value in runbook["environment"].items():
        assert mine["environment"][key] == value
    assert set(mine["environment"]) - set(runbook["environment"]) == {"HF_HUB_OFFLINE", "HF_HUB_CACHE"}
    assert mine["environment"]["HF_HUB_OFFLINE"] == "1"
    assert mine["environment"]["HF_HUB_CACHE"] == "/root/.cache/huggingface"


def test_compose_yaml_for_other_targets():
    target = TargetMachine(
        name="sim", gpus="none", publish_host="127.0.0.1", host_port=18000, cache_dir="/tmp/hf",
        hf_token_secret=None, api_key_secret="vllm-api-key", extra_volumes={"/tmp/ledger": "/ledger:ro"},
    )  # fmt: skip
    service = yaml.safe_load(compose_yaml(EngineSpec.preset("runbook"), target))["services"][SERVICE]
    assert service["ports"] == ["127.0.0.1:18000:8000"]
    assert "deploy" not in service
    assert service["volumes"] == ["/tmp/hf:/root/.cache/huggingface", "/tmp/ledger:/ledger:ro"]
    assert "HF_TOKEN" not in service["environment"]
    assert service["environment"]["VLLM_API_KEY"] == "${VLLM_API_KEY}"


@pytest.mark.skipif(not SEED.exists(), reason="../shared/seed not beside the clone")
def test_runbook_compose_copy_has_not_drifted():
    text = SEED.read_text()
    section = text[text.index("## Service Configuration") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    copy = RUNBOOK_COMPOSE.read_text()
    body = "".join(line for line in copy.splitlines(keepends=True) if not line.startswith("#"))
    assert copy.startswith("#") and "000_2893f9d7df783e64.txt" in copy.splitlines()[0]
    assert body == block


# ------------------------------------------------------------------------------ fast restarts (issue 17)

INSPECTED = ("0.10.1.1", "0.10.2", "0.11.1", "0.17.1", "0.20.1", "0.31.0")


@pytest.mark.parametrize("version", INSPECTED)
def test_the_runbook_preset_renders_the_compose_file_s_exact_command_and_mounts(version):
    spec, service = EngineSpec.preset("runbook"), runbook_service()
    assert spec.vllm_command(Version(version)) == service["command"]
    mine = yaml.safe_load(compose_yaml(spec, TargetMachine(name="spark"), Version(version)))["services"][SERVICE]
    assert mine["command"] == service["command"] and mine["volumes"] == service["volumes"]


def test_the_default_differs_from_the_runbook_by_the_loader_flags_and_the_cache_mounts():
    from tasks.loader import choose_loader, with_loader

    version, service = Version("0.11.1"), runbook_service()
    default = with_loader(EngineSpec(), choose_loader("auto", version, has_fastsafetensors=False))
    assert default.vllm_command(version) == [*service["command"], "--safetensors-load-strategy", "eager"]
    mine = yaml.safe_load(compose_yaml(default, TargetMachine(name="spark"), version))["services"][SERVICE]
    assert mine["volumes"] == [
        *service["volumes"],
        "/opt/vllm-cache/vllm:/root/.cache/vllm",
        "/opt/vllm-cache/triton:/root/.triton/cache",
        "/opt/vllm-cache/flashinfer:/root/.cache/flashinfer",
    ]


def test_the_hash_before_the_fast_restart_fields_is_the_old_one():
    """A server started before the upgrade carries the hash without `RESTART_FIELDS`; deploy-qwen
    recognises it (and says it replaces it once) by hashing the spec as if those fields did not exist."""
    import hashlib
    import json

    from blocks.engine import HASHED_FIELDS, RESTART_FIELDS

    spec, spark = EngineSpec.preset("runbook"), TargetMachine(name="spark")
    old_fields = {k: v for k, v in spec.hashed_fields().items() if k not in RESTART_FIELDS}
    old_target = {k: v for k, v in spark.container_identity().items() if k != "vllm_cache_dir"}
    canonical = json.dumps({"spec": old_fields, "target": old_target}, sort_keys=True, separators=(",", ":"))
    assert spec.spec_hash(spark, RESTART_FIELDS) == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert spec.spec_hash(spark, RESTART_FIELDS) == EngineSpec().spec_hash(spark, RESTART_FIELDS)
    assert spec.spec_hash(spark) != EngineSpec().spec_hash(spark)
    assert {"loader", "persistent_caches"} <= set(HASHED_FIELDS)
    assert spec.spec_hash(spark) != spec.spec_hash(TargetMachine(name="spark", vllm_cache_dir="/srv/vllm-cache"))
