"""Moving the bytes: HTTP Range requests into a stable ``blobs/<etag>.incomplete``, under a file lock.

Per file (``fetch_file``):

1. take ``<cache>/.locks/<repo folder>/<etag>.lock`` — huggingface_hub's own lock file, so neither a
   second staging run nor a concurrent ``hf download`` writes the same blob at the same time; a
   blob that appeared while we waited (another process finished it) is hashed and reused;
2. pick the longest partial: our ``<etag>.incomplete`` or an orphan ``<etag>.<8 hex>.incomplete``
   that huggingface_hub >= 1.18 leaves behind when killed (it never reuses them); rename it to the
   stable name (adopted) and delete the other, now useless, orphans;
3. hash the kept prefix, then ``GET`` with ``Range: bytes=<offset>-`` and hash each chunk as it is
   written; the file is opened only after a 200/206, so a refused request leaves nothing behind;
4. transient failures (connect, timeouts, dropped connections, 5xx, 408, 429 honouring
   Retry-After) are retried with exponential backoff from the current offset; the retry budget
   counts only attempts that brought no byte, so a flaky but moving link never gives up;
   401/403/404/gated are raised at once with what to do;
5. a server that answers 200 to a Range request (Range ignored) restarts the file at byte 0 from
   that very response; a wrong ``Content-Range`` start restarts it without Range;
6. size and checksum (sha256 for LFS files, git blob sha1 for small ones) are checked, then
   ``fsync`` and an atomic ``os.replace`` to ``blobs/<etag>``. A mismatch after a resumed prefix
   restarts the file from zero once (the prefix may be what is wrong); a second mismatch is an error.
"""

from __future__ import annotations

import email.utils
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from filelock import FileLock, Timeout
from huggingface_hub import hf_hub_url

from tasks.errors import SparkVllmError

from .cache import FILE_MODE, Hashers, RepoCache, feed_file, hash_blob, is_hf_orphan, remove_quietly
from .errors import IntegrityError, StagingError, TransferError
from .hub import access_error, classify_response
from .models import FileOutcome, FilePlan, RemoteFile
from .plan import binary_size, choose_partial
from .progress import Progress

logger = logging.getLogger(__name__)

WRITE_BUFFER = 1024 * 1024
SYNC_EVERY = 64 * 1024 * 1024  # fdatasync a growing partial every this many bytes (durable mode)


@dataclass
class TransferConfig:
    repo_id: str
    revision: str
    commit: str
    endpoint: str
    headers: dict[str, str] = field(repr=False)  # carries the Authorization header: never log it
    has_token: bool = False
    token_help: str = "set HF_TOKEN"
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_stalled_attempts: int = 6  # consecutive attempts that brought no byte
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    retry_after_max: float = 120.0
    max_integrity_restarts: int = 1
    max_restarts: int = 4
    lock_poll: float = 1.0
    durable: bool = True  # fsync each blob before its rename

    def url(self, path: str) -> str:
        return hf_hub_url(self.repo_id, path, revision=self.commit, endpoint=self.endpoint)

    def client(self, max_workers: int) -> httpx.Client:
        """One pooled client for all workers, on httpx's own transport.

        httpx's transport honours ``HTTP(S)_PROXY`` and ``SSL_CERT_FILE`` and is what runs against
        the real Hub. A custom transport reading 1 MiB per ``recv`` was measured and dropped
        (docs/staging.md, "How bytes move"): it only helps plain HTTP, about 12 % less CPU per GB on
        the imitation, and over TLS a ``recv`` returns one 16 KiB record whatever is asked.
        """
        limits = httpx.Limits(max_connections=max_workers * 2, max_keepalive_connections=max_workers * 2)
        return httpx.Client(
            follow_redirects=True,  # httpx drops Authorization on a redirect to another host
            timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
            limits=limits,
        )


class Busy(SparkVllmError):
    """The blob's lock is held by another process (non-blocking attempt)."""


class Cancelled(SparkVllmError):
    """Another file failed for good; this one stopped between chunks (its partial is kept)."""


class _Transient(SparkVllmError):
    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


class _Restart(SparkVllmError):
    """Start the file over at byte 0 (optionally without Range)."""


class _Mismatch(_Restart):
    """The complete file does not hash to the listed checksum."""


TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent/unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ref = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
    return max(0.0, (when - ref).total_seconds())


def backoff_delay(stalled: int, base: float, cap: float, retry_after: float | None, retry_after_max: float) -> float:
    """Delay before the next attempt: the server's Retry-After when given (capped), else exponential."""
    if retry_after is not None:
        return min(retry_after, retry_after_max)
    return min(base * (2 ** max(stalled - 1, 0)), cap)


def parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes <start>-<end>/<total|*>`` -> (start, total)."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, _, total = value[6:].partition("/")
        start = int(span.split("-", 1)[0])
        return start, (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


def acquire(
    lock: FileLock, *, wait: bool, cancel: threading.Event, poll: float, on_wait: Callable[[], None] | None
) -> None:
    if not wait:
        try:
            lock.acquire(timeout=0)
            return
        except Timeout:
            raise Busy() from None
    announced = False
    while True:
        if cancel.is_set():
            raise Cancelled()
        try:
            lock.acquire(timeout=poll)
            return
        except Timeout:
            if not announced and on_wait is not None:
                on_wait()
                announced = True


class _Job:
    """State of one file's transfer while its lock is held."""

    def __init__(
        self,
        cache: RepoCache,
        f: RemoteFile,
        cfg: TransferConfig,
        progress: Progress | None,
        cancel: threading.Event,
        log: Any,
    ) -> None:
        self.cache = cache
        self.f = f
        self.cfg = cfg
        self.progress = progress
        self.cancel = cancel
        self.log = log
        self.path = cache.incomplete(f.etag)
        self.hashers = Hashers(f.size, git=not f.lfs)
        self.offset = 0
        self.resumed = 0
        self.downloaded = 0
        self.retries = 0
        self.restarts = 0
        self.use_range = True
        self.unsynced = 0
        self.fh: Any = None

    def _add(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress.add(n)

    def open(self) -> None:
        if self.fh is None:
            self.fh = open(self.path, "ab", buffering=WRITE_BUFFER)  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def restart(self, why: str) -> None:
        """Back to byte 0: the kept prefix is dropped (and counted out of the progress)."""
        self.log.warning(f"{self.f.path}: {why}; restarting the file from byte 0")
        self.close()
        remove_quietly([self.path])
        self._add(-self.offset)
        self.resumed = 0
        self.offset = 0
        self.hashers.reset()
        self.restarts += 1

    def hash_prefix(self) -> None:
        if self.offset:
            n = feed_file(self.path, self.hashers, limit=self.offset, cancel=self.cancel)
            if n != self.offset:  # the file shrank under us: cannot happen under the lock, be safe
                raise _Restart("partial shorter than expected")

    def stream_once(self, client: httpx.Client) -> None:
        headers = dict(self.cfg.headers)
        headers["Accept-Encoding"] = "identity"
        if self.offset and self.use_range:
            headers["Range"] = f"bytes={self.offset}-"
        url = self.cfg.url(self.f.path)
        with client.stream("GET", url, headers=headers) as r:
            status = r.status_code
            if status == 416 and self.offset:
                raise _Restart(f"the server refused Range bytes={self.offset}- (416)")
            if status not in (200, 206):
                kind = classify_response(status, r.headers)
                if kind == "transient":
                    raise _Transient(f"HTTP {status}", parse_retry_after(r.headers.get("Retry-After")))
                if kind == "http":
                    raise StagingError(
                        f"{self.f.path}: the Hub answered HTTP {status} for {self.cfg.repo_id}@{self.cfg.commit}; "
                        f"not retried."
                    )
                raise access_error(
                    kind,
                    repo_id=self.cfg.repo_id,
                    revision=self.cfg.revision,
                    endpoint=self.cfg.endpoint,
                    has_token=self.cfg.has_token,
                    token_help=self.cfg.token_help,
                    status=status,
                )
            if status == 200 and self.offset:
                # Range ignored: this body is the whole file; take it from byte 0.
                self.restart(f"the server ignored Range (200 instead of 206 at offset {self.offset})")
            elif status == 206:
                cr = parse_content_range(r.headers.get("Content-Range"))
                if cr is None or cr[0] != self.offset:
                    self.use_range = False
                    raise _Restart(
                        f"unexpected Content-Range {r.headers.get('Content-Range')!r} for offset {self.offset}"
                    )
                if cr[1] is not None and cr[1] != self.f.size:
                    raise IntegrityError(
                        f"{self.f.path}: the Hub serves {cr[1]} bytes but its listing says {self.f.size}; "
                        f"re-run to list the revision again."
                    )
            else:
                length = r.headers.get("Content-Length")
                if (
                    length is not None
                    and r.headers.get("Content-Encoding", "identity") == "identity"
                    and int(length) != self.f.size
                ):
                    raise IntegrityError(
                        f"{self.f.path}: the Hub serves {length} bytes but its listing says {self.f.size}; "
                        f"re-run to list the revision again."
                    )
            self.open()
            for chunk in r.iter_raw():
                if self.cancel.is_set():
                    raise Cancelled()
                if not chunk:
                    continue
                n = len(chunk)
                if self.offset + n > self.f.size:
                    raise _Restart(f"the server sent more than the {self.f.size} bytes listed")
                self.fh.write(chunk)
                self.hashers.update(chunk)
                self.offset += n
                self.downloaded += n
                self._add(n)
                self.unsynced += n
                if self.cfg.durable and self.unsynced >= SYNC_EVERY:
                    # Write back as we go: the disk works while the network does, instead of one
                    # long flush of every shard at the end (and no gigabytes of dirty pages).
                    self.fh.flush()
                    os.fdatasync(self.fh.fileno())
                    self.unsynced = 0
            if self.offset < self.f.size:
                raise _Transient(f"connection closed at {self.offset} of {self.f.size} bytes")

    def finish(self) -> tuple[str, str | None]:
        """Checksum, fsync, rename. Returns (sha256, git_sha1)."""
        self.open()
        self.fh.flush()
        if self.cfg.durable:
            os.fsync(self.fh.fileno())  # the manifest will vouch for this blob: make it survive a power cut
        self.close()
        algo, expected = self.f.check
        actual = self.hashers.digest(algo)
        if actual != expected:
            raise _Mismatch(f"{algo} mismatch ({actual[:12]}… instead of {expected[:12]}…)")
        os.chmod(self.path, FILE_MODE)
        os.replace(self.path, self.cache.blob(self.f.etag))
        git = self.hashers.digest("git-sha1") if not self.f.lfs else None
        return self.hashers.digest("sha256"), git


def fetch_file(
    client: httpx.Client,
    cache: RepoCache,
    f: RemoteFile,
    fplan: FilePlan,
    cfg: TransferConfig,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    wait: bool = True,
    log: Any = None,
    sleep: Callable[[float], None] | None = None,
) -> FileOutcome:
    """Bring one blob into the cache (see the module docstring). Raises ``Busy`` when ``wait`` is
    False and another process holds the blob's lock."""
    cancel = cancel or threading.Event()
    log = log or logger
    cache.locks.mkdir(parents=True, exist_ok=True)
    cache.blobs.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache.lock(f.etag)), mode=0o664)
    acquire(
        lock,
        wait=wait,
        cancel=cancel,
        poll=cfg.lock_poll,
        on_wait=lambda: log.info(f"{f.path}: another process is writing this blob; waiting for it"),
    )
    started = time.monotonic()
    job: _Job | None = None
    try:
        if cancel.is_set():
            raise Cancelled()
        blob = cache.blob(f.etag)
        if blob.exists():
            if blob.stat().st_size == f.size:
                h = hash_blob(blob, f.size, git=not f.lfs)
                algo, expected = f.check
                if h.digest(algo) == expected:
                    if progress is not None:
                        progress.add(f.size - fplan.offset)
                    return FileOutcome(
                        path=f.path,
                        etag=f.etag,
                        size=f.size,
                        result="waited",
                        bytes_reused=f.size,
                        sha256=h.digest("sha256"),
                        git_sha1=h.digest("git-sha1") if not f.lfs else None,
                        duration_s=time.monotonic() - started,
                    )
            log.warning(f"{f.path}: the blob in the cache is wrong; fetching it again")

        # Partials: keep the longest valid one under the stable name, drop the rest.
        partials = cache.partials(f.etag)
        name, offset = choose_partial(f.size, partials)
        adopted = False
        if name is not None and name != cache.incomplete(f.etag).name:
            os.replace(cache.blobs / name, cache.incomplete(f.etag))
            adopted = is_hf_orphan(name, f.etag)
            log.info(f"{f.path}: adopting {binary_size(offset)} left by huggingface_hub in {name}")
        stale = [cache.blobs / n for n in partials if n != name and n != cache.incomplete(f.etag).name]
        if name is None and cache.incomplete(f.etag).name in partials:
            stale.append(cache.incomplete(f.etag))  # empty or longer than the file
        remove_quietly(stale)

        job = _Job(cache, f, cfg, progress, cancel, log)
        job.offset = offset
        job.resumed = offset
        if progress is not None:
            progress.add(offset - fplan.offset)
        return _run(job, client, adopted, started, sleep or (lambda s: cancel.wait(s)))
    finally:
        if job is not None:
            job.close()
        lock.release()


