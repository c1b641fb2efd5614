"""Start and stop the fleet's router for the tests and the benches, as systemd does on a front machine.

The operator's router is ``python -m deployments.router serve --fleet <fleet>`` under systemd
(docs/router.md has the unit). The fleet tests and bench/router.py have no unit: this starts that
very command, waits until it has rebuilt the router's workers (its "[router] ... routing to" line),
and stops it with SIGTERM, then kills what is left of its tree (the router is its child).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
#: The launcher's line once the router listens and its workers are rebuilt.
READY_MARK = "[router] "
ROUTER_STOP_GRACE_S = 10.0


@dataclass
class RouterProcess:
    """A router launcher this process started, with its log."""

    process: subprocess.Popen[bytes]
    fleet: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_router(fleet: str, log: Path, env: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> RouterProcess:
    """Run `python -m deployments.router serve --fleet FLEET`; return once its workers are rebuilt.

    Raises:
        RuntimeError: it exited or said nothing within ``timeout_s`` (its log is in the message).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "deployments.router", "serve", "--fleet", fleet],
            cwd=ROOT,
            env=dict(os.environ if env is None else env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    router = RouterProcess(process, fleet, log)
    start = len(router.log_text())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if READY_MARK in router.log_text()[start:]:
            return router
        if process.poll() is not None:
            raise RuntimeError(f"the router of {fleet} exited with {process.returncode}:\n{router.log_text()[-3000:]}")
        time.sleep(0.1)
    stop_router(router)
    raise RuntimeError(f"the router of {fleet} did not start within {timeout_s:.0f} s:\n{router.log_text()[-3000:]}")


def stop_router(router: RouterProcess, grace_s: float = ROUTER_STOP_GRACE_S) -> None:
    """SIGTERM to the launcher (it stops the router), then kill whatever of the tree is left."""
    stop_tree(router.process.pid, grace_s)
    router.process.wait(5)


def stop_tree(pid: int, grace_s: float = ROUTER_STOP_GRACE_S) -> None:
    """SIGTERM to ``pid``, up to ``grace_s`` for it and its children to exit, then SIGKILL to the rest."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
        root.terminate()
    except psutil.NoSuchProcess:
        return
    _gone, alive = psutil.wait_procs(tree, timeout=grace_s)
    for proc in alive:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    """`start --fleet F --log L --pid-file P` (returns once the router routes) and `stop --pid-file P`:
    the demo's stand-in for systemd (deployments/demo.sh)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deployments.dev.router")
    parser.add_argument("command", choices=("start", "stop"))
    parser.add_argument("--fleet", default="sim")
    parser.add_argument("--log", type=Path, default=ROOT / ".demo" / "router.log")
    parser.add_argument("--pid-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "start":
        router = start_router(args.fleet, args.log)
        args.pid_file.write_text(str(router.process.pid))
        print(router.log_text().split(READY_MARK)[-1].splitlines()[0].strip())
        return 0
    try:
        stop_tree(int(args.pid_file.read_text()))
    except (OSError, ValueError):
        pass  # no pid file: nothing started
    args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
