"""HTTP transport: vLLM's routes over a threading HTTP/1.1 server.

Why ThreadingHTTPServer: standard library only, one thread per connection is
plenty for 64+ concurrent streaming clients, and keep-alive plus chunked SSE
make the official `openai` client (httpx) work unchanged.  The socket is bound
early (a port conflict fails at startup like uvicorn's) but `listen()` is only
called when the server is ready, so clients get "connection refused" while the
model loads, as with the real server.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .api import ApiError, ParsedRequest, Protocol, parse_json
from .engine import Engine, Event, GenRequest, Pressure
from .logs import VllmLog
from .metrics import CONTENT_TYPE, VllmMetrics

ROUTES: list[tuple[str, str]] = [
    ("/openapi.json", "GET, HEAD"),
    ("/docs", "GET, HEAD"),
    ("/docs/oauth2-redirect", "GET, HEAD"),
    ("/redoc", "GET, HEAD"),
    ("/health", "GET"),
    ("/load", "GET"),
    ("/ping", "POST"),
    ("/ping", "GET"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
    ("/v1/models", "GET"),
    ("/version", "GET"),
    ("/v1/responses", "POST"),
    ("/v1/responses/{response_id}", "GET"),
    ("/v1/responses/{response_id}/cancel", "POST"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/embeddings", "POST"),
    ("/pooling", "POST"),
    ("/classify", "POST"),
    ("/score", "POST"),
    ("/v1/score", "POST"),
    ("/v1/audio/transcriptions", "POST"),
    ("/v1/audio/translations", "POST"),
    ("/rerank", "POST"),
    ("/v1/rerank", "POST"),
    ("/v2/rerank", "POST"),
    ("/scale_elastic_ep", "POST"),
    ("/is_scaling_elastic_ep", "POST"),
    ("/invocations", "POST"),
    ("/metrics", "GET"),
]
_EVENT_POLL_S = 0.5
#: The imitation's own admin route (not vLLM's): the outside load (engine.Pressure), read and set at run time.
PRESSURE_PATH = "/_sim/pressure"


@dataclass
class ServerState:
    """Everything a request handler needs; shared by all handler threads."""

    protocol: Protocol
    engine: Engine
    metrics: VllmMetrics
    log: VllmLog
    api_key: str | None
    frontend_delay_s: float
    access_log: bool = True
    version: str = "0.10.1.1+381074ae.nv25.09"  # GET /version: vllm.__version__ (api_server.py:573-576 in 0.10.1.1)
    dead_health: int = 500  # GET /health once the engine died (versions.py)
    dead: bool = False
    hung: bool = False
    stopping: threading.Event = field(default_factory=threading.Event)


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], state: ServerState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler, bind_and_activate=False)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-stream is normal traffic, not a server error


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SimHTTPServer

    # --- plumbing ------------------------------------------------------------
    def version_string(self) -> str:
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    @property
    def state(self) -> ServerState:
        return self.server.state

    def _access(self, status: int) -> None:
        if self.state.access_log:
            host, port = self.client_address[0], self.client_address[1]
            phrase = HTTPStatus(status).phrase
            self.state.log.uvicorn(f'{host}:{port} - "{self.command} {self.path} HTTP/1.1" {status} {phrase}')

    def _send(self, status: int, body: bytes, content_type: str | None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._access(status)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(), "application/json")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _authorized(self, path: str) -> bool:
        key = self.state.api_key
        if not key or not path.startswith("/v1"):
            return True
        return self.headers.get("authorization") == f"Bearer {key}"

    def _block_forever(self) -> None:
        """Hang fault: the connection stays open and nothing is ever answered."""
        self.close_connection = True
        while not self.state.stopping.wait(3600):
            pass

    # --- routing -------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if self.state.hung:
            self._block_forever()
            return
        if not self._authorized(path):
            self._json(401, {"error": "Unauthorized"})
            return
        routes = {
            ("GET", "/health"): self._health,
            ("GET", "/v1/models"): lambda: self._json(200, self.state.protocol.models_body()),
            ("GET", "/version"): lambda: self._json(200, {"version": self.state.version}),
            ("GET", "/metrics"): lambda: self._send(200, self.state.metrics.render().encode(), CONTENT_TYPE),
            ("POST", "/v1/chat/completions"): lambda: self._generate("chat", body),
            ("POST", "/v1/completions"): lambda: self._generate("completion", body),
            ("GET", PRESSURE_PATH): self._pressure_now,
            ("POST", PRESSURE_PATH): lambda: self._set_pressure(body),
            ("DELETE", PRESSURE_PATH): lambda: self._set_pressure(b"{}"),
        }
        handler = routes.get(("GET" if method == "HEAD" else method, path))
        if handler is not None:
            handler()
        elif any(path == p for p, _ in ROUTES):
            self._json(405, {"detail": "Method Not Allowed"})
        else:
            self._json(404, {"detail": "Not Found"})

    def _pressure_now(self) -> None:
        self._json(200, dataclasses.asdict(self.state.engine.pressure))

    def _set_pressure(self, raw: bytes) -> None:
        """POST: the fields given replace the current ones, the rest are 0 (DELETE: all 0)."""
        try:
            fields = json.loads(raw or b"{}")
            self.state.engine.set_pressure(Pressure(**{k: float(v) for k, v in fields.items()}))
        except (ValueError, TypeError) as exc:
            names = ", ".join(f.name for f in dataclasses.fields(Pressure))
            self._json(400, {"detail": f"{exc}; the fields are {names}"})
            return
        self._pressure_now()

    def _health(self) -> None:
        if self.state.dead and self.state.dead_health == 503:
            self._send(503, b"", None)  # Response(status_code=503): no body
        elif self.state.dead:
            self._send(500, b"Internal Server Error", "text/plain; charset=utf-8")
        else:
            self._send(200, b"", None)

    # --- generation ----------------------------------------------------------
    def _generate(self, kind: str, raw: bytes) -> None:
        arrival = time.monotonic()
        proto = self.state.protocol
        try:
            body = parse_json(raw)
            parsed = proto.parse_chat(body) if kind == "chat" else proto.parse_completion(body)
        except ApiError as err:
            self._json(err.status, err.body())
            return
        if self.state.frontend_delay_s > 0:
            time.sleep(self.state.frontend_delay_s)
        events: queue.Queue[Event] = queue.Queue()
        rid = Protocol.new_id(kind)
        reqs = [
            GenRequest(
                f"{rid}-{i}", p.prompt_pieces, p.output_pieces, p.finish_reason, index=i, arrival=arrival, events=events
            )
            for i, p in enumerate(parsed.plans)
        ]
        for req in reqs:
            self.state.engine.submit(req)
        try:
            if parsed.stream:
                self._stream(parsed, rid, reqs, events)
            else:
                self._complete(parsed, rid, reqs, events)
        except (BrokenPipeError, ConnectionResetError, OSError):
            for req in reqs:
                self.state.engine.abort(req)
            self.close_connection = True

    def _next_event(self, events: queue.Queue[Event]) -> Event:
        while True:
            try:
                return events.get(timeout=_EVENT_POLL_S)
            except queue.Empty:
                if self.state.stopping.is_set():
                    raise ConnectionResetError("server shutting down") from None

    def _engine_dead(self, message: str) -> ApiError:
        return ApiError(500, message, "InternalServerError")

    def _complete(self, parsed: ParsedRequest, rid: str, reqs: list[GenRequest], events: queue.Queue[Event]) -> None:
        texts: dict[int, list[str]] = {r.index: [] for r in reqs}
        finish: dict[int, str] = {}
        while len(finish) < len(reqs):
            index, text, reason = self._next_event(events)
            if reason == "error":
                err = self._engine_dead(text)
                self._json(err.status, err.body())
                return
            texts[index].append(text)
            if reason is not None:
                finish[index] = reason
        choices = [
            {
                "index": r.index,
                "text": "".join(texts[r.index]),
                "finish_reason": finish[r.index],
                "stop_reason": parsed.plans[r.index].stop_reason,
            }
            for r in reqs
        ]
        usage = Protocol.usage(sum(r.prompt_len for r in reqs), sum(len(texts[r.index]) for r in reqs))
        build = self.state.protocol.chat_body if parsed.kind == "chat" else self.state.protocol.completion_body
        self._json(200, build(rid, parsed.model, choices, usage))

    def _write_chunk(self, data: str) -> None:
        payload = data.encode("utf-8")
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def _sse(self, obj: Any) -> None:
        self._write_chunk("data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n")

    def _stream(self, parsed: ParsedRequest, rid: str, reqs: list[GenRequest], events: queue.Queue[Event]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self._access(200)
        created = int(time.time())
        counts = {r.index: 0 for r in reqs}
        done = 0
        while done < len(reqs):
            index, text, reason = self._next_event(events)
            if reason == "error":
                self._sse(self._engine_dead(text).body())
                break
            if parsed.kind == "chat" and counts[index] == 0:
                self._sse(Protocol.chat_chunk(rid, created, parsed.model, index, {"role": "assistant", "content": ""}))
            counts[index] += 1
            stop_reason = parsed.plans[index].stop_reason if reason else None
            if parsed.kind == "chat":
                self._sse(
                    Protocol.chat_chunk(rid, created, parsed.model, index, {"content": text}, reason, stop_reason)
                )
            else:
                self._sse(Protocol.completion_chunk(rid, created, parsed.model, index, text, reason, stop_reason))
            done += 1 if reason is not None else 0
        if parsed.include_usage:
            usage = Protocol.usage(sum(r.prompt_len for r in reqs), sum(counts.values()), details=False)
            self._sse(Protocol.usage_chunk(parsed.kind, rid, created, parsed.model, usage))
        self._write_chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
