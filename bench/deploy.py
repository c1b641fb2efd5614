"""Figures of deploy-qwen on the imitations, written to docs/benchmarks.md (## Deploy flow).

- readiness detection delay: the imitation's "Application startup complete." (docker's own
  timestamp of that log line) to the flow's "ready" (goal: median <= 0.25 s);
- failure detection delay: the container's exit (docker's `die` event) to the flow's failure
  (goal <= 1 s);
- orchestration overhead: the flow's wall time minus the imitation's own startup (docker `start`
  event to "Application startup complete."), staging, preflight and smoke test included (goal <= 3 s).

And the operator's figure (## Deploy through a worker): the wall time of
`prefect deployment run deploy-qwen/sim --watch` on an unchanged server, through a real process
worker started as the project starts it (deployments/dev/worker.py: polling every 1 s), against the
flow run's own duration, split into where the rest goes; and, for comparison, the same through a
worker with Prefect's default polling (10 s).

Runs a throwaway Prefect server, the Hub imitation and the imitation image through real docker.
    .venv/bin/python -m bench.deploy [--runs 5] [--failures 3] [--time-scale 0.02] [--cli-runs 5]
        [--cli-default-runs 5] [--only flow|cli]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import docker

from bench.report import machine_line, write_section
from blocks.shared import LABEL_TARGET, WORK_POOL
from deployments.dev.worker import ROOT, WORKER_ENV, start_worker, stop_worker
from deployments.targets import sim_target
from sim.hub import HubServer, RepoSpec
from sim.image import ensure_sim_image
from sim.ports import free_port
from tasks.container import managed_containers, remove_managed
from tasks.readiness import ReadinessFailed

TOKEN = "hf_bench_token_5d1c2b3a4f"
READY_LINE = "Application startup complete."
PREFECT = str(Path(sys.executable).with_name("prefect"))
CLI_TARGET = "bench-cli"


class DockerEvents:
    """Collect `create` / `start` / `die` event times (seconds since the epoch) of one target's containers."""

    def __init__(self, client: docker.DockerClient, target: str) -> None:
        self.times: dict[str, list[float]] = {"create": [], "start": [], "die": []}
        self._stream = client.events(decode=True, filters={"label": f"{LABEL_TARGET}={target}", "type": "container"})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                if event.get("status") in self.times:
                    self.times[event["status"]].append(event["timeNano"] / 1e9)
        except Exception:
            pass

    def close(self) -> None:
        self._stream.close()


def log_line_time(container, needle: str) -> float:
    """docker's receive time of the first log line containing ``needle``."""
    for raw in container.logs(timestamps=True).decode("utf-8", "replace").splitlines():
        stamp, _, line = raw.partition(" ")
        if needle in line:
            return datetime.fromisoformat(stamp[:26] + "+00:00").timestamp()
    raise LookupError(f"no log line with {needle!r}")


def one_deploy(client, root: Path, hub_url: str, name: str, time_scale: float) -> dict:
    from flows.deploy import deploy_qwen

    sim_target(name, root / name, hub_url, free_port(), time_scale=time_scale).save(name, overwrite=True)
    events = DockerEvents(client, name)
    started = time.time()
    state = deploy_qwen(target=name, return_state=True)
    ended = time.time()
    events.close()
    result = state.result()
    run_s = _run_duration(state)
    [container] = managed_containers(client, name)
    complete = log_line_time(container, READY_LINE)
    startup = complete - events.times["start"][0]
    docker_start = events.times["start"][0] - events.times["create"][0]
    remove_managed(container, stop_timeout=5)
    return {
        "readiness_delay": result.ready_at.timestamp() - complete,
        "sim_startup": startup,
        "docker_start": docker_start,
        "flow_wall": ended - started,
        "overhead": (ended - started) - startup,
        "overhead_flow": (ended - started) - startup - docker_start,
        "overhead_run": run_s - startup - docker_start,
    }


