"""The health check's smoke question, streamed, and when to stop waiting for its answer.

A wedged engine (vllm issue 39863) answers /health, /v1/models and /metrics with 200 but never a token,
so a check that waits for the whole answer waits its whole budget (`Thresholds.answer_budget_s`, 60 s)
before it can say so. Streamed, the question shows its first token as soon as the engine makes it: a
decode step is well under a second and the 12*17 prompt's prefill milliseconds. When no token has come
for `Thresholds.first_token_stall_s`, /metrics says which of the two it is: a busy engine keeps
generating tokens for its other requests (``vllm:generation_tokens_total`` moves), a stalled one does not,
while the check's own request is in flight. vLLM's API server serves /metrics from its own process
(vllm/entrypoints/openai/api_server.py:360-382 in 0.10.1.1, prometheus_client's ASGI app) and sets the
engine's counters and gauges only from the engine core's step outputs (vllm/v1/engine/async_llm.py:385-428,
vllm/v1/metrics/loggers.py:490-510): an engine stuck in a step leaves them frozen while /metrics answers.

The question and its check are `tasks.inference`'s (`completion_request`, `visible_answer`,
`contains_expected`); the answer is the concatenation of the stream's ``choices[0].text``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from httpx_sse import connect_sse

from tasks.inference import completion_request, contains_expected, visible_answer
from tasks.vllm.api import COMPLETIONS_PATH
from tasks.vllm.metrics import MetricsSnapshot

__all__ = ["StreamedAnswer", "ask_streamed", "engine_stalled"]

#: What the reader thread hands the waiting check: ("piece", text), ("done", None) or ("error", words).
_Item = tuple[str, str | None]


@dataclass(frozen=True)
class StreamedAnswer:
    """The smoke question's outcome.

    Attributes:
        ok: answered, and the answer holds the expected number.
        answer: the visible answer (None: no token came).
        latency_s: from the question to the end of its answer (None: not answered).
        stalled_s: how long the question waited without a token when /metrics showed the engine standing
            still (`engine_stalled`); None: not judged stalled.
        error: what went wrong, in words (None: answered).
        metrics: the last /metrics read while waiting (the stall's evidence), if any.
    """

    ok: bool
    answer: str | None = None
    latency_s: float | None = None
    stalled_s: float | None = None
    error: str | None = None
    metrics: MetricsSnapshot | None = None


def engine_stalled(
    before: MetricsSnapshot | None, now: MetricsSnapshot | None, waited_s: float, limit_s: float
) -> bool:
    """True when a request of ours waited ``limit_s`` or more for its first token and
    ``vllm:generation_tokens_total`` did not move between the two reads: the engine generates for no one.

    Our own request is in flight, so an idle server is judged too; a busy one generates for its other
    requests and is not stalled, however long our first token takes. A server that does not export the
    counter is never judged stalled (its answer budget still is).
    """
    if waited_s < limit_s or before is None or now is None:
        return False
    if before.generation_tokens_total is None or now.generation_tokens_total is None:
        return False
    return now.generation_tokens_total == before.generation_tokens_total


def ask_streamed(
    http: httpx.Client,
    served_name: str,
    *,
    budget_s: float,
    stall_s: float,
    before: MetricsSnapshot | None,
    read_metrics: Callable[[], MetricsSnapshot | None],
) -> StreamedAnswer:
    """Ask the smoke question streamed; wait for its first token in rounds of ``stall_s`` (the last one cut
    at ``budget_s``), reading /metrics after each round without one, and stop at the first round in which
    the engine stood still (`engine_stalled` against ``before``, then against the previous round's read).

    Args:
        http: the check's client (base URL and API key set).
        served_name: the model name the server serves.
        budget_s: the whole answer's budget (`Thresholds.answer_budget_s`).
        stall_s: how long without a first token before /metrics is asked (`Thresholds.first_token_stall_s`).
        before: /metrics read just before the question.
        read_metrics: reads /metrics now (None: no answer or not Prometheus text).
    """
    items: queue.Queue[_Item] = queue.Queue()
    started = time.perf_counter()
    threading.Thread(target=_read_stream, args=(http, served_name, budget_s, items), daemon=True).start()
    pieces: list[str] = []
    reference, last = before, None
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= budget_s:
            return _unanswered(pieces, f"no complete answer within the budget of {budget_s:g} s", last)
        round_end = budget_s if pieces else min(budget_s, (elapsed // stall_s + 1) * stall_s)
        try:
            kind, value = items.get(timeout=max(0.0, round_end - elapsed))
        except queue.Empty:
            if pieces:
                continue
            waited = time.perf_counter() - started
            last = read_metrics()
            if engine_stalled(reference, last, waited, min(stall_s, budget_s)):
                return StreamedAnswer(
                    ok=False, stalled_s=round(waited, 3), error=f"no token for {waited:.1f} s", metrics=last
                )
            reference = last or reference
            continue
        if kind == "piece":
            pieces.append(value or "")
        elif kind == "error":
            return _unanswered(pieces, value or "the stream broke", last)
        else:
            text = visible_answer("".join(pieces))
            latency = round(time.perf_counter() - started, 4)
            return StreamedAnswer(ok=contains_expected(text), answer=text[:80], latency_s=latency, metrics=last)


def _unanswered(pieces: list[str], error: str, last: MetricsSnapshot | None) -> StreamedAnswer:
    answer = visible_answer("".join(pieces))[:80] if pieces else None
    return StreamedAnswer(ok=False, answer=answer, error=error, metrics=last)


def _read_stream(http: httpx.Client, served_name: str, budget_s: float, items: queue.Queue[_Item]) -> None:
    """The reader thread: each chunk's ``choices[0].text`` as it comes, then done (or the error)."""
    try:
        body = completion_request(served_name, stream=True)
        with connect_sse(http, "POST", COMPLETIONS_PATH, json=body, timeout=budget_s) as source:
            if source.response.status_code != 200:
                items.put(("error", f"HTTP {source.response.status_code}: {source.response.read()[:200]!r}"))
                return
            for event in source.iter_sse():
                if event.data.strip() == "[DONE]":
                    break
                chunk = json.loads(event.data)
                if "error" in chunk or chunk.get("object") == "error":
                    items.put(("error", f"the server answered an error: {event.data[:200]}"))
                    return
                if chunk.get("choices"):
                    items.put(("piece", chunk["choices"][0].get("text") or ""))
        items.put(("done", None))
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:  # SSEError is a TransportError
        items.put(("error", f"{type(exc).__name__}: {exc}"[:200]))
