"""HTTP side of the Hub imitation: the Hub API, ``/resolve``, a separate-origin "CDN" and ``/_sim``.

Standard library only (``http.server``), one thread per connection, HTTP/1.1 keep-alive. File
bodies go out with ``socket.sendfile`` unless a fault shapes them (then ``pread`` + ``sendall``
with pacing), so an unthrottled loopback transfer runs at several hundred MB/s or more.

Behaviour follows what huggingface_hub 2.4 reads (see docs/imitations.md, "The Hub imitation (`sim.hub`)"):

* ``GET /api/models/{repo}[/revision/{rev}]`` model info (``blobs=true`` adds sizes, blob ids, LFS).
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` listing, paginated with ``Link: <...>; rel="next"``.
* ``POST /api/models/{repo}/paths-info/{rev}``, ``GET /api/models/{repo}/refs``, ``GET /api/whoami-v2``.
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: small files answered directly (ETag = git blob sha1);
  LFS files answered ``302`` to a signed URL on the CDN port, the 302 itself carrying
  ``X-Repo-Commit``, ``X-Linked-Etag`` (sha256) and ``X-Linked-Size`` as on the real Hub.
* Errors carry ``X-Error-Code`` / ``X-Error-Message`` so the client raises the real Hub's classes.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import mimetypes
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .faults import Effects, Faults, FaultSet
from .repo import (
    CREATED_AT,
    LAST_MODIFIED,
    QWEN3_32B_FP8_CONFIG,
    REAL_PARAMETERS,
    GeneratedRepo,
    RepoFileInfo,
    RepoSpec,
    ensure_repo,
)

SENDFILE_CHUNK = 8 * 1024 * 1024
COPY_CHUNK = 256 * 1024
COMMIT_TITLE = "Upload folder using huggingface_hub"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


# ---------------------------------------------------------------------------------------------
# Stats
# ---------------------------------------------------------------------------------------------
class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: collections.Counter[str] = collections.Counter()
            self.requests_by_file: dict[str, collections.Counter[str]] = {}
            self.bytes_served: collections.Counter[str] = collections.Counter()
            self.range_requests: collections.Counter[str] = collections.Counter()
            self.status: collections.Counter[str] = collections.Counter()
            self.faults_fired: collections.Counter[str] = collections.Counter()
            self.bytes_total = 0
            self.range_requests_total = 0
            self.connections_total = 0
            self.active_bodies = 0
            self.max_active_bodies = 0
            self.cut_connections = 0
            self.cdn_requests_with_authorization = 0

    def request(self, method: str, role: str, path: str) -> None:
        with self._lock:
            self.requests[f"{method} {'cdn:' if role == 'cdn' else ''}{path}"] += 1

    def file_request(self, key: str, method: str, ranged: bool) -> None:
        with self._lock:
            self.requests_by_file.setdefault(key, collections.Counter())[method] += 1
            if ranged:
                self.range_requests[key] += 1
                self.range_requests_total += 1

    def status_code(self, code: int) -> None:
        with self._lock:
            self.status[str(code)] += 1

    def fired(self, kinds: Iterable[str]) -> None:
        with self._lock:
            for k in kinds:
                self.faults_fired[k] += 1

    def sent(self, key: str, n: int) -> None:
        with self._lock:
            self.bytes_served[key] += n
            self.bytes_total += n

    def body_started(self) -> None:
        with self._lock:
            self.active_bodies += 1
            self.max_active_bodies = max(self.max_active_bodies, self.active_bodies)

    def body_ended(self) -> None:
        with self._lock:
            self.active_bodies -= 1

    def connection(self) -> None:
        with self._lock:
            self.connections_total += 1

    def cut(self) -> None:
        with self._lock:
            self.cut_connections += 1

    def cdn_authorization(self) -> None:
        with self._lock:
            self.cdn_requests_with_authorization += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "requests_by_file": {k: dict(v) for k, v in self.requests_by_file.items()},
                "bytes_served": dict(self.bytes_served),
                "bytes_total": self.bytes_total,
                "range_requests": dict(self.range_requests),
                "range_requests_total": self.range_requests_total,
                "status": dict(self.status),
                "faults_fired": dict(self.faults_fired),
                "connections_total": self.connections_total,
                "active_bodies": self.active_bodies,
                "max_active_bodies": self.max_active_bodies,
                "cut_connections": self.cut_connections,
                "cdn_requests_with_authorization": self.cdn_requests_with_authorization,
            }


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end_inclusive)``, ``"unsatisfiable"``, or None (absent/ignored/multi-range)."""
    if not header:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes="):
        return None
    spec = header[6:].strip()
    if "," in spec:
        return None  # multi-range: answered with the full body, as many servers do
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    first, last = first.strip(), last.strip()
    try:
        if first == "":
            if not last:
                return None
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return (max(0, size - n), size - 1) if size > 0 else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _content_disposition(filename: str) -> str:
    return f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{filename}\";"


