"""The served engine: what `vllm serve` runs, as a Prefect block an operator edits in the UI.

Every default is the runbook's compose service ("Service Configuration", copied verbatim in
`tests/data/runbook_compose.yaml`) but two that make restarts fast: ``loader="auto"`` and
``persistent_caches=True``; the ``runbook`` preset sets those back, and its command and mounts are the
compose file's exactly. The other presets are its three "Performance Tuning" blocks. The
methods here are pure: they render the spec, they never touch docker or the Prefect API.
`load_engine_spec` is the one path from the flows' parameters (engine block, preset, overrides)
to a spec. This module imports nothing from `blocks.target` (see `blocks.shared`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal, cast

from packaging.version import Version
from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from blocks.bench_gate import BenchGate
from blocks.shared import (
    API_KEY_FLAG,
    ENV_NAME,
    RUNBOOK_CONTAINER_NAME,
    SECRET_ENV_KEYS,
    ContainerIdentity,
    check_container_name,
)
from tasks.errors import SparkVllmError
from tasks.vllm.versions import RUNBOOK_VERSION, Variant, variants_for

__all__ = [
    "ENGINE_FLAGS",
    "KNOWN_FLAGS",
    "FlagUnavailable",
    "EngineSpec",
    "PRESETS",
    "PresetName",
    "extra_args_warnings",
    "RestartPolicy",
    "format_utilization",
    "load_engine_spec",
    "LoaderSetting",
    "RESTART_FIELDS",
]

#: docker's restart policies (`docker run --restart`, compose `restart:`).
RestartPolicy = Literal["no", "always", "on-failure", "unless-stopped"]
PresetName = Literal["runbook", "throughput", "latency", "max-context"]
#: How vLLM reads the weights: ``auto`` lets deploy-qwen choose the fastest the image offers
#: (tasks/loader.py `choose_loader`); the others pin one (docs/operator.md, "The loader").
LoaderSetting = Literal["auto", "mmap", "eager", "fastsafetensors"]

#: The runbook's three tuning blocks, field by field. Each block lists only the flags it changes;
#: everything else (prefix caching, trust-remote-code, image, paths) stays at the spec's defaults,
#: the fast loader and the cache mounts included (only `runbook` sets those back).
PRESETS: dict[str, dict[str, Any]] = {
    # "Service Configuration": the compose file itself, exactly: vLLM's own loader (mmap) and no cache
    # mounts, the two things this project's defaults add for fast restarts (docs/operator.md).
    "runbook": {"loader": "mmap", "persistent_caches": False},
    # "For Maximum Throughput"
    "throughput": {
        "max_model_len": 32000,
        "gpu_memory_utilization": 0.90,
        "max_num_batched_tokens": 20480,
        "max_num_seqs": 64,
        "enable_prefix_caching": True,
    },
    # "For Minimum Latency"
    "latency": {
        "max_model_len": 16384,
        "gpu_memory_utilization": 0.85,
        "max_num_batched_tokens": 8192,
        "max_num_seqs": 16,
    },
    # "For Maximum Context (Lower Concurrency)"
    "max-context": {
        "max_model_len": 32000,
        "gpu_memory_utilization": 0.85,
        "max_num_batched_tokens": 16384,
        "max_num_seqs": 32,
    },
}

#: The fields that shape the container (all of them): the input of `spec_hash`.
HASHED_FIELDS: tuple[str, ...] = (
    "image",
    "model",
    "served_model_name",
    "revision",
    "container_name",
    "download_dir",
    "max_model_len",
    "gpu_memory_utilization",
    "max_num_batched_tokens",
    "max_num_seqs",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "trust_remote_code",
    "quantization",
    "container_port",
    "restart_policy",
    "extra_args",
    "env",
    "loader",
    "persistent_caches",
)

#: What the fast restarts added to the spec hash (the spec's ``loader`` and ``persistent_caches``, the
#: target's ``vllm_cache_dir``): a server started before they existed has the hash computed without
#: them, which is how deploy-qwen tells "replaced once because the project was upgraded" from a real
#: change of the spec (docs/operator.md, "Upgrading").
RESTART_FIELDS: tuple[str, ...] = ("loader", "persistent_caches", "vllm_cache_dir")

DEFAULT_PORT = 8000

_PREQUANTIZED_FP8 = re.compile(r"(?i)(?:^|[-_/.])fp8(?:$|[-_.])")

RUNBOOK_FP8_TROUBLESHOOTING = (
    "the runbook's troubleshooting 'FP8 Quantization Fails with On-the-Fly Quantization': "
    "`--quantization fp8` fails on the DGX Spark with `RuntimeError: Error Internal` / "
    "`cutlass_scaled_mm failed`; use the pre-quantized model Qwen/Qwen3-32B-FP8 instead"
)


def format_utilization(value: float) -> str:
    """Format a memory fraction as the runbook writes it: 0.9 -> "0.90", 0.925 -> "0.925"."""
    text = f"{value:.2f}"
    if float(text) != value:
        text = format(value, ".15g")
    return text


class FlagKind(StrEnum):
    """How a field becomes `vllm serve` arguments."""

    POSITIONAL = "positional"  # `vllm serve <value>`
    VALUE = "value"  # `--flag <value>`, always
    OPTIONAL = "optional"  # `--flag <value>`, unless the value is what vLLM takes without the flag
    SWITCH = "switch"  # `--flag` or `--no-flag`, always
    ON = "on"  # `--flag` when True; nothing when False (vLLM's default)
    OFF = "off"  # `--no-flag` when False; nothing when True (the default here)
    WHEN = "when"  # `--flag <value>` when the value is one of `CliFlag.when`; nothing otherwise


def _unset(spec: EngineSpec) -> Any:
    """vLLM's default of most optional flags: none (the flag is rendered whenever the field is set)."""
    return None


