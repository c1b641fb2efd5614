"""Measure the vLLM imitation's decode roofline the way `vllm bench serve` would, and record it.

Why: the imitation's speed is a model of a DGX Spark; this checks, through the
real HTTP path (streaming, continuous batching, the scheduler thread), that the
figures operators know from the runbook come out — single request 6-7 tok/s,
64 concurrent 300-400 tok/s, TTFT 200-500 ms — and writes them to
docs/benchmarks.md under `## vLLM imitation roofline` (other sections kept).

The server is started with the command the deploy renders, ``EngineSpec().vllm_command()``
(blocks/engine.py: the runbook's flags), with only the download dir, port and host changed for a
host process; the streams are read with the ``openai`` client, as an operator's client would.

Usage:
    python bench/sim_roofline.py                 # starts the imitation as a host process
    python bench/sim_roofline.py --base-url http://127.0.0.1:8000   # an already running one
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import OpenAI

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import machine_line, write_section  # noqa: E402
from blocks.engine import EngineSpec  # noqa: E402
from sim.ports import free_port  # noqa: E402
from sim.vllm.vllm_sim.testing import build_hf_cache  # noqa: E402

MODEL = EngineSpec().served_name
SECTION = "## vLLM imitation roofline"
PROMPT = "Explain how a memory-bandwidth-bound language model server batches requests, request {i}."


@dataclass
class Sample:
    ttft: float      # send -> first streamed chunk with text
    e2e: float       # send -> last chunk
    tokens: int      # completion tokens (usage)

    @property
    def tpot(self) -> float:
        return (self.e2e - self.ttft) / max(1, self.tokens - 1)


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile by nearest rank (no interpolation: few samples, report a real one)."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def stream_one(client: OpenAI, i: int, max_tokens: int) -> Sample:
    """One streamed /v1/completions request, timed like vllm bench serve.

    TTFT is the first chunk that carries a choice; the token count is the usage the server
    reports in its last chunk (``stream_options.include_usage``), not a count of chunks.
    """
    start = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT.format(i=i), max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        for chunk in stream:
            if chunk.choices and ttft is None:
                ttft = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    end = time.perf_counter() - start
    return Sample(ttft if ttft is not None else end, end, tokens)


def serve_command(port: int, download_dir: Path) -> list[str]:
    """The deploy's own command line (``EngineSpec().vllm_command()``) for a host process.

    Only what a host process needs differs from the container: the imitation's entry point for
    ``vllm``, the local cache as ``--download-dir``, the port (a spec field), and a loopback host
    with quiet access logs (extra args, after the runbook's flags, as the spec renders them).
    """
    spec = EngineSpec(download_dir=str(download_dir), container_port=port,
                      extra_args=["--host", "127.0.0.1", "--disable-uvicorn-access-log"])
    command = spec.vllm_command()
    assert command[0] == "vllm", command
    return [sys.executable, "-m", "sim.vllm", *command[1:]]


def start_server(port: int, workdir: Path) -> subprocess.Popen:
    """The imitation with the runbook's command line, real-time decoding, fast startup."""
    cache = build_hf_cache(workdir / "hf")
    (workdir / "ledger").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "HF_"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache.root), "VLLM_SIM_LEDGER_DIR": str(workdir / "ledger"),
                "VLLM_SIM_TIME_SCALE": "0.002", "VLLM_SIM_DECODE_TIME_SCALE": "1.0"})
    proc = subprocess.Popen(serve_command(port, cache.root), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("imitation did not become ready")


def run(base_url: str, singles: int, ttft_probes: int, concurrency: int, max_tokens: int) -> dict:
    """Warm-up, idle-server TTFT probes, single streams, then one burst of ``concurrency`` streams.

    One client for all threads (openai's client is thread-safe; its pool keeps 100 connections
    alive, more than the burst opens); no retries, so a failed request fails the bench.
    """
    with OpenAI(base_url=f"{base_url.rstrip('/')}/v1", api_key=os.environ.get("VLLM_API_KEY", "EMPTY"),
                max_retries=0, timeout=300) as client:
        stream_one(client, -1, 4)  # warm-up (connection, prefix cache of nothing)
        probes = [stream_one(client, 1000 + i, 1) for i in range(ttft_probes)]
        single = [stream_one(client, i, max_tokens) for i in range(singles)]
        barrier = threading.Barrier(concurrency)

        def burst(i: int) -> Sample:
            barrier.wait()
            return stream_one(client, 2000 + i, max_tokens)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            batch = list(pool.map(burst, range(concurrency)))
        duration = time.perf_counter() - start
    return {
        "single_tps": statistics.median(1 / s.tpot for s in single),
        "single_e2e_tps": statistics.median(s.tokens / s.e2e for s in single),
        "ttft_median": statistics.median(s.ttft for s in probes),
        "ttft_p99": pct([s.ttft for s in probes], 99),
        "agg_tps": sum(s.tokens for s in batch) / duration,
        "batch_ttft_median": statistics.median(s.ttft for s in batch),
        "batch_ttft_p99": pct([s.ttft for s in batch], 99),
        "batch_tpot_median": statistics.median(s.tpot for s in batch),
        "singles": singles, "probes": ttft_probes, "concurrency": concurrency, "max_tokens": max_tokens,
        "tokens": sum(s.tokens for s in batch),
    }


def section(r: dict) -> str:
    """The markdown section: the figures beside the runbook's."""
    return f"""{machine_line()} No GPU.
`python bench/sim_roofline.py`: the imitation (`sim/vllm`) started with the deploy's command line
(`EngineSpec().vllm_command()`, the runbook's flags), `VLLM_SIM_DECODE_TIME_SCALE=1` (real-time
Spark decoding), streamed `/v1/completions` read with the `openai` client and timed like
`vllm bench serve` (TTFT = first streamed chunk, TPOT = (latency - TTFT) / (tokens - 1)). These are
the imitation's *roofline model* seen through its HTTP path: they check the model, they are **not**
measurements of a DGX Spark.

| figure | imitation | runbook (DGX Spark) |
|---|---|---|
| single request, decode tokens/s (1/TPOT, median of {r['singles']}, {r['max_tokens']} tokens) | {r['single_tps']:.2f} | ~6-7 |
| single request, tokens/s over the whole request | {r['single_e2e_tps']:.2f} | |
| {r['concurrency']} concurrent, aggregate output tokens/s ({r['tokens']} tokens) | {r['agg_tps']:.0f} | ~300-400 (estimated) |
| TTFT, short prompt, idle server, median / p99 of {r['probes']} (ms) | {r['ttft_median'] * 1000:.0f} / {r['ttft_p99'] * 1000:.0f} | 200-500 |
| TTFT in the {r['concurrency']}-request burst, median / p99 (ms) | {r['batch_ttft_median'] * 1000:.0f} / {r['batch_ttft_p99'] * 1000:.0f} | |
| TPOT in the burst, median (ms) | {r['batch_tpot_median'] * 1000:.0f} | |

The burst's TTFT is longer because all {r['concurrency']} prompts arrive within a few ms and are
prefilled in one or two compute-bound steps (~{r['concurrency']} x 20 tokens at the modelled 100 TFLOPS)
before their first token.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", help="measure an already running imitation instead of starting one")
    ap.add_argument("--singles", type=int, default=3)
    ap.add_argument("--ttft-probes", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    proc = None
    tmp = tempfile.TemporaryDirectory(prefix="sim-roofline-")
    base = args.base_url
    if not base:
        port = free_port()
        proc = start_server(port, Path(tmp.name))
        base = f"http://127.0.0.1:{port}"
    try:
        results = run(base, args.singles, args.ttft_probes, args.concurrency, args.max_tokens)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        tmp.cleanup()
    text = section(results)
    print(f"{SECTION}\n\n{text}")
    if not args.no_write:
        write_section(SECTION.removeprefix("## "), text, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
