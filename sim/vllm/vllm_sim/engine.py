"""A continuous-batching scheduler that paces tokens with the Spark roofline.

Why a real scheduler rather than per-request sleeps: the effects the project
measures and alerts on come from sharing — up to `--max-num-seqs` sequences
advance together in one step whose duration grows with the batch, the rest wait
(`vllm:num_requests_waiting`), chunked prefill is bounded by
`--max-num-batched-tokens`, the KV cache fills (preemptions), and prefix caching
saves prefill work.  One thread advances all running sequences per step, as
vLLM's EngineCore busy loop does; HTTP threads only enqueue and read events.
"""

from __future__ import annotations

import collections
import hashlib
import math
import queue
import threading
import time
from dataclasses import dataclass, field

from .memory import BLOCK_SIZE
from .metrics import VllmMetrics
from .timing import Roofline

Event = tuple[int, str, str | None]  # (choice index, text piece | error message, finish_reason | "error" | None)


@dataclass
class GenRequest:
    """One sequence: its prompt pieces, the output it will produce, and its timeline."""

    request_id: str
    prompt_pieces: list[str]
    output_pieces: list[str]
    finish_reason: str
    index: int = 0  # choice index within its HTTP request
    arrival: float = field(default_factory=time.monotonic)
    events: queue.Queue[Event] = field(default_factory=queue.Queue)
    computed: int = 0  # tokens whose KV exists (prompt + generated)
    generated: int = 0
    cached_tokens: int = 0
    queried: bool = False
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    aborted: bool = False

    def __post_init__(self) -> None:
        if not self.output_pieces:
            self.output_pieces = [""]  # a sequence always yields at least its EOS token

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_pieces)

    @property
    def target(self) -> int:
        """Tokens that must have KV before the next token can be sampled."""
        return self.prompt_len + self.generated

    def blocks_needed(self) -> int:
        return math.ceil((self.target + 1) / BLOCK_SIZE)


def _block_hashes(pieces: list[str]) -> list[str]:
    """Chained hashes of full 16-token blocks (vLLM's prefix-cache keys)."""
    hashes: list[str] = []
    prev = ""
    for start in range(0, len(pieces) - len(pieces) % BLOCK_SIZE, BLOCK_SIZE):
        h = hashlib.sha256((prev + "\x00".join(pieces[start : start + BLOCK_SIZE])).encode()).hexdigest()
        hashes.append(h)
        prev = h
    return hashes


