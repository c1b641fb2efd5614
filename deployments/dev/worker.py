"""Start and stop a real `prefect worker start` for `make demo`, the tests and the benches.

An operator's worker is ``prefect worker start --pool spark-vllm --with-healthcheck`` under
systemd (docs/fleet.md has the unit): systemd starts it, stops it (SIGTERM, then SIGKILL of its
cgroup) and restarts it. The demo (`make demo` / `make down`), the integration and fleet tests and
the benches have no unit of their own; this module stands in for systemd and starts the operator's
very command, so that they exercise the operator's path:

    python -m deployments.dev.worker start --pool spark-vllm --name demo-worker --log .demo/worker.log
    python -m deployments.dev.worker stop  --pool spark-vllm --name demo-worker

What systemd would otherwise give:

- A bounded stop of the whole tree: the worker runs each flow run as a child process in a session
  of its own, so killing the worker's process group misses the flow runs. `stop_worker` sends
  SIGTERM, waits up to ``grace_s``, then kills every process left of the tree (psutil snapshots it
  before and during the wait: flow runs are re-parented away once the worker is gone).
- SIGINT at its default: Prefect's worker turns SIGTERM into SIGINT, and a worker that inherited
  SIGINT *ignored* (every `&` job of a non-interactive shell, some CI runners) would ignore SIGTERM.
- Polling every second (``PREFECT_WORKER_QUERY_SECONDS=1`` unless the environment sets it): with
  Prefect's 10 s a run waits 5 s on average before it is picked up (docs/benchmarks.md, "Deploy
  through a worker").
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
#: The polling the demo's and the tests' workers run with (see the module docstring); the environment wins.
WORKER_ENV: dict[str, str] = {"PREFECT_WORKER_QUERY_SECONDS": "1"}
#: Time a worker gets to stop after SIGTERM: well under a second while its server is up, about 7 s
#: once the server is gone (its "worker stopped" event times out); 20 s leaves room on 2 busy cores.
STOP_GRACE_S = 20.0


class WorkerError(RuntimeError):
    """The worker did not come up (its log's tail is in the message)."""


@dataclass
class Worker:
    """A worker this process started (``process``), with the log it writes to."""

    process: subprocess.Popen[bytes]
    name: str
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:] if self.log else ""
        except FileNotFoundError:
            return ""


@dataclass(frozen=True)
class Stopped:
    """How a stop went: ``graceful`` when the worker exited on SIGTERM within the deadline."""

    pid: int
    graceful: bool
    seconds: float
    killed: tuple[int, ...] = ()
    already_gone: bool = False

    def __str__(self) -> str:
        if self.already_gone:
            return f"worker {self.pid} was not running"
        how = "stopped on SIGTERM" if self.graceful else "did not stop on SIGTERM: killed"
        extra = f"; killed left-over processes {list(self.killed)}" if self.killed else ""
        return f"worker {self.pid} {how} after {self.seconds:.1f} s{extra}"


