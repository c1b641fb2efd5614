"""Model staging: resumable, verified download of a Hub model into the Hugging Face cache.

huggingface-hub does the metadata (commit, file list with sizes and checksums), URLs, auth headers,
error classes and cache scans; the bytes are moved here (Range requests into a stable
``blobs/<etag>.incomplete`` under huggingface_hub's own lock, sha256 as they arrive, atomic rename)
because huggingface_hub no longer resumes across processes and never checks sha256 (docs/staging.md).

Modules: ``hub`` (metadata, error mapping), ``plan`` (pure decisions), ``cache`` (layout),
``check`` (observe and hash), ``transfer`` (the bytes), ``manifest``, ``preflight`` (disk),
``progress`` (artifact, logs, bar), ``steps`` (the Prefect tasks exported here).
"""

from .errors import (
    DiskSpaceError,
    GatedRepoError,
    HubAuthError,
    HubForbiddenError,
    HubUnreachableError,
    IntegrityError,
    OfflineCacheError,
    RepoNotFoundError,
    RevisionNotFoundError,
    StagingError,
    TransferError,
)
from .hub import DEFAULT_ALLOW_PATTERNS, DEFAULT_ENDPOINT, resolve_endpoint
from .models import StageResult
from .steps import (
    check_disk_space,
    inspect_cache,
    link_snapshot,
    plan_staging,
    report_staging,
    resolve_repo,
    transfer_files,
    write_manifest,
)

__all__ = [
    "DEFAULT_ALLOW_PATTERNS",
    "DEFAULT_ENDPOINT",
    "DiskSpaceError",
    "GatedRepoError",
    "HubAuthError",
    "HubForbiddenError",
    "HubUnreachableError",
    "IntegrityError",
    "OfflineCacheError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "StageResult",
    "StagingError",
    "TransferError",
    "check_disk_space",
    "inspect_cache",
    "link_snapshot",
    "plan_staging",
    "report_staging",
    "resolve_endpoint",
    "resolve_repo",
    "transfer_files",
    "write_manifest",
]
