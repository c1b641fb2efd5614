"""Find the model in a Hugging Face cache the way vLLM 0.10.1.1 does, and check it.

Why this shape: vLLM reads config/tokenizer through the *default* hub cache
(`$HF_HUB_CACHE`) but weights through `--download-dir`; staging code that gets
either wrong must fail here exactly as it would on the Spark.  The shards are
small in tests, so the weights' memory footprint comes from the index's
`metadata.total_size` (the real model's), while every shard's safetensors
header is still checked like safetensors' own reader does.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .failures import (
    STAGE_CONFIG,
    STAGE_SHARD,
    STAGE_TOKENIZER,
    STAGE_WEIGHTS,
    StartupFailure,
)

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SAFETENSORS_MAX_HEADER = 100_000_000
_OFFLINE_MSG = (
    "Cannot find an appropriate cached snapshot folder for the specified revision on the local "
    "disk and outgoing traffic has been disabled. To enable repo look-ups and downloads online, "
    "set 'HF_HUB_OFFLINE=0' as environment variable."
)
_ONLINE_FILE_MSG = (
    "An error happened while trying to locate the file on the Hub and we cannot find the requested "
    "files in the local cache. Please check your connection and try again or make sure your "
    "Internet connection is on."
)
_ONLINE_SNAPSHOT_MSG = (
    "An error happened while trying to locate the files on the Hub and we cannot find the "
    "appropriate snapshot folder for the specified revision on the local disk. Please check your "
    "internet connection and try again."
)
_LOCAL_ENTRY_ERR = "huggingface_hub.errors.LocalEntryNotFoundError"


@dataclass(frozen=True)
class ModelConfig:
    """The parts of config.json the imitation needs."""

    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    max_position_embeddings: int
    torch_dtype: str
    quant_method: str | None

    @property
    def kv_bytes_per_token(self) -> int:
        """layers x KV heads x head_dim x (K,V) x 2 bytes (bf16 KV cache)."""
        return self.num_layers * self.num_kv_heads * self.head_dim * 2 * 2

    @property
    def active_params(self) -> int:
        """Parameters touched per token (decoder stack + LM head), for FLOP counts."""
        attn = self.hidden_size * self.num_attention_heads * self.head_dim * 2
        attn += self.hidden_size * self.num_kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * (attn + mlp) + self.hidden_size * self.vocab_size

    @classmethod
    def from_dict(cls, cfg: Mapping[str, object]) -> ModelConfig:
        archs = cfg.get("architectures") or ["Qwen3ForCausalLM"]
        heads = int(cfg.get("num_attention_heads", 64))  # type: ignore[arg-type]
        hidden = int(cfg.get("hidden_size", 5120))  # type: ignore[arg-type]
        quant = cfg.get("quantization_config")
        return cls(
            architecture=str(archs[0]),  # type: ignore[index]
            num_layers=int(cfg.get("num_hidden_layers", 64)),  # type: ignore[arg-type]
            num_kv_heads=int(cfg.get("num_key_value_heads", heads)),  # type: ignore[arg-type]
            head_dim=int(cfg.get("head_dim") or hidden // heads),  # type: ignore[arg-type]
            hidden_size=hidden,
            intermediate_size=int(cfg.get("intermediate_size", 4 * hidden)),  # type: ignore[arg-type]
            num_attention_heads=heads,
            vocab_size=int(cfg.get("vocab_size", 151936)),  # type: ignore[arg-type]
            max_position_embeddings=int(cfg.get("max_position_embeddings", 40960)),  # type: ignore[arg-type]
            torch_dtype=str(cfg.get("torch_dtype", "bfloat16")),
            quant_method=str(quant.get("quant_method")) if isinstance(quant, dict) else None,
        )


@dataclass(frozen=True)
class WeightsSnapshot:
    """Where the weights are and what they weigh."""

    snapshot_dir: Path
    commit: str
    shard_names: tuple[str, ...]
    total_size: int  # bytes, from the index metadata (the real model's size)

    def shard_path(self, name: str) -> Path:
        return self.snapshot_dir / name


def is_offline(env: Mapping[str, str]) -> bool:
    """huggingface_hub's HF_HUB_OFFLINE parsing (also TRANSFORMERS_OFFLINE)."""
    truthy = ("1", "ON", "YES", "TRUE")
    return env.get("HF_HUB_OFFLINE", "").upper() in truthy or env.get("TRANSFORMERS_OFFLINE", "").upper() in truthy


