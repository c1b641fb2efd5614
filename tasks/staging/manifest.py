"""The staging manifest: what a verified run left in the cache, for offline checks later.

Location: ``<cache>/models--<org>--<name>/staging/<commit>.json`` — inside the repo's cache folder
(deleted with it by ``hf cache rm``), outside ``refs/`` and ``snapshots/`` (so ``scan_cache_dir`` and
``verify_repo_checksums`` never see it as a ref or a repo file). Written only after every file of the
run was verified (sha256 / git-sha1 checked as it arrived, or re-hashed), atomically, merged under a
lock with entries other runs wrote for the same commit.

Format (version 1)::

    {
      "format": "spark-vllm/staging-manifest", "version": 1,
      "repo_id": "Qwen/Qwen3-32B-FP8", "repo_type": "model",
      "commit": "<40 hex>", "revisions": ["main"],
      "endpoint": "https://huggingface.co",          # never a token
      "allow_patterns": ["*.json", ...],
      "verified_at": "2025-01-01T00:00:00Z",
      "files": {
        "model-00001-of-00007.safetensors": {
          "size": 4000000000, "etag": "<sha256>", "lfs": true,
          "sha256": "<sha256>", "git_sha1": null, "mtime_ns": 1735689600000000000
        },
        "config.json": {"size": 1234, "etag": "<git sha1>", "lfs": false,
                        "sha256": "<sha256>", "git_sha1": "<git sha1>", "mtime_ns": ...}
      }
    }

A blob whose size and mtime still match its entry is trusted without re-hashing (that is what makes
a re-run over a complete cache take well under 2 s); anything else is re-hashed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from filelock import FileLock
from pydantic import BaseModel, Field, ValidationError

from .cache import RepoCache, atomic_write
from .models import RemoteFile, RepoListing

FORMAT: Final = "spark-vllm/staging-manifest"


class ManifestFile(BaseModel):
    size: int
    etag: str
    lfs: bool
    sha256: str
    git_sha1: str | None = None
    mtime_ns: int | None = None


class Manifest(BaseModel):
    format: Literal["spark-vllm/staging-manifest"] = FORMAT
    version: Literal[1] = 1
    repo_id: str
    repo_type: str = "model"
    commit: str
    revisions: list[str] = Field(default_factory=list)
    endpoint: str | None = None
    allow_patterns: list[str] | None = None
    verified_at: str = Field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    files: dict[str, ManifestFile] = Field(default_factory=dict)

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile(
                path=path,
                size=e.size,
                etag=e.etag,
                lfs=e.lfs,
                sha256=e.sha256,
                git_sha1=e.git_sha1 if not e.lfs else None,
            )
            for path, e in sorted(self.files.items())
        ]


def manifest_path(cache: RepoCache, commit: str) -> Path:
    return cache.staging / f"{commit}.json"


def load_manifest(cache: RepoCache, commit: str) -> Manifest | None:
    """The manifest for ``commit``, or None if absent or unreadable (then blobs are re-hashed)."""
    path = manifest_path(cache, commit)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest.model_validate(data)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, ValidationError):
        return None
    if manifest.repo_id != cache.repo_id or manifest.commit != commit:
        return None
    return manifest


def save_manifest(cache: RepoCache, listing: RepoListing, entries: dict[str, ManifestFile]) -> Path:
    """Merge ``entries`` into the commit's manifest (other runs may have added other files)."""
    path = manifest_path(cache, listing.commit)
    cache.locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache.locks / f"manifest-{listing.commit}.lock"), mode=0o664):
        current = load_manifest(cache, listing.commit)
        files = dict(current.files) if current else {}
        files.update(entries)
        revisions = set(current.revisions) if current else set()
        if listing.revision != listing.commit:
            revisions.add(listing.revision)
        manifest = Manifest(
            repo_id=listing.repo_id,
            repo_type=listing.repo_type,
            commit=listing.commit,
            revisions=sorted(revisions),
            endpoint=listing.endpoint,
            allow_patterns=listing.allow_patterns,
            files=dict(sorted(files.items())),
        )
        atomic_write(path, (manifest.model_dump_json(indent=2) + "\n").encode())
    return path
