"""The fleet's router (vllm-router) against direct connections: what it costs and what it buys.

Measured on the vLLM imitation (sim/vllm) decoding at a Spark's pace (VLLM_SIM_DECODE_TIME_SCALE=1),
written to docs/benchmarks.md (section "Router") with the machine and the date:

1. Throughput: bench-qwen's load (tasks/loadtest: random token-id prompts, streamed /v1/completions,
   closed loop, WAVES requests per slot) at 64 and 128 in flight, aggregate output tokens/s, three
   ways: direct to one imitation; direct to two, the client splitting the load itself (half the
   concurrency to each endpoint: the reference for what two Sparks give); through vllm-router
   (policy cache_aware, the FleetRouter default) in front of the same two, and at 128 with
   round_robin too (whether a shortfall is the policy's). Goal: two >= 1.8x one.
2. The latency the router adds: TTFT and end-to-end latency p50/p99 at 1 and 8 in flight, through a
   router whose only worker is the imitation against direct to it (one worker: the router's own
   cost, not the effect of spreading the load).
3. Prefix caching by policy: prompts sharing one of several prefixes (Workload.prefix_groups: system
   prompts, conversations) through the router over two imitations with cache_aware, then
   round_robin: per imitation (Spark) the requests it served, its prefix cache hit rate and its mean
   TTFT (its own /metrics), and the router's own count of its prefix decisions. bench-qwen's token-id
   prompts are what cache_aware can read: vllm-router 0.1.17 matches prefixes on token ids, and gets
   the ids of a text prompt or chat from the worker (POST /v1/completions/render, then /tokenize);
   one text prompt is sent too, to show what the router makes of it against the imitation.
4. A rolling update under load on the fleet rig (bench/fleet.py's `FleetRig`: PostgreSQL, a Prefect
   server, two docker daemons, a process worker per target), the fleet registered from a targets file
   with a `router:` section as tests/fleet/test_fleet.py does, the router run by the operator's
   launcher (`python -m deployments.router serve`): bench-qwen's request sent at a steady rate through
   the router, and the same load directly to the first target updated, while `rolling_update`
   replaces both targets. The failed requests of each (the router's: 0 expected).

Figures 1-3 run the imitations as host processes (bench/serving.py `start_server`) and vllm-router
with the arguments the launcher gives it (`FleetRouter.router_args()`), workers added by
`POST /add_worker`: they measure routing, not the flows. Every level records the load generator's
CPU share of one core, the router's and the imitations', and how busy both cores were.

    .venv/bin/python -m bench.router [--figures 1234] [--no-write] [--save results.json] [--from a.json ...]

``--figures 123`` skips figure 4 (no docker, no Prefect server); ``--save`` keeps the raw measurements,
``--from`` writes the section from one or more saved runs (merged) without measuring. Clean-up: the
imitations, the routers; for figure 4 what bench/fleet.py's rig removes (the second dockerd keeps running, as
the tests leave it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.fleet import SECRET, TOKEN, FleetRig, Machine, busy_fraction, children_of, cpu_times
from bench.report import machine_line, write_section
from bench.serving import start_server, the_roofline
from blocks.engine import EngineSpec
from blocks.router import FleetRouter, Policy
from deployments.router import wait_listening
from sim.ports import free_port
from sim.vllm.vllm_sim.knobs import Knobs
from tasks.loadtest.load import Endpoint, Workload, make_prompts, run_level, stream_completion
from tasks.loadtest.metrics import RequestOutput, calculate_metrics
from tasks.loadtest.run import read_metrics
from tasks.loadtest.server import server_side
from tasks.memory import parse_meminfo
from tasks.report import markdown_table
from tasks.router.api import add_worker, router_client
from tasks.vllm.metrics import MetricsSnapshot, counter_delta

HEADING = "Router"
MODEL = EngineSpec().served_name
ROUTER_BIN = Path(sys.executable).parent / "vllm-router"
GOAL = 1.8
#: Figure 1: bench-qwen's random prompts; short prompts and outputs keep a level within ~30 s at a
#: Spark's pace (a batch of 64: ~2.7 s of prefill, then ~0.17 s per token).
THROUGHPUT = Workload(input_len=64, output_len=24, seed=101)
IN_FLIGHT = (64, 128)
#: Requests per slot in figure 1. bench-qwen's default is 2; the first refill of a closed loop through
#: a router is a transient (the Sparks' batches fall out of step), more waves weigh it less.
WAVES = 5
SPLIT = "direct to two, client splits"
THROUGHPUT_COLUMNS = (
    "way | in flight | requests A / B | output tok/s | vs one | TTFT p50 / p99, ms | refill TTFT p50, ms | "
    "TPOT p50, ms | client CPU | router CPU | imitations' CPU | both cores busy"
).split(" | ")
VIA = "router over two,"
#: Figure 2: short answers, many requests: latency percentiles, at (in flight, requests).
LATENCY = Workload(input_len=64, output_len=4, seed=202)
LATENCY_LEVELS = ((1, 20), (8, 64))
#: Figure 3: 32 prefix groups of 768 tokens (a system prompt or a conversation so far), 256 own tokens.
PREFIXED = Workload(input_len=1024, output_len=16, prefix_len=768, prefix_groups=32, num_prompts=128, seed=303)
PREFIXED_IN_FLIGHT = 32
POLICIES: tuple[Policy, ...] = ("cache_aware", "round_robin")
PREFIX_COLUMNS = (
    "policy | imitation | requests | prefix cache hit rate | mean TTFT (its own), ms | client TTFT p50 / p99, ms | "
    "output tok/s | router's prefix decisions"
).split(" | ")
#: Figure 4: the fleet rig's targets decode 20 times faster than a Spark (as tests/fleet: a request
#: lasts ~0.2 s, so a drain has requests to wait for); each load sends RATE requests per second.
STEADY = Workload(input_len=64, output_len=24, seed=404)
RATE = 4.0
DECODE_SCALE = 0.05
STARTUP_SCALE = 0.01
KEY_SECRET = "vllm-key-router-bench"


def machine() -> str:
    """machine_line() with the CPU model and the RAM (a figure of this box is not a Spark's)."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown CPU",
    )
    ram = parse_meminfo(Path("/proc/meminfo").read_text()).total_gib
    return f"{machine_line()} CPU {model}, {ram:.1f} GiB RAM (`nproc` {os.cpu_count()})."


