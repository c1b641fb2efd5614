"""The project's Prefect process worker: start it, stop it within a deadline, follow what it runs.

One implementation for the integration test, `make demo` / `make down` and the bench:

    python -m deployments.worker start  --pool spark-vllm --name demo-worker --log .demo/worker.log --pid-file .demo/worker.pid
    python -m deployments.worker status --pool spark-vllm --name demo-worker --pid-file .demo/worker.pid
    python -m deployments.worker stop   --pool spark-vllm --name demo-worker --pid-file .demo/worker.pid
    python -m deployments.worker run deploy-qwen/sim --events-log .demo/run-events.log --report deploy-sim [--param k=v]

Why not just `prefect worker start ... &` and `kill`:

- Prefect's worker handles SIGTERM by sending *itself* SIGINT, and its SIGINT handler hands the
  signal on to whatever SIGINT handler the process had when it started. A worker that inherits
  SIGINT *ignored* -- bash ignores it for every `&` job of a non-interactive script, and a CI
  runner or `nohup ... &` wrapper may ignore it for a whole test session -- therefore ignores
  SIGTERM too: it logs "Received SIGTERM. Sending SIGINT to the process worker" and goes on
  polling (then, once its server is gone, connection errors and back-offs). `start_worker` resets
  SIGINT to its default before exec'ing the worker, so SIGTERM stops it whatever its parent ignores.
- The worker runs each flow run as a child process in a session of its own (Prefect's runner
  isolates it), so `kill -- -<worker pgid>` misses the flow runs. `stop_worker` snapshots the
  worker's process tree, sends SIGTERM, waits a deadline, then SIGKILLs every process group led
  by a process of that tree (and any single process left in it).
- The worker polls its pool every ``PREFECT_WORKER_QUERY_SECONDS`` (Prefect's default: 10 s, with
  +-30 % jitter): on average 5 s, and up to 13 s, between `prefect deployment run` and the flow
  run's start. One machine's operator wants a deploy to start within a couple of seconds, so the
  workers this module starts poll every second unless the environment says otherwise (one cheap
  query a second to the local server). The other worker settings do not delay an immediate run:
  ``PREFECT_WORKER_PREFETCH_SECONDS`` (10) only lets a run *scheduled* up to 10 s ahead be
  submitted early, and ``PREFECT_WORKER_HEARTBEAT_SECONDS`` (30) paces the worker's registration
  and pool sync, not its polling.

Nothing here imports Prefect except `run` (start/stop/status stay fast and work without a server).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
#: The polling the project's workers run with (see the module docstring); the environment wins.
WORKER_ENV: dict[str, str] = {"PREFECT_WORKER_QUERY_SECONDS": "1"}
#: Time a worker gets to stop after SIGTERM before its process tree is killed. A worker stops in
#: well under a second while its server is up, and in about 7 s when the server is already gone
#: (its "worker stopped" event times out); 20 s leaves room on a loaded 2-core machine.
STOP_GRACE_S = 20.0
#: Runs in the child before the worker: SIGINT back to its default (and SIGINT/SIGTERM unblocked),
#: so that Prefect's SIGTERM -> SIGINT path works even when the parent ignores SIGINT; exec keeps
#: the pid, so the pid the caller records is the worker's.
_EXEC_WITH_DEFAULT_SIGINT = (
    "import os, signal, sys;"
    "signal.signal(signal.SIGINT, signal.SIG_DFL);"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM});"
    "os.execv(sys.argv[1], sys.argv[1:])"
)


class WorkerError(RuntimeError):
    """The worker did not come up (its log's tail is in the message)."""


# --- processes, from /proc -------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it; ``start`` (clock ticks after boot) tells it from a reused pid."""

    pid: int
    ppid: int
    pgid: int
    start: int


def read_proc(pid: int) -> Proc | None:
    """The live process ``pid`` (None when gone or a zombie: a zombie has stopped for good)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces and ")"
    if fields[0] in ("Z", "X"):
        return None
    return Proc(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), start=int(fields[19]))


def _all_procs() -> list[Proc]:
    procs: list[Proc] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (proc := read_proc(int(entry.name))) is not None:
            procs.append(proc)
    return procs


def process_tree(pid: int) -> list[Proc]:
    """``pid`` and all its live descendants (flow runs and what they started)."""
    procs = _all_procs()
    children: dict[int, list[Proc]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    root = next((p for p in procs if p.pid == pid), None)
    if root is None:
        return []
    tree: list[Proc] = []
    todo = [root]
    while todo:
        proc = todo.pop()
        tree.append(proc)
        todo.extend(children.get(proc.pid, []))
    return tree


def _alive(proc: Proc) -> bool:
    current = read_proc(proc.pid)
    return current is not None and current.start == proc.start


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")[:-1]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def is_worker(pid: int, pool: str, name: str, api_url: str | None = None) -> bool:
    """Whether ``pid`` is a live `prefect worker start` for this pool and name (and API, if given).

    A pid file alone is not proof: the pid may have been reused, or (as the old demo.sh did)
    record a shell instead of the worker.
    """
    if read_proc(pid) is None:
        return False
    argv = _cmdline(pid)
    if "worker" not in argv or "start" not in argv:
        return False
    if _option(argv, "--pool", "-p") != pool or _option(argv, "--name", "-n") != name:
        return False
    if api_url is not None:
        env = _environ(pid)
        if env is not None and env.get("PREFECT_API_URL", api_url) != api_url:
            return False
    return True


def find_workers(pool: str, name: str, api_url: str | None = None) -> list[int]:
    """Every live worker on this machine for this pool and name: a lost pid file hides none."""
    return sorted(p.pid for p in _all_procs() if p.pid != os.getpid() and is_worker(p.pid, pool, name, api_url))


# --- start and stop --------------------------------------------------------------------------


@dataclass
class Worker:
    """A started worker; ``process`` is set when this process started it (then it must reap it)."""

    pid: int
    pool: str
    name: str
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

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

    ``queues``: the work queues it polls (a fleet's worker polls its machine's queue, named after
    the target: docs/fleet.md); none = every queue of the pool (one machine).

    Its own session (so a terminal's or a test session's signals do not reach it, and it outlives
    the shell that started it), SIGINT at its default (see the module docstring), the project's
    polling unless ``env`` sets it, cwd the project root (the deployments have no pull step: the
    process worker runs the flows from where it runs). With ``started_timeout_s``, returns once the
    worker logs that it started, and raises `WorkerError` (having stopped it) if it does not.
    """
    environment = dict(os.environ if env is None else env)
    for key, value in WORKER_ENV.items():
        environment.setdefault(key, value)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-c",
        _EXEC_WITH_DEFAULT_SIGINT,
        PREFECT,
        "worker",
        "start",
        "--pool",
        pool,
        "--name",
        name,
    ]
    for queue in queues:
        command += ["--work-queue", queue]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(pid=process.pid, pool=pool, name=name, log=log, process=process)
    if started_timeout_s is not None:
        wait_started(worker, started_timeout_s)
    return worker


