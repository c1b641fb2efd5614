"""Figures of the fleet flows on the fleet rig, written to docs/benchmarks.md (## Fleet).

The rig is the one of tests/fleet (tests/fleet/rig.py): a private PostgreSQL cluster, a
`prefect server start` on it, the second dockerd (a second "machine" next to the first daemon), the
Hub imitation and the vLLM imitation image. The targets are sim targets (own port, cache, memory
ledger), registered from a targets file by `deployments.fleet.register` as an operator does, each
with its own process worker polling its own queue (`deployments.dev.worker.start_worker`, polling 1 s).
Two targets (one per daemon), and with ``--four`` (the default) two more (two per daemon, four
workers: four "machines"). The fleet flows run in this process against the server
(`bench.ui_screenshots.flows_against`), as tests/fleet/test_fleet.py runs them.

Figures, each the median over ``--runs`` repetitions:

1. one deploy alone: `deploy_fleet(targets=[t])`, call to return, alternately on a target of each
   daemon;
2. a fleet deploy of 2 (and of 4): `deploy_fleet(targets=[all])`, and its ratio to (1) (the goal:
   at most 1.2);
3. a rolling update over 2 (`rolling_update(targets=[a, b], overrides=...)`, health check on)
   against two deploys in a row (`deploy_fleet([a])`, then `deploy_fleet([b])`), with the same
   change of spec.

Every measured deploy really starts a container: for (1) and (2) every target's container is
stopped and removed (outside the timing) before each run, the model cache staying staged (one
warm-up deploy per target, not measured); for (3) the spec alternates (`max_num_seqs` 32 / 48), so
each deploy replaces the running container. The child flow runs' state timestamps on the server
split each figure into phases (worker pickup, flow-run process start, the deploy itself, the fleet
flow's waiting). The per-target health-check schedules are switched off during the bench, so no
scheduled check lands in a measured run.

    .venv/bin/python -m bench.fleet [--runs 3] [--time-scale 0.01] [--no-four] [--no-write]
        [--save results.json] [--from results.json] [--compare other-time-scale.json]

``--save`` keeps the raw measurements, ``--from`` writes the section from them without measuring,
``--compare`` adds one sentence on a run saved at another time scale (docs/benchmarks.md's was
`--runs 5 --save a.json`, `--runs 3 --no-four --time-scale 0.05 --no-write --save b.json`, then
`--from a.json --compare b.json`). CPU time is charged per component by sampling /proc (`CpuSampler`).

Clean-up: workers, the targets' containers on both daemons, the Prefect server and PostgreSQL;
the second dockerd keeps running (as the tests leave it). Target names follow the tests' rule
(``test-<pid>-...``): a later test session or bench removes the containers of a killed bench.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker

from bench.recovery import docker_time
from bench.report import machine_line, write_section

TOKEN = "hf_bench_token_5d1c2b3a4f"
SECRET = "hf-token-fleet-bench"
REPO = "Qwen/Qwen3-32B-FP8"
READY_LINE = "Application startup complete."
HEADING = "Fleet"
GOAL_RATIO = 1.2
SETTLE_S = 2.0  # after removing containers, before the next measured call: docker's work done
ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- small helpers


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- records


@dataclass
class Child:
    """One flow run a fleet flow started (deploy-qwen or health-check on a target)."""

    kind: str  # "deploy" | "health"
    target: str
    scheduled: float  # created by run_deployment (first SCHEDULED state)
    pending: float  # the worker took it
    running: float  # its process runs the flow
    final: float  # its final state
    sim_startup: float | None = None  # the imitation's container start -> ready line (deploys that started one)

    @property
    def pickup(self) -> float:
        return self.pending - self.scheduled

    @property
    def process(self) -> float:
        return self.running - self.pending

    @property
    def flow(self) -> float:
        return self.final - self.running

    @property
    def span(self) -> float:
        return self.final - self.scheduled


@dataclass
class Call:
    """One measured call of a fleet flow (or of two in a row)."""

    what: str
    targets: list[str]
    started: float
    ended: float
    busy: float  # share of both cores busy during the call
    children: list[Child] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by component (CpuSampler)
    calls: int = 1  # flow calls (2 for two deploys in a row)

    @property
    def wall(self) -> float:
        return self.ended - self.started

    def deploys(self) -> list[Child]:
        return [c for c in self.children if c.kind == "deploy"]

    @property
    def overlap(self) -> float:
        """How long every deploy ran at once (min end - max start of Running); < 0: they did not overlap."""
        deploys = self.deploys()
        return min(c.final for c in deploys) - max(c.running for c in deploys)

    @property
    def to_first_child(self) -> float:
        return min(c.scheduled for c in self.children) - self.started

    @property
    def after_last_child(self) -> float:
        return self.ended - max(c.final for c in self.children)

    @property
    def between(self) -> float:
        """Wall time not inside any child run (Scheduled -> final): the fleet flow's own work and waiting."""
        spans = sorted((c.scheduled, c.final) for c in self.children)
        covered, end = 0.0, self.started
        for start, stop in spans:
            start = max(start, end)
            if stop > start:
                covered += stop - start
                end = stop
        return self.wall - covered


