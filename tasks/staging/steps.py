"""The staging steps as Prefect tasks; each does one thing and logs what it decided.

resolve_repo -> inspect_cache -> plan_staging -> check_disk_space -> transfer_files
-> link_snapshot -> write_manifest -> report_staging (see flows/stage.py).

The token travels as a ``pydantic.SecretStr`` (prints ``**********``); it goes into request headers
only, never into a log line, an artifact or an error.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from huggingface_hub.utils import build_hf_headers, filter_repo_objects
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from tasks.report import artifact_key, in_prefect_run, markdown_table, publish_report

from .cache import RepoCache
from .check import scan_cache
from .errors import HubUnreachableError, OfflineCacheError
from .hub import resolve_from_hub
from .manifest import ManifestFile, load_manifest, manifest_path, save_manifest
from .models import CacheState, FileOutcome, RepoListing, StagePlan, StageResult, TransferReport
from .plan import binary_size, make_plan, summarize_plan
from .preflight import require_free_space
from .progress import Progress
from .transfer import TransferConfig, run_transfers


def _logger():
    try:
        return get_run_logger()
    except Exception:  # called through .fn() outside a run
        import logging

        return logging.getLogger("tasks.staging")


def listing_from_manifest(
    cache: RepoCache, repo_id: str, revision: str, allow_patterns: list[str] | None, endpoint: str, why: str
) -> RepoListing:
    commit = cache.read_ref(revision)
    if commit is None:
        raise OfflineCacheError(
            f"{why}, and the cache {cache.cache_dir} has no refs/{revision} for {repo_id}: it was never staged "
            f"there. Run stage-model once with network access (and a token if the repo needs one)."
        )
    manifest = load_manifest(cache, commit)
    if manifest is None:
        raise OfflineCacheError(
            f"{why}, and there is no staging manifest for {repo_id}@{commit[:12]} in {cache.staging}: the cache "
            f"was not staged by a verified run (or the manifest was removed). Run stage-model once online."
        )
    files = manifest.remote_files()
    if allow_patterns is not None:
        files = list(filter_repo_objects(files, allow_patterns=allow_patterns, key=lambda f: f.path))
    if not files:
        raise OfflineCacheError(
            f"{why}, and the manifest of {repo_id}@{commit[:12]} lists no file matching {allow_patterns}."
        )
    return RepoListing(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=files,
        source="manifest",
        endpoint=endpoint,
        allow_patterns=allow_patterns,
    )


@task(name="resolve-repo", cache_policy=NO_CACHE, task_run_name="resolve {repo_id}@{revision}")
def resolve_repo(
    repo_id: str,
    revision: str,
    cache_dir: str,
    allow_patterns: list[str] | None,
    endpoint: str,
    token: SecretStr | None,
    offline: bool,
    token_help: str = "set HF_TOKEN",
) -> RepoListing:
    """Revision -> commit and the file list (path, size, etag, checksum): from the Hub, or from the
    manifest when offline or when the Hub cannot be reached."""
    log = _logger()
    cache = RepoCache(Path(cache_dir), repo_id)
    if offline:
        listing = listing_from_manifest(cache, repo_id, revision, allow_patterns, endpoint, "Offline mode")
        log.info(
            f"offline: {repo_id}@{revision} is commit {listing.commit} per the cache's manifest "
            f"({len(listing.files)} files)"
        )
        return listing
    try:
        listing = resolve_from_hub(
            repo_id,
            revision,
            endpoint=endpoint,
            token=token,
            allow_patterns=allow_patterns,
            token_help=token_help,
            log=log.warning,
        )
    except HubUnreachableError as exc:
        try:
            listing = listing_from_manifest(
                cache, repo_id, revision, allow_patterns, endpoint, "The Hub is unreachable"
            )
        except OfflineCacheError:
            raise exc from None
        log.warning(f"{exc} Using the manifest of the last verified staging instead (commit {listing.commit}).")
        return listing
    log.info(
        f"{repo_id}@{revision} is commit {listing.commit}: {len(listing.files)} files, "
        f"{binary_size(listing.total_bytes)}"
    )
    return listing


@task(name="inspect-cache", cache_policy=NO_CACHE)
def inspect_cache(listing: RepoListing, cache_dir: str, verify: bool, workers: int = 4) -> CacheState:
    """Observe blobs and partials; re-hash blobs no manifest vouches for (all of them with verify)."""
    log = _logger()
    cache = RepoCache(Path(cache_dir), listing.repo_id)
    manifest = load_manifest(cache, listing.commit)
    t0 = time.monotonic()
    state = scan_cache(cache, listing, manifest, verify=verify, workers=workers, log=log.warning)
    if state.hashed_files:
        dt = time.monotonic() - t0
        log.info(
            f"hashed {state.hashed_files} blob(s), {binary_size(state.hashed_bytes)} in {dt:.1f}s; "
            f"{len(state.corrupt)} wrong"
        )
    return state


@task(name="plan-staging", cache_policy=NO_CACHE)
def plan_staging(listing: RepoListing, state: CacheState) -> StagePlan:
    """reuse / resume / download per file; offline, anything but reuse is an error."""
    log = _logger()
    plan = make_plan(listing.files, state.blobs)
    for p in plan.files:
        if p.action != "reuse":
            log.info(f"{p.action:8s} {p.path} ({binary_size(p.size)}): {p.reason}")
    log.info(summarize_plan(plan))
    bad = [p for p in plan.files if p.action != "reuse"]
    if listing.source == "manifest" and bad:
        names = ", ".join(p.path for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise OfflineCacheError(
            f"The Hub cannot be used (offline or unreachable) and {len(bad)} file(s) of {listing.repo_id}@"
            f"{listing.commit[:12]} are missing or wrong in the cache: {names}. Re-run stage-model with network "
            f"access to repair them (only those files are fetched)."
        )
    return plan


@task(name="check-disk-space", cache_policy=NO_CACHE)
def check_disk_space(plan: StagePlan, cache_dir: str) -> dict:
    """Bytes still needed + margin against free space, before anything is written."""
    log = _logger()
    needed = plan.bytes_needed
    if needed <= 0:
        return {"needed": 0, "free": None}
    required, free = require_free_space(needed, Path(cache_dir))
    log.info(f"disk: {binary_size(required)} needed (incl. margin), {binary_size(free)} free in {cache_dir}")
    return {"needed": required, "free": free}


@task(name="transfer-files", cache_policy=NO_CACHE)
def transfer_files(
    listing: RepoListing,
    plan: StagePlan,
    cache_dir: str,
    token: SecretStr | None,
    max_workers: int = 8,
    token_help: str = "set HF_TOKEN",
) -> TransferReport:
    """Download / resume every file the plan does not reuse (Range, lock, sha256, atomic rename)."""
    log = _logger()
    todo = [(f, p) for f, p in zip(listing.files, plan.files, strict=True) if p.action != "reuse"]
    if not todo:
        return TransferReport(outcomes=[], duration_s=0.0)
    cache = RepoCache(Path(cache_dir), listing.repo_id)
    headers = build_hf_headers(
        token=token.get_secret_value() if token is not None else None, library_name="spark-vllm-staging"
    )
    cfg = TransferConfig(
        repo_id=listing.repo_id,
        revision=listing.revision,
        commit=listing.commit,
        endpoint=listing.endpoint,
        headers=headers,
        has_token="authorization" in {k.lower() for k in headers},
        token_help=token_help,
    )
    done = sum(p.size for p in plan.files if p.action == "reuse") + sum(
        p.offset for p in plan.files if p.action != "reuse"
    )
    progress = Progress(
        total_bytes=listing.total_bytes,
        done_bytes=done,
        key=artifact_key("staging-progress", listing.repo_id),
        description=f"{listing.repo_id}@{listing.commit[:12]}",
        logger=log,
    )
    progress.start()
    t0 = time.monotonic()
    try:
        outcomes = run_transfers(
            todo, cache, cfg, max_workers=max_workers, progress=progress, log=log, on_done=progress.file_done
        )
    finally:
        progress.close()
    dt = time.monotonic() - t0
    report = TransferReport(outcomes=outcomes, duration_s=dt)
    if report.bytes_downloaded:
        log.info(
            f"transferred {binary_size(report.bytes_downloaded)} in {dt:.1f}s "
            f"({report.bytes_downloaded / max(dt, 1e-9) / 1e6:.1f} MB/s), resumed {binary_size(report.bytes_resumed)}"
        )
    return report


@task(name="link-snapshot", cache_policy=NO_CACHE)
def link_snapshot(listing: RepoListing, cache_dir: str) -> str:
    """snapshots/<commit>/<path> -> ../../blobs/<etag> (relative) and refs/<revision>."""
    cache = RepoCache(Path(cache_dir), listing.repo_id)
    missing = [f.path for f in listing.files if not cache.blob(f.etag).exists()]
    if missing:
        raise OfflineCacheError(f"blobs missing after the transfer: {', '.join(missing)}")
    changed = sum(cache.link(listing.commit, f.path, f.etag) for f in listing.files)
    cache.write_ref(listing.revision, listing.commit)
    if changed:
        _logger().info(f"linked {changed} file(s) into {cache.snapshot_dir(listing.commit)}")
    return str(cache.snapshot_dir(listing.commit))


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(listing: RepoListing, state: CacheState, report: TransferReport, cache_dir: str) -> str:
    """Record every file's size, checksums and blob mtime; later runs and the deploy flow verify
    against it offline. Skipped when it already says exactly this (a re-run writes nothing)."""
    cache = RepoCache(Path(cache_dir), listing.repo_id)
    by_path: dict[str, FileOutcome] = {o.path: o for o in report.outcomes}
    current = load_manifest(cache, listing.commit)
    entries: dict[str, ManifestFile] = {}
    for f in listing.files:
        st = os.stat(cache.blob(f.etag))
        o = by_path.get(f.path)
        sha256 = (o.sha256 if o else None) or state.blobs[f.path].sha256 or f.sha256
        git_sha1 = (o.git_sha1 if o else None) or f.git_sha1
        if sha256 is None and current is not None and f.path in current.files:
            sha256 = current.files[f.path].sha256
        entries[f.path] = ManifestFile(
            size=f.size,
            etag=f.etag,
            lfs=f.lfs,
            sha256=sha256 or "",
            git_sha1=None if f.lfs else git_sha1,
            mtime_ns=st.st_mtime_ns,
        )
    path = manifest_path(cache, listing.commit)
    unchanged = (
        current is not None
        and all(current.files.get(k) == v for k, v in entries.items())
        and (listing.revision == listing.commit or listing.revision in current.revisions)
    )
    if unchanged:
        return str(path)
    return str(save_manifest(cache, listing, entries))


def _stage_result(
    listing: RepoListing,
    plan: StagePlan,
    state: CacheState,
    report: TransferReport,
    snapshot_path: str,
    manifest: str,
    cache_dir: str,
    duration: float,
    verify: bool,
) -> StageResult:
    """Count what the run did per file and per byte: the numbers the flow returns and reports."""
    outcomes = report.outcomes
    downloaded = [o for o in outcomes if o.result == "downloaded"]
    resumed = [o for o in outcomes if o.result == "resumed"]
    reused_bytes = sum(p.size for p in plan.files if p.action == "reuse") + sum(o.bytes_reused for o in outcomes)
    repaired = len({o.path for o in outcomes if o.result in ("downloaded", "resumed")} & set(state.corrupt))
    return StageResult(
        repo_id=listing.repo_id,
        revision=listing.revision,
        commit=listing.commit,
        snapshot_path=snapshot_path,
        cache_dir=str(cache_dir),
        source=listing.source,
        files_total=len(listing.files),
        files_downloaded=len(downloaded),
        files_resumed=len(resumed),
        files_reused=len(listing.files) - len(downloaded) - len(resumed),
        files_repaired=repaired,
        bytes_total=listing.total_bytes,
        bytes_downloaded=report.bytes_downloaded,
        bytes_reused=reused_bytes,
        bytes_resumed=report.bytes_resumed,
        bytes_hashed=state.hashed_bytes,
        retries=sum(o.retries for o in outcomes),
        restarts=sum(o.restarts for o in outcomes),
        duration_s=round(duration, 3),
        transfer_s=round(report.duration_s, 3),
        throughput_bytes_per_s=round(_throughput(report), 1),
        manifest_path=manifest,
        verified=verify,
    )


def _throughput(report: TransferReport) -> float:
    """Bytes per second over the transfer's own time; 0 when nothing was downloaded."""
    if report.duration_s > 0 and report.bytes_downloaded:
        return report.bytes_downloaded / report.duration_s
    return 0.0