def _default_sigint() -> None:
    """Runs in the child before exec: SIGINT back to its default (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def start_worker(
    pool: str,
    name: str,
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    started_timeout_s: float | None = 120.0,
    queues: Sequence[str] = (),
) -> Worker:
    """Start `prefect worker start --pool POOL --name NAME [--work-queue Q ...]` detached, logging to ``log``.

    ``queues``: the work queues it polls (a fleet machine's queue is named after its target:
    docs/fleet.md); none = every queue of the pool. A session of its own, so that a terminal's
    signals do not reach it and it outlives the shell that started it. With ``started_timeout_s``,
    returns once the worker logs that it started, and raises `WorkerError` (having stopped it) if not.
    """
    environment = {**WORKER_ENV, **(os.environ if env is None else env)}
    command = [PREFECT, "worker", "start", "--pool", pool, "--name", name]
    for queue in queues:
        command += ["--work-queue", queue]
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    worker = Worker(process=process, name=name, log=log)
    if started_timeout_s is not None:
        _wait_started(worker, started_timeout_s)
    return worker


def _wait_started(worker: Worker, timeout_s: float) -> None:
    """Wait for the worker's "Worker '<name>' started!" line: it then polls its pool."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f"Worker '{worker.name}' started!" in worker.log_tail(1_000_000):
            return
        if worker.process.poll() is not None:
            raise WorkerError(f"worker {worker.name!r} exited before it started; its log:\n{worker.log_tail()}")
        time.sleep(0.1)
    stopped = stop_worker(worker)
    raise WorkerError(
        f"worker {worker.name!r} did not start within {timeout_s:.0f} s ({stopped}); its log:\n{worker.log_tail()}"
    )


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_worker(worker: Worker | int, grace_s: float = STOP_GRACE_S) -> Stopped:
    """SIGTERM, up to ``grace_s`` for the worker to exit, then kill what is left of its process tree.

    Bounded whatever state the worker is in (backing off from an unreachable server, waiting on a
    flow run, ignoring signals). ``worker``: one this process started, or the pid of another's.
    """
    began = time.monotonic()
    process = worker.process if isinstance(worker, Worker) else None
    pid = worker.pid if isinstance(worker, Worker) else worker
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        root = None
    if root is None or not _alive(root):
        if process is not None:
            process.poll()
        return Stopped(pid, graceful=True, seconds=0.0, already_gone=True)
    seen = {proc.pid: proc for proc in _tree(root)}
    root.terminate()
    while time.monotonic() < began + grace_s:
        if process is not None:
            process.poll()  # reap it: else it stays a zombie
        if not _alive(root):
            break
        seen.update({proc.pid: proc for proc in _tree(root) if proc.pid not in seen})
        time.sleep(0.1)
    graceful = not _alive(root)
    left = [proc for proc in seen.values() if _alive(proc)]
    for proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    if process is not None:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    psutil.wait_procs([proc for proc in left if proc.pid != pid], timeout=5)
    killed = tuple(sorted(proc.pid for proc in left if proc.pid != pid))
    return Stopped(pid, graceful=graceful, seconds=time.monotonic() - began, killed=killed)


def find_workers(pool: str, name: str) -> list[int]:
    """Live `prefect worker start` processes of this pool and name that talk to this shell's server.

    What `make demo` needs to start one worker, never a second, and `make down` to stop it from
    another process.
    """
    api_url = os.environ.get("PREFECT_API_URL")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if proc.pid == os.getpid() or "worker" not in argv or "start" not in argv:
            continue
        if _option(argv, "--pool") != pool or _option(argv, "--name") != name:
            continue
        try:
            theirs = proc.environ().get("PREFECT_API_URL", api_url)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            theirs = api_url
        if theirs == api_url:
            found.append(proc.pid)
    return sorted(found)


def _option(argv: list[str], name: str) -> str | None:
    return next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name), None)


def main(argv: list[str] | None = None) -> int:
    """The command line of the module docstring (`make demo` / `make down`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--pool", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", type=Path, help="start: the worker's log file")
    args = parser.parse_args(argv)
    running = find_workers(args.pool, args.name)
    if args.command == "stop":
        for pid in running:
            print(stop_worker(pid))
        if not running:
            print(f"worker {args.name}: not running")
        return 0
    if running:
        print(f"worker {args.name} already running (pid {running[0]}): not starting another")
        return 0
    try:
        worker = start_worker(args.pool, args.name, args.log or Path(f"{args.name}.log"))
    except WorkerError as failure:
        print(failure, file=sys.stderr)
        return 1
    query = os.environ.get("PREFECT_WORKER_QUERY_SECONDS", WORKER_ENV["PREFECT_WORKER_QUERY_SECONDS"])
    print(f"worker {args.name} started (pid {worker.pid}, polls pool {args.pool} every {query} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