class FlagUnavailable(SparkVllmError, ValueError):
    """A spec field renders a `vllm serve` flag that the vLLM about to run does not have."""


@dataclass(frozen=True)
class CliFlag:
    """One EngineSpec field and the `vllm serve` flag it renders to, by vLLM version.

    Attributes:
        field: the EngineSpec field.
        kind: how the value is rendered.
        spelled: the flag's spelling per vLLM version range (a `Variant` each, its source the vLLM
            file:line of every inspected version); a version no variant holds for has no such flag.
        text: the value as the runbook writes it.
        vllm_default: for OPTIONAL, the value vLLM takes when the flag is left out (not rendered).
        when: for WHEN, the values of the field that render the flag (any other renders nothing).
    """

    field: str
    kind: FlagKind
    spelled: tuple[Variant[str], ...]
    text: Callable[[Any], str] = str
    vllm_default: Callable[[EngineSpec], Any] = _unset
    when: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """The flag as the runbook's vLLM (0.10.1.1) spells it."""
        return self.flag_for(RUNBOOK_VERSION) or self.spelled[0].value

    def flag_for(self, version: Version | None) -> str | None:
        """The flag as ``version`` spells it (None: that vLLM has no such flag; unknown: the runbook's)."""
        found = variants_for(self.spelled, RUNBOOK_VERSION if version is None else version)
        return found[0] if found else None

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every form of the flag on any inspected vLLM's command line: a boolean field is an
        ``argparse.BooleanOptionalAction``, which also takes ``--no-<flag>`` (vllm/engine/arg_utils.py:195-197
        in 0.10.1.1, :379 in 0.31.0)."""
        names = dict.fromkeys(v.value for v in self.spelled)
        if self.kind in (FlagKind.SWITCH, FlagKind.ON, FlagKind.OFF):
            return tuple(form for name in names for form in (name, "--no-" + name.removeprefix("--")))
        return tuple(names)

    def render(self, spec: EngineSpec, version: Version | None = None) -> list[str]:
        """The arguments this field adds to the command for ``version`` (none when vLLM's default
        says the same).

        Raises:
            FlagUnavailable: the field needs the flag and that vLLM has none; the message names the
                flag, the version and the field to change.
        """
        flag = self.flag_for(version)
        if flag is not None:
            return self._args(spec, flag)
        args = self._args(spec, self.flag)
        if args:
            raise FlagUnavailable(
                f"the engine spec's {self.field}={getattr(spec, self.field)!r} renders {args[0]}, which vLLM"
                f" {version} does not have (it exists in vLLM {_ranges(self.spelled)}): clear or reset"
                f" {self.field} in the engine spec, or run an image whose vLLM has the flag (docs/versions.md)"
            )
        return []

    def _args(self, spec: EngineSpec, flag: str) -> list[str]:
        value = getattr(spec, self.field)
        if self.kind is FlagKind.POSITIONAL:
            return [self.text(value)]
        if self.kind is FlagKind.VALUE:
            return [flag, self.text(value)]
        if self.kind is FlagKind.OPTIONAL:
            return [] if value is None or value == self.vllm_default(spec) else [flag, self.text(value)]
        if self.kind is FlagKind.WHEN:
            return [flag, self.text(value)] if value in self.when else []
        off = "--no-" + flag.removeprefix("--")
        if self.kind is FlagKind.SWITCH:
            return [flag if value else off]
        if self.kind is FlagKind.ON:
            return [flag] if value else []
        return [] if value else [off]  # OFF


def _ranges(spelled: tuple[Variant[str], ...]) -> str:
    return " and ".join(v.versions or "of every version" for v in spelled)


_ARGS = "vllm/engine/arg_utils.py"
#: The versions whose `vllm/engine/arg_utils.py` (and API server CLI) were read for this table.
_READ = ("0.10.1.1", "0.10.2", "0.11.1", "0.17.1", "0.20.1", "0.31.0")


def _everywhere(flag: str, *lines: int, path: str = _ARGS) -> tuple[Variant[str], ...]:
    """A flag spelled the same in every inspected vLLM, at ``lines`` (one per version of `_READ`)."""
    where = ", ".join(f":{line} ({version})" for line, version in zip(lines, _READ, strict=True))
    return (Variant("", flag, f"{path}{where}"),)


def _since(versions: str, flag: str, *lines: int, path: str = _ARGS) -> tuple[Variant[str], ...]:
    """A flag that appeared in vLLM: spelled the same from ``versions`` on, at ``lines`` (one per
    version of `_READ` in that range)."""
    read = [version for version in _READ if Variant(versions, flag, "").holds_for(Version(version))]
    where = ", ".join(f":{line} ({version})" for line, version in zip(lines, read, strict=True))
    return (Variant(versions, flag, f"{path}{where}; absent before"),)


#: The one table of which field renders to which `vllm serve` flag, in the runbook's order (the
#: compose file's command, then the optional ones). `vllm_command()` renders it and `MANAGED_FLAGS`
#: is derived from it. Sources: each version's `EngineArgs.add_cli_args` and the API server's
#: `FrontendArgs` (vllm/entrypoints/openai/cli_args.py; vllm/entrypoints/launchers/cli_args.py in
#: 0.31.0). Every flag here is in all six inspected versions (0.10.1.1 to 0.31.0), booleans as
#: `BooleanOptionalAction` in each (so `--no-...` exists too); a flag that goes is a second range.
ENGINE_FLAGS: tuple[CliFlag, ...] = (
    # `vllm serve <model>`: the positional model_tag (openai/cli_args.py:236 in 0.10.1.1,
    # launchers/cli_args.py:418 in 0.31.0) replaces --model (cli/serve.py:40-41; :54 in 0.31.0)
    CliFlag("model", FlagKind.POSITIONAL, _everywhere("--model", 472, 501, 609, 667, 745, 929)),
    CliFlag("download_dir", FlagKind.VALUE, _everywhere("--download-dir", 567, 596, 700, 757, 839, 1036)),
    CliFlag("max_model_len", FlagKind.VALUE, _everywhere("--max-model-len", 497, 526, 632, 689, 767, 951)),
    CliFlag(
        "gpu_memory_utilization",
        FlagKind.VALUE,
        _everywhere("--gpu-memory-utilization", 689, 742, 903, 946, 1063, 1326),
        format_utilization,
    ),
    CliFlag(
        "max_num_batched_tokens",
        FlagKind.VALUE,
        _everywhere("--max-num-batched-tokens", 795, 852, 1049, 1159, 1284, 1668),
    ),
    CliFlag("max_num_seqs", FlagKind.VALUE, _everywhere("--max-num-seqs", 797, 854, 1056, 1166, 1291, 1682)),
    # V1 turns prefix caching on by default: leaving the flag out would not turn it off
    CliFlag(
        "enable_prefix_caching", FlagKind.SWITCH, _everywhere("--enable-prefix-caching", 696, 751, 914, 957, 1073, 1339)
    ),
    CliFlag("trust_remote_code", FlagKind.ON, _everywhere("--trust-remote-code", 481, 510, 616, 673, 751, 935)),
    CliFlag(
        "served_model_name",
        FlagKind.OPTIONAL,
        _everywhere("--served-model-name", 517, 547, 650, 715, 793, 988),
        vllm_default=lambda s: s.model,
    ),
    CliFlag("revision", FlagKind.OPTIONAL, _everywhere("--revision", 489, 518, 627, 684, 762, 946)),
    CliFlag("quantization", FlagKind.OPTIONAL, _everywhere("--quantization", 499, 528, 633, 690, 768, 952)),
    CliFlag(
        "enable_chunked_prefill",
        FlagKind.OFF,
        _everywhere("--enable-chunked-prefill", 821, 878, 1082, 1189, 1314, 1713),
    ),
    # FrontendArgs.port (default 8000) becomes --port (cli_args.py:223-224 in 0.10.1.1)
    CliFlag(
        "container_port",
        FlagKind.OPTIONAL,
        (
            Variant(
                "",
                "--port",
                "vllm/entrypoints/openai/cli_args.py:75 (0.10.1.1, 0.10.2), :78 (0.11.1), :218 (0.17.1, 0.20.1);"
                " vllm/entrypoints/launchers/cli_args.py:282 (0.31.0)",
            ),
        ),
        vllm_default=lambda s: DEFAULT_PORT,
    ),
    # The loader (tasks/loader.py chooses it). `mmap` renders nothing: vLLM's own default, load format
    # "auto" read through safetensors' mmap (LoadConfig.load_format, vllm/config/__init__.py:1759 in
    # 0.10.1.1, vllm/config/load.py:30 in 0.31.0), as the runbook runs it. fastsafetensors is a load
    # format of every inspected vLLM (vllm/model_executor/model_loader/__init__.py:32 in 0.10.1.1, :35
    # in 0.11.1, :37 in 0.31.0), imported from the package of that name (weight_utils.py:48 in 0.10.1.1,
    # :57 in 0.31.0): the image must have it. "eager" reads each file whole into CPU memory
    # (vllm/config/load.py:54-61 in 0.10.2, :65-79 in 0.31.0), from 0.10.2 on (vllm PR 24469).
    CliFlag(
        "loader",
        FlagKind.WHEN,
        _everywhere("--load-format", 566, 595, 699, 756, 838, 1035),
        when=("fastsafetensors",),
    ),
    CliFlag(
        "loader",
        FlagKind.WHEN,
        _since(">=0.10.2", "--safetensors-load-strategy", 598, 702, 759, 841, 1038),
        when=("eager",),
    ),
)


@dataclass(frozen=True)
class KnownFlag:
    """A `vllm serve` flag no spec field renders, whose presence by version is worth knowing (an
    operator's ``extra_args`` may carry it): where it exists, and what to use where it does not."""

    flag: str
    exists: Variant[str]  # value: the source's summary
    instead: str


#: Flags of `extra_args` whose presence changed between the inspected versions. The spec never
#: rewrites ``extra_args`` (they are the operator's); a flag the running vLLM lacks is a warning
#: before the start, naming its replacement.
KNOWN_FLAGS: tuple[KnownFlag, ...] = (
    KnownFlag(
        "--disable-log-requests",
        Variant(
            "<0.17.1",
            "deprecated for --enable-log-requests, 'will be removed in v0.12.0'",
            f"{_ARGS}:1752 (0.10.1.1), :1783 (0.10.2), :2086 (0.11.1); absent from 0.17.1 on",
        ),
        "drop it: requests are not logged unless --enable-log-requests is given"
        f" ({_ARGS}:2187 in 0.17.1, :3141 in 0.31.0)",
    ),
)


def extra_args_warnings(extra_args: list[str], version: Version | None) -> list[str]:
    """What an operator should know about ``extra_args`` on ``version`` (None: unknown, nothing said):
    each flag of `KNOWN_FLAGS` that vLLM lacks, with what to do. The args themselves stay as they are."""
    if version is None:
        return []
    given = {arg.split("=", 1)[0] for arg in extra_args}
    return [
        f"extra_args carry {known.flag}, which vLLM {version} does not have (vLLM {known.exists.versions}):"
        f" vLLM will refuse to start; {known.instead}"
        for known in KNOWN_FLAGS
        if known.flag in given and not known.exists.holds_for(version)
    ]


#: Flags the spec renders from its own fields (every spelling, -> the field); `extra_args` may not
#: repeat them (argparse would silently let the last one win, and the labels/hash would describe the
#: wrong server).
MANAGED_FLAGS: dict[str, str] = {spelling: f.field for f in ENGINE_FLAGS for spelling in f.spellings}


class EngineSpec(Block):
    """What `vllm serve` runs: the runbook's compose service, field by field.

    The `runbook` preset reproduces `docker compose up -d vllm-qwen3-32b-fp8` from the runbook
    exactly; the defaults differ from it in the loader (`auto`) and the cache mounts only.
    Change a value here (UI: Blocks -> vLLM Engine Spec) and the next deploy replaces the
    container; leave it and a re-run is a no-op.
    """

    _block_type_name = "vLLM Engine Spec"
    _block_type_slug = "vllm-engine-spec"
    _description = (
        "The vLLM server to run: image, model and `vllm serve` arguments. Defaults are the "
        "runbook's compose service for Qwen/Qwen3-32B-FP8 on an NVIDIA DGX Spark."
    )

    image: str = Field(
        default="nvcr.io/nvidia/vllm:25.09-py3",
        title="Container image",
        description=(
            "The runbook REQUIRES NVIDIA's image on the DGX Spark (GB10); vllm/vllm-openai:latest "
            "fails there (FP8 CUTLASS errors, wrong memory detection)."
        ),
    )
    model: str = Field(
        default="Qwen/Qwen3-32B-FP8",
        title="Model (Hugging Face repo id)",
        description="Pre-quantized FP8 checkpoint by the Qwen team (7 safetensors shards, ~32 GB).",
    )
    served_model_name: str | None = Field(
        default=None,
        title="Served model name",
        description="Name clients use in requests (`--served-model-name`). Empty: the model id.",
    )
    revision: str | None = Field(
        default=None,
        title="Model revision",
        description="Branch, tag or commit to serve (`--revision`). Empty: main.",
    )
    container_name: str = Field(default=RUNBOOK_CONTAINER_NAME, title="Container name")
    download_dir: str = Field(
        default="/root/.cache/huggingface",
        title="Download dir (in the container)",
        description="`--download-dir`; the target's cache dir is mounted here.",
    )
    max_model_len: int = Field(default=32000, title="Max model length (tokens)")
    gpu_memory_utilization: float = Field(
        default=0.90,
        title="GPU memory utilization",
        description="Fraction of the GPU (on GB10: unified) memory vLLM may take, in (0, 1].",
    )
    max_num_batched_tokens: int = Field(default=16384, title="Max batched tokens per step")
    max_num_seqs: int = Field(default=64, title="Max concurrent sequences")
    enable_prefix_caching: bool = Field(default=True, title="Prefix caching")
    enable_chunked_prefill: bool = Field(
        default=True,
        title="Chunked prefill",
        description=(
            "vLLM V1 always chunks prefills, which lets max batched tokens be below max model "
            "length. Off renders `--no-enable-chunked-prefill`."
        ),
    )
    trust_remote_code: bool = Field(default=True, title="Trust remote code", description="Required for Qwen models.")
    quantization: str | None = Field(
        default=None,
        title="Quantization",
        description="`--quantization`. Leave empty for pre-quantized checkpoints (the FP8 model).",
    )
    container_port: int = Field(default=DEFAULT_PORT, title="Port in the container")
    restart_policy: RestartPolicy = Field(default="unless-stopped", title="Restart policy")
    extra_args: list[str] = Field(
        default_factory=list,
        title="Extra `vllm serve` arguments",
        description="Appended verbatim after the rendered ones. No secrets (no --api-key).",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        title="Extra container environment (not secret)",
        description="Secrets (HF token, API key) come from the target's Secret blocks instead.",
    )
    loader: LoaderSetting = Field(
        default="auto",
        title="Weight loader",
        description=(
            "How vLLM reads the weights. auto: fastsafetensors when the image has the package, else the "
            "eager strategy (vLLM 0.10.2+), else mmap; deploy-qwen learns what the image offers and says "
            "its choice in the report. mmap: vLLM's default, as the runbook runs it (slow on GB10, about "
            "155 MB/s). eager: `--safetensors-load-strategy eager` (0.10.2+). fastsafetensors: "
            "`--load-format fastsafetensors` (the image needs the package). docs/operator.md"
        ),
    )
    persistent_caches: bool = Field(
        default=True,
        title="Persistent compile and kernel caches",
        description=(
            "Mount the target's vllm_cache_dir for vLLM's compile cache and the Triton and FlashInfer "
            "kernel caches, so a restart of the same spec skips torch.compile. Off: every container "
            "compiles afresh, as the runbook's does."
        ),
    )
    bench_gate: BenchGate | None = Field(
        default=None,
        title="Benchmark gate",
        description=(
            "Figures a deploy must reach in a short benchmark after its smoke test (docs/benchmark.md). "
            "Empty: no gate. Not part of the spec hash: a new threshold never replaces the server."
        ),
    )

    # ---------------------------------------------------------------- validation (field level)

    @field_validator("image", "model", "download_dir")
    @classmethod
    def _not_blank(cls, value: str, info) -> str:
        value = value.strip()
        if not value or any(ch.isspace() for ch in value):
            raise ValueError(f"{info.field_name} must be a non-empty value without spaces (got {value!r})")
        return value

    @field_validator("container_name")
    @classmethod
    def _container_name(cls, value: str) -> str:
        return check_container_name(value.strip())  # the same rule as the target's override

    @field_validator("download_dir")
    @classmethod
    def _absolute_download_dir(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(
                f"download_dir must be an absolute path inside the container (got {value!r}); "
                "the runbook uses /root/.cache/huggingface"
            )
        return value

    @field_validator("served_model_name", "revision", "quantization", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("max_model_len", "max_num_batched_tokens", "max_num_seqs")
    @classmethod
    def _positive(cls, value: int, info) -> int:
        if value <= 0:
            runbook = {"max_model_len": 32000, "max_num_batched_tokens": 16384, "max_num_seqs": 64}
            raise ValueError(
                f"{info.field_name} must be a positive integer (got {value}); "
                f"the runbook uses {runbook[info.field_name]}"
            )
        return value

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _utilization(cls, value: float) -> float:
        if not (0.0 < value <= 1.0):
            raise ValueError(
                f"gpu_memory_utilization must be a fraction in (0, 1] (got {value}); the runbook "
                "uses 0.90, and 0.70-0.75 when memory is short"
            )
        return value

    @field_validator("container_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not (1 <= value <= 65535):
            raise ValueError(f"container_port must be a TCP port in 1-65535 (got {value}); the runbook uses 8000")
        return value

    @field_validator("quantization")
    @classmethod
    def _quantization_lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, value: list[str]) -> list[str]:
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag == API_KEY_FLAG:
                raise ValueError(
                    f"extra_args must not carry {API_KEY_FLAG}: the key would show in `docker inspect`, "
                    "logs and artifacts. Put it in a Prefect Secret block and name that block in "
                    "the target's api_key_secret (the container gets it as VLLM_API_KEY)"
                )
            if flag in MANAGED_FLAGS:
                raise ValueError(
                    f"extra_args repeats {flag}, which the spec renders from its field "
                    f"{MANAGED_FLAGS[flag]!r}: set that field instead"
                )
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not ENV_NAME.match(key):
                raise ValueError(f"env has an invalid variable name {key!r}")
            if key in SECRET_ENV_KEYS:
                raise ValueError(
                    f"env must not set {key}: secrets come from Prefect Secret blocks named in the "
                    "target (hf_token_secret, api_key_secret), never from plain fields"
                )
        return value

    # ---------------------------------------------------------------- validation (cross-field)

    @model_validator(mode="after")
    def _consistent(self) -> EngineSpec:
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.max_model_len}) when enable_chunked_prefill is off: raise "
                "max_num_batched_tokens, lower max_model_len, or turn enable_chunked_prefill on"
            )
        if self.max_num_seqs > self.max_num_batched_tokens:
            raise ValueError(
                f"max_num_seqs ({self.max_num_seqs}) must be <= max_num_batched_tokens "
                f"({self.max_num_batched_tokens}): every running sequence needs at least one token "
                "per step; lower max_num_seqs or raise max_num_batched_tokens"
            )
        if self.quantization == "fp8" and _PREQUANTIZED_FP8.search(self.model):
            raise ValueError(
                f"quantization 'fp8' asks vLLM to quantize {self.model} on the fly, but it is "
                f"already an FP8 checkpoint: leave quantization empty. See {RUNBOOK_FP8_TROUBLESHOOTING}"
            )
        return self

    # ---------------------------------------------------------------- presets

    PRESET_NAMES: ClassVar[tuple[str, ...]] = tuple(PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EngineSpec:
        """The runbook's service (`runbook`) or one of its tuning blocks, then `overrides`.

        A shorthand for `load_engine_spec(None, name, overrides)`, so that Python callers and the
        flows' parameters go through one lookup and one set of checks.

        Raises:
            ValueError: unknown preset, unknown field in `overrides`, or an invalid value.
        """
        return load_engine_spec(None, name, overrides)

    # ---------------------------------------------------------------- rendering (pure)

    @property
    def served_name(self) -> str:
        """The name clients put in `"model"` and `/v1/models` lists."""
        return self.served_model_name or self.model

    def vllm_command(self, version: Version | None = None) -> list[str]:
        """The container command for the vLLM ``version`` (None: the runbook's), in the runbook's order
        (`ENGINE_FLAGS`); never contains a secret. ``extra_args`` follow verbatim (the operator's).

        Raises:
            FlagUnavailable: a field renders a flag this vLLM does not have (before anything starts).
        """
        rendered = (arg for flag in ENGINE_FLAGS for arg in flag.render(self, version))
        return ["vllm", "serve", *rendered, *self.extra_args]

    def loader_flags(self, version: Version | None = None) -> list[str]:
        """The arguments the ``loader`` field renders for ``version`` (`ENGINE_FLAGS`' loader rows).

        Raises:
            FlagUnavailable: the loader needs a flag this vLLM does not have (eager before 0.10.2).
        """
        return [arg for flag in ENGINE_FLAGS if flag.field == "loader" for arg in flag.render(self, version)]

    def hashed_fields(self) -> dict[str, Any]:
        """The fields that shape the container, as plain JSON-able values."""
        return self.model_dump(mode="json", include=set(HASHED_FIELDS))

    def serving_hash(self) -> str:
        """12-hex digest of what the server serves, whatever machine runs it: the spec hash's fields
        without the container name (each machine may name its own), so one spec reads the same on
        every target of a fleet (the fleet tables' "spec" column)."""
        fields = {k: v for k, v in self.hashed_fields().items() if k != "container_name"}
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def spec_hash(self, target: ContainerIdentity | None = None, leave_out: tuple[str, ...] = ()) -> str:
        """Stable 12-hex digest of what the container is made of (for the spec-hash label).

        Without a target: the spec's fields only. With a target: also the target's fields that
        shape the container (cache dir, GPUs, published address and port, extra volumes and env,
        which Secret blocks are used), so moving the port or the cache replaces the container
        too. `container_labels(spec, target)` uses the latter. Secret values never enter it.
        ``leave_out``: field names (spec or target) hashed as if they did not exist: with
        `RESTART_FIELDS`, the hash a server got before the fast restarts were added.
        """
        fields = {k: v for k, v in self.hashed_fields().items() if k not in leave_out}
        data: dict[str, Any] = {"spec": fields}
        if target is not None:
            data["target"] = {k: v for k, v in target.container_identity().items() if k not in leave_out}
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# -------------------------------------------------------------------- resolving a spec (one path)


def _preset_fields(name: str) -> dict[str, Any]:
    """The fields one of the runbook's tuning blocks sets (a copy), or a ValueError naming the choices."""
    if name not in PRESETS:
        raise ValueError(
            f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} (runbook = the compose "
            "file; the others are the runbook's 'Performance Tuning' blocks), or none"
        )
    return dict(PRESETS[name])


def _check_override_fields(overrides: Mapping[str, Any]) -> None:
    """Refuse keys that are not EngineSpec fields.

    Prefect blocks allow extra attributes (`extra="allow"`), so without this check a misspelt
    override (`max_num_seq`) would be kept as a stray attribute and silently change nothing.
    """
    valid = list(EngineSpec.model_fields)
    unknown = [key for key in overrides if key not in EngineSpec.model_fields]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(
        f"overrides has unknown engine spec field{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(hints)}: use one of {', '.join(valid)}"
    )


def load_engine_spec(engine: str | None, preset: str | None, overrides: Mapping[str, Any] | None) -> EngineSpec:
    """The engine spec a run serves: a saved block (or the runbook's defaults), a preset, overrides.

    The one place the deploy-qwen / stop-qwen parameters (`engine`, `preset`, `overrides`) and
    `EngineSpec.preset(...)` become a spec, so a preset means the same thing everywhere and every
    value passes the spec's validation (the result is built anew, never `model_copy`'d).

    Args:
        engine: name of a saved EngineSpec block; None or "" = the runbook's compose service.
        preset: one of `PRESETS` (its fields replace the block's); None or "" = none.
        overrides: EngineSpec fields to change last, e.g. {"gpu_memory_utilization": 0.75}.

    Returns:
        A validated EngineSpec (not bound to the block document it was loaded from, so saving it
        never overwrites that block by accident).

    Raises:
        ValueError: unknown preset (names the choices), unknown override field (names it and the
            valid ones), or a value the spec's validators refuse (a pydantic ValidationError).
    """
    fields: dict[str, Any] = {}
    if engine:
        loaded = cast(EngineSpec, EngineSpec.load(engine))  # Prefect's sync/async dual: sync here
        fields = loaded.model_dump(include=set(EngineSpec.model_fields))
    if preset:
        fields.update(_preset_fields(preset))
    if overrides:
        _check_override_fields(overrides)
        fields.update(overrides)
    return EngineSpec(**fields)
