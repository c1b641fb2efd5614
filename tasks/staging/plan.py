"""Pure decisions: which file is reused, resumed (from which partial) or downloaded.

No I/O here: ``inspect_cache`` observes the disk into ``BlobState``s, these functions decide.
The transfer re-checks the disk under each blob's lock, so a plan that another process made stale
(it finished the blob meanwhile) costs a hash, never a second download.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .cache import HF_ORPHAN_RE
from .manifest import ManifestFile
from .models import BlobState, FilePlan, RemoteFile, StagePlan


def is_trusted(f: RemoteFile, blob_size: int | None, blob_mtime_ns: int | None, entry: ManifestFile | None) -> bool:
    """A blob may be reused without hashing when a verified run recorded exactly this blob."""
    if entry is None or blob_size is None:
        return False
    if entry.etag != f.etag or entry.size != f.size or blob_size != f.size:
        return False
    if entry.mtime_ns is None or entry.mtime_ns != blob_mtime_ns:
        return False
    if f.lfs and f.sha256 and entry.sha256 != f.sha256:
        return False
    return True


def needs_hash(f: RemoteFile, state: BlobState, verify: bool) -> bool:
    """Hash a present, right-sized blob when asked to verify or when no manifest vouches for it."""
    if state.blob_size is None or state.blob_size != f.size:
        return False  # absent or wrong size: it will be fetched anyway, hashing tells nothing new
    return verify or not state.trusted


def choose_partial(size: int, partials: Mapping[str, int]) -> tuple[str | None, int]:
    """The partial to continue: the longest one that is not longer than the file.

    Every partial of a blob is a prefix of the same content (the name is the content's hash), so the
    longest saves the most bytes; the stable ``<etag>.incomplete`` wins a tie (no rename needed).
    """
    best: tuple[str | None, int] = (None, 0)
    for name, n in sorted(partials.items(), key=lambda kv: (kv[1], kv[0].count(".") == 1)):
        if 0 < n <= size and n >= best[1]:
            best = (name, n)
    return best


def plan_file(f: RemoteFile, state: BlobState) -> FilePlan:
    replace = False
    reason = ""
    if state.blob_size is not None:
        if state.blob_size == f.size and (state.hashed is True or (state.hashed is None and state.trusted)):
            why = "verified by hash" if state.hashed else "verified by manifest"
            return FilePlan(path=f.path, etag=f.etag, size=f.size, action="reuse", reason=why)
        replace = True
        if state.blob_size != f.size:
            reason = f"blob has {state.blob_size} bytes, expected {f.size}; "
        else:
            reason = "blob checksum mismatch; "
    partial, offset = choose_partial(f.size, state.partial_sizes)
    if partial is not None:
        adopt = bool(HF_ORPHAN_RE.match(partial))
        who = "huggingface_hub partial" if adopt else "partial"
        return FilePlan(
            path=f.path,
            etag=f.etag,
            size=f.size,
            action="resume",
            offset=offset,
            partial=partial,
            adopt=adopt,
            replace_blob=replace,
            reason=f"{reason}{who} has {offset} of {f.size} bytes",
        )
    return FilePlan(
        path=f.path,
        etag=f.etag,
        size=f.size,
        action="download",
        replace_blob=replace,
        reason=(reason + "not in cache") if not replace else reason.rstrip("; "),
    )


def make_plan(files: Iterable[RemoteFile], states: Mapping[str, BlobState]) -> StagePlan:
    return StagePlan(files=[plan_file(f, states[f.path]) for f in files])


def summarize_plan(plan: StagePlan) -> str:
    reuse = [p for p in plan.files if p.action == "reuse"]
    resume = [p for p in plan.files if p.action == "resume"]
    download = [p for p in plan.files if p.action == "download"]
    return (
        f"plan: {len(reuse)} reuse ({binary_size(sum(p.size for p in reuse))}), "
        f"{len(resume)} resume ({binary_size(sum(p.offset for p in resume))} already here), "
        f"{len(download)} download; {binary_size(plan.bytes_needed)} to fetch"
    )


def binary_size(n: float) -> str:
    """Bytes in binary units (1.5 GiB), as the staging logs and report print them.

    tasks/prune.py's ``human_bytes`` prints decimal units instead, as docker does.
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
