"""One TLS context per process for the HTTP clients the flows open, not one per client.

httpx builds a context for every client it opens and loads the CA bundle into it, about 40-50 ms each.
A health check opened 8-10 clients (Prefect's and the vLLM probes'), which was about a third of its own
time. A context is safe to share between clients and threads; verification is unchanged (the default
CA bundle, or what ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` name, as httpx's default reads them).
"""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["default_tls"]


@functools.cache
def default_tls() -> ssl.SSLContext:
    """httpx's default verifying context, built once."""
    return httpx.create_ssl_context()