def _run(job: _Job, client: httpx.Client, adopted: bool, started: float, sleep: Callable[[float], Any]) -> FileOutcome:
    f, cfg = job.f, job.cfg
    stalled = 0  # attempts in a row that brought no byte
    mismatches = 0
    prefix_hashed = False
    while True:
        try:
            if not prefix_hashed:
                job.hash_prefix()
                prefix_hashed = True
            if job.offset < f.size:
                before = job.offset
                try:
                    job.stream_once(client)
                except TRANSIENT_ERRORS as exc:
                    raise _Transient(type(exc).__name__) from exc
                finally:
                    if job.offset > before:
                        stalled = 0
            sha256, git_sha1 = job.finish()
            return FileOutcome(
                path=f.path,
                etag=f.etag,
                size=f.size,
                result="resumed" if job.resumed else "downloaded",
                bytes_downloaded=job.downloaded,
                bytes_resumed=job.resumed,
                adopted=adopted and job.resumed > 0,
                restarts=job.restarts,
                retries=job.retries,
                sha256=sha256,
                git_sha1=git_sha1,
                duration_s=time.monotonic() - started,
            )
        except _Transient as t:
            job.retries += 1
            stalled += 1
            if stalled > cfg.max_stalled_attempts:
                raise TransferError(
                    f"{f.path}: gave up after {stalled} attempts in a row without progress (last: {t.what}); "
                    f"{job.offset} of {f.size} bytes are kept in {job.path.name} and the next run resumes there."
                ) from None
            delay = backoff_delay(stalled, cfg.backoff_base, cfg.backoff_max, t.retry_after, cfg.retry_after_max)
            job.log.warning(
                f"{f.path}: {t.what} at {binary_size(job.offset)} of {binary_size(f.size)}; "
                f"retrying from there in {delay:.1f}s (attempt {stalled}/{cfg.max_stalled_attempts})"
            )
            job.close()
            sleep(delay)
            if job.cancel.is_set():
                raise Cancelled() from None
        except _Restart as r:
            if isinstance(r, _Mismatch):
                mismatches += 1
                if mismatches > cfg.max_integrity_restarts:
                    job.close()
                    remove_quietly([job.path])
                    raise IntegrityError(
                        f"{f.path}: the bytes received do not match the Hub's checksum ({r}) even after "
                        f"downloading the whole file again; the partial was deleted. The Hub or a proxy in "
                        f"between is serving corrupt content: retry later or set HF_ENDPOINT to another mirror."
                    ) from None
            elif job.restarts >= cfg.max_restarts:
                raise TransferError(f"{f.path}: restarted {job.restarts} times ({r}); giving up.") from None
            job.restart(str(r))
            prefix_hashed = True  # nothing left to hash at offset 0
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StagingError(
                    f"{f.path}: the disk filled up while writing ({job.offset} of {f.size} bytes kept in "
                    f"{job.path.name}); something else is writing to it. Free space and re-run: it resumes."
                ) from None
            raise


