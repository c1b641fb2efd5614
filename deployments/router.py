"""Run the fleet's router on the front machine: vllm-router with the fleet's settings, its workers rebuilt.

    python -m deployments.router serve --fleet sparks        # what the systemd unit runs (docs/router.md)

The settings are the fleet's `vLLM Fleet Router` block (saved by `python -m deployments.fleet register`
from the targets file's ``router:`` section), read from the Prefect server this machine points at
(PREFECT_API_URL). The API key comes from the block's Secret block (or VLLM_API_KEY) and reaches
vllm-router through its environment, set in-process by the child, never on a command line where `ps`
shows it (vllm-router takes it only as ``--api-key``). Once the router listens, its worker list is
rebuilt from the targets' verdicts (tasks/router/sync.py `follow_verdicts`): a router that restarts
starts empty and routes again to every healthy target within seconds. SIGTERM or SIGINT stops the router.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx

from blocks.router import FleetRouter
from tasks.router.api import RouterUnreachable
from tasks.router.sync import follow_verdicts
from tasks.secrets import load_secret

#: The child's environment variable that carries the API key into the router process.
KEY_ENV = "SPARK_VLLM_ROUTER_KEY"
#: How long the router may take to listen.
START_TIMEOUT_S = 30.0


def _run(router_args: Sequence[str]) -> None:
    """The child: vllm-router's own launcher, with the key from the environment."""
    from vllm_router.launch_router import launch_router, parse_router_args

    args = parse_router_args(list(router_args))
    args.api_key = os.environ.pop(KEY_ENV, "") or None
    launch_router(args)


def wait_listening(router: FleetRouter, proc: subprocess.Popen) -> None:
    """Until the router answers /liveness; exits (SystemExit) when it died or stayed silent."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm-router exited with {proc.returncode} before listening (its log is above)")
        try:
            if httpx.get(f"{router.url}/liveness", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"vllm-router did not listen at {router.url} within {START_TIMEOUT_S:.0f} s")


def serve_router(fleet: str) -> int:
    """Start the fleet's router, rebuild its workers, and stay until it exits or is told to stop."""
    try:
        router = FleetRouter.named(fleet)
    except ValueError:
        raise SystemExit(
            f"no vllm-fleet-router block {fleet!r}: add a router: section to the targets file and run "
            "python -m deployments.fleet register <targets file> (docs/router.md)"
        ) from None
    key = load_secret(router.api_key_secret, ("VLLM_API_KEY",), None) if router.api_key_secret else None
    env = {**os.environ, KEY_ENV: key.get_secret_value() if key else ""}
    proc = subprocess.Popen([sys.executable, "-m", "deployments.router", "run", "--", *router.router_args()], env=env)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: proc.terminate())
    wait_listening(router, proc)
    try:
        membership = follow_verdicts(fleet)
        members = ", ".join(membership.members) if membership else "none"
        print(f"[router] {fleet} at {router.url} ({router.policy}): routing to {members or 'none'}", flush=True)
    except (RouterUnreachable, httpx.HTTPError) as err:
        print(f"[router] could not rebuild the workers yet ({err}); health-check-fleet will", flush=True)
    return proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.router", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="start the fleet's router from its block and rebuild its workers")
    serve_cmd.add_argument("--fleet", required=True)
    run_cmd = sub.add_parser("run", help="(internal) the router process itself")
    run_cmd.add_argument("router_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "run":
        _run([a for a in args.router_args if a != "--"])
        return 0
    return serve_router(args.fleet)


if __name__ == "__main__":
    sys.exit(main())
