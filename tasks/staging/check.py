"""Observe the cache for a listing: blob sizes, partials, manifest trust; hash what must be hashed.

A blob is trusted without hashing only when the manifest of an earlier verified run recorded the
same etag, size and mtime. Otherwise (blob written by ``hf download``, by hand, or ``verify=True``)
it is re-hashed — in parallel, sha256 for LFS files and git blob sha1 for small ones, the same
checks ``HfApi.verify_repo_checksums`` makes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .cache import RepoCache, hash_blob
from .manifest import Manifest
from .models import BlobState, CacheState, RemoteFile, RepoListing
from .plan import is_trusted, needs_hash


def observe(cache: RepoCache, f: RemoteFile, manifest: Manifest | None) -> BlobState:
    blob = cache.blob(f.etag)
    size: int | None
    mtime: int | None
    try:
        st = os.stat(blob)
        size, mtime = st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        size = mtime = None
    entry = manifest.files.get(f.path) if manifest is not None else None
    trusted = is_trusted(f, size, mtime, entry)
    return BlobState(
        etag=f.etag,
        blob_size=size,
        blob_mtime_ns=mtime,
        partial_sizes=cache.partials(f.etag),
        trusted=trusted,
        sha256=entry.sha256 if trusted and entry is not None else None,
    )


def scan_cache(
    cache: RepoCache,
    listing: RepoListing,
    manifest: Manifest | None,
    *,
    verify: bool,
    workers: int,
    log: Callable[[str], Any] | None = None,
) -> CacheState:
    states = {f.path: observe(cache, f, manifest) for f in listing.files}
    to_hash = [f for f in listing.files if needs_hash(f, states[f.path], verify)]
    corrupt: list[str] = []
    hashed_bytes = 0

    def check(f: RemoteFile) -> tuple[RemoteFile, bool, str]:
        h = hash_blob(cache.blob(f.etag), f.size, git=not f.lfs)
        algo, expected = f.check
        return f, h.digest(algo) == expected, h.digest("sha256")

    if to_hash:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="hash") as pool:
            for f, ok, sha in pool.map(check, sorted(to_hash, key=lambda f: -f.size)):
                st = states[f.path]
                st.hashed = ok
                st.sha256 = sha if ok else None
                hashed_bytes += f.size
                if not ok:
                    corrupt.append(f.path)
                    if log:
                        algo, expected = f.check
                        log(
                            f"{f.path}: blob {f.etag[:12]}… does not match its {algo} {expected[:12]}…; "
                            "it will be fetched again"
                        )
    return CacheState(blobs=states, hashed_files=len(to_hash), hashed_bytes=hashed_bytes, corrupt=sorted(corrupt))
