"""A loopback webhook receiver: what a Slack or a custom webhook would get, recorded for the tests.

A threaded HTTP server on 127.0.0.1 and a free port records every request (method, path, headers,
raw body, the body parsed as JSON when it is JSON, arrival time) and answers 200. Tests point the
notification block at ``webhook_receiver.url`` and wait for the message they expect:

    message = webhook_receiver.wait_for(lambda m: m["json"]["subject"] == "...", timeout_s=20)

The fixture ``webhook_receiver`` is exported to every integration test by tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sim.ports import free_port


class WebhookReceiver:
    """The running receiver: ``url`` to send to, ``messages`` received so far (oldest first)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, path: str = "/hook") -> None:
        self.messages: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._server = ThreadingHTTPServer((host, port or free_port(host)), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self.url = f"http://{host}:{self._server.server_address[1]}{path}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def record(self, message: dict[str, Any]) -> None:
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        """The first message (oldest first) for which ``predicate`` is true, waiting up to ``timeout_s``.

        Raises:
            AssertionError: none came in time; the message lists what did come.
        """
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [
                        (m["method"], m["path"], m["json"] if m["json"] is not None else m["body"])
                        for m in self.messages
                    ]
                    raise AssertionError(f"no matching webhook message within {timeout_s} s; received: {got}")
                self._arrived.wait(left)


def _handler_for(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            arrived = time.time()
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            receiver.record(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": raw,
                    "json": parsed,
                    "time": arrived,
                }
            )
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _record

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # the tests read `messages`; nothing on stderr

    return Handler


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A fresh receiver per test, stopped after it."""
    with WebhookReceiver() as receiver:
        yield receiver