def _run_duration(state) -> float:
    """The flow run's own duration as the server records it (Running -> final state), i.e. without
    the client's set-up before Running and the heartbeat thread's join after the final state."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        states = client.read_flow_run_states(run.id)
    running = next(s.timestamp for s in states if s.type.value == "RUNNING")
    return (run.state.timestamp - running).total_seconds()


def one_failure(client, root: Path, hub_url: str, name: str, time_scale: float) -> float:
    from flows.deploy import deploy_qwen

    # the imitation fails its load with torch's CUDA OOM: the container exits during startup
    sim_target(
        name, root / name, hub_url, free_port(), time_scale=time_scale, extra_env={"VLLM_SIM_FAULT_CUDA_OOM": "1"}
    ).save(name, overwrite=True)
    events = DockerEvents(client, name)
    state = deploy_qwen(target=name, return_state=True)
    returned_at = time.time()
    events.close()
    assert state.is_failed(), "the failure run did not fail"
    die = events.times["die"][0]
    try:
        state.result()
    except ReadinessFailed as failure:
        detected = failure.detected_at
    return {
        "to_detection": detected - die,
        "to_failed_state": state.timestamp.timestamp() - die,
        "to_return": returned_at - die,
    }


def cli_deploy(env: dict[str, str], target: str) -> dict:
    """One `prefect deployment run deploy-qwen/sim --watch`, timed from outside, split with the
    flow run's state timestamps as the server recorded them."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    started = time.time()
    run = subprocess.run(
        [
            PREFECT,
            "deployment",
            "run",
            "deploy-qwen/sim",
            "--param",
            f"target={target}",
            "--watch",
            "--watch-timeout",
            "300",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
    )
    ended = time.time()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        [report] = [a for a in artifacts if a.key == f"deploy-{target}"]
    first = {}
    for state in states:
        first.setdefault(state.type.value, state.timestamp.timestamp())
    final = states[-1].timestamp.timestamp()
    return {
        "wall": ended - started,
        "flow": final - first["RUNNING"],
        "around": (ended - started) - (final - first["RUNNING"]),
        "cli_to_created": first["SCHEDULED"] - started,
        "pickup": first["PENDING"] - first["SCHEDULED"],
        "process_start": first["RUNNING"] - first["PENDING"],
        "final_to_exit": ended - final,
        "unchanged": "unchanged" in (report.description or ""),
    }


#: Longest polling period compared (Prefect's default): the idle gap before each run is drawn from it.
MAX_QUERY_S = 10.0


def cli_series(env: dict[str, str], root: Path, name: str, runs: int, gap_s: float = MAX_QUERY_S) -> list[dict]:
    """``runs`` CLI deploys through a worker started as deployments/dev/worker.py starts it.

    Before each run, an idle gap drawn uniformly from [0, gap_s): back-to-back runs would arrive at
    the same phase of the worker's polling cycle every time and make its wait look shorter (or
    longer) than an operator's, who runs a deploy at any moment.
    """
    gaps = random.Random(0)
    worker = start_worker(WORK_POOL, name, root / f"{name}.log", env=env)
    results: list[dict] = []
    try:
        for _ in range(runs):
            time.sleep(gaps.uniform(0, gap_s))
            results.append(cli_deploy(env, CLI_TARGET))
        return results
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n--- worker log ---\n{worker.log_tail(6000)}") from None
    finally:
        stopped = stop_worker(worker)
        assert stopped.graceful, f"{stopped}: {worker.log_tail()}"


def cli_body(args: argparse.Namespace, project: list[dict], default: list[dict]) -> str:
    """The "Deploy through a worker" section: both series side by side, and why the rest is fixed."""
    med = statistics.median

    def cells(rows: list[dict], key: str) -> str:
        if not rows:
            return " | "
        return f"{med([r[key] for r in rows]):.2f} | {max(r[key] for r in rows):.2f}"

    query = WORKER_ENV["PREFECT_WORKER_QUERY_SECONDS"]
    rows = [
        ("`prefect deployment run deploy-qwen/sim --watch`, wall time", "wall"),
        ("the flow run's own duration (Running -> Completed on the server)", "flow"),
        ("**the wall time minus the flow run's own duration**", "around"),
        ("CLI start-up and the flow run's creation (CLI start -> Scheduled)", "cli_to_created"),
        ("waiting for the worker to pick it up (Scheduled -> Pending)", "pickup"),
        (
            "the worker starting the flow-run process (Pending -> "
            "Running: `python -m prefect.engine`, imports, pull step)",
            "process_start",
        ),
        ("after the final state, until the CLI exits (`--watch` waits 3 s for late log lines)", "final_to_exit"),
    ]
    table = "\n".join(f"| {label}, s | {cells(project, key)} | {cells(default, key)} |" for label, key in rows)
    command = "python -m bench.deploy" + (f" --only {args.only}" if args.only else "")

    def per_run(rows: list[dict]) -> str:
        return ", ".join(f"{r['wall']:.1f}/{r['flow']:.1f}" for r in rows) or "-"

    unchanged = all(r["unchanged"] for r in project + default)
    return f"""{machine_line()}
`{command} --cli-runs {args.cli_runs} --cli-default-runs {args.cli_default_runs}`: `prefect deploy --all`
on a throwaway Prefect server (SQLite), then \
`prefect deployment run deploy-qwen/sim --param target={CLI_TARGET} --watch`
from a shell, {
        "every run on an unchanged server (the flow finds its container healthy and keeps it)"
        if unchanged
        else "NOT all runs on an unchanged server"
    };
a process worker started by `deployments/dev/worker.py` with the project's `PREFECT_WORKER_QUERY_SECONDS={query}`,
then one with Prefect's default (10 s). Wall time measured outside the CLI, the split from the flow
run's state timestamps on the server. One deploy before the series makes the server "unchanged";
before each run an idle gap drawn from 0-10 s, so that runs arrive at any phase of the polling.

| figure | median, polling {query} s | max | median, polling 10 s (Prefect's default) | max |
|---|---|---|---|---|
{table}

Per run, wall time / flow run duration (s): polling {query} s: {per_run(project)}; polling 10 s: {per_run(default)}.

Where the time goes. The worker polls its pool every `PREFECT_WORKER_QUERY_SECONDS` (+-30 %
jitter), so with the default a run waits 5 s on average and up to 13 s before it is even picked up;
at 1 s, under a second. The rest is fixed cost that polling cannot remove: the CLI's own start-up
(importing Prefect), the flow-run process's start-up (a new Python that imports Prefect and the
flows), and `--watch`'s 3 s wait for straggling log lines after the final state (Prefect's
`FlowRunSubscriber(straggler_timeout=3)`; `make demo` follows its runs with `--watch` too: a second more
than its former follower, for none of its code). `PREFECT_WORKER_PREFETCH_SECONDS` does not
delay an immediate run (it only lets the worker submit runs scheduled up to 10 s ahead early), nor
does `PREFECT_WORKER_HEARTBEAT_SECONDS` (the worker's registration and pool sync, every 30 s).
Measured on these 2 cores with the imitation, not on a Spark.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--failures", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument("--cli-default-runs", type=int, default=5)
    parser.add_argument("--only", choices=["flow", "cli"], help="measure (and write) only one of the two sections")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    operator_env = dict(os.environ)  # the CLI and the worker run as an operator runs them (INFO logs)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    operator_env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    client = docker.from_env()
    ensure_sim_image(client)
    with (
        tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp,
        prefect_test_harness(server_startup_timeout=90),
        HubServer(
            repos=[RepoSpec(n_shards=7, shard_bytes=1024 * 1024)], data_dir=Path(tmp) / "hub", token=TOKEN
        ) as hub,
    ):
        Secret(value=TOKEN).save("hf-token", overwrite=True)
        root = Path(tmp)
        deploys, failures, cli_project, cli_default = [], [], [], []
        try:
            if args.only != "cli":
                deploys = [
                    one_deploy(client, root, hub.url, f"bench-ok-{i}", args.time_scale) for i in range(args.runs)
                ]
                failures = [
                    one_failure(client, root, hub.url, f"bench-fail-{i}", args.time_scale) for i in range(args.failures)
                ]
            if args.only != "flow":
                from deployments.setup import ensure_work_pool

                env = {**operator_env, "PREFECT_API_URL": PREFECT_API_URL.value()}
                env.pop("PREFECT_WORKER_QUERY_SECONDS", None)
                sim_target(CLI_TARGET, root / CLI_TARGET, hub.url, free_port(), time_scale=args.time_scale).save(
                    CLI_TARGET, overwrite=True
                )
                ensure_work_pool(WORK_POOL)
                subprocess.run(
                    [PREFECT, "--no-prompt", "deploy", "--all"],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                cli_series(env, root, "bench-first", 1, gap_s=0)  # the first deploy starts the container: not measured
                cli_project = cli_series(env, root, "bench-worker", args.cli_runs)
                if args.cli_default_runs:
                    cli_default = cli_series(
                        {**env, "PREFECT_WORKER_QUERY_SECONDS": "10"},
                        root,
                        "bench-worker-default",
                        args.cli_default_runs,
                    )
        finally:
            names = (
                [f"bench-ok-{i}" for i in range(args.runs)]
                + [f"bench-fail-{i}" for i in range(args.failures)]
                + [CLI_TARGET]
            )
            for name in names:
                for container in managed_containers(client, name):
                    remove_managed(container, stop_timeout=5)

    if args.only != "flow":
        body = cli_body(args, cli_project, cli_default)
        print(body)
        if not args.no_write:
            write_section("Deploy through a worker", body)
    if args.only == "cli":
        return 0

    def col(key: str) -> list[float]:
        return [d[key] for d in deploys]

    def fcol(key: str) -> list[float]:
        return [f[key] for f in failures]

    med = statistics.median
    body = f"""{machine_line()}
`python -m bench.deploy --runs {args.runs} --failures {args.failures} --time-scale {args.time_scale}`: deploy-qwen on
the vLLM imitation in docker, a throwaway Prefect server (SQLite) and the Hub imitation; each run a new
target (fresh container; staging of a 7-shard repo on the first run of each target).

| figure | median | max | goal |
|---|---|---|---|
| readiness detection delay ("Application startup complete." -> flow ready), s \
| {med(col("readiness_delay")):.3f} | {max(col("readiness_delay")):.3f} | <= 0.25 |
| failure detection (container `die` -> the readiness gate has the classified \
cause), s | {med(fcol("to_detection")):.3f} | {max(fcol("to_detection")):.3f} | |
| failure detection delay (container `die` -> the flow run's Failed state), s \
| {med(fcol("to_failed_state")):.3f} | {max(fcol("to_failed_state")):.3f} | <= 1 |
| same, to the flow call returning in the client (Prefect joins its heartbeat thread, \
up to 1 s), s | {med(fcol("to_return")):.3f} | {max(fcol("to_return")):.3f} | |
| orchestration overhead (flow wall time - imitation startup), s \
| {med(col("overhead")):.2f} | {max(col("overhead")):.2f} | <= 3 |
| of which docker's own container create + start (`create` -> `start` events), \
s | {med(col("docker_start")):.2f} | {max(col("docker_start")):.2f} | |
| overhead of the flow itself (the above minus docker's create + start), \
s | {med(col("overhead_flow")):.2f} | {max(col("overhead_flow")):.2f} | |
| same, over the run's recorded duration (Running -> Completed on the server), \
s | {med(col("overhead_run")):.2f} | {max(col("overhead_run")):.2f} | |
| imitation startup at time scale {args.time_scale} (docker `start` -> ready \
line), s | {med(col("sim_startup")):.2f} | {max(col("sim_startup")):.2f} | |
| flow wall time, s | {med(col("flow_wall")):.2f} | {max(col("flow_wall")):.2f} | |

For comparison: docker's HEALTHCHECK polls every 30 s, the DGX Spark playbook every 10 s (with a
900 s window before it gives up on a dead server).

Where the time goes. Readiness: the gate wakes on every container log line, so /health is asked
right after "Application startup complete." (otherwise every 0.2 s). Failure: the log stream ends
when the container exits, so the cause is classified within ~0.2 s; the rest, to the run's Failed
state, is Prefect's failure bookkeeping (task and flow states, the report artifact, the event) and
removing the container. A failing start is never restarted by docker (the restart policy is armed
only once the server has served), so no docker call waits on a restart. Overhead: the flow's ~15
task runs (staging included: it runs inside the deploy's flow run, a subflow costs ~1.3 s more
here), preflight, staging 7 small files into an empty cache, the smoke inference and the report;
the call-to-return figure also carries Prefect 3.9's heartbeat thread, which the engine joins at
exit and which sleeps in 1 s steps (up to 1 s per flow run). Measured on these 2 cores with the
imitation, not on a Spark.
"""
    print(body)
    if not args.no_write:
        write_section("Deploy flow", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
