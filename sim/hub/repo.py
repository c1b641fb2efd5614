"""Deterministic generation of a model repository shaped like ``Qwen/Qwen3-32B-FP8``.

Everything here is standard library only. A :class:`RepoSpec` fully determines the bytes of
every file, hence every sha256, every git blob id and the commit sha. Generated repos are cached
under ``data_dir`` keyed by the spec, so a second start with the same spec is instant.

Layout on disk::

    <data_dir>/<ns>--<name>-<key>/manifest.json
    <data_dir>/<ns>--<name>-<key>/files/<path in repo>

The weights are pseudo-random bytes inside *valid* safetensors files that carry the real
Qwen3-32B-FP8 tensor names, with shapes scaled down so each shard is ``shard_bytes`` long. The
index's ``metadata.total_size`` is the real model's figure (see :data:`REAL_TOTAL_SIZE`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Bump when the generated content changes: it is part of the on-disk cache key.
GENERATOR_VERSION = "1"

# Fixed git identity/time so the commit sha depends on content only.
_GIT_TIME = "1745836800 +0000"  # 2025-04-28T10:40:00Z, around Qwen3's release
LAST_MODIFIED = "2025-04-28T10:40:00.000Z"
CREATED_AT = "2025-04-27T03:14:15.000Z"

DTYPE_SIZES = {"F8_E4M3": 1, "BF16": 2, "F32": 4}

# ---------------------------------------------------------------------------------------------
# The real Qwen3-32B(-FP8) architecture
# ---------------------------------------------------------------------------------------------
HIDDEN = 5120
INTERMEDIATE = 25600
LAYERS = 64
HEADS = 64
KV_HEADS = 8
HEAD_DIM = 128
VOCAB = 151936
BLOCK = 128  # FP8 weight_block_size [128, 128]

QWEN3_32B_FP8_CONFIG: dict = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": HEAD_DIM,
    "hidden_act": "silu",
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "intermediate_size": INTERMEDIATE,
    "max_position_embeddings": 40960,
    "max_window_layers": LAYERS,
    "model_type": "qwen3",
    "num_attention_heads": HEADS,
    "num_hidden_layers": LAYERS,
    "num_key_value_heads": KV_HEADS,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK],
    },
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": VOCAB,
}

QWEN3_GENERATION_CONFIG: dict = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}


def _linear(name: str, out_f: int, in_f: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """An FP8 block-quantized linear layer: e4m3 weight + one BF16 inverse scale per 128x128 block."""
    return [
        (f"{name}.weight", "F8_E4M3", (out_f, in_f)),
        (f"{name}.weight_scale_inv", "BF16", (math.ceil(out_f / BLOCK), math.ceil(in_f / BLOCK))),
    ]


def qwen3_32b_fp8_tensors() -> list[tuple[str, str, tuple[int, ...]]]:
    """Every tensor of Qwen3-32B-FP8 as (name, dtype, real shape), in module order.

    Embeddings, lm_head and norms stay BF16 (the FP8 checkpoint's ``modules_to_not_convert``);
    each q/k/v/o/gate/up/down projection is FP8 e4m3 with a ``weight_scale_inv`` per 128x128 block.
    """
    q_out, kv_out = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    out: list[tuple[str, str, tuple[int, ...]]] = [("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out.append((f"{p}.input_layernorm.weight", "BF16", (HIDDEN,)))
        out += _linear(f"{p}.mlp.down_proj", HIDDEN, INTERMEDIATE)
        out += _linear(f"{p}.mlp.gate_proj", INTERMEDIATE, HIDDEN)
        out += _linear(f"{p}.mlp.up_proj", INTERMEDIATE, HIDDEN)
        out.append((f"{p}.post_attention_layernorm.weight", "BF16", (HIDDEN,)))
        out.append((f"{p}.self_attn.k_norm.weight", "BF16", (HEAD_DIM,)))
        out += _linear(f"{p}.self_attn.k_proj", kv_out, HIDDEN)
        out += _linear(f"{p}.self_attn.o_proj", HIDDEN, q_out)
        out.append((f"{p}.self_attn.q_norm.weight", "BF16", (HEAD_DIM,)))
        out += _linear(f"{p}.self_attn.q_proj", q_out, HIDDEN)
        out += _linear(f"{p}.self_attn.v_proj", kv_out, HIDDEN)
    out.append(("model.norm.weight", "BF16", (HIDDEN,)))
    out.append(("lm_head.weight", "BF16", (VOCAB, HIDDEN)))
    return out


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return DTYPE_SIZES[dtype] * math.prod(shape)


# Sum of the real tensors' bytes (what HF writes as the index's metadata.total_size):
# 34,322,434,048 bytes = 31.97 GiB, i.e. the "~32 GB" of weights vLLM loads for Qwen3-32B-FP8.
REAL_TOTAL_SIZE = sum(_nbytes(d, s) for _, d, s in qwen3_32b_fp8_tensors())

# The real model's parameter counts by dtype (model_info's ``safetensors`` block).
REAL_PARAMETERS = {
    dtype: sum(math.prod(s) for _, d, s in qwen3_32b_fp8_tensors() if d == dtype) for dtype in ("BF16", "F8_E4M3")
}


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepoSpec:
    """What to serve. Content fields (all but ``gated``/``private``) determine every byte.

    ``total_size`` overrides the index's ``metadata.total_size`` (default: the real model's).
    ``n_shards == 1`` produces a single ``model.safetensors`` and no index, as HF does.
    """

    repo_id: str = "Qwen/Qwen3-32B-FP8"
    n_shards: int = 7
    shard_bytes: int = 4 * 1024 * 1024
    gated: bool = False
    private: bool = False
    seed: int = 0
    total_size: int | None = None

    def __post_init__(self) -> None:
        parts = self.repo_id.split("/")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"repo_id must be 'namespace/name', got {self.repo_id!r}")
        if self.n_shards < 1:
            raise ValueError("n_shards must be >= 1")
        if self.n_shards > 500:
            raise ValueError("n_shards must be <= 500")
        if self.shard_bytes < 1:
            raise ValueError("shard_bytes must be >= 1")

    def content_key(self) -> str:
        fields = dataclasses.asdict(self)
        fields.pop("gated")
        fields.pop("private")
        fields["generator"] = GENERATOR_VERSION
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def index_total_size(self) -> int:
        return self.total_size if self.total_size is not None else REAL_TOTAL_SIZE

    def shard_names(self) -> list[str]:
        if self.n_shards == 1:
            return ["model.safetensors"]
        return [f"model-{i:05d}-of-{self.n_shards:05d}.safetensors" for i in range(1, self.n_shards + 1)]


@dataclass(frozen=True)
class RepoFileInfo:
    path: str
    size: int
    sha256: str
    git_sha1: str  # git blob id of the content (what a non-LFS file's ETag is)
    lfs: bool
    blob_id: str  # git blob id as the Hub reports it: of the content, or of the LFS pointer
    pointer_size: int | None

    @property
    def etag(self) -> str:
        """What huggingface_hub names the cached blob: sha256 for LFS files, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_sha1


