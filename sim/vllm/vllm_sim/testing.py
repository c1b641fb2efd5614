"""Build a small but valid Hugging Face cache of Qwen/Qwen3-32B-FP8 for tests.

Why: tests of the imitation (and of the project's staging/deploy code) need a
cache that real tools accept — `refs/main`, `blobs/<etag>`, relative snapshot
symlinks, the real config.json, an index whose `metadata.total_size` is the
real model's — while the shards stay a few hundred bytes.  Standard library
only, so it also runs inside the imitation image.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

REPO_ID = "Qwen/Qwen3-32B-FP8"
COMMIT = "98a63908b41686889a6ade39c37616e54d49974d"
# The real checkpoint's index total_size (sum of its tensors: BF16 embeddings/lm_head/norms,
# FP8 e4m3 projections with BF16 block scales), the same figure the Hub imitation writes.
DEFAULT_TOTAL_SIZE = 34_322_434_048
NUM_SHARDS = 7

# The same config.json and index total_size the Hub imitation serves (one source of truth). This
# module is a host-side test helper: unlike the rest of vllm_sim it is never imported in the image.
from sim.hub.repo import QWEN3_32B_FP8_CONFIG, REAL_TOTAL_SIZE  # noqa: E402

assert REAL_TOTAL_SIZE == DEFAULT_TOTAL_SIZE
GENERATION_CONFIG: dict[str, object] = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}


def safetensors_bytes(tensors: dict[str, bytes], dtype: str = "F8_E4M3") -> bytes:
    """A valid safetensors file: u64 LE header size, JSON header, then the data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, data in tensors.items():
        header[name] = {"dtype": dtype, "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + b"".join(tensors.values())


def shard_name(i: int, n: int = NUM_SHARDS) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class FakeCache:
    """Where the fixture put things."""

    root: Path
    repo_id: str
    commit: str

    @property
    def repo_dir(self) -> Path:
        return self.root / ("models--" + self.repo_id.replace("/", "--"))

    @property
    def snapshot(self) -> Path:
        return self.repo_dir / "snapshots" / self.commit

    def shard(self, i: int, n: int = NUM_SHARDS) -> Path:
        return self.snapshot / shard_name(i, n)

    def truncate_shard(self, i: int, keep_bytes: int) -> None:
        """Cut the blob behind shard i (an interrupted download)."""
        blob = self.shard(i).resolve()
        data = blob.read_bytes()
        blob.write_bytes(data[:keep_bytes])

    def remove_shard(self, i: int) -> None:
        """Delete the blob behind shard i, leaving a dangling snapshot link."""
        self.shard(i).resolve().unlink()


def build_hf_cache(
    root: os.PathLike,
    repo_id: str = REPO_ID,
    commit: str = COMMIT,
    total_size: int = DEFAULT_TOTAL_SIZE,
    num_shards: int = NUM_SHARDS,
    config: dict[str, object] | None = None,
    with_tokenizer: bool = True,
) -> FakeCache:
    """Write `root/models--<org>--<name>/{refs,blobs,snapshots}` like huggingface_hub does."""
    cache = FakeCache(Path(root), repo_id, commit)
    blobs = cache.repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    cache.snapshot.mkdir(parents=True, exist_ok=True)
    (cache.repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (cache.repo_dir / "refs" / "main").write_text(commit)

    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for i in range(1, num_shards + 1):
        name = shard_name(i, num_shards)
        tensors = {
            f"model.layers.{i}.mlp.down_proj.weight": bytes(range(16)),
            f"model.layers.{i}.mlp.down_proj.weight_scale_inv": bytes(8),
        }
        for t in tensors:
            weight_map[t] = name
        files[name] = safetensors_bytes(tensors)
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    files["config.json"] = json.dumps(config or QWEN3_32B_FP8_CONFIG, indent=2).encode()
    files["generation_config.json"] = json.dumps(GENERATION_CONFIG, indent=2).encode()
    if with_tokenizer:
        files["tokenizer.json"] = json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode()
        files["tokenizer_config.json"] = json.dumps(
            {"tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072}
        ).encode()
        files["vocab.json"] = b"{}"
        files["merges.txt"] = b"#version: 0.2\n"

    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else _git_sha1(data)
        (blobs / etag).write_bytes(data)
        link = cache.snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.join("..", "..", "blobs", etag))
    return cache


def shard_names(n: int = NUM_SHARDS) -> list[str]:
    return [shard_name(i, n) for i in range(1, n + 1)]
