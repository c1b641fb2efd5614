"""The Hugging Face cache layout, exactly as huggingface_hub writes and reads it.

```
<cache>/models--Qwen--Qwen3-32B-FP8/
  refs/main                          commit sha, 40 hex, no newline
  blobs/<etag>                       sha256 (LFS) or git sha1 (small files)
  blobs/<etag>.incomplete            our stable partial (resumable across processes)
  blobs/<etag>.<8 hex>.incomplete    a partial huggingface_hub >= 1.18 left behind (adopted)
  snapshots/<commit>/<path> -> ../../blobs/<etag>    relative symlinks
  staging/<commit>.json              our manifest (see manifest.py)
<cache>/.locks/models--Qwen--Qwen3-32B-FP8/<etag>.lock    the same lock huggingface_hub takes
```
Taking huggingface_hub's own lock file means a concurrent ``hf download`` and a staging run never
write the same blob at once either.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

from .models import HashAlgo

HF_ORPHAN_RE = re.compile(r"^(?P<etag>[0-9a-f]{40}|[0-9a-f]{64})\.[0-9a-f]{8}\.incomplete$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
READ_CHUNK = 8 * 1024 * 1024

# The process umask, read once at import (reading it later is not thread-safe): blobs get the
# permissions a plain open() would give, as huggingface_hub does.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@dataclass(frozen=True)
class RepoCache:
    cache_dir: Path
    repo_id: str
    repo_type: str = "model"

    @property
    def folder_name(self) -> str:
        return repo_folder_name(repo_id=self.repo_id, repo_type=self.repo_type)

    @property
    def folder(self) -> Path:
        return Path(self.cache_dir) / self.folder_name

    @property
    def blobs(self) -> Path:
        return self.folder / "blobs"

    @property
    def snapshots(self) -> Path:
        return self.folder / "snapshots"

    @property
    def refs(self) -> Path:
        return self.folder / "refs"

    @property
    def locks(self) -> Path:
        return Path(self.cache_dir) / ".locks" / self.folder_name

    @property
    def staging(self) -> Path:
        return self.folder / "staging"

    def blob(self, etag: str) -> Path:
        return self.blobs / etag

    def incomplete(self, etag: str) -> Path:
        return self.blobs / f"{etag}.incomplete"

    def lock(self, etag: str) -> Path:
        return self.locks / f"{etag}.lock"

    def snapshot_dir(self, commit: str) -> Path:
        return self.snapshots / commit

    def pointer(self, commit: str, path: str) -> Path:
        return self.snapshot_dir(commit) / path

    def partials(self, etag: str) -> dict[str, int]:
        """Partial files of one blob: our stable ``<etag>.incomplete`` and huggingface_hub orphans."""
        found: dict[str, int] = {}
        stable = self.incomplete(etag)
        try:
            found[stable.name] = stable.stat().st_size
        except FileNotFoundError:
            pass
        try:
            entries = os.scandir(self.blobs)
        except FileNotFoundError:
            return found
        with entries:
            for entry in entries:
                if entry.name.startswith(etag + ".") and is_hf_orphan(entry.name, etag):
                    try:
                        found[entry.name] = entry.stat().st_size
                    except FileNotFoundError:
                        pass
        return found

    def read_ref(self, revision: str) -> str | None:
        if COMMIT_RE.fullmatch(revision):
            return revision
        try:
            value = (self.refs / revision).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return value if COMMIT_RE.fullmatch(value) else None

    def write_ref(self, revision: str, commit: str) -> None:
        """``refs/<revision>`` = commit (no newline), atomically; nothing for a commit revision."""
        if revision == commit:
            return
        ref = self.refs / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        try:
            if ref.read_text(encoding="utf-8") == commit:
                return
        except FileNotFoundError:
            pass
        atomic_write(ref, commit.encode())

    def link(self, commit: str, path: str, etag: str) -> bool:
        """Point ``snapshots/<commit>/<path>`` at ``blobs/<etag>`` (relative); True if changed."""
        pointer = self.pointer(commit, path)
        target = os.path.relpath(self.blob(etag), pointer.parent)
        try:
            if os.readlink(pointer) == target:
                return False
        except (FileNotFoundError, OSError):
            pass
        pointer.parent.mkdir(parents=True, exist_ok=True)
        tmp = pointer.with_name(f".{pointer.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(target, tmp)
        os.replace(tmp, pointer)
        return True


def is_hf_orphan(name: str, etag: str) -> bool:
    m = HF_ORPHAN_RE.match(name)
    return m is not None and m.group("etag") == etag


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


class GitBlobSha1:
    """git's blob id: sha1(b"blob <size>\\0" + content), fed incrementally like hashlib objects."""

    def __init__(self, size: int) -> None:
        self._h = hashlib.sha1(f"blob {size}\0".encode())

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class Hashers:
    """sha256 always (the manifest records it), plus git-sha1 for non-LFS files (the Hub's check)."""

    def __init__(self, size: int, git: bool) -> None:
        self.size = size
        self.git = git
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.git_sha1 = GitBlobSha1(self.size) if self.git else None

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.git_sha1 is not None:
            self.git_sha1.update(data)

    def digest(self, algo: HashAlgo) -> str:
        if algo == "git-sha1":
            assert self.git_sha1 is not None
            return self.git_sha1.hexdigest()
        return self.sha256.hexdigest()


def feed_file(
    path: Path,
    hashers: Hashers,
    limit: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Hash the first ``limit`` bytes (all when None) of ``path`` into ``hashers``; returns bytes read."""
    done = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        while limit is None or done < limit:
            if cancel is not None and cancel.is_set():
                raise InterruptedError("cancelled")
            want = READ_CHUNK if limit is None else min(READ_CHUNK, limit - done)
            n = f.readinto(view[:want])
            if not n:
                break
            hashers.update(view[:n])
            done += n
            if on_chunk is not None:
                on_chunk(n)
    return done


def hash_blob(path: Path, size: int, git: bool) -> Hashers:
    hashers = Hashers(size, git)
    feed_file(path, hashers)
    return hashers


def remove_quietly(paths: Iterable[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