def _summary_rows(result: StageResult, listing: RepoListing, report: TransferReport, duration: float) -> dict[str, str]:
    """The artifact's summary table: one row per figure of the result, bytes both human and exact."""
    thr = _throughput(report)
    return {
        "repo": f"`{listing.repo_id}`",
        "revision": f"`{listing.revision}` = `{listing.commit}`",
        "source": listing.source,
        "snapshot": f"`{result.snapshot_path}`",
        "files": f"{result.files_total} ({result.files_downloaded} downloaded, {result.files_resumed} resumed, "
        f"{result.files_reused} reused, {result.files_repaired} repaired)",
        "bytes downloaded": f"{binary_size(result.bytes_downloaded)} ({result.bytes_downloaded})",
        "bytes resumed": f"{binary_size(result.bytes_resumed)} ({result.bytes_resumed})",
        "bytes reused": f"{binary_size(result.bytes_reused)} ({result.bytes_reused})",
        "bytes re-hashed": binary_size(result.bytes_hashed),
        "throughput": f"{thr / 1e6:.1f} MB/s over {report.duration_s:.1f}s" if thr else "no transfer",
        "retries / restarts": f"{result.retries} / {result.restarts}",
        "duration": f"{duration:.2f}s",
        "manifest": f"`{result.manifest_path}`",
    }


