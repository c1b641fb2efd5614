"""The generated repository: deterministic, Qwen3-32B-FP8-shaped, valid safetensors, git-correct ids."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from sim.hub import REAL_TOTAL_SIZE, RepoSpec
from sim.hub.repo import (
    DTYPE_SIZES,
    QWEN3_32B_FP8_CONFIG,
    REAL_PARAMETERS,
    ensure_repo,
    git_blob_sha1,
    qwen3_32b_fp8_tensors,
)

SMALL = RepoSpec(repo_id="Qwen/Qwen3-32B-FP8", n_shards=7, shard_bytes=256 * 1024)
EXPECTED_FILES = {
    ".gitattributes",
    "LICENSE",
    "README.md",
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    *(f"model-{i:05d}-of-00007.safetensors" for i in range(1, 8)),
}


def test_real_model_figures() -> None:
    # 64 layers x (7 FP8 projections + 7 BF16 block scales + 4 norms) + embed, norm, lm_head.
    assert len(qwen3_32b_fp8_tensors()) == 64 * 18 + 3
    assert REAL_TOTAL_SIZE == 34_322_434_048  # 31.97 GiB: the ~32 GB vLLM loads
    assert sum(REAL_PARAMETERS.values()) == 32_764_027_904  # the Hub's "32.8B params"


def test_same_spec_same_bytes_and_commit(tmp_path: Path) -> None:
    a = ensure_repo(tmp_path / "a", SMALL)
    b = ensure_repo(tmp_path / "b", SMALL)
    assert a.commit == b.commit and len(a.commit) == 40
    assert {p: i.etag for p, i in a.files.items()} == {p: i.etag for p, i in b.files.items()}
    c = ensure_repo(tmp_path / "a", RepoSpec(repo_id=SMALL.repo_id, n_shards=7, shard_bytes=256 * 1024, seed=1))
    assert c.commit != a.commit
    # gated/private do not change content
    d = ensure_repo(tmp_path / "a", RepoSpec(repo_id=SMALL.repo_id, shard_bytes=256 * 1024, gated=True, private=True))
    assert d.commit == a.commit and d.root == a.root


def test_cached_on_disk_keyed_by_spec(tmp_path: Path) -> None:
    first = ensure_repo(tmp_path, SMALL)
    shard = first.path_of("model-00001-of-00007.safetensors")
    mtime = shard.stat().st_mtime_ns
    t0 = time.monotonic()
    again = ensure_repo(tmp_path, SMALL)
    assert time.monotonic() - t0 < 0.5
    assert again.commit == first.commit and shard.stat().st_mtime_ns == mtime
    # a damaged cache (wrong size) is regenerated, not served
    shard.write_bytes(b"x")
    healed = ensure_repo(tmp_path, SMALL)
    assert healed.path_of(shard.name).stat().st_size == 256 * 1024


def test_file_list_and_ids(tmp_path: Path) -> None:
    repo = ensure_repo(tmp_path, SMALL)
    assert set(repo.files) == EXPECTED_FILES
    for info in repo.files.values():
        data = repo.path_of(info.path).read_bytes()
        assert len(data) == info.size
        assert hashlib.sha256(data).hexdigest() == info.sha256
        if info.lfs:
            assert info.etag == info.sha256
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{info.sha256}\nsize {info.size}\n".encode()
            )
            assert info.pointer_size == len(pointer) and info.blob_id == git_blob_sha1(pointer)
        else:
            assert info.etag == info.blob_id == git_blob_sha1(data)
    assert {p for p, i in repo.files.items() if i.lfs} == {p for p in EXPECTED_FILES if p.endswith(".safetensors")} | {
        "tokenizer.json"
    }
    for shard in (p for p in EXPECTED_FILES if p.endswith(".safetensors")):
        assert repo.files[shard].size == 256 * 1024


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_blob_ids_match_git(tmp_path: Path) -> None:
    repo = ensure_repo(tmp_path, SMALL)
    out = subprocess.run(
        ["git", "hash-object", str(repo.path_of("config.json")), str(repo.path_of("README.md"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [repo.files["config.json"].git_sha1, repo.files["README.md"].git_sha1]


def test_shards_are_valid_safetensors_matching_the_index(tmp_path: Path) -> None:
    repo = ensure_repo(tmp_path, SMALL)
    index = json.loads(repo.path_of("model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == REAL_TOTAL_SIZE
    seen: dict[str, str] = {}
    real = {name: (dtype, shape) for name, dtype, shape in qwen3_32b_fp8_tensors()}
    for shard in sorted(p for p in repo.files if p.endswith(".safetensors")):
        raw = repo.path_of(shard).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        assert (8 + n) % 8 == 0
        header = json.loads(raw[8 : 8 + n])
        assert header.pop("__metadata__") == {"format": "pt"}
        spans = sorted(tuple(t["data_offsets"]) for t in header.values())
        assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n  # offsets cover the data exactly
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # no gaps or overlaps
        for name, t in header.items():
            assert t["dtype"] == real[name][0]
            assert len(t["shape"]) == len(real[name][1])
            count = 1
            for d in t["shape"]:
                count *= d
            assert count * DTYPE_SIZES[t["dtype"]] == t["data_offsets"][1] - t["data_offsets"][0]
            seen[name] = shard
    assert seen == index["weight_map"]
    assert set(seen) == set(real)


def test_config_is_qwen3_32b_fp8(tmp_path: Path) -> None:
    repo = ensure_repo(tmp_path, SMALL)
    config = json.loads(repo.path_of("config.json").read_text())
    assert config == QWEN3_32B_FP8_CONFIG
    for key, value in {
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 5120,
        "intermediate_size": 25600,
        "num_hidden_layers": 64,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "vocab_size": 151936,
        "torch_dtype": "bfloat16",
        "model_type": "qwen3",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "tie_word_embeddings": False,
    }.items():
        assert config[key] == value
    assert config["quantization_config"] == {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    }
    tok = json.loads(repo.path_of("tokenizer.json").read_text())
    vocab = json.loads(repo.path_of("vocab.json").read_text())
    assert tok["model"]["type"] == "BPE" and tok["model"]["vocab"] == vocab
    assert {t["content"]: t["id"] for t in tok["added_tokens"]}["<|im_end|>"] == 151645
    merges = repo.path_of("merges.txt").read_text().splitlines()
    assert merges[0] == "#version: 0.2" and merges[1:] == tok["model"]["merges"]
    assert json.loads(repo.path_of("tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"


def test_single_shard_has_no_index(tmp_path: Path) -> None:
    repo = ensure_repo(tmp_path, RepoSpec(repo_id="sim-org/one", n_shards=1, shard_bytes=64 * 1024))
    assert "model.safetensors" in repo.files and "model.safetensors.index.json" not in repo.files
