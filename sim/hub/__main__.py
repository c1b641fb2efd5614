"""Run the Hub imitation as a process.

    python -m sim.hub --host 127.0.0.1 --port 0 --data-dir DIR --repo Qwen/Qwen3-32B-FP8 \
        --shards 7 --shard-bytes 4194304 [--token T] [--gated] [--throttle BYTES_PER_S] ...

Prints ``Hub imitation serving http://HOST:PORT`` on stdout (flushed) once listening; other
information goes to stderr. SIGTERM or SIGINT stops it cleanly (exit 0). Faults can be changed at
run time with ``POST /_sim/faults`` / ``DELETE /_sim/faults``; ``GET /_sim/stats`` reads counters.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .faults import Faults
from .repo import RepoSpec
from .server import HubServer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim.hub", description="Local imitation of the Hugging Face Hub")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--cdn-port", type=int, default=0, help="port of the LFS 'CDN' origin (0: free port)")
    p.add_argument("--data-dir", required=True, type=Path, help="where generated repos are cached")
    p.add_argument("--repo", action="append", default=None, help="repo id (repeatable); default Qwen/Qwen3-32B-FP8")
    p.add_argument("--shards", type=int, default=7)
    p.add_argument("--shard-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-size", type=int, default=None, help="index metadata.total_size (default: the real model's)")
    p.add_argument("--token", action="append", default=None, help="required bearer token (repeatable)")
    p.add_argument("--gated", action="store_true", help="every --repo is gated")
    p.add_argument("--gated-repo", action="append", default=[], help="this repo is gated (repeatable)")
    p.add_argument("--accept-gate", action="store_true", help="gated repos start with their conditions accepted")
    p.add_argument("--private", action="store_true", help="every --repo is private")
    p.add_argument("--no-lfs-redirect", action="store_true", help="serve LFS bytes from /resolve directly")
    p.add_argument("--tree-page-size", type=int, default=1000)
    p.add_argument("--cdn-url-ttl", type=int, default=3600, help="seconds a signed CDN URL stays valid")
    # A fault rule active from the start (glob/methods/times apply to it).
    p.add_argument("--throttle", type=float, default=None, help="per-connection body rate, bytes/s")
    p.add_argument("--total-throttle", type=float, default=None, help="summed body rate cap, bytes/s")
    p.add_argument("--cut-after", type=int, default=None, help="close connections after N body bytes")
    p.add_argument("--status-5xx", type=int, default=None, help="answer 500/502/503/504/429 instead")
    p.add_argument("--retry-after", type=int, default=None)
    p.add_argument("--ignore-range", action="store_true", help="answer Range requests with 200 full body")
    p.add_argument("--first-byte-delay", type=float, default=None, help="seconds before the status line")
    p.add_argument("--fault-glob", default="*")
    p.add_argument("--fault-methods", default=None, help="comma-separated, e.g. GET")
    p.add_argument("--fault-times", type=int, default=None)
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    repo_ids = args.repo or ["Qwen/Qwen3-32B-FP8"]
    specs = [
        RepoSpec(
            repo_id=rid,
            n_shards=args.shards,
            shard_bytes=args.shard_bytes,
            gated=args.gated or rid in args.gated_repo,
            private=args.private,
            seed=args.seed,
            total_size=args.total_size,
        )
        for rid in repo_ids
    ]
    fault = Faults(
        cut_after_bytes=args.cut_after,
        status_5xx=args.status_5xx,
        retry_after=args.retry_after,
        ignore_range=args.ignore_range,
        throttle_bytes_per_s=args.throttle,
        total_throttle_bytes_per_s=args.total_throttle,
        first_byte_delay_s=args.first_byte_delay,
        path_glob=args.fault_glob,
        methods=args.fault_methods.split(",") if args.fault_methods else None,
        times=args.fault_times,
    )
    active = any(
        v not in (None, False)
        for v in (
            fault.cut_after_bytes,
            fault.status_5xx,
            fault.ignore_range,
            fault.throttle_bytes_per_s,
            fault.total_throttle_bytes_per_s,
            fault.first_byte_delay_s,
        )
    )
    hub = HubServer(
        repos=specs,
        data_dir=args.data_dir,
        token=args.token,
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        lfs_redirect=not args.no_lfs_redirect,
        tree_page_size=args.tree_page_size,
        cdn_url_ttl_s=args.cdn_url_ttl,
        faults=fault if active else None,
        verbose=args.verbose,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    hub.start()
    if args.accept_gate:
        for s in specs:
            if s.gated:
                hub.accept_gate(s.repo_id)
    for s in specs:
        print(f"[sim.hub] {s.repo_id} commit {hub.commit(s.repo_id)}", file=sys.stderr, flush=True)
    print(f"[sim.hub] LFS CDN origin {hub.cdn_url}", file=sys.stderr, flush=True)
    print(f"Hub imitation serving {hub.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