# ---------------------------------------------------------------------------- the rig


@dataclass
class Machine:
    name: str
    daemon: str  # "first" | "second"
    client: docker.DockerClient
    worker: Any = None


class FleetRig:
    """PostgreSQL, a Prefect server on it, the second dockerd, the Hub, the targets and their workers."""

    def __init__(self, stack: ExitStack, tmp: Path, time_scale: float, four: bool, worker_env: dict[str, str]) -> None:
        from tests.fleet import rig

        self.stack, self.tmp, self.time_scale = stack, tmp, time_scale
        self.env = {**worker_env, "PREFECT_API_URL": ""}
        self.first = docker.from_env()
        stack.callback(self.first.close)
        rig.remove_stale_containers(self.first)
        t0 = time.monotonic()
        data_dir, self.pg_url = rig.start_postgres()
        stack.callback(rig.stop_postgres, data_dir)
        self.server = rig.start_prefect_server(self.pg_url, tmp / "prefect-home")
        stack.callback(rig.stop_prefect_server, self.server.process)
        self.api_url = self.server.api_url
        import asyncio

        tables = asyncio.run(rig.public_tables(self.pg_url))
        if not {"flow_run", "deployment", "variable"} <= tables:
            raise BenchError(f"the server's tables are not in PostgreSQL: {sorted(tables)}")
        self.second_url = rig.prepare_second_docker(self.first)
        self.second = docker.DockerClient(base_url=self.second_url)
        stack.callback(self.second.close)
        stack.callback(rig.remove_session_containers, self.second)
        stack.callback(rig.remove_session_containers, self.first)

        from sim.hub import HubServer, RepoSpec

        self.hub = stack.enter_context(
            HubServer(
                repos=[RepoSpec(repo_id=REPO, n_shards=7, shard_bytes=512 * 1024, seed=0)],
                data_dir=tmp / "hub",
                token=TOKEN,
            )
        )
        from bench.ui_screenshots import flows_against

        stack.enter_context(flows_against(self.api_url))
        self.setup_s = time.monotonic() - t0
        self.register(four)

    def register(self, four: bool) -> None:
        import yaml
        from prefect.blocks.system import Secret

        from deployments.fleet import load_fleet_file, register
        from deployments.targets import sim_target
        from sim.ports import free_port
        from tests.integration.conftest import SESSION_PREFIX

        Secret(value=TOKEN).save(SECRET, overwrite=True)
        layout = [("first", self.first), ("second", self.second)] * (2 if four else 1)
        self.machines: list[Machine] = []
        blocks = {}
        for i, (daemon, client) in enumerate(layout):
            name = f"{SESSION_PREFIX}{'abcd'[i]}{uuid.uuid4().hex[:4]}"
            extra = {} if daemon == "first" else {"docker_base_url": self.second_url}
            blocks[name] = sim_target(
                name,
                self.tmp / name,
                self.hub.url,
                free_port(),
                time_scale=self.time_scale,
                hf_token_secret=SECRET,
                **extra,
            )
            self.machines.append(Machine(name, daemon, client))
        self.fleet = f"bench-{uuid.uuid4().hex[:6]}"
        path = self.tmp / "fleet.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "fleet": self.fleet,
                    "targets": {
                        t: m.model_dump(mode="json", exclude={"name"}, exclude_none=True) for t, m in blocks.items()
                    },
                }
            )
        )
        self.env["PREFECT_API_URL"] = self.api_url
        t0 = time.monotonic()
        rendered = register(load_fleet_file(path), env=self.env)
        self.stack.callback(rendered.unlink, missing_ok=True)
        self.register_s = time.monotonic() - t0
        self.paused = self.pause_schedules()

    def pause_schedules(self) -> list[str]:
        """Switch off every deployment schedule (the per-target health checks every 5 minutes, and
        health-check-fleet's): a scheduled check must not land in a measured run. Deletes their
        scheduled runs (Prefect does, on a schedule update)."""
        from prefect import get_client

        paused = []
        with get_client(sync_client=True) as client:
            for deployment in client.read_deployments():
                for schedule in client.read_deployment_schedules(deployment.id):
                    if schedule.active:
                        client.update_deployment_schedule(deployment.id, schedule.id, active=False)
                        paused.append(deployment.name)
        return paused

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.machines]

    def machine(self, name: str) -> Machine:
        return next(m for m in self.machines if m.name == name)

    def start_workers(self, names: list[str]) -> None:
        from blocks.shared import WORK_POOL
        from deployments.dev.worker import start_worker

        for name in names:
            machine = self.machine(name)
            if machine.worker is None:
                machine.worker = start_worker(
                    WORK_POOL,
                    f"{name}-worker",
                    self.tmp / f"{name}-worker.log",
                    env=self.env,
                    cwd=ROOT,
                    queues=[name],
                )
                self.stack.callback(self.stop_worker, name)

    def stop_worker(self, name: str) -> None:
        from deployments.dev.worker import stop_worker

        machine = self.machine(name)
        if machine.worker is not None:
            stopped = stop_worker(machine.worker)
            if not stopped.graceful:
                print(f"warning: {stopped}", file=sys.stderr)
            machine.worker = None

    def worker_tails(self) -> str:
        return "\n".join(f"--- {m.name} worker ---\n{m.worker.log_tail(4000)}" for m in self.machines if m.worker)

    def containers(self, name: str) -> list:
        from tasks.container import managed_containers

        return managed_containers(self.machine(name).client, name)

    def remove_containers(self, names: list[str]) -> None:
        """docker stop (SIGTERM: the imitation removes its ledger entry) and rm, for each target."""
        from tasks.container import remove_managed

        removed = False
        for name in names:
            for container in self.containers(name):
                remove_managed(container, stop_timeout=10)
                removed = True
        if removed:
            time.sleep(SETTLE_S)

    def container_ids(self, names: list[str]) -> dict[str, str | None]:
        ids = {}
        for name in names:
            found = [c for c in self.containers(name) if c.status == "running"]
            ids[name] = found[0].id if found else None
        return ids

    def sim_startup(self, name: str) -> float | None:
        """The running container's docker start -> "Application startup complete." (its own startup)."""
        found = [c for c in self.containers(name) if c.status == "running"]
        if not found:
            return None
        container = found[0]
        started = docker_time(container.attrs["State"]["StartedAt"])
        for raw in container.logs(timestamps=True).decode("utf-8", "replace").splitlines():
            stamp, _, line = raw.partition(" ")
            if READY_LINE in line:
                return docker_time(stamp) - started
        return None