@dataclass
class GeneratedRepo:
    spec: RepoSpec
    root: Path  # folder holding the files
    commit: str
    tree: str
    files: dict[str, RepoFileInfo]
    weight_map: dict[str, str]

    def path_of(self, rel: str) -> Path:
        return self.root / rel

    def by_sha256(self, sha256: str) -> RepoFileInfo | None:
        for info in self.files.values():
            if info.sha256 == sha256:
                return info
        return None


# ---------------------------------------------------------------------------------------------
# Git helpers
# ---------------------------------------------------------------------------------------------
def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_tree_and_commit(entries: dict[str, str], message: str) -> tuple[str, str]:
    """sha of the git tree (flat, mode 100644) and of a commit with a fixed author and date."""
    body = b"".join(b"100644 " + name.encode() + b"\0" + bytes.fromhex(sha) for name, sha in sorted(entries.items()))
    tree = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    ident = f"Hub Imitation <sim-hub@localhost> {_GIT_TIME}"
    commit_body = f"tree {tree}\nauthor {ident}\ncommitter {ident}\n\n{message}\n".encode()
    commit = hashlib.sha1(b"commit %d\0" % len(commit_body) + commit_body).hexdigest()
    return tree, commit


# ---------------------------------------------------------------------------------------------
# Safetensors shards
# ---------------------------------------------------------------------------------------------
def split_into_shards(n_shards: int) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    """Split the real tensors, in module order, into n shards of about equal real size."""
    tensors = qwen3_32b_fp8_tensors()
    if n_shards > len(tensors):
        raise ValueError(f"n_shards must be <= {len(tensors)}")
    total = REAL_TOTAL_SIZE
    shards: list[list] = [[] for _ in range(n_shards)]
    cum = 0
    for t in tensors:
        mid = cum + _nbytes(t[1], t[2]) / 2
        shards[min(n_shards - 1, int(mid * n_shards / total))].append(t)
        cum += _nbytes(t[1], t[2])
    # Never leave a shard empty (only possible with many shards): borrow from a neighbour.
    for i in range(n_shards):
        if not shards[i]:
            j = max(range(n_shards), key=lambda k: len(shards[k]))
            if j > i:
                shards[i].append(shards[j].pop(0))
            else:
                shards[i].append(shards[j].pop())
    return shards


