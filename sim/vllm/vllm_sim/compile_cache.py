"""vLLM's torch.compile cache, as files: where it lives, its key, and whether an entry is there.

Why real files: the project mounts a host directory at vLLM's cache root so that the next container of
the same spec skips the compile; a test can only prove that mount works if the imitation really writes
its entry there and really reads it back. The layout is vLLM's:

    $VLLM_CACHE_ROOT (envs.py: default $XDG_CACHE_HOME/vllm, else ~/.cache/vllm, `~` expanded)
      torch_compile_cache/<10 hex of the factors>/rank_0_0/backbone/      (compilation/backends.py:480-548
          vllm_compile_cache.py   the handles, a Python literal            in 0.10.1.1; :1020-1050 in 0.31.0)
          artifact_shape_None_subgraph_0/sim-artifact.json   the imitation's stand-in for Inductor's artifact
      torch_compile_cache/torch_aot_compile/<64 hex>/rank_0_0/model       (0.31: compilation/decorators.py:523-563)

The key is what vLLM hashes that the imitation knows (versions.py `compile_key_fields`) plus the vLLM
version (vLLM hashes the traced source files, which change with every release; 0.31's AOT key hashes
`vllm.__version__`, decorators.py:256-263). An entry is a hit only if its recorded factors equal this
start's. Standard library only.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .versions import Behaviour

ARTIFACT = "artifact_shape_None_subgraph_0"  # maybe_key of backends.py:174-176 (0.10.1.1), graph 0
HANDLE_KEY = (None, 0, "inductor_standalone")  # (runtime_shape, graph_index, compiler name), backends.py:186


def cache_root(env: Mapping[str, str]) -> Path:
    """envs.VLLM_CACHE_ROOT (vllm/envs.py:290-295 and :167-171 in 0.10.1.1): expanduser of
    $VLLM_CACHE_ROOT, else $XDG_CACHE_HOME/vllm, else ~/.cache/vllm."""
    default = os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vllm")
    return Path(os.path.expanduser(env.get("VLLM_CACHE_ROOT") or default))


def disabled(env: Mapping[str, str]) -> bool:
    """VLLM_DISABLE_COMPILE_CACHE=1 (envs.py:832-833 in 0.10.1.1): neither read nor written."""
    try:
        return bool(int(env.get("VLLM_DISABLE_COMPILE_CACHE", "0") or "0"))
    except ValueError:
        return False


@dataclass(frozen=True)
class CompileCache:
    """The cache entry of one start: its directories and the factors it must match."""

    root: Path
    factors: dict[str, object]
    b: Behaviour

    def _digest(self, algorithm: str) -> str:
        return hashlib.new(algorithm, json.dumps(self.factors, sort_keys=True).encode()).hexdigest()

    @property
    def local_dir(self) -> Path:
        """The directory vLLM logs in `Using cache directory: %s for vLLM's torch.compile`."""
        key = self._digest(self.b.compile_hash)[:10]
        return self.root / "torch_compile_cache" / key / "rank_0_0" / "backbone"

    @property
    def aot_path(self) -> Path:
        """0.31's AOT artifact: torch_aot_compile/<sha256>/rank_0_0/model."""
        return self.root / "torch_compile_cache" / "torch_aot_compile" / self._digest("sha256") / "rank_0_0" / "model"

    def hit(self) -> bool:
        """True when an earlier start with the same factors left its entry here (read, not just listed)."""
        try:
            if self.b.aot_compile:
                return json.loads(self.aot_path.read_text()).get("factors") == self.factors
            handles = ast.literal_eval((self.local_dir / "vllm_compile_cache.py").read_text())
            artifact = self.local_dir / str(handles[HANDLE_KEY]) / "sim-artifact.json"
            return json.loads(artifact.read_text()).get("factors") == self.factors
        except (OSError, ValueError, SyntaxError, KeyError, TypeError, AttributeError):
            return False

    def write(self) -> None:
        """Store this start's entry (atomically: a second container may read the same directory)."""
        body = json.dumps({"factors": self.factors}, sort_keys=True, indent=2)
        _atomic_write(self.local_dir / ARTIFACT / "sim-artifact.json", body)
        _atomic_write(self.local_dir / "vllm_compile_cache.py", repr({HANDLE_KEY: ARTIFACT}))
        if self.b.aot_compile:
            _atomic_write(self.aot_path, body)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # as decorators.py:709-711 in 0.31.0
    tmp.write_text(text)
    os.replace(tmp, path)


def compile_cache(env: Mapping[str, str], b: Behaviour, version: str, fields: Mapping[str, object]) -> CompileCache:
    """This start's entry: the version's key fields taken from `fields`, plus the vLLM version."""
    factors: dict[str, object] = {name: fields.get(name) for name in b.compile_key_fields}
    factors["vllm_version"] = version
    return CompileCache(cache_root(env), factors, b)
