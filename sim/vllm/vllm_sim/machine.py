"""Commands that stand for the machine rather than for vLLM: its /proc/meminfo and other processes.

Why: on a Spark the product reads memory with `cat /proc/meminfo` (always current) and shares the
machine with processes that are not its own.  The imitation's machine is the ledger (ledger.py),
so the image carries two commands over it:

    python3 -m vllm_sim meminfo
        prints the ledger's memory as /proc/meminfo (MemTotal, MemFree, MemAvailable, Cached, Shmem, kB),
        computed when it runs: live held entries (stale heartbeats ignored), page cache since the
        last drop_caches, shmem.  Same knobs as the servers: VLLM_SIM_LEDGER_DIR, VLLM_SIM_DEVICE_TOTAL_GIB,
        VLLM_SIM_SYSTEM_BASELINE_GIB, VLLM_SIM_SHMEM_GIB, VLLM_SIM_HEARTBEAT_STALE_S.  A ledger directory that does not
        exist is an empty machine (as a server sees it); nothing is ever written.

    python3 -m vllm_sim hold --gib N [--name NAME]
        another process (or a container that is not ours) holding N GiB of unified memory: a held
        entry with a heartbeat every second until SIGTERM/SIGINT, then released, exit 0.  Servers'
        free-memory checks and `meminfo` count it; killed (SIGKILL, docker kill) it stops counting
        once its heartbeat is stale.

Not `vllm meminfo`: the image's `vllm` command is vLLM's CLI only (vllm_command.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from .knobs import Knobs
from .ledger import Ledger

COMMANDS = ("meminfo", "hold")
HEARTBEAT_S = 1.0


def meminfo_text(env: Mapping[str, str] | None = None) -> str:
    """The ledger's memory now, in /proc/meminfo's format."""
    knobs = Knobs.from_env(env)
    ledger = Ledger(
        Path(knobs.ledger_dir),
        "",
        knobs.heartbeat_stale_s,
        knobs.device_total_gib,
        knobs.system_baseline_gib,
        knobs.shmem_gib,
    )
    return ledger.meminfo_text()


def _meminfo(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(
        prog="python3 -m vllm_sim meminfo", description="Print the imitation's memory as /proc/meminfo."
    ).parse_args(argv)
    root = Knobs.from_env().ledger_dir
    if not os.path.isdir(root):  # stdout stays pure meminfo; the note is for whoever looks
        print(f"meminfo: ledger directory {root} does not exist: an empty machine", file=sys.stderr)
    sys.stdout.write(meminfo_text())
    sys.stdout.flush()
    return 0


def _gib(value: str) -> float:
    gib = float(value)
    if not gib >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return gib


def _hold(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m vllm_sim hold", description="Hold unified memory in the ledger until SIGTERM/SIGINT."
    )
    parser.add_argument("--gib", type=_gib, required=True, help="GiB held (fractional allowed)")
    parser.add_argument("--name", default="", help="ledger name (default: holder-<hostname>-<pid>)")
    args = parser.parse_args(argv)
    knobs = Knobs.from_env()
    root = Path(knobs.ledger_dir)
    if not root.is_dir():
        print(
            f"hold: ledger directory {root} does not exist (mount the target's ledger there or set "
            "VLLM_SIM_LEDGER_DIR)",
            file=sys.stderr,
        )
        return 2
    name = args.name or f"holder-{socket.gethostname() or 'localhost'}-{os.getpid()}"
    ledger = Ledger(root, name, knobs.heartbeat_stale_s, knobs.device_total_gib, knobs.system_baseline_gib)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        ledger.publish(args.gib, "held", name)
        print(f"holding {args.gib:g} GiB as {name} in {root} until SIGTERM", flush=True)
        while not stop.wait(HEARTBEAT_S):
            ledger.publish(args.gib, "held", name)
    finally:
        ledger.release()
    print(f"released {args.gib:g} GiB ({name})", flush=True)
    return 0


def main(argv: Sequence[str]) -> int:
    """`python3 -m vllm_sim meminfo|hold ...` (argv starts with the command)."""
    command, rest = argv[0], list(argv[1:])
    return _meminfo(rest) if command == "meminfo" else _hold(rest)
