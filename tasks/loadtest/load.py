"""The load generator: random token prompts, streamed completions, closed-loop or Poisson arrivals.

Why token ids and not text: `/v1/completions` takes a prompt as a list of token ids, so every prompt
has exactly the asked input length with no tokenizer on the client (vLLM's random dataset needs the
model's tokenizer to get there). `ignore_eos` makes every output exactly `output_len` tokens.

Why it is built this way (the client must not be the bottleneck, and its overhead must stay out of
the figures): one asyncio loop and one `httpx.AsyncClient`; each server-sent event is only stamped
(`time.perf_counter()`) and kept raw while the stream runs, and all JSON is parsed after the level
ends (`metrics.request_output`). The stream is read with httpx-sse, not hand-parsed. While a level
runs the loop also measures its own lag (how late a 5 ms sleep wakes up: the error a busy client
adds to every timestamp), and the thread's CPU time is kept so a run that saturates the client's
core says so instead of reporting the client's limit as the server's.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from httpx_sse import aconnect_sse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.loadtest.metrics import RequestOutput, request_output
from tasks.vllm.api import COMPLETIONS_PATH, METRICS_PATH, auth_headers

#: Token ids the random prompts draw from: Qwen3's ordinary tokens (its special tokens start at 151643).
PROMPT_TOKEN_RANGE: tuple[int, int] = (1000, 150000)
#: How often the loop-lag monitor wakes up (s).
LAG_PROBE_S = 0.005
#: A client thread busier than this fraction of one core is called client-bound in the results.
CLIENT_BOUND_CPU = 0.8


class Workload(BaseModel):
    """What each request of a level asks for (vllm bench serve's random dataset, with a shared prefix)."""

    model_config = ConfigDict(frozen=True)

    input_len: int = Field(1024, ge=1, description="prompt tokens per request (vllm bench: --random-input-len)")
    output_len: int = Field(
        128, ge=1, description="output tokens per request, exact with ignore_eos (--random-output-len)"
    )
    prefix_len: int = Field(
        0, ge=0, description="the first N prompt tokens are the same in every request (prefix caching)"
    )
    prefix_groups: int = Field(
        1,
        ge=1,
        description="how many different shared prefixes (system prompts, conversations); each prompt "
        "starts with one drawn at random (1: one prefix for all, as vllm bench's random dataset)",
    )
    num_prompts: int | None = Field(None, ge=1, description="requests per level; None = 2 x concurrency, at least 4")
    ignore_eos: bool = Field(True, description="keep sampling past EOS so every output has output_len tokens")
    seed: int | None = Field(
        None,
        ge=0,
        description="the same seed sends the same prompts; None = new prompts each "
        "run (a repeated run must not hit the prefix cache of the last)",
    )

    @model_validator(mode="after")
    def _prefix_fits(self) -> Workload:
        if self.prefix_len > self.input_len:
            raise ValueError(
                f"prefix_len ({self.prefix_len}) must be <= input_len ({self.input_len}): the shared "
                "prefix is part of the prompt; lower prefix_len or raise input_len"
            )
        if self.prefix_groups > 1 and not self.prefix_len:
            raise ValueError(f"prefix_groups ({self.prefix_groups}) needs a shared prefix: set prefix_len")
        return self

    def with_seed(self) -> Workload:
        """This workload with a concrete seed (a fresh random one when none is set), so that every
        level and every preset of one run draws from the same known seed (logged, in results.json)."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbits(32)})

    def prompts_for(self, concurrency: int | None) -> int:
        """Requests in one level: the given number, or two full waves of the concurrency."""
        if self.num_prompts is not None:
            return self.num_prompts
        return max(4, 2 * (concurrency or 2))


def make_prompts(workload: Workload, count: int, salt: int = 0) -> list[list[int]]:
    """`count` prompts of `input_len` random token ids; the first `prefix_len` are shared.

    Deterministic per (seed, salt) so two runs (two presets) send the same prompts; the salt keeps
    levels apart so a later level does not hit the prefix cache on an earlier level's prompts, and
    the prefix has a stream of its own so it is not the start of another workload's first prompt.
    With `prefix_groups` > 1 each prompt takes one of that many prefixes, drawn from a third stream:
    the first prefix and every prompt's own tokens are the same as with one group.

    Raises:
        ValueError: the workload has no seed yet (`Workload.with_seed()` gives it one).
    """
    if workload.seed is None:
        raise ValueError("make_prompts needs a seeded workload: call workload.with_seed() first")
    low, high = PROMPT_TOKEN_RANGE
    prefixes = [
        np.random.default_rng([workload.seed, salt, 1, *([group] if group else [])])
        .integers(low, high, size=workload.prefix_len)
        .tolist()
        for group in range(workload.prefix_groups)
    ]
    groups = np.random.default_rng([workload.seed, salt, 3]).integers(0, workload.prefix_groups, size=count)
    rng = np.random.default_rng([workload.seed, salt, 2])
    return [
        prefixes[group] + rng.integers(low, high, size=workload.input_len - workload.prefix_len).tolist()
        for group in groups.tolist()
    ]


@dataclass
class LevelRun:
    """One level's raw results and what the client itself cost."""

    outputs: list[RequestOutput]
    duration_s: float
    client_cpu_s: float
    loop_lag_ms: list[float] = field(default_factory=list)
    metrics_texts: list[tuple[float, str]] = field(default_factory=list)  # (epoch, /metrics body) while it ran

    @property
    def client_cpu_fraction(self) -> float:
        """The load generator's CPU time over wall time (1.0 = one core busy all along)."""
        return self.client_cpu_s / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def client_bound(self) -> bool:
        return self.client_cpu_fraction > CLIENT_BOUND_CPU

    def lag_percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.loop_lag_ms, q)) if self.loop_lag_ms else 0.0


