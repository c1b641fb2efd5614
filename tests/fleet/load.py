"""Steady client load through the fleet's router: a few clients, each sending one request after another.

What a fleet's users do while the operator updates it: the fleet tests count every request that did
not come back 200, with when it was sent, to say when and how many failed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass
class Tally:
    """What the clients got: every request's (sent at, seconds, outcome); outcome 200 or an error."""

    results: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(1 for _, _, outcome in self.results if outcome == "200")

    @property
    def failed(self) -> list[tuple[float, float, str]]:
        return [r for r in self.results if r[2] != "200"]

    def failures(self) -> Counter[str]:
        return Counter(outcome for _, _, outcome in self.failed)


class SteadyLoad:
    """``clients`` threads sending chat completions to ``url`` until `stop`."""

    def __init__(self, url: str, api_key: str, model: str, clients: int = 4, max_tokens: int = 24) -> None:
        self.url, self.model, self.max_tokens = url, model, max_tokens
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Tally:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
        return self.tally

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {
                    "model": self.model,
                    "messages": [{"role": "user", "content": f"client {i} question {n}: say something"}],
                    "max_tokens": self.max_tokens,
                }
                sent = time.time()
                try:
                    outcome = str(http.post("/v1/chat/completions", json=body).status_code)
                except httpx.HTTPError as err:
                    outcome = type(err).__name__
                with self._lock:
                    self.tally.results.append((sent, time.time() - sent, outcome))
