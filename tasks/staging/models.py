"""Data passed between the staging steps (pydantic, so Prefect can show and serialise it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HashAlgo = Literal["sha256", "git-sha1"]


class RemoteFile(BaseModel):
    """One file of the repo at a commit, as the Hub (or the manifest) lists it.

    ``etag`` is the name of the blob in the cache: the sha256 of an LFS file, the git blob sha1 of a
    small file (what huggingface_hub uses too).
    """

    model_config = ConfigDict(frozen=True)

    path: str
    size: int
    etag: str
    lfs: bool
    sha256: str | None = None  # known for LFS files from the listing; for all files from a manifest
    git_sha1: str | None = None  # the git blob id (non-LFS files)

    @property
    def check(self) -> tuple[HashAlgo, str]:
        """The checksum the Hub guarantees for this file: sha256 for LFS, git-sha1 otherwise."""
        if self.lfs:
            return "sha256", (self.sha256 or self.etag)
        if self.git_sha1:
            return "git-sha1", self.git_sha1
        return "sha256", self.sha256 or ""


class RepoListing(BaseModel):
    """A revision resolved to a commit, with the files to stage."""

    repo_id: str
    repo_type: str = "model"
    revision: str
    commit: str
    files: list[RemoteFile]
    source: Literal["hub", "manifest"]
    endpoint: str
    allow_patterns: list[str] | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class BlobState(BaseModel):
    """What is on disk for one file's blob, observed before planning."""

    etag: str
    blob_size: int | None = None  # None: no blob
    blob_mtime_ns: int | None = None
    partial_sizes: dict[str, int] = Field(default_factory=dict)  # file name in blobs/ -> size
    trusted: bool = False  # manifest entry with the same size and mtime: no need to hash
    hashed: bool | None = None  # None: not hashed this run; True/False: hash matched / did not
    sha256: str | None = None  # of the blob, when known (manifest or hashed)


class CacheState(BaseModel):
    """The cache as observed by ``inspect_cache``: one ``BlobState`` per file path."""

    blobs: dict[str, BlobState]  # path -> state
    hashed_files: int = 0
    hashed_bytes: int = 0
    corrupt: list[str] = Field(default_factory=list)  # paths whose blob failed the hash check


Action = Literal["reuse", "resume", "download"]


class FilePlan(BaseModel):
    path: str
    etag: str
    size: int
    action: Action
    offset: int = 0  # bytes usable from a partial (resume)
    partial: str | None = None  # which partial file (name in blobs/) to continue
    adopt: bool = False  # the partial is a huggingface_hub orphan `<etag>.<8 hex>.incomplete`
    replace_blob: bool = False  # a blob exists but is wrong: replace it
    reason: str = ""


class StagePlan(BaseModel):
    files: list[FilePlan]

    @property
    def bytes_needed(self) -> int:
        """Bytes that still have to come over the network."""
        return sum(p.size - p.offset for p in self.files if p.action != "reuse")

    def count(self, action: Action) -> int:
        return sum(1 for p in self.files if p.action == action)


class FileOutcome(BaseModel):
    path: str
    etag: str
    size: int
    result: Literal["reused", "downloaded", "resumed", "waited"]  # waited: another process wrote it
    bytes_downloaded: int = 0
    bytes_resumed: int = 0
    bytes_reused: int = 0
    adopted: bool = False
    restarts: int = 0  # Range ignored / bad prefix -> the file started over
    retries: int = 0  # transient failures retried from the current offset
    sha256: str | None = None
    git_sha1: str | None = None
    duration_s: float = 0.0


class TransferReport(BaseModel):
    outcomes: list[FileOutcome]
    duration_s: float = 0.0

    @property
    def bytes_downloaded(self) -> int:
        return sum(o.bytes_downloaded for o in self.outcomes)

    @property
    def bytes_resumed(self) -> int:
        return sum(o.bytes_resumed for o in self.outcomes)


class StageResult(BaseModel):
    """What ``stage-model`` returns (and writes to its markdown artifact)."""

    repo_id: str
    revision: str
    commit: str
    snapshot_path: str
    cache_dir: str
    source: Literal["hub", "manifest"]
    files_total: int
    files_downloaded: int
    files_resumed: int
    files_reused: int
    files_repaired: int = 0  # blobs found corrupt and fetched again
    bytes_total: int
    bytes_downloaded: int  # content bytes that came over the network in this run
    bytes_reused: int  # complete blobs already in the cache
    bytes_resumed: int  # bytes of partials (ours or huggingface_hub's) continued, not re-fetched
    bytes_hashed: int = 0  # bytes re-hashed to check blobs (verify, or blobs without a manifest)
    retries: int = 0
    restarts: int = 0
    duration_s: float
    transfer_s: float = 0.0
    throughput_bytes_per_s: float  # bytes_downloaded / transfer time (0 when nothing moved)
    manifest_path: str
    verified: bool  # every blob's checksum is known to match (hashed now, or by a manifest)
