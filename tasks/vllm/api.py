"""vLLM's OpenAI-compatible HTTP API, the facts every client of the project needs: how a request
carries the API key, how the server says which model it serves, and which vLLM it is.

Facts from vLLM 0.10.1.1 (the version in ``nvcr.io/nvidia/vllm:25.09-py3``),
``vllm/entrypoints/openai/api_server.py``:

- lines 1245-1277, ``AuthenticationMiddleware``: with an API key (``--api-key`` or ``VLLM_API_KEY``,
  lines 1530-1532) every path under ``/v1`` wants the header ``Authorization: Bearer <key>`` exactly
  and answers 401 otherwise; ``/health`` and ``/metrics`` are not checked.
- lines 565-570, ``GET /v1/models``: the served models as ``{"data": [{"id": <served name>, ...}]}``
  (the served name is ``--served-model-name``, else the model).
- the routes the project asks, each registered in that file: ``GET /health`` (liveness), ``GET
  /metrics`` (Prometheus, mounted from ``prometheus_client``), ``POST /v1/completions`` and ``POST
  /v1/chat/completions``.
- line 573, ``GET /version``: ``{"version": <vLLM's __version__>}``, outside ``/v1`` so no key is asked; in
  every later version: api_server.py:574 (0.10.2), :487 (0.11.1),
  ``vllm/entrypoints/serve/instrumentator/basic.py:54`` (0.17.1, 0.20.1) and :53 (0.31.0), whose API-key
  middleware guards only ``/v1``, ``/v2``, ``/inference`` and ``/cohere``
  (``vllm/entrypoints/serve/middleware/authenticate.py:11``).
"""

from __future__ import annotations

from typing import Any

import httpx

from tasks.tls import default_tls

#: The model list: once it names the served model, requests for that name are accepted.
MODELS_PATH = "/v1/models"
#: Liveness: 200 while the API server and its engine live.
HEALTH_PATH = "/health"
#: Prometheus text of the engine's counters and gauges (tasks/vllm/metrics.py reads it).
METRICS_PATH = "/metrics"
#: OpenAI completions: a prompt in, text (or a token stream) out.
COMPLETIONS_PATH = "/v1/completions"
#: OpenAI chat completions: messages in, the chat template applied by the server.
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
#: The running server's vLLM version (``{"version": "0.10.1.1+381074ae.nv25.09"}``): confirms the version
#: learnt from the image before the start (tasks/vllm/versions.py `VersionInfo`).
VERSION_PATH = "/version"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers that authenticate a request to a server started with an API key.

    Without a key the server checks nothing, so no header is sent (an empty dict).
    """
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def vllm_client(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> httpx.Client:
    """An HTTP client for the vLLM server at ``base_url``: the API key's header (`auth_headers`) and the
    process's one TLS context (tasks/tls.py: httpx would load the CA bundle again for each client)."""
    return httpx.Client(verify=default_tls(), base_url=base_url, headers=auth_headers(api_key), timeout=timeout)


def lists_model(http: httpx.Client, served_name: str) -> bool:
    """True when ``GET /v1/models`` answers 200 and lists ``served_name``.

    The readiness gate and the health check both ask this: /health answers 200 as soon as the API
    server is up, while only the model list says the server serves the model clients will name.
    A transport error, another status or a body that is not the expected JSON is False (a fact
    for the caller, never an exception).

    Args:
        http: a client bound to the server's base URL, with `auth_headers` when it has a key.
        served_name: the name clients put in ``"model"``.
    """
    try:
        response = http.get(MODELS_PATH)
        if response.status_code != 200:
            return False
        return any(m.get("id") == served_name for m in response.json().get("data", []))
    except (httpx.HTTPError, ValueError):
        return False


def version_from_body(body: Any) -> str | None:
    """The version in the JSON body of ``GET /version`` (``{"version": "0.31.0"}``), as vLLM prints it
    (``tasks.vllm.versions.parse_vllm_version`` reads it); None for any other body, so a proxy's or an
    older server's answer is a fact for the caller, never an exception."""
    if not isinstance(body, dict):
        return None
    version = body.get("version")
    return (version.strip() or None) if isinstance(version, str) else None