def wait_started(worker: Worker, timeout_s: float) -> None:
    """Wait for the worker's "Worker '<name>' started!" line: it then polls its pool."""
    needle = f"Worker '{worker.name}' started!"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in worker.log_tail(1_000_000):
            return
        if (worker.process is not None and worker.process.poll() is not None) or read_proc(worker.pid) is None:
            raise WorkerError(f"worker {worker.name!r} exited before it started; its log:\n{worker.log_tail()}")
        time.sleep(0.1)
    stopped = stop_worker(worker)
    raise WorkerError(
        f"worker {worker.name!r} did not start within {timeout_s:.0f} s ({stopped}); its log:\n{worker.log_tail()}"
    )


def stop_worker(worker: Worker | int, grace_s: float = STOP_GRACE_S) -> Stopped:
    """SIGTERM, up to ``grace_s`` for the worker to exit, then SIGKILL what is left of its tree.

    Bounded whatever state the worker is in (backing off from an unreachable server, waiting on
    a flow run, ignoring signals). The tree is snapshotted before and during the wait, since the
    flow-run processes are re-parented away from the worker once it dies; a process group is
    killed only when its leader is in the tree, so nobody else's group is ever signalled.
    """
    if isinstance(worker, int):
        worker = Worker(pid=worker, pool="", name="")
    began = time.monotonic()
    root = read_proc(worker.pid)
    if root is None:
        _reap(worker)
        return Stopped(worker.pid, graceful=True, seconds=0.0, already_gone=True)
    seen = {proc.pid: proc for proc in process_tree(worker.pid)}
    try:
        os.kill(worker.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = began + grace_s
    while time.monotonic() < deadline:
        _reap(worker)
        if not _alive(root):
            break
        seen.update({proc.pid: proc for proc in process_tree(worker.pid) if proc.pid not in seen})
        time.sleep(0.1)
    graceful = not _alive(root)
    left = [proc for proc in seen.values() if _alive(proc)]
    _kill(left)
    end = time.monotonic() + 5.0
    while time.monotonic() < end and any(_alive(proc) for proc in left):
        _reap(worker)
        time.sleep(0.05)
    _reap(worker)
    killed = tuple(sorted(proc.pid for proc in left if proc.pid != worker.pid))
    return Stopped(worker.pid, graceful=graceful, seconds=time.monotonic() - began, killed=killed)


def _kill(procs: Iterable[Proc]) -> None:
    procs = list(procs)
    leaders = {proc.pid for proc in procs if proc.pgid == proc.pid}
    for proc in procs:
        try:
            if proc.pid in leaders:
                os.killpg(proc.pgid, signal.SIGKILL)
            elif proc.pgid not in leaders:
                os.kill(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(worker: Worker) -> None:
    """Collect the worker's exit status when this process is its parent (else it stays a zombie)."""
    if worker.process is not None:
        worker.process.poll()


# --- run a deployment and follow its flow run ------------------------------------------------


def _parameters(pairs: list[str], raw: str | None) -> dict[str, Any]:
    """`--param k=v` (v as JSON when it parses, like Prefect's CLI) and `--params '{...}'`."""
    params: dict[str, Any] = json.loads(raw) if raw else {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _report_lines(markdown: str) -> list[str]:
    """A markdown report as terminal lines: tables as `key: value`, headings and text as they are."""
    lines = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if cells[:2] == ["what", "value"] or set("".join(cells)) <= set("-: "):
                continue
            lines.append(f"  {cells[0]}: {' | '.join(cells[1:])}")
        elif line.startswith("```"):
            continue
        elif line.startswith("#"):
            lines.append(line.lstrip("#").strip())
        elif line.strip():
            lines.append(f"  {line}")
    return lines


#: Prefect's own line for every task run that completed: the operator reads the step's own lines.
_ROUTINE = "Finished in state Completed()"


async def run_and_follow(
    deployment: str, parameters: dict[str, Any], events_log: Path, timeout_s: float, report: str | None = None
) -> int:
    """Run a deployment, print its flow run's own log lines, write every event to a file.

    What `prefect deployment run --watch` shows is the whole event stream (a line for every task
    run's every state; the flow's log lines only when the server streams logs out, which Prefect's
    server does not by default). An operator wants the flow's log -- the runbook's steps as it
    takes them -- then the final state and the report (the markdown artifact ``report``). So:
    the event stream goes to ``events_log``, the log lines are read from the API every second
    (and taken from the stream when it carries them), and once the run is final every line is
    read back once more, so none is lost. Returns 0 when the run completed, 1 otherwise.
    """
    import datetime as dt
    import logging

    import anyio
    from prefect import get_client
    from prefect.cli.flow_runs_watching import FlowRunFormatter
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
        LogFilterTimestamp,
    )
    from prefect.client.schemas.objects import Log
    from prefect.client.schemas.sorting import LogSort
    from prefect.events.subscribers import FlowRunSubscriber
    from prefect.utilities.urls import url_for
    from rich.text import Text

    formatter = FlowRunFormatter()
    seen: set[Any] = set()
    pending: list[Log] = []

    def collect(logs: Iterable[Log]) -> None:
        for log in logs:
            if log.id not in seen:
                seen.add(log.id)
                pending.append(log)

    def flush(until: dt.datetime | None = None) -> None:
        """Print the collected lines up to ``until``, in time order: the worker and the flow run
        send theirs in separate batches (every 2 s), so a line may arrive after a later one."""
        pending.sort(key=lambda log: log.timestamp)
        while pending and (until is None or pending[0].timestamp <= until):
            log = pending.pop(0)
            if log.message == _ROUTINE:
                continue
            level = logging.getLevelName(log.level)
            stamp = log.timestamp.astimezone().strftime("%H:%M:%S")
            first, *rest = log.message.splitlines() or [""]
            tag = "" if level == "INFO" else f"{level}: "
            print(f"{stamp}  {tag}{first}", *(f"          {line}" for line in rest), sep="\n", flush=True)

    async with get_client() as client:

        async def read_logs(after: dt.datetime | None) -> list[Log]:
            logs: list[Log] = []
            while True:
                page = await client.read_logs(
                    LogFilter(
                        flow_run_id=LogFilterFlowRunId(any_=[run.id]), timestamp=LogFilterTimestamp(after_=after)
                    ),
                    limit=200,
                    offset=len(logs),
                    sort=LogSort.TIMESTAMP_ASC,
                )
                logs += page
                if len(page) < 200:
                    return logs

        stream_done = anyio.Event()

        async def follow_events(out) -> None:
            try:
                async with FlowRunSubscriber(flow_run_id=run.id, straggler_timeout=1) as subscriber:
                    async for item in subscriber:
                        out.write(Text.from_markup(formatter.format(item)).plain + "\n")
                        out.flush()
                        if isinstance(item, Log):
                            collect([item])
            except Exception as exc:  # the stream is a convenience: the API is the truth
                out.write(f"event stream ended: {exc!r}\n")
            finally:
                stream_done.set()

        found = await client.read_deployment_by_name(deployment)
        run = await client.create_flow_run_from_deployment(found.id, parameters=parameters)
        print(f"flow run {run.name!r} ({url_for(run) or run.id})", flush=True)
        events_log.parent.mkdir(parents=True, exist_ok=True)
        with open(events_log, "w") as out:
            async with anyio.create_task_group() as group:
                group.start_soon(follow_events, out)
                with anyio.move_on_after(timeout_s):
                    newest: dt.datetime | None = None
                    while True:
                        run = await client.read_flow_run(run.id)
                        # a window back: the flow's logs reach the API in batches (every 2 s)
                        logs = await read_logs(newest - dt.timedelta(seconds=30) if newest else None)
                        collect(logs)
                        newest = max((log.timestamp for log in logs), default=newest)
                        flush(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3))
                        if run.state and run.state.is_final():
                            break
                        await anyio.sleep(1.0)
                with anyio.move_on_after(5):  # the stream ends 1 s after the final state's event
                    await stream_done.wait()
                group.cancel_scope.cancel()
        await anyio.sleep(1.0)  # the flow process's last log batch is sent as it exits
        collect(await read_logs(None))
        flush()
        states = await client.read_flow_run_states(run.id)
        artifacts = await client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    state = run.state
    if state is None or not state.is_final():
        print(
            f"\n==> flow run {run.name!r} not finished after {timeout_s:.0f} s (state {state.name if state else None})"
        )
        return 1
    times = {s.type.value: s.timestamp for s in reversed(states)}  # the first of each type
    took = f" in {run.total_run_time.total_seconds():.1f} s" if run.total_run_time else ""
    if "SCHEDULED" in times and "PENDING" in times:
        took += f" (the worker took it {(times['PENDING'] - times['SCHEDULED']).total_seconds():.1f} s after it was created)"
    why = f": {state.message}" if state.message and not state.is_completed() else ""
    print(f"\n==> flow run {run.name!r}: {state.name}{took}{why}")
    keyed = sorted((a for a in artifacts if a.key), key=lambda a: a.created or 0)
    for artifact in keyed:
        if artifact.key == report and artifact.type == "markdown" and isinstance(artifact.data, str):
            print(f"\n==> report (artifact {artifact.key})")
            print("\n".join(_report_lines(artifact.data)))
    others = sorted({a.key for a in keyed if a.key != report})
    if others:
        print(f"\nother artifacts of the run (Prefect UI): {', '.join(others)}")
    return 0 if state.is_completed() else 1


# --- command line ----------------------------------------------------------------------------


def _running(pool: str, name: str, pid_file: Path | None) -> list[int]:
    """Live workers of this pool and name: the pid file's, and any a lost pid file forgot."""
    api_url = os.environ.get("PREFECT_API_URL")
    pids = set(find_workers(pool, name, api_url))
    if pid_file and pid_file.exists():
        text = pid_file.read_text().strip()
        if text.isdigit() and is_worker(int(text), pool, name, api_url):
            pids.add(int(text))
    return sorted(pids)


def main(argv: list[str] | None = None) -> int:
    """The command line of the module docstring; exit status 0 when the command did what it says."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("start", "stop", "status"):
        sub = commands.add_parser(command)
        sub.add_argument("--pool", required=True)
        sub.add_argument("--name", required=True)
        sub.add_argument("--pid-file", type=Path)
        if command == "start":
            sub.add_argument("--log", type=Path, required=True)
            sub.add_argument(
                "--queue",
                action="append",
                default=[],
                help="work queue to poll (repeatable; a fleet machine's is its target name); default all",
            )
            sub.add_argument("--started-timeout", type=float, default=120.0)
        if command == "stop":
            sub.add_argument("--grace", type=float, default=STOP_GRACE_S)
    run = commands.add_parser("run", help="run a deployment; print its flow run's log, final state and report")
    run.add_argument("deployment")
    run.add_argument("--param", action="append", default=[])
    run.add_argument("--params")
    run.add_argument("--events-log", type=Path, required=True)
    run.add_argument("--timeout", type=float, default=900.0)
    run.add_argument("--report", help="key of the markdown artifact to print at the end (e.g. deploy-sim)")
    args = parser.parse_args(argv)

    if args.command == "run":
        import asyncio

        try:
            return asyncio.run(
                run_and_follow(
                    args.deployment, _parameters(args.param, args.params), args.events_log, args.timeout, args.report
                )
            )
        except KeyboardInterrupt:
            print("\nstopped following: the flow run goes on in the worker (see the Prefect UI)", file=sys.stderr)
            return 130

    running = _running(args.pool, args.name, args.pid_file)
    if args.command == "status":
        print(f"worker {args.name}: " + (f"running (pid {', '.join(map(str, running))})" if running else "not running"))
        return 0 if running else 1
    if args.command == "start":
        if running:
            print(f"worker {args.name} already running (pid {running[0]}): not starting another")
            if len(running) > 1:
                print(f"  more than one is running ({running}): `make down` stops them all")
        else:
            try:
                worker = start_worker(
                    args.pool, args.name, args.log, started_timeout_s=args.started_timeout, queues=args.queue
                )
            except WorkerError as failure:
                print(failure, file=sys.stderr)
                return 1
            running = [worker.pid]
            query = os.environ.get("PREFECT_WORKER_QUERY_SECONDS", WORKER_ENV["PREFECT_WORKER_QUERY_SECONDS"])
            print(f"worker {args.name} started (pid {worker.pid}, polls pool {args.pool} every {query} s)")
        if args.pid_file:
            args.pid_file.write_text(f"{running[0]}\n")
        return 0
    # stop
    for pid in running:
        print(stop_worker(pid, grace_s=args.grace))
    if not running:
        print(f"worker {args.name}: not running")
    if args.pid_file:
        args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
