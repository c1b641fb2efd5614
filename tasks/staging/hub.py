"""Repo metadata through huggingface_hub (``HfApi``): revision -> commit, files with size and checksum.

huggingface_hub does what it does well here (URLs, auth headers, error classes, pagination); the
bytes are moved by ``transfer.py``. Every Hub error becomes a ``StagingError`` whose message says
what to do, and never contains the token (only the *sources* where a token is looked for).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import SecretStr

from .errors import (
    GatedRepoError,
    HubAuthError,
    HubForbiddenError,
    HubUnreachableError,
    RepoNotFoundError,
    RevisionNotFoundError,
    StagingError,
)
from .models import RemoteFile, RepoListing

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoFile

DEFAULT_ENDPOINT = "https://huggingface.co"

# What vLLM (and transformers' tokenizer) read from a model repo: configs, the safetensors index and
# shards, tokenizer files (tokenizer.json / tokenizer_config.json / vocab.json / merges.txt /
# special_tokens_map.json / tokenizer.model / *.tiktoken), the chat template, remote code for
# --trust-remote-code, and the small README/LICENSE/.gitattributes so the snapshot is the whole repo
# for a safetensors-only model like Qwen3-32B-FP8 (`hf cache verify` then reports nothing missing).
# Left out: other weight formats (*.bin, *.pt, *.pth, *.msgpack, *.h5, *.onnx, *.gguf, original/),
# which vLLM does not load when safetensors exist and which can double the download.
DEFAULT_ALLOW_PATTERNS: tuple[str, ...] = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.jinja",
    "*.py",
    "README.md",
    "LICENSE*",
    ".gitattributes",
)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def resolve_endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def repo_page(endpoint: str, repo_id: str) -> str:
    return f"{endpoint.rstrip('/')}/{repo_id}"


def access_error(
    kind: str,
    *,
    repo_id: str,
    revision: str,
    endpoint: str,
    has_token: bool,
    token_help: str,
    status: int | None = None,
) -> StagingError:
    """The operator-facing error for a failure a retry cannot fix.

    ``kind``: gated | auth | forbidden | repo-not-found | revision-not-found | entry-not-found.
    """
    page = repo_page(endpoint, repo_id)
    code = f" (HTTP {status})" if status else ""
    if kind == "gated":
        who = "the account that owns the token" if has_token else "your account, then set a token"
        return GatedRepoError(
            f"{repo_id} is a gated model and this token has no access to it yet{code}. "
            f"Accept the license at {page} with {who}; access is usually granted within minutes. "
            + ("" if has_token else f"No token was found: {token_help}.")
        )
    if kind == "auth":
        if has_token:
            return HubAuthError(
                f"The Hub rejected the token for {repo_id}{code}. Check that the token is valid and not "
                f"revoked (https://huggingface.co/settings/tokens) and update it: {token_help}."
            )
        return HubAuthError(
            f"{repo_id} needs authentication{code} and no token was found. Set a token with read access: "
            f"{token_help}. If the repo id is wrong, check it at {page}."
        )
    if kind == "forbidden":
        return HubForbiddenError(
            f"The token is valid but may not read {repo_id}{code}. Give it read access to this repo "
            f"(fine-grained tokens need 'read access to public gated repos' for gated models), or accept "
            f"the license at {page}; then update it: {token_help}."
        )
    if kind == "revision-not-found":
        return RevisionNotFoundError(
            f"Revision {revision!r} does not exist in {repo_id}{code}. Check the branch, tag or commit "
            f"at {page}/tree/main (the default is 'main')."
        )
    if kind == "entry-not-found":
        return RepoNotFoundError(
            f"A file listed for {repo_id}@{revision} is gone from the Hub{code}; the revision may have "
            f"been rewritten. Re-run the staging to list it again."
        )
    hint = "" if has_token else f" If it is private, set a token: {token_help}."
    return RepoNotFoundError(
        f"Repository {repo_id} was not found on {endpoint}{code}. Check the repo id (organisation/name, "
        f"case-sensitive) at {page}.{hint}"
    )


def classify_response(status: int, headers: Mapping[str, str]) -> str:
    """Map an HTTP error response to a kind (as ``hf_raise_for_status`` does, by X-Error-Code first).

    Returns one of the ``access_error`` kinds, ``"transient"`` or ``"http"`` (any other status).
    """
    code = headers.get("X-Error-Code") or headers.get("x-error-code")
    if code == "GatedRepo":
        return "gated"
    if code == "RepoNotFound":
        return "auth" if status == 401 else "repo-not-found"
    if code == "RevisionNotFound":
        return "revision-not-found"
    if code == "EntryNotFound":
        return "entry-not-found"
    if status == 401:
        return "auth"
    if status == 403:
        return "forbidden"
    if status == 404:
        return "repo-not-found"
    if status in TRANSIENT_STATUS or status >= 500:
        return "transient"
    return "http"


def _transient_transport_errors() -> tuple[type[BaseException], ...]:
    """The connection-level exceptions ``HfApi`` lets through, which a retry may cure.

    huggingface_hub raises its own classes for HTTP statuses but lets its HTTP library's transport
    errors through unwrapped: in 2.4 that library is ``httpx2`` (httpx's fork), whose classes are
    *not* httpx's, so catching ``httpx.ConnectError`` would miss a refused connection. The library
    is taken from ``huggingface_hub.utils.httpx``, the public alias huggingface_hub keeps "for
    downstream libraries across major versions" (httpx in 1.x, httpx2 in 2.x), so this follows
    whatever huggingface_hub uses without importing an undeclared package. The classes are the
    ones huggingface_hub's own ``http_backoff`` retries on: timeouts, network errors (connect,
    read, write) and a protocol error from the server (a connection dropped mid-response).
    """
    from huggingface_hub.utils import httpx as hub_http

    return (hub_http.TimeoutException, hub_http.NetworkError, hub_http.RemoteProtocolError)


def _map_hub_exception(exc: BaseException, **ctx) -> StagingError | None:
    """A huggingface_hub exception -> our error; None when it is transient (worth a retry)."""
    from huggingface_hub import errors as hf

    if isinstance(exc, hf.OfflineModeIsEnabled):
        return HubUnreachableError("huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)")
    if isinstance(exc, _transient_transport_errors()):
        return None
    status = None
    response = getattr(exc, "response", None)
    if response is not None:
        status = getattr(response, "status_code", None)
    if isinstance(exc, hf.GatedRepoError):
        return access_error("gated", status=status, **ctx)
    if isinstance(exc, hf.RevisionNotFoundError):
        return access_error("revision-not-found", status=status, **ctx)
    if isinstance(exc, hf.RepositoryNotFoundError):
        return access_error("auth" if status == 401 else "repo-not-found", status=status, **ctx)
    if isinstance(exc, hf.HfHubHTTPError) and status is not None:
        headers = response.headers if response is not None else {}
        kind = classify_response(status, headers)
        if kind == "transient":
            return None
        if kind != "http":
            return access_error(kind, status=status, **ctx)
        return StagingError(
            f"The Hub answered HTTP {status} for {ctx['repo_id']}@{ctx['revision']}; no retry for this status."
        )
    return StagingError(f"Could not read {ctx['repo_id']} from {ctx['endpoint']}: {type(exc).__name__}")


def _remote_files(entries: list[RepoFile], patterns: list[str] | None, where: str) -> list[RemoteFile]:
    """The tree entries that match ``patterns``, sorted by path, with the checksum each one has.

    An LFS file is named by its sha256 (its etag on the Hub); a regular file by its git blob sha1.
    """
    from huggingface_hub.utils import filter_repo_objects

    selected = list(filter_repo_objects(entries, allow_patterns=patterns, key=lambda e: e.path))
    files = [
        RemoteFile(
            path=e.path,
            size=e.size,
            etag=(e.lfs.sha256 if e.lfs is not None else e.blob_id),
            lfs=e.lfs is not None,
            sha256=e.lfs.sha256 if e.lfs is not None else None,
            git_sha1=None if e.lfs is not None else e.blob_id,
        )
        for e in sorted(selected, key=lambda e: e.path)
    ]
    if not files:
        raise StagingError(
            f"No file of {where} matches allow_patterns={patterns}; the repo has "
            f"{len(entries)} file(s): {', '.join(sorted(e.path for e in entries)[:10])}"
        )
    return files


def resolve_from_hub(
    repo_id: str,
    revision: str,
    *,
    endpoint: str,
    token: SecretStr | None,
    allow_patterns: Sequence[str] | None,
    token_help: str = "set HF_TOKEN",
    attempts: int = 3,
    backoff_s: float = 0.5,
    log: Callable[[str], None] | None = None,
) -> RepoListing:
    """Resolve ``revision`` to a commit and list the matching files with size, etag and checksums.

    Two requests: ``model_info`` (the commit) and ``list_repo_tree(recursive=True)`` at that commit
    (paginated by huggingface_hub). Transient failures (connect, timeout, 5xx, 429) are retried
    ``attempts`` times; then ``HubUnreachableError`` (the flow may fall back to the manifest).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(
        endpoint=endpoint,
        token=token.get_secret_value() if token is not None else None,
        library_name="spark-vllm-staging",
    )
    ctx = dict(
        repo_id=repo_id, revision=revision, endpoint=endpoint, has_token=token is not None, token_help=token_help
    )
    for attempt in range(1, attempts + 1):
        try:
            info = api.model_info(repo_id, revision=revision)
            commit = info.sha
            if not commit:
                raise StagingError(f"The Hub returned no commit for {repo_id}@{revision}")
            entries = [
                e for e in api.list_repo_tree(repo_id, recursive=True, revision=commit) if isinstance(e, RepoFile)
            ]
            break
        except StagingError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped below, never swallowed
            mapped = _map_hub_exception(exc, **ctx)
            if mapped is not None and not isinstance(mapped, HubUnreachableError):
                raise mapped from exc
            if isinstance(mapped, HubUnreachableError) or attempt == attempts:
                raise HubUnreachableError(
                    f"The Hub at {endpoint} could not be reached for {repo_id}@{revision} after {attempt} "
                    f"attempt(s) ({type(exc).__name__}). Check the network/proxy and HF_ENDPOINT, or stage "
                    f"offline from a cache staged earlier (offline=True / HF_HUB_OFFLINE=1)."
                ) from exc
            delay = backoff_s * 2 ** (attempt - 1)
            if log:
                log(f"Hub request failed ({type(exc).__name__}); retry {attempt}/{attempts - 1} in {delay:.1f}s")
            time.sleep(delay)

    patterns = list(allow_patterns) if allow_patterns is not None else None
    files = _remote_files(entries, patterns, f"{repo_id}@{revision}")
    return RepoListing(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=files,
        source="hub",
        endpoint=endpoint,
        allow_patterns=patterns,
    )