def _file_rows(plan: StagePlan, state: CacheState, report: TransferReport) -> list[tuple[str, str, str]]:
    """The artifact's file table: what happened to each file (the transfer's outcome, else the plan)."""
    by_path = {o.path: o for o in report.outcomes}
    files = []
    for p in plan.files:
        o = by_path.get(p.path)
        act: str = o.result if o else p.action
        if o and o.adopted:
            act += " (huggingface_hub partial adopted)"
        if p.path in state.corrupt:
            act += " (was corrupt)"
        files.append((f"`{p.path}`", binary_size(p.size), act))
    return files


@task(name="report-staging", cache_policy=NO_CACHE)
def report_staging(
    listing: RepoListing,
    plan: StagePlan,
    state: CacheState,
    report: TransferReport,
    snapshot_path: str,
    manifest: str,
    cache_dir: str,
    started: float,
    verify: bool,
    artifact: bool = True,
) -> StageResult:
    """The result, and a markdown artifact an operator reads in the UI."""
    duration = time.monotonic() - started
    result = _stage_result(listing, plan, state, report, snapshot_path, manifest, cache_dir, duration, verify)
    _logger().info(
        f"staged {listing.repo_id}@{listing.commit[:12]} from {listing.source}: {result.files_total} files, "
        f"{binary_size(result.bytes_downloaded)} downloaded, {binary_size(result.bytes_resumed)} resumed, "
        f"{binary_size(result.bytes_reused)} reused in {duration:.2f}s"
    )
    if artifact and in_prefect_run():
        files = _file_rows(plan, state, report)
        publish_report(
            artifact_key("staging", listing.repo_id),
            f"Staged {listing.repo_id}",
            _summary_rows(result, listing, report, duration),
            {"Files": markdown_table(("file", "size", "action"), files, align=("left", "right", "left"))},
            description=f"Model staging of {listing.repo_id}@{listing.commit[:12]}",
        )
    return result