def _mimetype(path: str) -> str:
    if path.endswith(".json"):
        return "application/json"
    if path.endswith((".md", ".txt")) or "." not in path.rsplit("/", 1)[-1] or path.endswith(".gitattributes"):
        return "text/plain; charset=utf-8"
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr, handler, hub: HubServer, role: str) -> None:
        self.hub = hub
        self.role = role
        super().__init__(addr, handler)


# ---------------------------------------------------------------------------------------------
# Request handler
# ---------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sim-hub/1"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version

    timeout = 120  # idle keep-alive connections and stalled peers are dropped after this
    server: _HTTPServer

    # -- plumbing ------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hub._track(self.connection, True)
        self.hub.stats_.connection()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.hub._track(self.connection, False)

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.hub.verbose:
            sys.stderr.write(f"[sim.hub {self.server.role}] {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        self.method = method
        url = urlsplit(self.path)
        self.url_path = url.path
        self.query = parse_qs(url.query, keep_blank_values=True)
        self.body = b""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.body = self.rfile.read(length)
        self.hub.stats_.request(method, self.server.role, self.url_path)
        try:
            if self.server.role == "cdn":
                self._cdn()
            elif self.url_path.startswith("/_sim/") or self.url_path == "/_sim":
                self._control()
            else:
                self._hub()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True

    # -- sending -------------------------------------------------------------------------------
    def _host(self) -> str:
        host = self.headers.get("Host")
        if host:
            return host
        h, p = self.server.server_address[:2]
        return f"{h}:{p}"

    def _send_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        # Counters are updated *before* bytes leave, so a client never sees an answer that the
        # stats do not show yet.
        self.hub.stats_.status_code(status)
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def _effects(self, candidates: list[str], body: bool = False, has_range: bool = False) -> Effects:
        eff = self.hub.faults_.evaluate(method=self.method, candidates=candidates, body=body, has_range=has_range)
        if eff.fired:
            self.hub.stats_.fired(eff.fired)
        if eff.first_byte_delay_s:
            time.sleep(eff.first_byte_delay_s)
        return eff

    def _send_fault_status(self, eff: Effects) -> None:
        assert eff.status is not None
        messages = {
            429: "You have been rate-limited; you can retry this action later.",
            500: "Internal Error - We're working hard to fix this as soon as possible!",
            502: "Bad Gateway",
            503: "Service Unavailable",
            504: "Gateway Timeout",
        }
        headers = [("X-Error-Message", messages[eff.status])]
        if eff.retry_after is not None:
            headers.append(("Retry-After", str(eff.retry_after)))
        self._send_json(eff.status, {"error": messages[eff.status]}, headers, apply_faults=False)

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]],
        *,
        candidates: list[str] | None = None,
        apply_faults: bool = True,
    ) -> None:
        if apply_faults:
            eff = self._effects(candidates or [self.url_path])
            if eff.status is not None:
                self._send_fault_status(eff)
                return
        headers = [*headers, ("Content-Length", str(len(body))), ("X-Request-Id", f"Root=1-{uuid.uuid4().hex[:24]}")]
        self._send_head(status, headers)
        if self.method != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(
        self,
        status: int,
        obj,
        headers: list[tuple[str, str]] | None = None,
        *,
        candidates: list[str] | None = None,
        apply_faults: bool = True,
    ) -> None:
        body = json.dumps(obj).encode()
        self._send_bytes(
            status,
            body,
            [("Content-Type", "application/json; charset=utf-8"), *(headers or [])],
            candidates=candidates,
            apply_faults=apply_faults,
        )

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: list[tuple[str, str]] | None = None,
        candidates: list[str] | None = None,
    ) -> None:
        extra = [("X-Error-Message", message)]
        if code is not None:
            extra.insert(0, ("X-Error-Code", code))
        self._send_json(status, {"error": message}, extra + (headers or []), candidates=candidates)

    def _send_file(
        self,
        repo: GeneratedRepo,
        info: RepoFileInfo,
        headers: list[tuple[str, str]],
        candidates: list[str],
    ) -> None:
        """A file body (or its HEAD) with Range support and the body-shaping faults."""
        key = f"{repo.spec.repo_id}/{info.path}"
        range_header = self.headers.get("Range")
        is_get = self.method == "GET"
        eff = self._effects(candidates, body=is_get, has_range=bool(range_header))
        if eff.status is not None:
            self._send_fault_status(eff)
            return
        size = info.size
        rng = None if eff.ignore_range else parse_range(range_header, size)
        self.hub.stats_.file_request(key, self.method, ranged=isinstance(rng, tuple))
        headers = [*headers, ("Accept-Ranges", "bytes"), ("X-Request-Id", f"Root=1-{uuid.uuid4().hex[:24]}")]
        if rng == "unsatisfiable":
            self._send_head(416, [*headers, ("Content-Range", f"bytes */{size}"), ("Content-Length", "0")])
            return
        if isinstance(rng, tuple):
            start, end = rng
            length = end - start + 1
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        else:
            start, length, status = 0, size, 200
        headers.append(("Content-Length", str(length)))
        self._send_head(status, headers)
        if not is_get or length == 0:
            return
        self._stream(repo.path_of(info.path), start, length, eff, key)

    def _stream(self, path: Path, start: int, length: int, eff: Effects, key: str) -> None:
        stats = self.hub.stats_
        sent = 0
        stats.body_started()
        try:
            with open(path, "rb") as f:
                if not eff.shapes_body:
                    while sent < length:
                        want = min(SENDFILE_CHUNK, length - sent)
                        stats.sent(key, want)  # counted first (see _send_head)
                        n = self.connection.sendfile(f, offset=start + sent, count=want)
                        if n < want:  # file shorter than announced: never leave the peer waiting
                            stats.sent(key, n - want)
                            self.close_connection = True
                            break
                        sent += n
                    return
                limit = length if eff.cut_after_bytes is None else min(length, eff.cut_after_bytes)
                if limit < length:
                    stats.cut()
                rate = eff.throttle_bytes_per_s
                chunk = COPY_CHUNK if not rate else int(max(1024, min(64 * 1024, rate / 20)))
                if eff.limiters:
                    chunk = min(chunk, int(max(1024, min(lim.rate / 20 for lim in eff.limiters))))
                fd = f.fileno()
                t0 = time.monotonic()
                while sent < limit:
                    n = min(chunk, limit - sent)
                    for limiter in eff.limiters:
                        limiter.take(n)
                    data = os.pread(fd, n, start + sent)
                    stats.sent(key, len(data))
                    self.connection.sendall(data)
                    sent += len(data)
                    if rate:
                        delay = t0 + sent / rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                if limit < length:
                    # The fault: the peer sees the connection close mid-body.
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        finally:
            stats.body_ended()

    # -- auth ----------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else auth.strip()

    def _auth_state(self) -> str:
        """'anonymous', 'valid' or 'invalid' for the request's bearer token."""
        tok = self._token()
        if tok is None:
            return "anonymous"
        tokens = self.hub.tokens
        if tokens is None or tok in tokens:
            return "valid"
        return "invalid"

    def _check_repo(self, repo_id: str, *, files: bool, candidates: list[str]) -> GeneratedRepo | None:
        """Answer the access error the real Hub would and return None, or return the repo."""
        state = self._auth_state()
        if state == "invalid":
            # Real Hub: 401, body {"error": "Invalid credentials in Authorization header"}, no
            # X-Error-Code; huggingface_hub then raises a plain HfHubHTTPError (401).
            self._send_json(
                401, {"error": INVALID_CREDENTIALS}, [("X-Error-Message", INVALID_CREDENTIALS)], candidates=candidates
            )
            return None
        repo = self.hub.repos.get(repo_id)
        anonymous = state == "anonymous"
        if repo is None:
            self._error(401 if anonymous else 404, "RepoNotFound", "Repository not found", candidates=candidates)
            return None
        spec = repo.spec
        if files and spec.gated and anonymous:
            self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in.",
                candidates=candidates,
            )
            return None
        if anonymous and (spec.private or self.hub.tokens is not None):
            self._error(401, "RepoNotFound", "Repository not found", candidates=candidates)
            return None
        if files and spec.gated and not self.hub._gate_open(repo_id, self._token()):
            self._error(
                403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                f"Visit https://huggingface.co/{repo_id} to ask for access.",
                candidates=candidates,
            )
            return None
        return repo

    def _revision(self, repo: GeneratedRepo, rev: str, candidates: list[str]) -> str | None:
        if rev in ("main", "refs/heads/main", repo.commit):
            return repo.commit
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", candidates=candidates)
        return None

    # -- Hub routes ----------------------------------------------------------------------------
    _API_KEYWORDS = {"revision", "tree", "paths-info", "refs", "commits", "resolve", "xet-read-token", "treesize"}

    def _split_repo(self, segs: list[str]) -> tuple[str, list[str]]:
        if len(segs) >= 2 and f"{segs[0]}/{segs[1]}" in self.hub.repos:
            return f"{segs[0]}/{segs[1]}", segs[2:]
        if len(segs) >= 2 and segs[1] not in self._API_KEYWORDS:
            return f"{segs[0]}/{segs[1]}", segs[2:]
        return (segs[0] if segs else ""), segs[1:]

    def _hub(self) -> None:
        raw = [s for s in self.url_path.split("/")[1:]]
        segs = [unquote(s) for s in raw]
        if segs[:2] == ["api", "whoami-v2"]:
            return self._whoami()
        if segs[:2] == ["api", "agent-harnesses"]:
            # Fetched by the `hf` CLI on start; an empty registry disables agent detection.
            return self._send_json(200, {"standardEnvVars": [], "harnesses": {}})
        if len(segs) >= 3 and segs[0] == "api" and segs[1] in ("models", "datasets", "spaces"):
            repo_id, tail = self._split_repo(segs[2:])
            if segs[1] != "models":
                repo_id = f"{segs[1]}/{repo_id}"  # never one of ours
            return self._api(repo_id, tail)
        prefix = segs[0] if segs and segs[0] in ("datasets", "spaces") else None
        body = segs[1:] if prefix else segs
        if len(body) >= 4 and "resolve" in body[1:3]:
            i = body.index("resolve", 1)
            repo_id = "/".join(body[:i])
            if prefix:
                repo_id = f"{prefix}/{repo_id}"
            if len(body) < i + 3:
                return self._error(404, "EntryNotFound", "Entry not found")
            return self._resolve(repo_id, body[i + 1], "/".join(body[i + 2 :]))
        self._error(404, None, "Sorry, we can't find the page you are looking for.")

    def _whoami(self) -> None:
        state = self._auth_state()
        if state != "valid" or self._token() is None:
            return self._send_json(401, {"error": INVALID_CREDENTIALS}, [("X-Error-Message", INVALID_CREDENTIALS)])
        self._send_json(
            200,
            {
                "type": "user",
                "id": "680f0c0ffee0000000000001",
                "name": "sim-user",
                "fullname": "Hub Imitation User",
                "isPro": False,
                "canPay": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "sim", "role": "read"}},
            },
        )

    def _api(self, repo_id: str, tail: list[str]) -> None:
        cands = [self.url_path]
        if not tail or tail[0] == "revision":
            if self.method not in ("GET", "HEAD"):
                return self._error(405, None, "Method not allowed", candidates=cands)
            repo = self._check_repo(repo_id, files=False, candidates=cands)
            if repo is None:
                return
            rev = "/".join(tail[1:]) if tail else "main"
            commit = self._revision(repo, rev, cands)
            if commit is None:
                return
            return self._send_json(200, self.hub._model_info(repo, self.query), candidates=cands)
        if tail[0] == "tree" and len(tail) >= 2:
            repo = self._check_repo(repo_id, files=False, candidates=cands)
            if repo is None or self._revision(repo, tail[1], cands) is None:
                return
            return self._tree(repo, "/".join(tail[2:]).strip("/"), cands)
        if tail[0] == "paths-info" and len(tail) >= 2 and self.method == "POST":
            repo = self._check_repo(repo_id, files=False, candidates=cands)
            if repo is None or self._revision(repo, tail[1], cands) is None:
                return
            return self._paths_info(repo, cands)
        if tail == ["refs"]:
            repo = self._check_repo(repo_id, files=False, candidates=cands)
            if repo is None:
                return
            refs = {
                "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.commit}],
                "converts": [],
                "tags": [],
            }
            if self.query.get("include_prs"):
                refs["pullRequests"] = []
            return self._send_json(200, refs, candidates=cands)
        repo = self._check_repo(repo_id, files=False, candidates=cands)
        if repo is None:
            return
        self._error(404, None, "Sorry, we can't find the page you are looking for.", candidates=cands)

    def _tree_entry(self, repo: GeneratedRepo, info: RepoFileInfo, expand: bool) -> dict:
        entry: dict = {"type": "file", "oid": info.blob_id, "size": info.size, "path": info.path}
        if info.lfs:
            entry["lfs"] = {"oid": info.sha256, "size": info.size, "pointerSize": info.pointer_size}
        if expand:
            entry["lastCommit"] = {"id": repo.commit, "title": COMMIT_TITLE, "date": LAST_MODIFIED}
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
        return entry

    @staticmethod
    def _truthy(values: list[str] | None) -> bool:
        return bool(values) and values[-1].lower() in ("1", "true", "yes")

    def _tree(self, repo: GeneratedRepo, path: str, cands: list[str]) -> None:
        if path:
            # The imitation's repos are flat: no folder exists below the root.
            return self._error(404, "EntryNotFound", f'{path} does not exist on "main"', candidates=cands)
        expand = self._truthy(self.query.get("expand"))
        page_size = self.hub.tree_page_size_expand if expand else self.hub.tree_page_size
        try:
            cursor = self.query.get("cursor")
            offset = int(base64.urlsafe_b64decode(cursor[-1].encode()).decode()) if cursor else 0
        except (ValueError, UnicodeDecodeError):
            return self._error(400, None, "Invalid cursor", candidates=cands)
        infos = list(repo.files.values())
        page = infos[offset : offset + page_size]
        headers = []
        if offset + page_size < len(infos):
            cursor = base64.urlsafe_b64encode(str(offset + page_size).encode()).decode()
            params = [f"{k}={quote(v[-1])}" for k, v in self.query.items() if k != "cursor"]
            params.append(f"cursor={quote(cursor)}")
            headers.append(("Link", f'<http://{self._host()}{self.url_path}?{"&".join(params)}>; rel="next"'))
        self._send_json(200, [self._tree_entry(repo, i, expand) for i in page], headers, candidates=cands)

    def _paths_info(self, repo: GeneratedRepo, cands: list[str]) -> None:
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            try:
                data = json.loads(self.body or b"{}")
            except ValueError:
                return self._error(400, None, "Invalid JSON body", candidates=cands)
            paths, expand = data.get("paths", []), bool(data.get("expand"))
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), self._truthy(form.get("expand"))
        out = [self._tree_entry(repo, repo.files[p], expand) for p in paths if p in repo.files]
        self._send_json(200, out, candidates=cands)

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        cands = [path, f"{repo_id}/{path}", self.url_path]
        repo = self._check_repo(repo_id, files=True, candidates=cands)
        if repo is None:
            return
        commit = self._revision(repo, rev, cands)
        if commit is None:
            return
        info = repo.files.get(path)
        if info is None:
            return self._error(404, "EntryNotFound", "Entry not found", [("X-Repo-Commit", commit)], candidates=cands)
        name = path.rsplit("/", 1)[-1]
        if info.lfs and self.hub.lfs_redirect:
            self.hub.stats_.file_request(f"{repo_id}/{path}", f"{self.method} 302", ranged=False)
            location = self.hub._cdn_location(self._host(), repo, info)
            body = f"Found. Redirecting to {location}".encode()
            headers = [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Location", location),
                ("X-Repo-Commit", commit),
                ("X-Linked-Size", str(info.size)),
                ("X-Linked-Etag", f'"{info.sha256}"'),
                ("ETag", f'W/"{len(body):x}-{hashlib.sha1(body).hexdigest()[:27]}"'),
                ("Accept-Ranges", "bytes"),
                ("Vary", "Origin, Accept-Encoding"),
            ]
            return self._send_bytes(302, body, headers, candidates=cands)
        headers = [
            ("Content-Type", _mimetype(path)),
            ("ETag", f'"{info.etag}"'),
            ("X-Repo-Commit", commit),
            ("Content-Disposition", _content_disposition(name)),
            ("Vary", "Origin, Accept-Encoding"),
        ]
        if info.lfs:  # lfs_redirect disabled: served inline, like a mirror
            headers += [("X-Linked-Size", str(info.size)), ("X-Linked-Etag", f'"{info.sha256}"')]
        self._send_file(repo, info, headers, cands)

    # -- CDN -----------------------------------------------------------------------------------
    def _cdn_error(self, status: int, code: str, message: str, candidates: list[str]) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
        ).encode()
        self._send_bytes(status, body, [("Content-Type", "application/xml")], candidates=candidates)

    def _cdn(self) -> None:
        segs = [unquote(s) for s in self.url_path.split("/")[1:]]
        if self.headers.get("Authorization"):
            self.hub.stats_.cdn_authorization()
        if self.method not in ("GET", "HEAD") or len(segs) != 4 or segs[0] != "repos":
            return self._cdn_error(404, "NoSuchKey", "The specified key does not exist.", [self.url_path])
        repo_id, sha = f"{segs[1]}/{segs[2]}", segs[3]
        repo = self.hub.repos.get(repo_id)
        info = repo.by_sha256(sha) if repo else None
        cands = [info.path, f"{repo_id}/{info.path}", self.url_path] if info else [self.url_path]
        expires = (self.query.get("Expires") or [""])[-1]
        signature = (self.query.get("Signature") or [""])[-1]
        if not hmac.compare_digest(signature, self.hub._sign(self.url_path, expires)):
            return self._cdn_error(403, "AccessDenied", "Invalid signature", cands)
        if not expires.isdigit() or int(expires) < time.time():
            return self._cdn_error(403, "AccessDenied", "Request has expired", cands)
        if repo is None or info is None:
            return self._cdn_error(404, "NoSuchKey", "The specified key does not exist.", cands)
        disposition = (self.query.get("response-content-disposition") or [_content_disposition(info.path)])[-1]
        headers = [
            ("Content-Type", "binary/octet-stream"),
            ("ETag", f'"{info.sha256}"'),
            ("Last-Modified", "Mon, 28 Apr 2025 10:40:00 GMT"),
            ("Content-Disposition", disposition),
            ("Cache-Control", "public, max-age=604800, immutable, s-maxage=604800"),
            ("X-Cache", "Hit from cloudfront"),
        ]
        self._send_file(repo, info, headers, cands)

    # -- control -------------------------------------------------------------------------------
    def _control(self) -> None:
        hub = self.hub
        route = (self.method, self.url_path.rstrip("/"))
        try:
            if route == ("GET", "/_sim/health"):
                return self._send_json(200, {"ok": True}, apply_faults=False)
            if route == ("GET", "/_sim/stats"):
                return self._send_json(200, hub.stats(), apply_faults=False)
            if route == ("DELETE", "/_sim/stats"):
                hub.reset_stats()
                return self._send_json(200, hub.stats(), apply_faults=False)
            if route == ("GET", "/_sim/faults"):
                return self._send_json(200, hub.faults_.describe(), apply_faults=False)
            if route == ("POST", "/_sim/faults"):
                data = json.loads(self.body or b"null")
                items = [] if data is None else (data if isinstance(data, list) else [data])
                hub.set_faults([Faults.from_dict(d) for d in items], append=self._truthy(self.query.get("append")))
                return self._send_json(200, hub.faults_.describe(), apply_faults=False)
            if route == ("DELETE", "/_sim/faults"):
                hub.clear_faults()
                return self._send_json(200, [], apply_faults=False)
            if route == ("POST", "/_sim/gate"):
                data = json.loads(self.body or b"{}")
                if data.get("accepted", True):
                    hub.accept_gate(data["repo_id"], data.get("token"))
                else:
                    hub.revoke_gate(data["repo_id"], data.get("token"))
                return self._send_json(200, {"ok": True}, apply_faults=False)
            if route == ("GET", "/_sim/repos"):
                return self._send_json(200, hub.describe_repos(), apply_faults=False)
        except (ValueError, KeyError, TypeError) as e:
            return self._send_json(400, {"error": f"{type(e).__name__}: {e}"}, apply_faults=False)
        self._send_json(404, {"error": f"no control route {self.method} {self.url_path}"}, apply_faults=False)