# ---------------------------------------------------------------------------- CPU by component

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.25
DOCKER_COMMS = ("dockerd", "containerd", "docker-proxy", "runc")
#: The components CPU time is charged to, in the order the section lists them.
GROUPS = (
    "flow-run processes (deploy-qwen, health-check)",
    "workers (polling)",
    "bench process (the fleet flow; this sampler)",
    "prefect server",
    "postgres",
    "dockerd, containerd, docker-proxy",
    "containers (imitation, helpers)",
    "other",
)


def _stat(pid: str) -> tuple[str, int, int, int] | None:
    """(comm, ppid, utime + stime in ticks, starttime) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return comm, int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19])


class CpuSampler:
    """CPU seconds per component during a call: every process's utime + stime sampled every
    SAMPLE_S (a process that dies between two samples loses at most that much), each charged to
    its component by its ancestry (flow-run processes are the workers' children, containers the
    shims' descendants)."""

    def __init__(self, rig: FleetRig) -> None:
        import threading

        self.bench = os.getpid()
        self.server = rig.server.process.pid
        self.workers = {m.worker.pid for m in rig.machines if m.worker}
        self.first: dict[tuple[int, int], int] = {}
        self.last: dict[tuple[int, int], int] = {}
        self.group: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self.sample(initial=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def classify(self, pid: int, table: dict[int, tuple[str, int]]) -> str:
        chain, current = [], pid
        while current in table and current > 1 and len(chain) < 64:
            chain.append(current)
            current = table[current][1]
        for ancestor in chain:
            if ancestor == self.bench:
                return GROUPS[2]
            if ancestor == self.server:
                return GROUPS[3]
            if ancestor in self.workers:
                return GROUPS[1] if ancestor == pid else GROUPS[0]
            if ancestor != pid and table[ancestor][0].startswith("containerd-shim"):
                return GROUPS[6]
        comm = table.get(pid, ("", 0))[0]
        if comm == "postgres":
            return GROUPS[4]
        if comm.startswith(DOCKER_COMMS):
            return GROUPS[5]
        return GROUPS[7]

    def sample(self, initial: bool = False) -> None:
        stats = {int(p): st for p in os.listdir("/proc") if p.isdigit() and (st := _stat(p)) is not None}
        table = {pid: (st[0], st[1]) for pid, st in stats.items()}
        for pid, (_, _, ticks, start) in stats.items():
            key = (pid, start)
            if key not in self.group:
                self.group[key] = self.classify(pid, table)
                self.first[key] = ticks if initial else 0
            self.last[key] = ticks

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.sample()
        totals = dict.fromkeys(GROUPS, 0.0)
        for key, ticks in self.last.items():
            totals[self.group[key]] += (ticks - self.first[key]) / CLK_TCK
        return totals


# ---------------------------------------------------------------------------- measuring


def child_runs(parent_flow_run_id) -> list:
    """The flow runs a fleet flow started (children of its run-on-target task runs), as test_fleet reads them."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [parent_flow_run_id]}))
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks])),
            sort=FlowRunSort.START_TIME_ASC,
        )


def children_of(rig: FleetRig, flow_run_id, started_containers: dict[str, str | None]) -> list[Child]:
    from prefect import get_client

    found = []
    with get_client(sync_client=True) as client:
        for run in child_runs(flow_run_id):
            first: dict[str, float] = {}
            for state in client.read_flow_run_states(run.id):
                first.setdefault(state.type.value, state.timestamp.timestamp())
            kind = "health" if run.name.startswith("health-") else "deploy"
            target = run.parameters["target"]
            found.append(
                Child(
                    kind=kind,
                    target=target,
                    scheduled=first["SCHEDULED"],
                    pending=first.get("PENDING", first["RUNNING"]),
                    running=first["RUNNING"],
                    final=run.state.timestamp.timestamp(),
                )
            )
    for child in found:
        if child.kind == "deploy" and started_containers.get(child.target):
            child.sim_startup = rig.sim_startup(child.target)
    return found


def measure(rig: FleetRig, what: str, calls: list[tuple[Any, dict[str, Any]]], targets: list[str]) -> Call:
    """Time ``calls`` (flow, kwargs) back to back; check every target got a new container."""
    before = rig.container_ids(targets)
    sampler = CpuSampler(rig)
    busy0, started = cpu_times(), time.time()
    states = []
    try:
        for fn, kwargs in calls:
            state = fn(return_state=True, **kwargs)
            states.append(state)
            if not state.is_completed():
                raise BenchError(f"{what}: {state.name}: {state.message}\n{rig.worker_tails()}")
    finally:
        ended, busy1 = time.time(), cpu_times()
        cpu = sampler.stop()
    after = rig.container_ids(targets)
    same = [t for t in targets if after[t] is None or after[t] == before[t]]
    if same:
        raise BenchError(f"{what}: no new container on {same}: not a real start")
    call = Call(
        what=what,
        targets=targets,
        started=started,
        ended=ended,
        busy=busy_fraction(busy0, busy1),
        calls=len(calls),
        cpu=cpu,
    )
    for state in states:
        call.children += children_of(rig, state.state_details.flow_run_id, after)
    call.children.sort(key=lambda c: c.scheduled)
    print(
        f"  {what}: {call.wall:.2f} s (CPU busy {call.busy:.0%}, {sum(cpu.values()):.1f} CPU-s: "
        + ", ".join(f"{g.split(' (')[0]} {v:.1f}" for g, v in cpu.items() if v >= 0.05)
        + "); "
        + ", ".join(f"{c.kind} {c.target[-5:]} {c.span:.1f}" for c in call.children),
        flush=True,
    )
    return call


def run_all(args: argparse.Namespace, worker_env: dict[str, str]) -> dict[str, Any]:
    from flows.fleet import deploy_fleet, rolling_update

    results: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if k in ("runs", "time_scale", "four")},
        "machine": machine_line(),
        "cores": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)
        rig = FleetRig(stack, tmp, args.time_scale, args.four, worker_env)
        print(
            f"rig up in {rig.setup_s:.1f} s, registered {len(rig.names)} targets in {rig.register_s:.1f} s; "
            f"schedules switched off: {sorted(set(rig.paused))}",
            flush=True,
        )
        results["setup"] = {
            "rig_s": rig.setup_s,
            "register_s": rig.register_s,
            "paused": sorted(set(rig.paused)),
            "targets": [(m.name, m.daemon) for m in rig.machines],
        }
        a, b = rig.names[:2]
        two = [a, b]
        rig.start_workers(two)

        def fleet_call(targets: list[str], **kwargs) -> tuple[Any, dict[str, Any]]:
            return deploy_fleet, {"targets": targets, "fleet": rig.fleet, **kwargs}

        print("warm-up (stages each cache, not measured)", flush=True)
        measure(rig, "warm-up", [fleet_call(two)], two)
        alone, fleet2, fleet4, rolling, sequential = [], [], [], [], []
        print("1. one deploy alone", flush=True)
        for i in range(args.runs * 2):
            target = two[i % 2]
            rig.remove_containers(two)
            alone.append(measure(rig, f"alone {rig.machine(target).daemon}", [fleet_call([target])], [target]))
        print("2. fleet deploy of 2", flush=True)
        for _ in range(args.runs):
            rig.remove_containers(two)
            fleet2.append(measure(rig, "fleet of 2", [fleet_call(two)], two))
        print("3. rolling update over 2 against two deploys in a row", flush=True)
        for _ in range(args.runs):
            rolling.append(
                measure(
                    rig,
                    "rolling update",
                    [(rolling_update, {"targets": two, "fleet": rig.fleet, "overrides": {"max_num_seqs": 32}})],
                    two,
                )
            )
            sequential.append(
                measure(
                    rig,
                    "two in a row",
                    [fleet_call([a], overrides={"max_num_seqs": 48}), fleet_call([b], overrides={"max_num_seqs": 48})],
                    two,
                )
            )
        if args.four:
            print("2b. fleet deploy of 4", flush=True)
            rig.remove_containers(two)
            rig.start_workers(rig.names)
            measure(rig, "warm-up 4", [fleet_call(rig.names[2:])], rig.names[2:])
            for _ in range(args.runs):
                rig.remove_containers(rig.names)
                fleet4.append(measure(rig, "fleet of 4", [fleet_call(rig.names)], rig.names))
        results.update(
            {
                k: [call_dict(c) for c in v]
                for k, v in (
                    ("alone", alone),
                    ("fleet2", fleet2),
                    ("fleet4", fleet4),
                    ("rolling", rolling),
                    ("sequential", sequential),
                )
            }
        )
        results["daemons"] = {m.name: m.daemon for m in rig.machines}
        print("cleaning up", flush=True)
    return results


def call_dict(call: Call) -> dict[str, Any]:
    return asdict(call)


def call_from(raw: dict[str, Any]) -> Call:
    children = [Child(**c) for c in raw.pop("children")]
    return Call(**raw, children=children)


# ---------------------------------------------------------------------------- the section


def body(results: dict[str, Any]) -> str:
    from deployments.dev.worker import WORKER_ENV
    from tasks.fleet import POLL_INTERVAL_S

    args = results["args"]
    calls = {
        k: [call_from(dict(c)) for c in results.get(k, [])]
        for k in ("alone", "fleet2", "fleet4", "rolling", "sequential")
    }
    alone, fleet2, fleet4, rolling, sequential = (
        calls[k] for k in ("alone", "fleet2", "fleet4", "rolling", "sequential")
    )
    daemons = results["daemons"]
    walls = {k: [c.wall for c in v] for k, v in calls.items()}
    m = {k: med(v) for k, v in walls.items()}

    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x is not None and y else None

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values) or "-"

    r2, r4, rr = ratio(m["fleet2"], m["alone"]), ratio(m["fleet4"], m["alone"]), ratio(m["rolling"], m["sequential"])
    alone_first = med([c.wall for c in alone if daemons[c.targets[0]] == "first"])
    alone_second = med([c.wall for c in alone if daemons[c.targets[0]] == "second"])

    def verdict(value: float | None) -> str:
        if value is None:
            return ""
        return "met" if value <= GOAL_RATIO else "**missed**"

    n = args["runs"]
    figures = [
        "| 1. one deploy alone (`deploy_fleet(targets=[t])`), call to "
        f"return, s | {fmt(m['alone'], 2)} | {runs(walls['alone'])} | |",
        "| 2. fleet deploy of 2 (`deploy_fleet(targets=[a, b])`), "
        f"s | {fmt(m['fleet2'], 2)} | {runs(walls['fleet2'])} | |",
        f"| **fleet of 2 / one alone** | **{fmt(r2, 2)}** | | <= {GOAL_RATIO} ({verdict(r2)}) |",
    ]
    if fleet4:
        figures += [
            "| 2b. fleet deploy of 4 (two per daemon, four workers), "
            f"s | {fmt(m['fleet4'], 2)} | {runs(walls['fleet4'])} | |",
            f"| **fleet of 4 / one alone** | **{fmt(r4, 2)}** | | none ({GOAL_RATIO} is for 2) |",
        ]
    figures += [
        "| 3. rolling update over 2 (`rolling_update(targets=[a, b], overrides=...)`, "
        f"health check on), s | {fmt(m['rolling'], 2)} | {runs(walls['rolling'])} | |",
        "| two deploys in a row (`deploy_fleet([a])`, then `deploy_fleet([b])`), "
        f"s | {fmt(m['sequential'], 2)} | {runs(walls['sequential'])} | |",
        f"| rolling update / two in a row | {fmt(rr, 2)} | | |",
    ]

    def phase(rows: list[Call], fn) -> str:
        values = [fn(call, child) for call in rows for child in call.deploys()]
        values = [v for v in values if v is not None]
        return fmt(med(values), 2)

    def per_call(rows: list[Call], fn) -> str:
        return fmt(med([fn(c) for c in rows]), 2)

    columns = [("one alone", alone), ("fleet of 2", fleet2)] + ([("fleet of 4", fleet4)] if fleet4 else [])
    head = "| per deploy (median over every target and run), s | " + " | ".join(c for c, _ in columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    phases = [
        (
            "call -> the target's run created (the fleet flow starts, `run_deployment`)",
            lambda call, c: c.scheduled - call.started,
        ),
        (
            f"worker pickup (Scheduled -> Pending; polling every {WORKER_ENV['PREFECT_WORKER_QUERY_SECONDS']} s)",
            lambda call, c: c.pickup,
        ),
        (
            "flow-run process start (Pending -> Running: a new Python imports Prefect and the flows)",
            lambda call, c: c.process,
        ),
        ("the deploy flow itself (Running -> Completed)", lambda call, c: c.flow),
        ("of which the imitation's own startup (container start -> ready line)", lambda call, c: c.sim_startup),
        (
            "the target's run final -> the call returns (fleet polls every "
            f"{POLL_INTERVAL_S:g} s, table artifact, flow exit)",
            lambda call, c: call.ended - c.final,
        ),
    ]
    phase_rows = [f"| {label} | " + " | ".join(phase(rows, fn) for _, rows in columns) + " |" for label, fn in phases]
    phase_rows += [
        "| deploys running at once (min end - max start of Running), s | - | "
        + " | ".join(per_call(rows, lambda c: c.overlap) for _, rows in columns[1:])
        + " |",
        "| both cores busy during the call | "
        + " | ".join(fmt(100 * (med([c.busy for c in rows]) or 0), 0) + " %" for _, rows in columns)
        + " |",
    ]

    def per_target(rows: list[Call]) -> str:
        out = []
        for call in rows:
            out.append(
                "; ".join(
                    f"{c.target[-5:]} {c.running - call.started:.1f}-{c.final - call.started:.1f}"
                    for c in sorted(call.deploys(), key=lambda c: c.target)
                )
            )
        return " / ".join(out)

    def split(rows: list[Call], kind: str) -> str:
        return fmt(med([sum(c.span for c in call.children if c.kind == kind) for call in rows]), 2)

    def kind_phase(rows: list[Call], kind: str, fn) -> str:
        return fmt(med([sum(fn(c) for c in call.children if c.kind == kind) for call in rows]), 2)

    roll_rows = [
        f"| wall time | {per_call(rolling, lambda c: c.wall)} | {per_call(sequential, lambda c: c.wall)} |",
        "| the two deploy-qwen runs (created -> final, summed) "
        f"| {split(rolling, 'deploy')} | {split(sequential, 'deploy')} |",
        f"| of which worker pickup + process start | {kind_phase(rolling, 'deploy', lambda c: c.pickup + c.process)} | "
        f"{kind_phase(sequential, 'deploy', lambda c: c.pickup + c.process)} |",
        f"| the two health-check runs (created -> final, summed) | {split(rolling, 'health')} | - |",
        "| of which worker pickup + process start "
        f"| {kind_phase(rolling, 'health', lambda c: c.pickup + c.process)} | - |",
        f"| of which the check itself (Running -> Completed) | {kind_phase(rolling, 'health', lambda c: c.flow)} | - |",
        f"| outside any child run (flow start, 1 s polling, reading state and artifacts, tables, exit) | "
        f"{per_call(rolling, lambda c: c.between)} | {per_call(sequential, lambda c: c.between)} |",
    ]
    cpu_columns = [
        (c, rows) for c, rows in columns + [("rolling update", rolling), ("two in a row", sequential)] if rows
    ]

    def cpu_cell(rows: list[Call], group: str | None) -> str:
        values = [sum(c.cpu.values()) if group is None else c.cpu.get(group, 0.0) for c in rows]
        return fmt(med(values), 1)

    cpu_rows = [
        f"| {group} | " + " | ".join(cpu_cell(rows, group) for _, rows in cpu_columns) + " |" for group in GROUPS
    ]
    cpu_rows.append(
        "| **total** (both cores: 2 CPU-s per second) | "
        + " | ".join(f"**{cpu_cell(rows, None)}**" for _, rows in cpu_columns)
        + " |"
    )
    cpu_rows.append(
        "| all busy CPU time from /proc/stat (busy share x 2 cores x wall; also kernel work), CPU-s | "
        + " | ".join(
            fmt(med([c.busy * results.get("cores", os.cpu_count()) * c.wall for c in rows]), 1)
            for _, rows in cpu_columns
        )
        + " |"
    )
    cpu_rows.append(
        "| wall time, s | " + " | ".join(per_call(rows, lambda c: c.wall) for _, rows in cpu_columns) + " |"
    )
    cpu_head = "| CPU seconds during the call (median), by component | " + " | ".join(c for c, _ in cpu_columns) + " |"
    cpu_sep = "|---|" + "---|" * len(cpu_columns)
    four = (
        ""
        if not fleet4
        else " With `--four`, two more targets (one more on each daemon, "
        'each with its own worker: four workers, four "machines"); '
        "the 4-target figure is measured last, with all four workers up (1 to 3 run with the first two workers only)."
    )
    return f"""{results["machine"]}
`python -m bench.fleet --runs {n} --time-scale {args["time_scale"]}{"" if args["four"] else " --no-four"}`: \
the fleet rig of tests/fleet
(a private PostgreSQL cluster, `prefect server start` on it, the second dockerd as the second "machine",
the Hub imitation with a 7-shard repo, the vLLM imitation at time scale {args["time_scale"]}), sim targets
registered by `deployments.fleet.register` from a targets file: two, one per daemon, each with its own
port, cache, memory ledger and process worker polling its own queue \
(`PREFECT_WORKER_QUERY_SECONDS={WORKER_ENV["PREFECT_WORKER_QUERY_SECONDS"]}`).{four}
The fleet flows run in the bench's process against that server. The deployments' schedules (the
per-target health checks every 5 min) are switched off, so no scheduled run lands in a measurement.
Every measured deploy starts a new container: for 1 and 2 the targets' containers are stopped and
removed before each run (caches staged by one unmeasured warm-up deploy per target: no container,
staged cache, i.e. staging only re-verifies the manifest); for 3 the spec alternates
(`max_num_seqs` 32 in the rolling update, 48 in the two in a row), so every deploy replaces the running
container, the same on both sides. Medians: 1 over {len(alone)} runs (alternately on a target of
each daemon: {fmt(alone_first, 2)} s on the first, {fmt(alone_second, 2)} s on the second), 2 and 3
over {n} runs each.

| figure | median | runs, s | goal |
|---|---|---|---|
{chr(10).join(figures)}

Where the time goes, from the child flow runs' state timestamps on the server:

{head}
{sep}
{chr(10).join(phase_rows)}

Each fleet run's deploys, Running -> Completed, in seconds after the call: fleet \
of 2: {per_target(fleet2)}{"; fleet of 4: " + per_target(fleet4) if fleet4 else ""}.

CPU time by component during each call (every process's utime + stime sampled every {SAMPLE_S} s and
charged by ancestry: the flow-run processes are the workers' children, the containers the shims'):

{cpu_head}
{cpu_sep}
{chr(10).join(cpu_rows)}

Rolling update against two deploys in a row (medians, s):

| | rolling update | two deploys in a row |
|---|---|---|
{chr(10).join(roll_rows)}

{results.get("notes", "").strip()}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each figure (one alone: twice as many)")
    parser.add_argument("--time-scale", type=float, default=0.01, help="the imitation's startup time scale")
    parser.add_argument(
        "--four",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure a fleet of 4 targets (two per daemon, four workers)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write docs/benchmarks.md")
    parser.add_argument("--save", type=Path, help="also save the raw measurements as JSON")
    parser.add_argument("--from", dest="source", type=Path, help="write the section from saved measurements")
    parser.add_argument(
        "--compare", type=Path, help="saved measurements at another time scale: one sentence compares their ratio"
    )
    args = parser.parse_args()
    if args.source:
        results = json.loads(args.source.read_text())
    else:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        worker_env = dict(os.environ)  # the workers run as an operator runs them (INFO logs)
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # this process: the figures, not the flows' logs
        results = run_all(args, worker_env)
        if args.save:
            args.save.write_text(json.dumps(results, indent=1, default=str))
    results["notes"] = notes(results, json.loads(args.compare.read_text()) if args.compare else None)
    text = body(results)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    return 0


def notes(results: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    """The sentences on what limits the ratios, with their numbers (from the same measurements;
    ``other``: a run at another time scale, for one sentence of comparison)."""
    calls = {
        k: [call_from(dict(c)) for c in results.get(k, [])]
        for k in ("alone", "fleet2", "fleet4", "rolling", "sequential")
    }
    alone, fleet2, fleet4, rolling, sequential = (
        calls[k] for k in ("alone", "fleet2", "fleet4", "rolling", "sequential")
    )
    if not alone or not fleet2:
        return ""

    def wall(rows: list[Call]) -> float:
        return med([c.wall for c in rows])

    def phase(rows: list[Call], fn) -> float:
        return med([fn(call, c) for call in rows for c in call.deploys()])

    def cpu(rows: list[Call], group: str | None = None) -> float:
        return med([sum(c.cpu.values()) if group is None else c.cpu.get(group, 0.0) for c in rows])

    w1, w2 = wall(alone), wall(fleet2)
    parts = [
        ("the flow-run process start", lambda call, c: c.process),
        ("the deploy flow itself", lambda call, c: c.flow),
        ("the fleet flow noticing the end and returning", lambda call, c: call.ended - c.final),
        ("the worker pickup", lambda call, c: c.pickup),
        ("the submission", lambda call, c: c.scheduled - call.started),
    ]
    deltas = [(label, phase(fleet2, fn) - phase(alone, fn)) for label, fn in parts]
    flow_run, server = GROUPS[0], GROUPS[3]
    c1, c2 = cpu(alone), cpu(fleet2)
    fixed = phase(alone, lambda call, c: c.scheduled - call.started) + phase(
        alone, lambda call, c: call.ended - c.final
    )
    walls = [c.wall for c in alone]
    slower = med([max(x, y) for x, y in itertools.combinations(walls, 2)])  # the slower of two alone runs
    fractions = [w % 1.0 for w in walls + [c.wall for c in fleet2]]
    text = [
        f"**What limits the ratio here.** A fleet of 2 takes {w2 - w1:+.2f} s over one deploy alone ({w2 / w1:.2f}x); "
        "per deploy, against one alone: " + ", ".join(f"{label} {d:+.2f} s" for label, d in deltas) + ". "
        f"The time goes to CPU: one deploy alone already burns {c1:.1f} CPU-s in {w1:.1f} s "
        f"(flow-run process {cpu(alone, flow_run):.1f}, Prefect server {cpu(alone, server):.1f}, the rest "
        f"{c1 - cpu(alone, flow_run) - cpu(alone, server):.1f}), about one of the two cores; two at once burn "
        f"{c2:.1f} CPU-s ({100 * med([c.busy for c in fleet2]):.0f} % of both cores busy), so the two flow-run "
        "processes' Python start-up (imports of Prefect and the flows) and the deploy flows' Prefect "
        "bookkeeping (task runs, states, artifacts, all through the one server) queue for the same two cores. "
        f"What the fleet flow itself adds (submitting the runs, polling every 1 s, the table) is "
        f"{fixed:.1f} s in all, alone as in a fleet; on a fleet of Sparks each deploy runs on its own machine's "
        f"cores and shares only the server ({cpu(alone, server):.1f} CPU-s per deploy here: the part that grows with "
        "a fleet), so most of this box's contention is not a fleet's.",
        f"Two more effects. A fleet deploy waits for its slower target: the slower of two deploys alone "
        f"(over every pair of the {len(walls)} runs above) has a "
        f"median of {slower:.2f} s, {slower / w1:.2f}x the median "
        f"alone, with no contention at all. And the wall times sit on a 1 s grid (the fractional parts of all "
        f"{len(fractions)} of 1 and 2 lie between {min(fractions):.2f} "
        f"and {max(fractions):.2f} s): `run_deployment` looks at the target's run every "
        "1 s from its creation, so a deploy that ends just after a look costs up to 1 s more, "
        f"{100 / w1:.0f} % of one deploy at this time scale; a ratio "
        f"of 1.2 leaves {0.2 * w1:.1f} s, two steps of that grid.",
    ]
    if other and other.get("alone") and other.get("fleet2"):
        o1 = med([c["ended"] - c["started"] for c in other["alone"]])
        o2 = med([c["ended"] - c["started"] for c in other["fleet2"]])
        startup = med([c["sim_startup"] for call in other["alone"] for c in call["children"] if c.get("sim_startup")])
        text.append(
            f"**The same at time scale {other['args']['time_scale']}** (measured separately on the same rig, "
            f"`--runs {other['args']['runs']} --no-four --time-scale {other['args']['time_scale']} --save ...`, then "
            f"`--from ... --compare ...`: the imitation's startup {startup:.1f} s instead of "
            f"{phase(alone, lambda call, c: c.sim_startup):.1f} s, "
            "i.e. more of a deploy is waiting, as on a Spark whose "
            f"server takes minutes to load): one alone {o1:.2f} s, a fleet of 2 {o2:.2f} s, **{o2 / o1:.2f}x** "
            f"({o2 - o1:+.2f} s, against {w2 - w1:+.2f} s here). The seconds a fleet adds did not grow with the "
            f"deploy; at time scale {results['args']['time_scale']} they are measured against a deploy that is mostly "
            "Prefect's own start-up and bookkeeping, which is what two deploys fight over on two cores."
        )
    if fleet4:
        c4, w4 = cpu(fleet4), wall(fleet4)
        text.append(
            f"A fleet of 4 on the same 2 cores needs {c4:.1f} CPU-s: at least {c4 / 2:.1f} s even fully parallel "
            f"({c4 / 2 / w1:.2f}x one alone); it took {w4:.1f} s ({w4 / w1:.2f}x): four machines' work on two cores."
        )
    if rolling and sequential:
        health = med([sum(c.span for c in call.children if c.kind == "health") for call in rolling])
        health_start = med([sum(c.pickup + c.process for c in call.children if c.kind == "health") for call in rolling])
        gaps = med([c.between for c in rolling]) - med([c.between for c in sequential])
        text.append(
            "**Rolling update against two in a "
            f"row.** {wall(rolling) - wall(sequential):+.1f} s: the two health checks "
            f"after the deploys ({health:.1f} s, of which {health_start:.1f} s is the worker's pickup and a new "
            "flow-run process each, the check itself about a second), and "
            f"{gaps:+.1f} s more of the rolling flow's own steps between the runs (each wait ends on the next 1 s "
            "poll, then the deploy report is read and the target's verdict checked before the next run is created). "
            "That is the price of the gate: the next target is touched only once the previous one is proven healthy."
        )
    return "\n\n".join(text)


if __name__ == "__main__":
    raise SystemExit(main())