# ---------------------------------------------------------------------------- host processes (figures 1-3)


@dataclass
class Sim:
    """One imitation as a host process, and where it answers."""

    process: subprocess.Popen
    url: str


@contextmanager
def imitations(tmp: Path, count: int) -> Iterator[list[Sim]]:
    """``count`` imitations at a Spark's decode pace, host processes with the deploy's command line."""
    sims: list[Sim] = []
    try:
        for i in range(count):
            port = free_port()
            workdir = tmp / f"sim-{i}"
            workdir.mkdir()
            sims.append(Sim(start_server(port, workdir, 1.0), f"http://127.0.0.1:{port}"))
        yield sims
    finally:
        for sim in sims:
            sim.process.send_signal(signal.SIGTERM)
        for sim in sims:
            try:
                sim.process.wait(10)
            except subprocess.TimeoutExpired:
                sim.process.kill()


@contextmanager
def router(tmp: Path, workers: list[str], policy: Policy) -> Iterator[tuple[FleetRouter, subprocess.Popen]]:
    """vllm-router with the launcher's arguments for ``policy`` (no API key), ``workers`` added."""
    block = FleetRouter(
        fleet="bench",
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
        policy=policy,
        health_check_interval_s=1,
    )
    with open(tmp / f"router-{policy}-{block.port}.log", "wb") as log:
        proc = subprocess.Popen([str(ROUTER_BIN), *block.router_args()], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(block, proc)
        with router_client(block.url) as http:
            for url in workers:
                add_worker(http, url)
        yield block, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (gone ones count 0)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def shoot(
    urls: list[str],
    concurrency: int,
    workload: Workload,
    salt: int,
    watch: dict[str, list[int]],
    count: int = 0,
    sparks: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One level of bench-qwen's load split evenly over ``urls``: the metrics over every request and
    the whole wall time, the client thread's CPU share of one core, each ``watch`` group's, how busy
    both cores were, and what each of ``sparks`` (imitations' URLs) says of the level. One URL gets it
    all (direct, or the router). No /metrics polling: through the router it is a routed request."""
    prompts = make_prompts(workload, count or workload.prompts_for(concurrency), salt=salt)
    share = len(urls)

    async def both() -> tuple[list[RequestOutput], float, float]:
        cpu0, start = time.thread_time(), time.perf_counter()
        runs = await asyncio.gather(
            *(
                run_level(
                    Endpoint(url, MODEL),
                    prompts[i::share],
                    workload,
                    concurrency=concurrency // share,
                    metrics_every_s=None,
                )
                for i, url in enumerate(urls)
            )
        )
        return [o for run in runs for o in run.outputs], time.thread_time() - cpu0, time.perf_counter() - start

    before = {name: cpu_seconds(pids) for name, pids in watch.items()}
    servers = [read_metrics(url, None) for url in sparks]
    busy0 = cpu_times()
    outputs, client_cpu, wall = asyncio.run(both())
    busy = busy_fraction(busy0, cpu_times())
    first = min(o.start_time for o in outputs)
    refills = [o.ttft for o in outputs if o.success and o.start_time - first > 1.0]
    return {
        "concurrency": concurrency,
        "metrics": calculate_metrics(outputs, wall).model_dump(),
        "refill_ttft_p50_ms": statistics.median(refills) * 1000 if refills else None,
        "cpu": {"client": client_cpu / wall}
        | {name: (cpu_seconds(pids) - before[name]) / wall for name, pids in watch.items()},
        "busy": busy,
        "sparks": [per_spark(b, read_metrics(url, None)) for b, url in zip(servers, sparks, strict=True)],
    }


def warm(urls: list[str]) -> None:
    """One short request to each endpoint first: connections and first-call costs out of the figures."""
    for url in urls:
        level = shoot([url], 1, Workload(input_len=8, output_len=2, seed=1), salt=999, watch={}, count=1)
        if level["metrics"]["failed"]:
            raise SystemExit(f"the warm-up request to {url} failed: {level['metrics']['errors']}")


def say(label: str, level: dict[str, Any]) -> None:
    """One line per level while the bench runs (a long run shows where it is and what it sees)."""
    m = level["metrics"]
    print(
        f"  {label} @{level['concurrency']}: {m['output_throughput']:.1f} tok/s, TTFT p50 "
        f"{m['ttft']['median_ms']:.0f} ms, E2EL p50 {m['e2el']['median_ms']:.0f} ms, {m['failed']} failed, "
        + ", ".join(f"{k} CPU {v:.0%}" for k, v in level["cpu"].items())
        + f", cores busy {level['busy']:.0%}",
        flush=True,
    )


def throughput(tmp: Path, sims: list[Sim]) -> list[dict[str, Any]]:
    """Figure 1: direct to one, direct to two (the client splits), the router over two; at the most in
    flight the router with round_robin too (is a shortfall the policy's?)."""
    urls = tuple(sim.url for sim in sims)
    imitation_pids = [sim.process.pid for sim in sims]
    rows = []
    with router(tmp, list(urls), "cache_aware") as (front, proc):
        warm([*urls, front.url])
        watch = {"router": [proc.pid], "imitations": imitation_pids}
        ways = (("direct to one", urls[:1]), (SPLIT, urls), (f"{VIA} cache_aware", (front.url,)))
        for concurrency in IN_FLIGHT:
            for i, (label, targets) in enumerate(ways):
                level = shoot(
                    list(targets), concurrency, THROUGHPUT, 100 * concurrency + i, watch, WAVES * concurrency, urls
                )
                say(label, level)
                rows.append({"way": label, **level})
    top = max(IN_FLIGHT)
    with router(tmp, list(urls), "round_robin") as (front, proc):
        warm([front.url])
        watch = {"router": [proc.pid], "imitations": imitation_pids}
        level = shoot([front.url], top, THROUGHPUT, 100 * top + 9, watch, WAVES * top, urls)
        say("round_robin", level)
        rows.append({"way": f"{VIA} round_robin", **level})
    return rows


def added_latency(tmp: Path, sims: list[Sim]) -> list[dict[str, Any]]:
    """Figure 2: direct to one imitation against a router whose only worker it is."""
    url = sims[0].url
    rows = []
    with router(tmp, [url], "cache_aware") as (front, proc):
        warm([url, front.url])
        for concurrency, count in LATENCY_LEVELS:
            for i, (label, target) in enumerate((("direct", url), ("router", front.url))):
                level = shoot([target], concurrency, LATENCY, salt=10 * concurrency + i, watch={}, count=count)
                say(label, level)
                rows.append({"way": label, **level})
    return rows


def decisions(metrics_url: str) -> dict[str, int]:
    """The router's prefix decisions by outcome (vllm_router_prefix_routing_decisions_total: prefix_hit,
    prefix_miss, load_imbalance, missing_tokens), summed over its labels."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "vllm_router_prefix_routing_decisions_total":
                counts[sample.labels.get("outcome", "?")] += int(sample.value)
    return dict(counts)


def per_spark(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, Any]:
    """What one imitation says of a level: requests, prefix cache hit rate, mean TTFT (its histogram)."""
    server = server_side(before, after, [])
    ttft_sum = counter_delta(after.ttft_sum, before.ttft_sum)
    ttft_count = counter_delta(after.ttft_count, before.ttft_count)
    return {
        "requests": server.requests,
        "queue_mean_ms": server.queue_time_mean_ms,
        "hit_rate": server.prefix_cache_hit_rate,
        "ttft_mean_ms": ttft_sum / ttft_count * 1000 if ttft_sum is not None and ttft_count else None,
    }


def text_probe(front: FleetRouter) -> dict[str, int]:
    """One text prompt through the router: how its decision counters move (which outcome a text
    prompt gets when the worker cannot tokenize it for the router)."""
    before = decisions(front.metrics_url)
    body = {"model": MODEL, "prompt": "You are a helpful assistant. Say hello.", "max_tokens": 2}
    httpx.post(f"{front.url}/v1/completions", json=body, timeout=60).raise_for_status()
    after = decisions(front.metrics_url)
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def prefix_policies(tmp: Path, sims: list[Sim]) -> list[dict[str, Any]]:
    """Figure 3: the prefix-group workload through the router with each policy, fresh prefixes each."""
    urls = [sim.url for sim in sims]
    rows = []
    for i, policy in enumerate(POLICIES):
        with router(tmp, urls, policy) as (front, proc):
            warm([front.url])
            level = shoot([front.url], PREFIXED_IN_FLIGHT, PREFIXED, 7000 + i, {"router": [proc.pid]}, 0, tuple(urls))
            level["decisions"] = decisions(front.metrics_url)
            level["text_probe"] = text_probe(front) if policy == "cache_aware" else {}
        say(policy, level)
        print(f"    per Spark {level['sparks']}, router decisions {level['decisions']}", flush=True)
        rows.append({"policy": policy, **level})
    return rows


# ---------------------------------------------------------------------------- the fleet rig (figure 4)


class RouterRig(FleetRig):
    """bench/fleet.py's rig with test_fleet's fleet: two targets (one per daemon) behind the fleet's API
    key, decoding at DECODE_SCALE, registered from a targets file with a ``router:`` section."""

    key = ""  # the fleet's API key, new for each rig

    def register(self, four: bool) -> None:
        """Replaces FleetRig.register (``four`` unused: two targets): the Secret blocks, the targets file
        with its router section, `deployments.fleet register` as an operator runs it, schedules off."""
        import yaml
        from prefect.blocks.system import Secret

        from deployments.fleet import load_fleet_file, register
        from deployments.targets import sim_target
        from tests.integration.conftest import SESSION_PREFIX

        self.key = f"router-bench-{uuid.uuid4().hex}"
        Secret(value=TOKEN).save(SECRET, overwrite=True)  # the rig's Hub takes bench/fleet.py's token
        Secret(value=self.key).save(KEY_SECRET, overwrite=True)
        self.machines = [
            Machine(f"{SESSION_PREFIX}r{uuid.uuid4().hex[:5]}", "first", self.first),
            Machine(f"{SESSION_PREFIX}r{uuid.uuid4().hex[:5]}", "second", self.second),
        ]
        where: dict[str, dict[str, Any]] = {"first": {}, "second": {"docker_base_url": self.second_url}}
        targets = {
            m.name: sim_target(
                m.name,
                self.tmp / m.name,
                self.hub.url,
                free_port(),
                time_scale=self.time_scale,
                decode_time_scale=DECODE_SCALE,
                hf_token_secret=SECRET,
                api_key_secret=KEY_SECRET,
                **where[m.daemon],
            )
            for m in self.machines
        }
        self.fleet = f"router-bench-{uuid.uuid4().hex[:6]}"
        section = {"host": "127.0.0.1", "port": free_port(), "metrics_port": free_port(), "api_key_secret": KEY_SECRET}
        section |= {"health_check_interval_s": 1, "drain_timeout_s": 30.0}
        dumped = {
            name: block.model_dump(mode="json", exclude={"name"}, exclude_none=True) for name, block in targets.items()
        }
        path = self.tmp / "fleet.yaml"
        path.write_text(yaml.safe_dump({"fleet": self.fleet, "targets": dumped, "router": section}))
        self.env["PREFECT_API_URL"] = self.api_url
        t0 = time.monotonic()
        self.stack.callback(register(load_fleet_file(path), env=self.env).unlink, missing_ok=True)
        self.register_s = time.monotonic() - t0
        self.paused = self.pause_schedules()


class OpenLoad:
    """bench-qwen's streamed request sent to one URL at a fixed rate until stopped, whatever the answers.

    Why an open loop: users keep arriving while a Spark is replaced. A closed-loop client that sends
    its next request as soon as the last one failed turns an outage into a retry storm (thousands of
    connection refusals a second, on the cores the new server is starting on); at a fixed rate the
    failures are the arrivals during the outage plus the requests cut off, comparable between sides.
    """

    def __init__(self, url: str, api_key: str, salt: int) -> None:
        self.endpoint, self.salt = Endpoint(url, MODEL, api_key), salt
        self.sent: list[tuple[float, RequestOutput]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> OpenLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    async def _run(self) -> None:
        pending: list[tuple[float, asyncio.Task[RequestOutput]]] = []
        start = time.monotonic()
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=5)) as client:
            while not self._stop.is_set():
                prompt = make_prompts(STEADY, 1, salt=self.salt * 1_000_000 + len(pending))[0]
                task = asyncio.create_task(stream_completion(client, self.endpoint, prompt, STEADY))
                pending.append((time.time(), task))
                await asyncio.sleep(max(0.0, start + len(pending) / RATE - time.monotonic()))
            self.sent = [(sent, await task) for sent, task in pending]

    def tally(self, origin: float) -> dict[str, Any]:
        """Sent, failed (an error, or fewer tokens than asked: cut off), the kinds, and when (s after origin)."""
        failed = [(t - origin, o) for t, o in self.sent if not o.success or o.output_tokens < STEADY.output_len]
        kinds = Counter((o.error.split(":")[0] or "cut off") if o.error else "cut off" for _, o in failed)
        latencies = sorted(o.latency for _, o in self.sent if o.success)
        return {
            "sent": len(self.sent),
            "failed": len(failed),
            "kinds": dict(kinds),
            "window": [failed[0][0], failed[-1][0]] if failed else None,
            "latency_max_s": latencies[-1] if latencies else None,
        }


def rolling_under_load(tmp: Path, stack: ExitStack, worker_env: dict[str, str]) -> dict[str, Any]:
    """Figure 4: deploy both targets, then roll an update with the two loads running."""
    from blocks.target import TargetMachine
    from deployments.dev.router import start_router, stop_router
    from flows.fleet import deploy_fleet, rolling_update

    t0 = time.monotonic()
    rig = RouterRig(stack, tmp, STARTUP_SCALE, False, worker_env)
    rig.start_workers(rig.names)
    front = start_router(rig.fleet, tmp / "router-launcher.log", rig.env)
    stack.callback(stop_router, front)
    deployed = deploy_fleet(targets=rig.names, fleet=rig.fleet, return_state=True)
    if not deployed.is_completed():
        raise SystemExit(f"the fleet deploy failed: {deployed.message}\n{rig.worker_tails()}")
    setup_s = time.monotonic() - t0
    first = rig.names[0]
    url = FleetRouter.named(rig.fleet).url
    with (
        OpenLoad(url, rig.key, salt=1) as via_router,
        OpenLoad(TargetMachine.named(first).endpoint, rig.key, salt=2) as direct,
    ):
        time.sleep(2)
        started = time.time()
        state = rolling_update(targets=rig.names, fleet=rig.fleet, overrides={"max_num_seqs": 32}, return_state=True)
        ended = time.time()
        time.sleep(2)
    if not state.is_completed():
        raise SystemExit(f"the rolling update failed: {state.message}\n{rig.worker_tails()}")
    deploys = [c for c in children_of(rig, state.state_details.flow_run_id, {}) if c.kind == "deploy"]
    return {
        "setup_s": setup_s,
        "update_s": ended - started,
        "steps": [{k: row.get(k) for k in ("target", "step", "drain", "router")} for row in state.result()],
        "deploys": [{"target": c.target, "running": c.running - started, "final": c.final - started} for c in deploys],
        "first": first,
        "router": via_router.tally(started),
        "direct": direct.tally(started),
        "router_log_has_key": rig.key in front.log_text(),
    }


# ---------------------------------------------------------------------------- the section


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def throughput_table(rows: list[dict[str, Any]], ratio: dict[tuple[str, int], float]) -> str:
    """Figure 1's table: a row per way and level."""
    table = [
        (
            r["way"],
            r["concurrency"],
            " / ".join(str(s["requests"]) for s in r["sparks"]),
            f"{m['output_throughput']:.1f}",
            f"{ratio[(r['way'], r['concurrency'])]:.2f}x",
            f"{ms(m['ttft']['median_ms'])} / {ms(m['ttft']['percentiles_ms']['p99'])}",
            ms(r["refill_ttft_p50_ms"]),
            f"{m['tpot']['median_ms']:.0f}",
            pct(r["cpu"]["client"]),
            pct(r["cpu"]["router"]) if r["way"].startswith(VIA) else "-",
            pct(r["cpu"]["imitations"]),
            pct(r["busy"]),
        )
        for r in rows
        for m in [r["metrics"]]
    ]
    return markdown_table(THROUGHPUT_COLUMNS, table)


def throughput_part(rows: list[dict[str, Any]]) -> str:
    """Figure 1's table and what the ratios say."""
    one = {r["concurrency"]: r["metrics"]["output_throughput"] for r in rows if r["way"] == "direct to one"}
    ratio = {(r["way"], r["concurrency"]): r["metrics"]["output_throughput"] / one[r["concurrency"]] for r in rows}
    refill = {(r["way"], r["concurrency"]): r["refill_ttft_p50_ms"] for r in rows}
    top, low = max(IN_FLIGHT), min(IN_FLIGHT)
    routed = ratio[(f"{VIA} cache_aware", top)]
    gap = 1 - routed / ratio[(SPLIT, top)]
    by = {(r["way"], r["concurrency"]): r for r in rows}

    def p99(way: str) -> float:
        return by[(way, top)]["metrics"]["ttft"]["percentiles_ms"]["p99"]

    failed = sum(r["metrics"]["failed"] for r in rows)
    return f"""### 1. Throughput: one, two split by the client, two behind the router

bench-qwen's load: {THROUGHPUT.input_len}-token random token-id prompts, {THROUGHPUT.output_len} output tokens
(ignore_eos), streamed `/v1/completions`, closed loop, {WAVES} x in-flight requests per level (bench-qwen's default
is 2), the imitations at a Spark's decode pace with the runbook's flags (max-num-seqs {EngineSpec().max_num_seqs}).
"Client splits": two load generators in one event loop, half the concurrency each, one per imitation. "Router over
two": vllm-router in front of the same two. Requests A / B: what each imitation served (its
`vllm:request_success_total`). Refill TTFT: the requests sent after the first second, once the first ones
finished. CPU: CPU seconds over the level's wall time (100% = one core busy all along); {failed} requests failed.

{throughput_table(rows, ratio)}

**Goal two >= {GOAL}x one: {"met" if routed >= GOAL else "missed"} through the router at {top} in flight
({routed:.2f}x with cache_aware, {ratio[(f"{VIA} round_robin", top)]:.2f}x with round_robin; the client's own split
{ratio[(SPLIT, top)]:.2f}x).** At {low} in flight: {ratio[(f"{VIA} cache_aware", low)]:.2f}x through the router,
{ratio[(SPLIT, low)]:.2f}x split by the client: one Spark at {low} in flight runs them all in one batch
(max-num-seqs {EngineSpec().max_num_seqs}) and a decode step is bound by reading the weights, so two Sparks with half
the batch each step barely faster. A second Spark pays where one queues: at {top} one runs
{EngineSpec().max_num_seqs} and queues the rest. Through the router at {top}: {routed:.2f}x against the client's
{ratio[(SPLIT, top)]:.2f}x ({"-" if gap > 0 else "+"}{abs(gap):.0%}), with the same split of requests (A / B) and
{pct(by[(f"{VIA} cache_aware", top)]["cpu"]["router"])} of a core for the router. Its TTFT p99
({ms(p99(f"{VIA} cache_aware"))} ms against {ms(p99(SPLIT))} ms split) comes from refills: when requests finish, the
router hands their successors to either Spark, so some land on a Spark whose batch is full and wait a whole batch,
where the client's split keeps each Spark in step with its own closed loop; on the median refills wait less through
the router (refill TTFT p50 {ms(refill[(f"{VIA} cache_aware", top)])} ms, {ms(refill[(SPLIT, top)])} ms split). A
closed loop of identical requests is the worst case for the first refill, and it weighs more in a short level: while
writing this bench the router's ratio at {top} was about 1.6x with bench-qwen's 2 waves per slot, 1.7x with 3 and
1.8-2.0x with 4 or 5, hence {WAVES} here.
"""


def latency_part(rows: list[dict[str, Any]]) -> str:
    """Figure 2's table: router minus direct, per percentile and level."""
    by = {(r["way"], r["concurrency"]): r["metrics"] for r in rows}
    table = []
    p50s: list[float] = []
    for concurrency, count in LATENCY_LEVELS:
        direct, routed = by[("direct", concurrency)], by[("router", concurrency)]
        for name, key in (("TTFT", "ttft"), ("E2EL", "e2el")):
            for q in ("p50", "p99"):
                a, b = direct[key]["percentiles_ms"][q], routed[key]["percentiles_ms"][q]
                table.append((concurrency, count, f"{name} {q}", f"{a:.1f}", f"{b:.1f}", f"{b - a:+.1f}"))
                if q == "p50":
                    p50s.append(b - a)
    return f"""### 2. The latency the router adds

{LATENCY.input_len}-token prompts, {LATENCY.output_len} output tokens, one imitation at a Spark's pace: direct, and
through a vllm-router whose only worker it is (so the figure is the router's own cost, not the spreading of the
load); direct first, then the router, at each level. p99 of a few dozen requests is close to their maximum.

{markdown_table(("in flight", "requests", "figure", "direct, ms", "router, ms", "router - direct, ms"), table)}

The router adds at most {max(p50s):.1f} ms to a median here, against TTFTs of hundreds of ms at a Spark's pace; the
p99 differences, either sign, are the imitation's own jitter between two runs of a few dozen requests.
"""


def prefix_table(rows: list[dict[str, Any]]) -> str:
    """Figure 3's table: a row per policy and imitation, the level's own figures on its first."""
    table = []
    for r in rows:
        m = r["metrics"]
        for i, spark in enumerate(r["sparks"]):
            table.append(
                (
                    r["policy"],
                    f"Spark {'AB'[i]}",
                    spark["requests"],
                    pct(spark["hit_rate"]),
                    ms(spark["ttft_mean_ms"]),
                    f"{ms(m['ttft']['median_ms'])} / {ms(m['ttft']['percentiles_ms']['p99'])}" if i == 0 else "",
                    f"{m['output_throughput']:.1f}" if i == 0 else "",
                    ", ".join(f"{k} {v}" for k, v in sorted(r["decisions"].items())) if i == 0 else "",
                )
            )
    return markdown_table(PREFIX_COLUMNS, table)


def prefix_part(rows: list[dict[str, Any]]) -> str:
    """Figure 3's table per policy and Spark, the router's decisions, and the text prompt's outcome."""
    probe: dict[str, int] = next((r["text_probe"] for r in rows if r["text_probe"]), {})
    w = PREFIXED
    by = {r["policy"]: r for r in rows}
    aware, turn = by["cache_aware"], by["round_robin"]
    roofline = the_roofline(Knobs())
    return f"""### 3. Prefix cache by policy: cache_aware against round_robin

{w.num_prompts} requests, {PREFIXED_IN_FLIGHT} in flight through the router over two imitations: {w.input_len}-token
prompts whose first {w.prefix_len} tokens are one of {w.prefix_groups} prefixes drawn at random per request
(`Workload.prefix_groups`: system prompts or conversations so far; one prefix for all, bench-qwen's default,
would give every policy the same hits), {w.output_len} output tokens. Each policy gets a new router and prefixes
no imitation has seen. Hit rate: the imitation's `vllm:prefix_cache_hits_total` / `queries_total` over the
level; mean TTFT: its `vllm:time_to_first_token_seconds` (arrival to first token, without the router); client
TTFT: through the router. The router's decisions: its `vllm_router_prefix_routing_decisions_total` (the warm-up
request included). The best a prefix cache can do here is {w.prefix_len / w.input_len:.0%} of the prompt tokens,
less the first request of each group on each imitation that gets it (and requests of a group that arrive while
its first one is still in prefill).

{prefix_table(rows)}

**cache_aware: {pct(mean_of(aware, "hit_rate"))} of the prompt tokens hit the prefix cache, against
{pct(mean_of(turn, "hit_rate"))} with round_robin; mean TTFT on the imitations {ms(mean_of(aware, "ttft_mean_ms"))} ms
against {ms(mean_of(turn, "ttft_mean_ms"))} ms.** round_robin sends every group to both imitations, so each computes
most prefixes once; cache_aware keeps a group where its prefix is, at the price of an uneven split
({" / ".join(str(s["requests"]) for s in aware["sparks"])} requests: it balances only past
`--balance-abs-threshold` 64 requests of difference). A prompt's prefill alone takes a Spark
{roofline.step_seconds(w.input_len, 0):.2f} s, {roofline.step_seconds(w.input_len - w.prefix_len, 0):.2f} s on a
hit (the imitation's roofline): each hit gives a Spark back most of a prompt's prefill, for every request it serves.

**What cache_aware reads.** vllm-router 0.1.17 matches prefixes on token ids: bench-qwen's token-id prompts
are routed on as sent (no call to the worker; the decisions above are prefix hits and misses). For a text
prompt or a chat it first asks the worker for the ids, `POST /v1/completions/render` (or
`/v1/chat/completions/render`), then `POST /tokenize`, with the router's own `--api-key` (seen while writing
this bench with a stub worker that logs what it receives); the imitation answers neither (404), so one text
prompt through cache_aware moved the counters by {", ".join(f"{k} {v}" for k, v in probe.items()) or "nothing"}:
no prefix match, the choice falls to load alone. A vLLM that serves `/tokenize` (not tried here) gives chat clients
prefix routing at the cost of that extra round trip per request; the figures above are for token-id prompts.
"""


def mean_of(row: dict[str, Any], key: str) -> float | None:
    """A per-imitation figure of a level averaged over its requests (every prompt has the same length)."""
    pairs = [(s["requests"], s[key]) for s in row["sparks"] if s["requests"] and s[key] is not None]
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total else None


def rolling_part(result: dict[str, Any]) -> str:
    """Figure 4: the two loads' failures, the update's steps and deploy windows."""
    table = []
    for label, key in (
        ("through the router", "router"),
        (f"direct to {result['first'][-6:]} (updated first)", "direct"),
    ):
        t = result[key]
        window = "-" if not t["window"] else f"{t['window'][0]:.1f} to {t['window'][1]:.1f}"
        kinds = ", ".join(f"{k} {v}" for k, v in t["kinds"].items()) or "-"
        table.append((label, t["sent"], t["failed"], kinds, window, f"{t['latency_max_s']:.2f}"))
    deploys = "; ".join(f"{d['target'][-6:]} {d['running']:.1f} to {d['final']:.1f} s" for d in result["deploys"])
    drains = "; ".join(f"{s['target'][-6:]} {s['drain']}" for s in result["steps"])
    verdict = "0, as expected" if result["router"]["failed"] == 0 else f"**{result['router']['failed']}**"
    window = result["direct"]["window"]
    outage = window[1] - window[0] + 1 / RATE if window else 0.0
    return f"""### 4. Failed requests during a rolling update under load

The fleet rig of bench/fleet.py (a private PostgreSQL, `prefect server start` on it, the second dockerd as the
second machine, a process worker per target), two sim targets (one per daemon; startup time scale {STARTUP_SCALE:g},
decode time scale {DECODE_SCALE:g}: a request of {STEADY.output_len} tokens lasts ~0.2 s) behind the fleet's API key,
registered by `deployments.fleet register` from a targets file with a `router:` section (health check every 1 s,
drain timeout 30 s), the router run by `python -m deployments.router serve` (deployments/dev/router.py), both targets
deployed by `deploy_fleet` first ({result["setup_s"]:.0f} s with the rig). Then `rolling_update(targets=[a, b],
overrides={{"max_num_seqs": 32}})` ({result["update_s"]:.1f} s) while two loads run, each bench-qwen's streamed
request ({STEADY.input_len} prompt tokens) at {RATE:g} requests/s, an open loop (arrivals do not wait for answers):
one through the router, one directly to the first target updated. A request fails on an error or fewer tokens
than asked; times are seconds after the update started.

{markdown_table(("load", "requests", "failed", "how", "failures from .. to, s", "slowest answer, s"), table)}

**Through the router: {verdict}.** The update's deploys ran (Running to Completed) {deploys}; the drains: {drains}
(the first target's drain waited for the direct load's requests, which the router does not see). Direct to the
target, the failures are the requests running when its container stopped (cut off) and every arrival until the new
server answered: an outage of ~{outage:.1f} s here, where the imitation starts in about a second at this time
scale. A Spark's server takes about a minute to restart (docs/benchmarks.md, Startup: the model of a restart with
the new default), so a client pinned to it at {RATE:g} requests/s would lose ~{RATE * 60:.0f} requests per update,
and one through the router none while another Spark takes the load. The API key is
{"in" if result["router_log_has_key"] else "not in"} the router launcher's log.
"""


def body(results: dict[str, Any]) -> str:
    figures = "".join(f for f, key in zip("1234", PARTS, strict=True) if results.get(key))
    option = "" if figures == "1234" else f" --figures {figures}"
    parts = [
        f"{results['machine']} No GPU. `.venv/bin/python -m bench.router{option}` took "
        f"{results['bench_s'] / 60:.1f} min, on the vLLM imitation (sim/vllm), not a Spark, and vllm-router "
        f"{results['router_version']}."
    ]
    parts += [render(results[key]) for key, render in PARTS.items() if results.get(key)]
    return "\n\n".join(p.strip() for p in parts) + "\n"


#: The figures' keys in the results, in order, with what writes each one's part of the section.
PARTS: dict[str, Callable[[Any], str]] = {
    "throughput": throughput_part,
    "latency": latency_part,
    "prefix": prefix_part,
    "rolling": rolling_part,
}


# ---------------------------------------------------------------------------- main


def run_all(figures: str) -> dict[str, Any]:
    """The chosen figures: 1-3 on host processes, then 4 on the fleet rig."""
    start = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "router_version": version("vllm-router")}
    worker_env = dict(os.environ)  # the workers run as an operator runs them (INFO logs)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # this process: the figures, not the flows' logs
    hosted = (("1", "throughput", throughput), ("2", "latency", added_latency), ("3", "prefix", prefix_policies))
    with tempfile.TemporaryDirectory(prefix="bench-router-") as name:
        tmp = Path(name)
        if set(figures) & set("123"):
            with imitations(tmp, 2) as sims:
                for figure, key, measure in hosted:
                    if figure in figures:
                        print(f"{figure}. {key}", flush=True)
                        results[key] = measure(tmp, sims)
        if "4" in figures:
            print("4. a rolling update under load (the fleet rig)", flush=True)
            os.chmod(tmp, 0o755)
            with ExitStack() as stack:
                results["rolling"] = rolling_under_load(tmp, stack, worker_env)
                print(f"  {results['rolling']}", flush=True)
    results["bench_s"] = time.monotonic() - start
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", default="1234", help="which figures to measure (4: the fleet rig)")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write docs/benchmarks.md")
    parser.add_argument("--save", type=Path, help="also save the raw measurements as JSON")
    parser.add_argument(
        "--from", dest="sources", type=Path, nargs="+", help="write the section from saved measurements (merged)"
    )
    args = parser.parse_args()
    if args.sources:
        saved = [json.loads(path.read_text()) for path in args.sources]
        results = {k: v for one in saved for k, v in one.items()} | {"bench_s": sum(r["bench_s"] for r in saved)}
    else:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        results = run_all(args.figures)
        if args.save:
            args.save.write_text(json.dumps(results, indent=1, default=str))
    print(text := body(results))
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
