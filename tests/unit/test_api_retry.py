"""tasks/api_retry.py: a 503 (the server's SQLite lost a write race) is resent in a tenth of a second,
doubling, over real HTTP on loopback; any other answer is returned as it came."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tasks.api_retry import QUICK_TRIES, QuickRetryTransport, _tls


class _Busy(BaseHTTPRequestHandler):
    """Answers 503 to the first ``busy`` POSTs, then ``then``; records each body and when it came."""

    busy = 0
    then = 200
    seen: list[tuple[float, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((time.monotonic(), body))
        code = 503 if len(self.seen) <= self.busy else self.then
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Busy]]]:
    handler = type("Handler", (_Busy,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def _post(url: str) -> httpx.Response:
    with httpx.Client(transport=QuickRetryTransport(_tls(False, None))) as client:
        return client.post(f"{url}/api/v2/concurrency_limits/increment-with-lease", json={"slots": 1})


def test_a_busy_answer_is_resent_after_a_tenth_of_a_second_then_doubling(server) -> None:
    url, handler = server
    handler.busy = 2
    assert _post(url).status_code == 200
    times = [t for t, _ in handler.seen]
    assert [body for _, body in handler.seen] == [b'{"slots":1}'] * 3  # the same request each time
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 0.1 s then 0.2 s (a loaded machine may add to a sleep): far under the Prefect client's own 2 s
    assert 0.1 <= gaps[0] < 1.0 and 0.2 <= gaps[1] < 1.0, gaps


def test_after_the_quick_tries_the_503_goes_to_the_prefect_clients_own_back_off(server) -> None:
    url, handler = server
    handler.busy = 99
    assert _post(url).status_code == 503
    assert len(handler.seen) == QUICK_TRIES


@pytest.mark.parametrize("code", [404, 409, 423, 500])
def test_any_other_answer_is_returned_at_once(server, code: int) -> None:
    url, handler = server
    handler.then = code
    assert _post(url).status_code == code
    assert len(handler.seen) == 1


def test_the_tls_context_is_built_once_per_setting_as_prefects_client_builds_it() -> None:
    assert _tls(False, None) is _tls(False, None)
    insecure = _tls(True, None)
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert _tls(False, None).verify_mode == ssl.CERT_REQUIRED and _tls(False, None).check_hostname