@dataclass
class Pressure:
    """Load the imitation does not model, that drives the service-level breaches for real (settable at run
    time: `POST /_sim/pressure`; at start: the `VLLM_SIM_PRESSURE_*` knobs).

    Attributes:
        kv_reserved: fraction of the KV blocks held by requests outside the model (a long context that
            never finishes): the usage gauge counts them, and admission and preemption see only the rest.
        first_token_delay_s: every request waits at least this long after its arrival before it is
            scheduled: it counts as waiting, and its queue time and time to first token grow.
        token_delay_s: every engine step takes this much longer: every running sequence's inter-token gap.
        preemptions_per_s: while sequences run, the scheduler preempts (recompute) the newest one at this
            rate, as a KV cache under pressure from outside the model would; its work is redone.
    """

    kv_reserved: float = 0.0
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    preemptions_per_s: float = 0.0

    def checked(self) -> Pressure:
        """Itself, or ValueError naming the field out of range."""
        if not 0.0 <= self.kv_reserved <= 1.0:
            raise ValueError(f"kv_reserved must be a fraction 0-1 (got {self.kv_reserved})")
        for name in ("first_token_delay_s", "token_delay_s", "preemptions_per_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        return self


@dataclass
class StatsWindow:
    """Counts since the last periodic log line."""

    prompt_tokens: int = 0
    generation_tokens: int = 0


class Engine:
    """The EngineCore stand-in: admission, batching, pacing, metrics."""

    def __init__(
        self,
        roofline: Roofline,
        metrics: VllmMetrics,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        num_blocks: int,
        decode_time_scale: float,
        enable_prefix_caching: bool = True,
        pressure: Pressure | None = None,
    ) -> None:
        self.roofline = roofline
        self.metrics = metrics
        self.max_num_seqs = max(1, max_num_seqs)
        self.max_batched = max(1, max_num_batched_tokens)
        self.num_blocks = max(1, num_blocks)
        self.scale = decode_time_scale
        self.prefix_caching = enable_prefix_caching
        self.pressure = (pressure or Pressure()).checked()
        self._next_preemption = 0.0
        self._cond = threading.Condition()
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._running: list[GenRequest] = []
        self._prefix: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._stop = False
        self.hung = False
        self.dead = False
        self.window = StatsWindow()
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._thread = threading.Thread(target=self._loop, name="EngineCore", daemon=True)

    # --- control -------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            self._update_gauges()  # a KV cache held from outside shows before any request
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def hang(self) -> None:
        """Deadlock: no step ever completes again (VLLM_SIM_FAULT_HANG_AFTER_S). /metrics keeps answering with
        every counter and gauge frozen, as vLLM's API server does: it sets them only from the engine core's step
        outputs (vllm/v1/engine/async_llm.py:385-428, vllm/v1/metrics/loggers.py:490-510 in 0.10.1.1)."""
        with self._cond:
            self.hung = True

    def kill(self, message: str) -> None:
        """Engine death: every in-flight request gets an error event."""
        with self._cond:
            self.dead = True
            for req in list(self._running) + list(self._waiting):
                req.events.put((req.index, message, "error"))
            self._running.clear()
            self._waiting.clear()
            self._update_gauges()
            self._cond.notify_all()

    def submit(self, req: GenRequest) -> None:
        with self._cond:
            if self.dead:
                req.events.put(
                    (req.index, "EngineCore encountered an issue. See stack trace (above) for the root cause.", "error")
                )
                return
            self._waiting.append(req)
            if not self.hung:  # vLLM sets its gauges from the engine core's steps: a hung engine's stay frozen
                self._update_gauges()
            self._cond.notify_all()

    def set_pressure(self, pressure: Pressure) -> None:
        """Change the outside load now (`Pressure`); the gauges show it at once."""
        with self._cond:
            self.pressure = pressure.checked()
            self._next_preemption = 0.0
            self._update_gauges()
            self._cond.notify_all()

    def abort(self, req: GenRequest) -> None:
        """The client went away; the scheduler drops it at the next step."""
        with self._cond:
            req.aborted = True
            self._cond.notify_all()

    # --- introspection for the periodic log line ------------------------------
    def take_window(self) -> tuple[StatsWindow, int, int, float, float]:
        """(counts since last call, running, waiting, kv usage 0-1, prefix hit rate 0-1)."""
        with self._cond:
            window, self.window = self.window, StatsWindow()
            rate = self._prefix_hits / self._prefix_queries if self._prefix_queries else 0.0
            return window, len(self._running), len(self._waiting), self._kv_usage(), rate

    # --- scheduling ----------------------------------------------------------
    def _reserved_blocks(self) -> int:
        return int(self.pressure.kv_reserved * self.num_blocks)

    def _kv_usage(self) -> float:
        used = self._reserved_blocks() + sum(math.ceil(r.computed / BLOCK_SIZE) for r in self._running)
        return min(1.0, used / self.num_blocks)

    def _update_gauges(self) -> None:
        with self.metrics.lock:
            self.metrics.running.set(len(self._running))
            self.metrics.waiting.set(len(self._waiting))
            usage = self._kv_usage()
            self.metrics.kv_cache.set(usage)
            if self.metrics.gpu_cache is not None:
                self.metrics.gpu_cache.set(usage)

    def _drop_aborted(self, now: float) -> None:
        """A client's abort: dropped without stats, as vLLM's output processor pops the request before any
        (output_processor.py:301-323 in 0.10.1.1, :517-579 in 0.31.0): request_success never counts it."""
        self._running = [r for r in self._running if not r.aborted]
        self._waiting = collections.deque(r for r in self._waiting if not r.aborted)

    def _free_blocks(self) -> int:
        return self.num_blocks - self._reserved_blocks() - sum(r.blocks_needed() for r in self._running)

    def _preempt_to_fit(self) -> None:
        """Recompute-preemption of the newest sequences while the KV cache overflows."""
        while len(self._running) > 1 and self._free_blocks() < 0:
            victim = self._running.pop()
            victim.computed = 0
            self._waiting.appendleft(victim)
            with self.metrics.lock:
                self.metrics.preemptions.inc()

    def _forced_preemption(self, now: float) -> None:
        """`Pressure.preemptions_per_s`: preempt the newest running sequence (recompute) when one is due."""
        rate = self.pressure.preemptions_per_s
        if rate <= 0 or not self._running or now < self._next_preemption:
            return
        self._next_preemption = now + 1.0 / rate
        victim = self._running.pop()
        victim.computed = 0
        self._waiting.appendleft(victim)
        with self.metrics.lock:
            self.metrics.preemptions.inc()

    def _prefix_lookup(self, req: GenRequest) -> None:
        """Count queries/hits once per request and skip the cached prefix's prefill."""
        if req.queried:
            return
        req.queried = True
        hits = 0
        if self.prefix_caching:
            for h in _block_hashes(req.prompt_pieces):
                if h not in self._prefix:
                    break
                self._prefix.move_to_end(h)
                hits += BLOCK_SIZE
            hits = min(hits, max(0, req.prompt_len - 1))
        req.cached_tokens = hits
        req.computed = hits
        self._prefix_queries += req.prompt_len
        self._prefix_hits += hits
        with self.metrics.lock:
            self.metrics.prefix_queries.inc(req.prompt_len)
            self.metrics.prefix_hits.inc(hits)

    def _prefix_insert(self, req: GenRequest) -> None:
        if not self.prefix_caching:
            return
        for h in _block_hashes(req.prompt_pieces):
            self._prefix[h] = None
            self._prefix.move_to_end(h)
        while len(self._prefix) > self.num_blocks:
            self._prefix.popitem(last=False)

    def _admit(self, now: float) -> None:
        while self._waiting and len(self._running) < self.max_num_seqs:
            req = self._waiting[0]
            if req.blocks_needed() > self._free_blocks() and self._running:
                break
            if req.scheduled_at is None and now < req.arrival + self.pressure.first_token_delay_s:
                break  # Pressure.first_token_delay_s: not scheduled yet (the queue is FIFO)
            self._waiting.popleft()
            if req.scheduled_at is None:
                req.scheduled_at = now
                with self.metrics.lock:
                    self.metrics.queue.observe(now - req.arrival)
            self._prefix_lookup(req)
            self._running.append(req)

    def _plan(self) -> tuple[list[tuple[GenRequest, int]], int, int]:
        """Decodes first (one token each), then prefill chunks within the token budget.

        After a token is sampled its own KV is not computed yet, so a decoding
        sequence is one token short of its target; a prefilling one is more.
        """
        budget = self.max_batched
        plan: list[tuple[GenRequest, int]] = []
        decoding = [r for r in self._running if r.first_token_at is not None and r.target - r.computed == 1]
        prefilling = [r for r in self._running if r not in decoding and r.target > r.computed]
        for req in decoding + prefilling:
            if budget <= 0:
                break
            chunk = min(req.target - req.computed, budget)
            plan.append((req, chunk))
            budget -= chunk
        batch_tokens = self.max_batched - budget
        context = sum(r.computed for r in self._running)
        return plan, batch_tokens, context

    def _apply(self, plan: list[tuple[GenRequest, int]], now: float) -> None:
        for req, n in plan:
            if req.aborted or req not in self._running:
                continue
            req.computed += n
            if req.computed < req.target:
                continue  # a prefill chunk: no token yet
            if req.first_token_at is None:
                self._prefix_insert(req)
            self._emit(req, now)

    def _emit(self, req: GenRequest, now: float) -> None:
        piece = req.output_pieces[req.generated]
        req.generated += 1
        last = req.generated >= len(req.output_pieces)
        with self.metrics.lock:
            self.metrics.generation_tokens.inc()
            if req.first_token_at is None:
                self.metrics.ttft.observe(now - req.arrival)
                self.metrics.prompt_tokens.inc(req.prompt_len)
                self.metrics.prefill.observe(now - (req.scheduled_at or now))
            elif req.last_token_at is not None:
                for gap in (self.metrics.tpot, self.metrics.itl):
                    if gap is not None:
                        gap.observe(now - req.last_token_at)
        if req.first_token_at is None:
            req.first_token_at = now
            self.window.prompt_tokens += req.prompt_len
        self.window.generation_tokens += 1
        req.last_token_at = now
        req.events.put((req.index, piece, req.finish_reason if last else None))
        if last:
            self._running.remove(req)
            self._finish(req, req.finish_reason, now, notify=False)

    def _finish(self, req: GenRequest, reason: str, now: float, notify: bool) -> None:
        with self.metrics.lock:
            self.metrics.success.inc(1, reason)
            self.metrics.e2e.observe(now - req.arrival)
            if req.scheduled_at is not None:
                self.metrics.inference.observe(now - req.scheduled_at)
            if req.first_token_at is not None:
                self.metrics.decode.observe(now - req.first_token_at)
                if self.metrics.request_tpot is not None and req.generated > 1:
                    self.metrics.request_tpot.observe((now - req.first_token_at) / (req.generated - 1))
        if notify:
            req.events.put((req.index, "", reason))

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def _loop(self) -> None:
        # Steps are paced against a deadline, not by sleeping their duration after the bookkeeping:
        # a GPU runs step after step while the scheduler's Python work overlaps it, so this
        # thread's own cost (planning, emitting 64 tokens, the GIL shared with the HTTP threads)
        # must not add to the modelled step time. `step_end` is the previous step's planned end.
        step_end = 0.0
        while True:
            with self._cond:
                while not self._stop and (self.hung or self.dead or not (self._running or self._waiting)):
                    self._cond.wait(0.5)
                if self._stop:
                    return
                now = time.monotonic()
                self._drop_aborted(now)
                self._preempt_to_fit()
                self._forced_preemption(now)
                self._admit(now)
                plan, batch_tokens, context = self._plan()
                self._update_gauges()
                if not plan:  # waiting only (a first-token delay, or no room): look again shortly
                    self._cond.wait(0.01)
                    continue
            start = max(step_end, now)
            step = self.roofline.step_seconds(batch_tokens, context) * self.scale + self.pressure.token_delay_s
            step_end = start + step
            self._sleep(step_end - time.monotonic())
            with self._cond:
                if self.hung or self.dead or self._stop:
                    continue
                self._apply(plan, time.monotonic())
                self._update_gauges()
