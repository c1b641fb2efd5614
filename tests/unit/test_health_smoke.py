"""tasks/health/smoke.py: when the health check stops waiting for its smoke answer (the stall decision on two
/metrics snapshots and a wait), and the streamed answer read from server-sent events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx

from tasks.health.smoke import ask_streamed, engine_stalled
from tasks.vllm.metrics import MetricsSnapshot

NOW = 1_750_000_000.0


def snap(at: float, tokens: int | None, running: int = 0, waiting: int = 0) -> MetricsSnapshot:
    return MetricsSnapshot(
        taken_at=at, generation_tokens_total=tokens, requests_running=running, requests_waiting=waiting
    )


def test_no_token_and_no_generation_for_anyone_is_a_stall():
    assert engine_stalled(snap(NOW, 1_234), snap(NOW + 10, 1_234), waited_s=10.0, limit_s=10.0)
    # idle before the question: the gauges say 0 (frozen), the check's own request is in flight all the same
    assert engine_stalled(snap(NOW, 0), snap(NOW + 12, 0), waited_s=12.0, limit_s=10.0)


def test_a_busy_server_generating_for_others_is_not_stalled():
    assert not engine_stalled(snap(NOW, 1_234, 64, 30), snap(NOW + 10, 1_900, 64, 31), waited_s=10.0, limit_s=10.0)


def test_no_stall_before_the_limit_or_without_the_counter():
    assert not engine_stalled(snap(NOW, 1_234), snap(NOW + 9, 1_234), waited_s=9.9, limit_s=10.0)
    assert not engine_stalled(None, snap(NOW + 10, 1_234), waited_s=10.0, limit_s=10.0)
    assert not engine_stalled(snap(NOW, None), snap(NOW + 10, None), waited_s=10.0, limit_s=10.0)


def _chunk(text: str, finish: str | None = None) -> bytes:
    body = {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


class _Slow(httpx.SyncByteStream):
    """A stream that sends nothing for ``delay_s`` (an engine with no token), then the answer."""

    def __init__(self, delay_s: float, pieces: list[bytes]) -> None:
        self.delay_s, self.pieces = delay_s, pieces

    def __iter__(self) -> Iterator[bytes]:
        time.sleep(self.delay_s)
        yield from self.pieces


def _client(delay_s: float, pieces: list[bytes]) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Slow(delay_s, pieces))

    return httpx.Client(base_url="http://vllm", transport=httpx.MockTransport(answer))


ANSWER = [_chunk(" 2"), _chunk("04"), _chunk("", "stop"), b"data: [DONE]\n\n"]


def test_the_answer_is_the_chunks_text_joined_and_checked():
    with _client(0.0, ANSWER) as http:
        answer = ask_streamed(http, "qwen3", budget_s=5, stall_s=1, before=None, read_metrics=lambda: None)
    assert (answer.ok, answer.answer, answer.stalled_s) == (True, "204", None)


def test_the_wait_stops_at_the_stall_when_the_engine_stands_still():
    reads: list[float] = []

    def frozen() -> MetricsSnapshot:
        reads.append(time.perf_counter())
        return snap(NOW + 1, 1_234)

    started = time.perf_counter()
    with _client(3.0, ANSWER) as http:
        answer = ask_streamed(http, "qwen3", budget_s=5, stall_s=0.3, before=snap(NOW, 1_234), read_metrics=frozen)
    assert not answer.ok and answer.stalled_s is not None and 0.3 <= answer.stalled_s < 1.0
    assert time.perf_counter() - started < 1.5 and len(reads) == 1 and answer.error.startswith("no token for")


def test_a_busy_engine_is_waited_for_up_to_the_budget():
    tokens = iter(range(1_000, 10_000, 100))

    def moving() -> MetricsSnapshot:
        return snap(NOW + 1, next(tokens), running=8)

    with _client(0.8, ANSWER) as http:
        answer = ask_streamed(http, "qwen3", budget_s=5, stall_s=0.3, before=snap(NOW, 900), read_metrics=moving)
    assert (answer.ok, answer.stalled_s) == (True, None) and answer.latency_s >= 0.8