@dataclass(frozen=True)
class Endpoint:
    """Where the load goes: the server's base URL, the served model name and its API key (or None)."""

    base_url: str
    model: str
    api_key: str | None = None

    def headers(self) -> dict[str, str]:
        return auth_headers(self.api_key)


def request_body(endpoint: Endpoint, prompt: list[int], workload: Workload) -> dict:
    """The body `vllm bench serve` sends to /v1/completions (greedy, streamed, usage in the last chunk)."""
    body = {
        "model": endpoint.model,
        "prompt": prompt,
        "max_tokens": workload.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if workload.ignore_eos:
        body["ignore_eos"] = True
    return body


async def stream_completion(
    client: httpx.AsyncClient, endpoint: Endpoint, prompt: list[int], workload: Workload
) -> RequestOutput:
    """One streamed request; an HTTP error or a broken stream is a failed request, never an exception."""
    events: list[tuple[float, str]] = []
    url = endpoint.base_url.rstrip("/") + COMPLETIONS_PATH
    start = time.perf_counter()
    try:
        async with aconnect_sse(
            client, "POST", url, json=request_body(endpoint, prompt, workload), headers=endpoint.headers()
        ) as source:
            response = source.response
            if response.status_code != 200:
                body = (await response.aread()).decode("utf-8", "replace")
                return RequestOutput(
                    prompt_len=len(prompt), start_time=start, error=f"HTTP {response.status_code}: {body[:300]}"
                )
            async for event in source.aiter_sse():
                events.append((time.perf_counter(), event.data))
    except (httpx.HTTPError, ValueError) as exc:  # httpx_sse.SSEError is a TransportError; ValueError: bad bytes
        return RequestOutput(prompt_len=len(prompt), start_time=start, error=f"{type(exc).__name__}: {exc}")
    return request_output(start, events, len(prompt))


async def _lag_monitor(samples: list[float], stop: asyncio.Event) -> None:
    """How late the loop wakes from a short sleep: the delay a busy client adds to a timestamp."""
    while not stop.is_set():
        planned = time.perf_counter() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        samples.append(max(0.0, time.perf_counter() - planned) * 1000)


async def _metrics_poller(
    client: httpx.AsyncClient, endpoint: Endpoint, every_s: float, texts: list[tuple[float, str]], stop: asyncio.Event
) -> None:
    """Keep /metrics bodies while the level runs (peak KV cache, queue); parsed after the level."""
    url = endpoint.base_url.rstrip("/") + METRICS_PATH
    while not stop.is_set():
        try:
            response = await client.get(url, headers=endpoint.headers())
            if response.status_code == 200:
                texts.append((time.time(), response.text))
        except httpx.HTTPError:
            pass  # the level's own requests report a dead server; a missed sample only loses a peak
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        except TimeoutError:
            pass


def arrival_delays(count: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds between sends: 0 for rate inf, else gamma-distributed (burstiness 1 = Poisson), as vLLM."""
    if math.isinf(request_rate):
        return [0.0] * count
    rng = np.random.default_rng([seed, 3])
    theta = 1.0 / (request_rate * burstiness)
    return rng.gamma(shape=burstiness, scale=theta, size=count).tolist()


async def run_level(
    endpoint: Endpoint,
    prompts: Sequence[list[int]],
    workload: Workload,
    *,
    concurrency: int | None = None,
    request_rate: float = math.inf,
    burstiness: float = 1.0,
    metrics_every_s: float | None = 0.5,
    timeout_s: float = 3600,
) -> LevelRun:
    """Send every prompt, at most `concurrency` in flight (closed loop) and/or at `request_rate`.

    Args:
        endpoint: the server.
        prompts: the level's prompts (token ids).
        workload: output length and ignore_eos.
        concurrency: most requests in flight (vllm bench --max-concurrency); None = no limit.
        request_rate: requests per second (inf = all at once, the closed loop then paces them).
        burstiness: gamma shape of the arrivals (1 = Poisson).
        metrics_every_s: how often to keep a /metrics body while it runs; None = never.
        timeout_s: a single request longer than this fails (read timeout between chunks).
    """
    limit = concurrency or len(prompts)
    limits = httpx.Limits(max_connections=limit + 2, max_keepalive_connections=limit + 2)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    semaphore = asyncio.Semaphore(limit)
    lag: list[float] = []
    texts: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def limited(prompt: list[int]) -> RequestOutput:
            async with semaphore:
                return await stream_completion(client, endpoint, prompt, workload)

        helpers = [asyncio.create_task(_lag_monitor(lag, stop))]
        if metrics_every_s:
            helpers.append(asyncio.create_task(_metrics_poller(client, endpoint, metrics_every_s, texts, stop)))
        cpu0 = time.thread_time()
        start = time.perf_counter()
        tasks = []
        for prompt, delay in zip(
            prompts, arrival_delays(len(prompts), request_rate, burstiness, workload.seed or 0), strict=True
        ):
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(limited(prompt)))
        outputs = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - start
        cpu = time.thread_time() - cpu0
        stop.set()
        await asyncio.gather(*helpers)
    return LevelRun(outputs=outputs, duration_s=duration, client_cpu_s=cpu, loop_lag_ms=lag, metrics_texts=texts)
