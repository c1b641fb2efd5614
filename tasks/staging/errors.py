"""Errors that tell the operator what to do. None of them ever carries a token.

``retryable`` is False for everything a retry cannot fix (auth, gate, wrong id, disk, corrupt
cache offline); the flow does not retry those and the message says what to change.
"""

from __future__ import annotations

from tasks.errors import SparkVllmError


class StagingError(SparkVllmError):
    """Base class: ``str(err)`` is the whole message an operator needs."""

    retryable = False


class HubAuthError(StagingError):
    """401: no token or a token the Hub rejected (private repo)."""


class HubForbiddenError(StagingError):
    """403: the token is valid but lacks the permission."""


class GatedRepoError(StagingError):
    """The repo is gated and the token's owner has not accepted its license."""


class RepoNotFoundError(StagingError):
    """404 on the repo (or a private repo seen without a token)."""


class RevisionNotFoundError(StagingError):
    """The repo exists, the revision does not."""


class HubUnreachableError(StagingError):
    """Connection refused / timeouts / 5xx after retries, or offline mode without a manifest."""

    retryable = True


class TransferError(StagingError):
    """A file could not be completed after the transient-failure retries (its partial is kept)."""

    retryable = True


class IntegrityError(StagingError):
    """The bytes the Hub sent do not hash to what its listing says, twice in a row."""


class DiskSpaceError(StagingError):
    """Preflight: the cache's filesystem cannot hold what is still to be downloaded."""

    def __init__(self, message: str, *, needed: int, free: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free


class OfflineCacheError(StagingError):
    """Offline (or Hub unreachable) and the cache cannot satisfy the request from its manifest."""