# ---------------------------------------------------------------------------------------------
# Public object
# ---------------------------------------------------------------------------------------------
class HubServer:
    """A local imitation of the Hugging Face Hub serving generated repos over real HTTP.

    ``token=None``: public repos need no auth and any bearer token is accepted. With ``token``
    (a string or several): a request without it is treated as anonymous, a wrong one gets the
    real Hub's 401 "Invalid credentials in Authorization header", and every repo behaves as
    private for anonymous callers (401 + ``X-Error-Code: RepoNotFound``).

    LFS files (``*.safetensors``, ``tokenizer.json``) are answered with a 302 to a signed URL on
    a second port (the "CDN", a different origin, so HEAD does not follow it and the client drops
    its Authorization header there), unless ``lfs_redirect=False``.
    """

    def __init__(
        self,
        repos: Iterable[RepoSpec] = (RepoSpec(),),
        data_dir: Path | str | None = None,
        token: str | Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cdn_port: int = 0,
        lfs_redirect: bool = True,
        tree_page_size: int = 1000,
        tree_page_size_expand: int = 50,
        cdn_url_ttl_s: int = 3600,
        cdn_secret: bytes | None = None,
        faults: Faults | list[Faults] | None = None,
        verbose: bool = False,
    ) -> None:
        self.specs = list(repos)
        ids = [s.repo_id for s in self.specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate repo ids: {ids}")
        # Default: a shared folder under the system temp dir, so repeated starts reuse the repos.
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.gettempdir()) / "sim-hub"
        if token is None:
            self.tokens: frozenset[str] | None = None
        elif isinstance(token, str):
            self.tokens = frozenset([token])
        else:
            self.tokens = frozenset(token)
        self.host = host
        self.port = port
        self.cdn_port = cdn_port
        self.lfs_redirect = lfs_redirect
        self.tree_page_size = max(1, int(tree_page_size))
        self.tree_page_size_expand = max(1, int(tree_page_size_expand))
        self.cdn_url_ttl_s = cdn_url_ttl_s
        self._secret = cdn_secret or os.urandom(32)
        self.verbose = verbose
        self.repos: dict[str, GeneratedRepo] = {}
        self.stats_ = Stats()
        self.faults_ = FaultSet()
        if faults is not None:
            self.faults_.set(faults)
        self._gates: dict[str, set[str | None]] = {}
        self._gate_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._servers: list[_HTTPServer] = []
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Generate (or load from ``data_dir``) every repo. ``start`` calls it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            if spec.repo_id not in self.repos:
                self.repos[spec.repo_id] = ensure_repo(self.data_dir, spec)

    def start(self) -> HubServer:
        if self._servers:
            return self
        self.prepare()
        hub = _HTTPServer((self.host, self.port), _Handler, self, "hub")
        cdn = _HTTPServer((self.host, self.cdn_port), _Handler, self, "cdn")
        self._servers = [hub, cdn]
        self.port = hub.server_address[1]
        self.cdn_port = cdn.server_address[1]
        for srv in self._servers:
            t = threading.Thread(
                target=srv.serve_forever, kwargs={"poll_interval": 0.2}, name=f"sim-hub-{srv.role}", daemon=True
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # -- addresses -----------------------------------------------------------------------------
    @property
    def _display_host(self) -> str:
        return "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host

    @property
    def url(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``."""
        return f"http://{self._display_host}:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"http://{self._display_host}:{self.cdn_port}"

    # -- repos ---------------------------------------------------------------------------------
    def repo(self, repo_id: str) -> GeneratedRepo:
        if repo_id not in self.repos:
            self.prepare()
        return self.repos[repo_id]

    def commit(self, repo_id: str) -> str:
        """40-hex sha of ``main``."""
        return self.repo(repo_id).commit

    def files(self, repo_id: str) -> list[tuple[str, int, str, bool]]:
        """``(path, size, etag, is_lfs)``: etag is the sha256 for LFS files, the git blob sha1 otherwise."""
        return [(i.path, i.size, i.etag, i.lfs) for i in self.repo(repo_id).files.values()]

    def local_path(self, repo_id: str, path: str) -> Path:
        """Where the served bytes of a file live on disk (handy for byte-exact assertions)."""
        return self.repo(repo_id).path_of(path)

    def describe_repos(self) -> list[dict]:
        out = []
        for r in self.repos.values():
            out.append(
                {
                    "repo_id": r.spec.repo_id,
                    "commit": r.commit,
                    "gated": r.spec.gated,
                    "private": r.spec.private,
                    "total_size": r.spec.index_total_size,
                    "files": [
                        {"path": i.path, "size": i.size, "etag": i.etag, "sha256": i.sha256, "lfs": i.lfs}
                        for i in r.files.values()
                    ],
                }
            )
        return out

    # -- gates ---------------------------------------------------------------------------------
    def accept_gate(self, repo_id: str, token: str | None = None) -> None:
        """Mark the gated repo's conditions accepted for ``token`` (None: for every token)."""
        with self._gate_lock:
            self._gates.setdefault(repo_id, set()).add(token)

    def revoke_gate(self, repo_id: str, token: str | None = None) -> None:
        with self._gate_lock:
            if token is None:
                self._gates.pop(repo_id, None)
            else:
                self._gates.get(repo_id, set()).discard(token)

    def _gate_open(self, repo_id: str, token: str | None) -> bool:
        with self._gate_lock:
            accepted = self._gates.get(repo_id, set())
            return None in accepted or (token is not None and token in accepted)

    # -- faults and stats ----------------------------------------------------------------------
    def set_faults(self, faults: Faults | list[Faults] | None, append: bool = False) -> None:
        self.faults_.set(faults, append=append)

    def clear_faults(self) -> None:
        self.faults_.clear()

    def faults(self) -> list[dict]:
        return self.faults_.describe()

    def stats(self) -> dict:
        return self.stats_.snapshot()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no file body is being sent (True), or until ``timeout`` (False)."""
        deadline = time.monotonic() + timeout
        while self.stats_.snapshot()["active_bodies"] > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def reset_stats(self) -> None:
        self.stats_.reset()

    # -- internals used by the handler ---------------------------------------------------------
    def _sign(self, path: str, expires: str) -> str:
        return hmac.new(self._secret, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()

    def _cdn_location(self, host_header: str, repo: GeneratedRepo, info: RepoFileInfo) -> str:
        hostname = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        path = f"/repos/{repo.spec.repo_id}/{info.sha256}"
        expires = str(int(time.time()) + self.cdn_url_ttl_s)
        name = info.path.rsplit("/", 1)[-1]
        disposition = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
        return (
            f"http://{hostname}:{self.cdn_port}{path}?response-content-disposition={quote(disposition, safe='')}"
            f"&Expires={expires}&Signature={self._sign(path, expires)}&Key-Pair-Id=SIMHUB"
        )

    def _model_info(self, repo: GeneratedRepo, query: dict[str, list[str]]) -> dict:
        spec = repo.spec
        blobs = bool(query.get("blobs")) and query["blobs"][-1].lower() in ("1", "true")
        siblings = []
        for i in repo.files.values():
            s: dict = {"rfilename": i.path}
            if blobs:
                s["size"] = i.size
                s["blobId"] = i.blob_id
                if i.lfs:
                    s["lfs"] = {"size": i.size, "sha256": i.sha256, "pointerSize": i.pointer_size}
            siblings.append(s)
        ns = spec.repo_id.split("/")[0]
        info = {
            "_id": hashlib.sha1(spec.repo_id.encode()).hexdigest()[:24],
            "id": spec.repo_id,
            "modelId": spec.repo_id,
            "author": ns,
            "sha": repo.commit,
            "lastModified": LAST_MODIFIED,
            "createdAt": CREATED_AT,
            "private": spec.private,
            "gated": "manual" if spec.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "transformers",
            "tags": [
                "transformers",
                "safetensors",
                "qwen3",
                "text-generation",
                "conversational",
                "base_model:Qwen/Qwen3-32B",
                "base_model:quantized:Qwen/Qwen3-32B",
                "license:apache-2.0",
                "autotrain_compatible",
                "text-generation-inference",
                "endpoints_compatible",
                "fp8",
                "region:us",
            ],
            "pipeline_tag": "text-generation",
            "cardData": {
                "library_name": "transformers",
                "license": "apache-2.0",
                "license_link": f"https://huggingface.co/{spec.repo_id}/blob/main/LICENSE",
                "pipeline_tag": "text-generation",
                "base_model": ["Qwen/Qwen3-32B"],
            },
            "config": {
                "architectures": QWEN3_32B_FP8_CONFIG["architectures"],
                "model_type": QWEN3_32B_FP8_CONFIG["model_type"],
                "quantization_config": {"quant_method": "fp8"},
                "tokenizer_config": {
                    "bos_token": None,
                    "eos_token": "<|im_end|>",
                    "pad_token": "<|endoftext|>",
                    "unk_token": None,
                },
            },
            "transformersInfo": {
                "auto_model": "AutoModelForCausalLM",
                "pipeline_tag": "text-generation",
                "processor": "AutoTokenizer",
            },
            "siblings": siblings,
            "spaces": [],
            "safetensors": {"parameters": dict(REAL_PARAMETERS), "total": sum(REAL_PARAMETERS.values())},
            "usedStorage": sum(i.size for i in repo.files.values()),
        }
        expand = query.get("expand")
        if expand:
            wanted = {e for v in expand for e in v.split(",")}
            info = {k: v for k, v in info.items() if k in wanted or k in ("_id", "id")}
        return info