def run_transfers(
    files: list[tuple[RemoteFile, FilePlan]],
    cache: RepoCache,
    cfg: TransferConfig,
    *,
    max_workers: int,
    progress: Progress | None,
    log: Any = None,
    on_done: Callable[[FileOutcome], None] | None = None,
) -> list[FileOutcome]:
    """Fetch files in parallel (largest first). A blob locked by another process is put back at the
    end of the queue and waited for once everything else is under way. The first failure for good
    cancels the others (their partials are kept) and is raised."""
    log = log or logger
    cancel = threading.Event()
    outcomes: list[FileOutcome] = []
    errors: list[BaseException] = []
    order = sorted(files, key=lambda fp: fp[0].size, reverse=True)
    with cfg.client(max_workers) as client:
        pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="stage")
        futures: dict[Future, tuple[RemoteFile, FilePlan]] = {}
        try:
            for f, p in order:
                futures[
                    pool.submit(
                        fetch_file, client, cache, f, p, cfg, progress=progress, cancel=cancel, wait=False, log=log
                    )
                ] = (f, p)
            while futures:
                done, _ = wait(list(futures), timeout=0.5, return_when=FIRST_COMPLETED)
                if progress is not None:
                    progress.tick()
                for fut in done:
                    f, p = futures.pop(fut)
                    try:
                        outcome = fut.result()
                    except Busy:
                        futures[
                            pool.submit(
                                fetch_file,
                                client,
                                cache,
                                f,
                                p,
                                cfg,
                                progress=progress,
                                cancel=cancel,
                                wait=True,
                                log=log,
                            )
                        ] = (f, p)
                    except Cancelled:
                        pass
                    except BaseException as exc:  # noqa: BLE001 - re-raised below
                        if not errors:
                            cancel.set()
                        errors.append(exc)
                    else:
                        outcomes.append(outcome)
                        if on_done is not None:
                            on_done(outcome)
        finally:
            if errors or futures:
                cancel.set()  # on an error or an interrupt: stop the others between chunks
            pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        first = next((e for e in errors if isinstance(e, StagingError)), errors[0])
        raise first
    return outcomes
