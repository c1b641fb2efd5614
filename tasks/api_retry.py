"""A Prefect client whose requests retry a busy SQLite server in milliseconds, not in seconds.

Prefect's server on SQLite (the demo's, the tests', a single-machine install) answers 503 "retry" when
a write that read first loses to one of the server's own background writers (the task-run recorder,
the event persister): SQLite refuses to upgrade a read snapshot that another commit made stale, at once
and without its busy timeout. Prefect's client then sleeps ``2**n`` s (2, 4, 8 s; even with
``PREFECT_CLIENT_MAX_RETRIES=0`` it sleeps 2 s before giving up: client/base.py ``_send_with_retry``).
That made a deploy wait 2 s each time its GPU slot or a state Variable lost the race, about 50 times in
one run of the integration suite. Such a race clears in milliseconds, so the writes a flow makes on its
critical path (the GPU and incident slots, the state Variables) go through `prefect_client`, whose
transport resends a 503 after 0.1, 0.2, 0.4 and 0.8 s; only then does the client's own back-off take
over (a server that is really overloaded). A 503 rolls the request's transaction back, so a resent
write is never applied twice. The transport is httpx's public extension point, passed through
``get_client(httpx_settings=...)``, which Prefect leaves as given.

The client's TLS context is built once per process and settings (`_tls`), as Prefect builds it
(``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``, ``PREFECT_API_SSL_CERT_FILE``, else the default CA bundle):
Prefect builds one for every client it opens (tasks/tls.py says what that costs).
"""

from __future__ import annotations

import functools
import ssl
import time

import httpx
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

from tasks.tls import default_tls

__all__ = ["QUICK_TRIES", "QuickRetryTransport", "prefect_client"]

#: Tries at 0.1, 0.2, 0.4, 0.8 s apart (1.5 s in all) before the client's own retries take over.
QUICK_TRIES = 5
_FIRST_WAIT_S = 0.1
_BUSY = 503
#: Connection retries, as Prefect's own transport has them.
_CONNECT_RETRIES = 3


class QuickRetryTransport(httpx.HTTPTransport):
    """httpx's transport, resending a request the server answered 503 after 0.1, 0.2, 0.4, 0.8 s."""

    def __init__(self, verify: ssl.SSLContext) -> None:
        super().__init__(verify=verify, retries=_CONNECT_RETRIES)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        wait = _FIRST_WAIT_S
        for _ in range(QUICK_TRIES - 1):
            response = super().handle_request(request)
            if response.status_code != _BUSY:
                return response
            response.close()
            time.sleep(wait)
            wait *= 2
        return super().handle_request(request)


def prefect_client() -> SyncPrefectClient:
    """A sync Prefect client (to be used as a context manager) whose requests retry a 503 at once."""
    tls = _tls(bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value()), PREFECT_API_SSL_CERT_FILE.value())
    return get_client(httpx_settings={"verify": tls, "transport": QuickRetryTransport(tls)}, sync_client=True)


@functools.cache
def _tls(insecure: bool, cert_file: str | None) -> ssl.SSLContext:
    """The TLS context of Prefect's own client for these settings, built once."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cert_file) if cert_file else default_tls()