def _round8_up(n: int) -> int:
    return (n + 7) // 8 * 8


def safetensors_layout(
    tensors: list[tuple[str, str, tuple[int, ...]]], target_size: int
) -> tuple[bytes, int, list[tuple[str, str, tuple[int, ...], int, int]]]:
    """Scaled-down layout of one shard: (header bytes incl. padding, data size, tensors).

    Each tensor keeps its real name, dtype and rank; its size is its real share of the shard, so
    the file is ``target_size`` bytes when that is a multiple of 8 and large enough for the header.
    Every tensor size is a multiple of 8 bytes; offsets tile the data region exactly.
    """
    real = [_nbytes(d, s) for _, d, s in tensors]
    real_total = sum(real)
    biggest = max(range(len(tensors)), key=lambda i: real[i])
    header_len = _round8_up(64 + 100 * len(tensors))
    while True:
        data = max((target_size - 8 - header_len) // 8 * 8, 8 * len(tensors))
        alloc = [max(8, (data * r // real_total) // 8 * 8) for r in real]
        alloc[biggest] = 0
        alloc[biggest] = max(8, data - sum(alloc))  # the biggest tensor takes up the slack
        entries = []
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for (name, dtype, shape), nbytes in zip(tensors, alloc, strict=True):
            n = nbytes // DTYPE_SIZES[dtype]
            if len(shape) == 1:
                new_shape: tuple[int, ...] = (n,)
            else:
                cols = math.gcd(n, shape[-1])
                new_shape = (n // cols, cols)
            header[name] = {"dtype": dtype, "shape": list(new_shape), "data_offsets": [offset, offset + nbytes]}
            entries.append((name, dtype, new_shape, offset, offset + nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        if len(raw) <= header_len:
            return raw + b" " * (header_len - len(raw)), offset, entries
        header_len = _round8_up(len(raw))


def _random_stream(seed_material: bytes, length: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes (SHAKE-256 in counter mode), about 250 MB/s."""
    produced = 0
    counter = 0
    while produced < length:
        n = min(chunk, length - produced)
        yield hashlib.shake_256(seed_material + counter.to_bytes(8, "little")).digest(n)
        produced += n
        counter += 1


# ---------------------------------------------------------------------------------------------
# Small files
# ---------------------------------------------------------------------------------------------
GITATTRIBUTES = """*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.mlmodel filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
tokenizer.json filter=lfs diff=lfs merge=lfs -text
"""

LICENSE_TEXT = """                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION

   (Abridged by the local Hub imitation: the real repository ships the full Apache-2.0 text.)

   Copyright 2024 Alibaba Cloud

   Licensed under the Apache License, Version 2.0 (the "License");
   you may not use this file except in compliance with the License.
   You may obtain a copy of the License at

       http://www.apache.org/licenses/LICENSE-2.0

   Unless required by applicable law or agreed to in writing, software
   distributed under the License is distributed on an "AS IS" BASIS,
   WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
   See the License for the specific language governing permissions and
   limitations under the License.
"""


def _readme(spec: RepoSpec) -> str:
    name = spec.repo_id.split("/")[1]
    return f"""---
library_name: transformers
license: apache-2.0
license_link: https://huggingface.co/{spec.repo_id}/blob/main/LICENSE
pipeline_tag: text-generation
base_model:
- Qwen/Qwen3-32B
---

# {name}

Served by the local Hub imitation (sim.hub). The repository has the file list, config and
tokenizer layout of Qwen/Qwen3-32B-FP8, but the {spec.n_shards} safetensors shard(s) hold
pseudo-random bytes (seed {spec.seed}) in scaled-down tensors of the real names and dtypes.
`model.safetensors.index.json` reports the real model's total size ({spec.index_total_size} bytes).

## Model Overview

- Type: Causal Language Models
- Number of Parameters: 32.8B
- Number of Layers: 64
- Number of Attention Heads (GQA): 64 for Q and 8 for KV
- Context Length: 32,768 natively and 131,072 tokens with YaRN
- Quantization: fine-grained fp8, block size 128
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level BPE alphabet (used by Qwen2Tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_MERGES = [
    ("Ġ", "t"),
    ("Ġ", "a"),
    ("h", "e"),
    ("i", "n"),
    ("r", "e"),
    ("o", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("Ġ", "s"),
    ("a", "t"),
    ("Ġ", "w"),
    ("Ġ", "o"),
    ("e", "n"),
    ("Ġ", "c"),
    ("i", "t"),
    ("i", "s"),
    ("a", "n"),
    ("o", "r"),
    ("e", "s"),
    ("Ġ", "b"),
    ("e", "d"),
    ("Ġ", "f"),
    ("in", "g"),
    ("Ġ", "p"),
]

_SPECIAL_TOKENS = [
    (151643, "<|endoftext|>"),
    (151644, "<|im_start|>"),
    (151645, "<|im_end|>"),
    (151646, "<|object_ref_start|>"),
    (151647, "<|object_ref_end|>"),
    (151648, "<|box_start|>"),
    (151649, "<|box_end|>"),
    (151650, "<|quad_start|>"),
    (151651, "<|quad_end|>"),
    (151652, "<|vision_start|>"),
    (151653, "<|vision_end|>"),
    (151654, "<|vision_pad|>"),
    (151655, "<|image_pad|>"),
    (151656, "<|video_pad|>"),
    (151667, "<think>"),
    (151668, "</think>"),
]

_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def _vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    for a, b in _MERGES:
        vocab.setdefault(a + b, len(vocab))
    return vocab


def _tokenizer_json() -> dict:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": c,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": c not in ("<think>", "</think>"),
            }
            for i, c in _SPECIAL_TOKENS
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {
                        "Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
                        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
                    },
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": _vocab(),
            "merges": [f"{a} {b}" for a, b in _MERGES],
        },
    }


def _tokenizer_config() -> dict:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": c,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": c not in ("<think>", "</think>"),
            }
            for i, c in _SPECIAL_TOKENS
        },
        "additional_special_tokens": [c for _, c in _SPECIAL_TOKENS[1:14]],
        "bos_token": None,
        "chat_template": _CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def small_files(spec: RepoSpec, weight_map: dict[str, str]) -> dict[str, bytes]:
    files = {
        ".gitattributes": GITATTRIBUTES.encode(),
        "LICENSE": LICENSE_TEXT.encode(),
        "README.md": _readme(spec).encode(),
        "config.json": _json_bytes(QWEN3_32B_FP8_CONFIG),
        "generation_config.json": _json_bytes(QWEN3_GENERATION_CONFIG),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES)).encode(),
        "tokenizer.json": _json_bytes(_tokenizer_json()),
        "tokenizer_config.json": _json_bytes(_tokenizer_config()),
        "vocab.json": (json.dumps(_vocab(), ensure_ascii=False, separators=(",", ":"))).encode(),
    }
    if spec.n_shards > 1:
        files["model.safetensors.index.json"] = _json_bytes(
            {"metadata": {"total_size": spec.index_total_size}, "weight_map": dict(sorted(weight_map.items()))}
        )
    return files


def is_lfs_path(path: str) -> bool:
    return path.endswith(".safetensors") or path == "tokenizer.json"


# ---------------------------------------------------------------------------------------------
# Generation and cache
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def repo_dir(data_dir: Path, spec: RepoSpec) -> Path:
    return Path(data_dir) / f"{spec.repo_id.replace('/', '--')}-{spec.content_key()}"


def _load(spec: RepoSpec, folder: Path) -> GeneratedRepo | None:
    manifest = folder / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if data.get("generator") != GENERATOR_VERSION or data.get("content_key") != spec.content_key():
        return None
    files = {f["path"]: RepoFileInfo(**f) for f in data["files"]}
    root = folder / "files"
    for info in files.values():
        try:
            if (root / info.path).stat().st_size != info.size:
                return None
        except OSError:
            return None
    return GeneratedRepo(
        spec=spec, root=root, commit=data["commit"], tree=data["tree"], files=files, weight_map=data["weight_map"]
    )


def _generate_into(spec: RepoSpec, root: Path) -> tuple[dict[str, RepoFileInfo], dict[str, str]]:
    infos: dict[str, RepoFileInfo] = {}
    weight_map: dict[str, str] = {}
    shard_names = spec.shard_names()
    for idx, (fname, tensors) in enumerate(zip(shard_names, split_into_shards(spec.n_shards), strict=True)):
        header, data_len, entries = safetensors_layout(tensors, spec.shard_bytes)
        sha = hashlib.sha256()
        size = 0
        seed_material = f"sim-hub|{spec.repo_id}|{spec.seed}|{idx}|".encode()
        with open(root / fname, "wb") as f:
            for part in (struct.pack("<Q", len(header)), header):
                f.write(part)
                sha.update(part)
                size += len(part)
            for chunk in _random_stream(seed_material, data_len):
                f.write(chunk)
                sha.update(chunk)
                size += len(chunk)
        for name, *_ in entries:
            weight_map[name] = fname
        digest = sha.hexdigest()
        pointer = lfs_pointer(digest, size)
        infos[fname] = RepoFileInfo(
            path=fname,
            size=size,
            sha256=digest,
            git_sha1="",  # never needed for a multi-GB LFS file; the Hub reports the pointer's id
            lfs=True,
            blob_id=git_blob_sha1(pointer),
            pointer_size=len(pointer),
        )
    for path, content in small_files(spec, weight_map).items():
        (root / path).write_bytes(content)
        digest = hashlib.sha256(content).hexdigest()
        lfs = is_lfs_path(path)
        pointer = lfs_pointer(digest, len(content)) if lfs else None
        infos[path] = RepoFileInfo(
            path=path,
            size=len(content),
            sha256=digest,
            git_sha1=git_blob_sha1(content),
            lfs=lfs,
            blob_id=git_blob_sha1(pointer) if pointer else git_blob_sha1(content),
            pointer_size=len(pointer) if pointer else None,
        )
    return dict(sorted(infos.items())), weight_map


def ensure_repo(data_dir: Path, spec: RepoSpec) -> GeneratedRepo:
    """Load the generated repo for ``spec`` from ``data_dir``, generating it first if needed."""
    folder = repo_dir(data_dir, spec)
    repo = _load(spec, folder)
    if repo is not None:
        return repo
    with _flock(Path(data_dir) / f".{folder.name}.lock"):
        repo = _load(spec, folder)  # another process may have finished it meanwhile
        if repo is not None:
            return repo
        if folder.exists():
            shutil.rmtree(folder)
        # Leftovers of a generator that died (we hold the lock, so none is running).
        for stale in Path(data_dir).glob(f".tmp-{folder.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=data_dir))
        try:
            (tmp / "files").mkdir()
            infos, weight_map = _generate_into(spec, tmp / "files")
            tree, commit = git_tree_and_commit(
                {p: i.blob_id for p, i in infos.items()}, "Upload folder using huggingface_hub"
            )
            manifest = {
                "generator": GENERATOR_VERSION,
                "content_key": spec.content_key(),
                "spec": dataclasses.asdict(spec),
                "commit": commit,
                "tree": tree,
                "files": [dataclasses.asdict(i) for i in infos.values()],
                "weight_map": weight_map,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    repo = _load(spec, folder)
    assert repo is not None, f"generated repo at {folder} does not load"
    return repo