def hub_cache_dir(env: Mapping[str, str]) -> Path:
    """$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (huggingface_hub's order)."""
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expanduser(explicit))
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(os.path.expanduser(home)) / "hub"


def repo_folder_name(repo_id: str) -> str:
    """`Qwen/Qwen3-32B-FP8` -> `models--Qwen--Qwen3-32B-FP8` (hub cache layout)."""
    return "models--" + repo_id.replace("/", "--")


def resolve_snapshot(cache_dir: Path, repo_id: str, revision: str | None) -> tuple[Path, str] | None:
    """refs/<rev> -> snapshots/<commit>; a 40-hex revision names the snapshot directly."""
    repo_dir = cache_dir / repo_folder_name(repo_id)
    rev = revision or "main"
    if _COMMIT_RE.match(rev):
        commit = rev
    else:
        ref = repo_dir / "refs" / rev
        try:
            commit = ref.read_text().strip()
        except OSError:
            return None
    snap = repo_dir / "snapshots" / commit
    return (snap, commit) if snap.is_dir() else None


def _endpoint_host(env: Mapping[str, str]) -> str:
    return urlparse(env.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def _connection_error(env: Mapping[str, str], url_path: str) -> str:
    """The requests ConnectionError huggingface_hub wraps when there is no network."""
    host = _endpoint_host(env)
    return (
        "requests.exceptions.ConnectionError: (MaxRetryError(\"HTTPSConnectionPool(host='"
        f"{host}', port=443): Max retries exceeded with url: {url_path} (Caused by "
        'NameResolutionError(\\"<urllib3.connection.HTTPSConnection object at 0x7f3c2d1e5a90>: '
        f"Failed to resolve '{host}' ([Errno -3] Temporary failure in name resolution)\\\"))\"), "
        "'(Request ID: 5c1f7e0e-2f4b-4a53-9d57-0b3f5d0f8d61)')"
    )


def _missing(stage: str, env: Mapping[str, str], repo_id: str, revision: str | None, what: str) -> StartupFailure:
    """Offline: huggingface_hub's offline text.  Online: the no-network text (no internet here)."""
    if is_offline(env):
        return StartupFailure(stage, _LOCAL_ENTRY_ERR, _OFFLINE_MSG)
    rev = revision or "main"
    if what == "snapshot":
        return StartupFailure(
            stage,
            _LOCAL_ENTRY_ERR,
            _ONLINE_SNAPSHOT_MSG,
            cause_line=_connection_error(env, f"/api/models/{repo_id}/revision/{rev}"),
        )
    return StartupFailure(
        stage,
        _LOCAL_ENTRY_ERR,
        _ONLINE_FILE_MSG,
        cause_line=_connection_error(env, f"/{repo_id}/resolve/{rev}/{what}"),
    )


def config_dir(model: str, revision: str | None, env: Mapping[str, str]) -> Path:
    """The directory config/tokenizer files are read from: a local model dir, or the hub-cache snapshot."""
    if os.path.isdir(model):
        return Path(model)
    found = resolve_snapshot(hub_cache_dir(env), model, revision)
    if found is None:
        raise _missing(STAGE_CONFIG, env, model, revision, "config.json")
    return found[0]


def load_config(model: str, revision: str | None, env: Mapping[str, str]) -> ModelConfig:
    """config.json from the hub cache (never --download-dir), as vLLM's get_config."""
    cfg_path = config_dir(model, revision, env) / "config.json"
    try:
        data = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise _missing(STAGE_CONFIG, env, model, revision, "config.json") from None
    except (OSError, ValueError) as exc:
        raise StartupFailure(
            STAGE_CONFIG, "OSError", f"It looks like the config file at '{cfg_path}' is not a valid JSON file."
        ) from exc
    return ModelConfig.from_dict(data)


def check_tokenizer(model: str, revision: str | None, env: Mapping[str, str]) -> None:
    """The tokenizer files come from the same hub cache; missing ones stop the API server."""
    cfg_dir = config_dir(model, revision, env)
    if (cfg_dir / "tokenizer.json").exists() or (cfg_dir / "vocab.json").exists():
        return
    raise StartupFailure(
        STAGE_TOKENIZER,
        "OSError",
        f"Can't load tokenizer for '{model}'. If you were trying to load it from "
        "'https://huggingface.co/models', make sure you don't have a local directory with the same "
        f"name. Otherwise, make sure '{model}' is the correct path to a directory containing all "
        "relevant files for a Qwen2TokenizerFast tokenizer.",
    )


def locate_weights(
    model: str, revision: str | None, download_dir: str | None, env: Mapping[str, str]
) -> WeightsSnapshot:
    """The weights snapshot under --download-dir (or the hub cache), its shards and size."""
    if os.path.isdir(model):
        snap, commit = Path(model), "local"
    else:
        cache = Path(os.path.expanduser(download_dir)) if download_dir else hub_cache_dir(env)
        found = resolve_snapshot(cache, model, revision)
        if found is None:
            raise _missing(STAGE_WEIGHTS, env, model, revision, "snapshot")
        snap, commit = found
    index_path = snap / "model.safetensors.index.json"
    shards: list[str]
    total = 0
    if index_path.exists():
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise StartupFailure(
                STAGE_WEIGHTS,
                "json.decoder.JSONDecodeError",
                f"Expecting value: line 1 column 1 (char 0) [{index_path}]",
            ) from exc
        weight_map: dict[str, str] = index.get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        total = int((index.get("metadata") or {}).get("total_size") or 0)
    else:
        shards = sorted(p.name for p in snap.glob("*.safetensors"))
    if not shards:
        raise StartupFailure(STAGE_WEIGHTS, "RuntimeError", f"Cannot find any model weights with `{model}`")
    if total <= 0:
        total = sum(_size_or_zero(snap / s) for s in shards)
    return WeightsSnapshot(snapshot_dir=snap, commit=commit, shard_names=tuple(shards), total_size=total)


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def check_shard(path: Path) -> None:
    """Open one shard as safetensors' Rust reader does; raise its error text on damage.

    Layout: 8-byte little-endian header length N, N bytes of JSON header whose
    tensors carry `data_offsets`; the file must end exactly where the last
    tensor's data ends.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _safetensors_error("header too small")
            (n,) = struct.unpack("<Q", head)
            if n > _SAFETENSORS_MAX_HEADER:
                raise _safetensors_error("header too large")
            if 8 + n > size:
                raise _safetensors_error("invalid header length")
            raw = fh.read(n)
    except FileNotFoundError:
        raise StartupFailure(
            STAGE_SHARD, "FileNotFoundError", f"[Errno 2] No such file or directory: '{path}'"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _safetensors_error(f"invalid UTF-8 in header: {exc}") from None
    try:
        header = json.loads(text)
    except ValueError:
        raise _safetensors_error("invalid JSON in header: EOF while parsing a value at line 1 column 0") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise _safetensors_error("invalid JSON in header: missing field `data_offsets`") from None
        if stop < begin:
            raise _safetensors_error(f"invalid offset for tensor '{name}'")
        end = max(end, int(stop))
    if 8 + n + end != size:
        raise _safetensors_error("incomplete metadata, file not fully covered")


def _safetensors_error(detail: str) -> StartupFailure:
    return StartupFailure(
        STAGE_SHARD, "safetensors_rust.SafetensorError", f"Error while deserializing header: {detail}"
    )
