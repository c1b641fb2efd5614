"""The scheduled health check on the imitations: how long from a fault to the unhealthy event and to
a healthy server again, at the schedule's interval, next to the anchors; and what one check costs.
Written to docs/benchmarks.md (## Health check: fault to unhealthy, fault to healthy, and its cost).

A 300 s schedule cannot be waited out in a bench, so the parts are measured and combined:

- one check's run time: ``--checks`` in-process ``health_check(...)`` calls on a healthy server, and
  ``--worker-checks`` runs of the deployment health-check/sim through a process worker;
- per fault (crash, wedge, crash loop on the page cache), on its own target named sim-... (the
  trigger of recover-vllm/sim matches vllm.service.sim*, and its Reactive posture acts once per
  target per 600 s): the detection latency of a check that runs right after the fault's onset;
  the automation latency (the unhealthy event -> recover-vllm's flow run Running, through the
  worker, both read from the API); recover-vllm's run, scaled back to a Spark's start with
  bench/recovery.py's `scaled_back`; the verdict of a check after it;
- combined with the formulas in `at_interval`, `probe_anchor` and `wedge_named_after`, at the
  default interval (prefect.yaml) and at 30 s;
- what one check adds to the server's database: the rows of one check read through the Prefect
  client, and the SQLite file's growth over several checks (the harness's temporary database).

Runs a throwaway Prefect server (`prefect_test_harness`, SQLite), the Hub imitation, the imitation
image through real docker, `prefect deploy` of recover-vllm/sim and health-check/sim, and a worker
from deployments/dev/worker.py; loopback only, one fault at a time.
    .venv/bin/python -m bench.health [--time-scale 0.01] [--checks 10] [--worker-checks 3] [--budget-s 300] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import docker
import httpx

from bench.report import machine_line, write_section
from blocks.shared import WORK_POOL

TOKEN = "hf_bench_token_5d1c2b3a4f"
HEADING = "Health check: fault to unhealthy, fault to healthy, and its cost"
EVENT_TABLES = ("events", "event_resources")  # what the server's event vacuum deletes after the retention period
PREFECT = str(Path(sys.executable).with_name("prefect"))
DAY_S = 86400.0
FAST_INTERVAL_S = 30.0  # the interval compared with prefect.yaml's
DIE_AFTER_S = (
    6.0  # crash: the imitation's engine dies this long after ready (after deploy-qwen armed the restart policy)
)
HANG_AFTER_S = 3.0  # wedge: the imitation's engine deadlocks this long after ready (after deploy-qwen's smoke test)
# wedge: the checks of the wedge row run with a short window and answer budget (as tests/integration/test_health.py)
WEDGE_LIMITS = {"wedge_window_s": 2.0, "answer_slow_s": 1.0, "answer_budget_s": 3.0}
SIGTERM_PID1 = ["python3", "-c", "import os, signal; os.kill(1, signal.SIGTERM)"]
MAX_CHECKS_PER_FAULT = 4

# The anchors (docs/benchmarks.md, "anchor" column): docker HEALTHCHECK, a Kubernetes liveness probe and the
# DGX Spark playbook's manual poll: what each probes, how often, how many failures.
DOCKER = {"period_s": 30.0, "timeout_s": 30.0, "failures": 3}  # docker HEALTHCHECK / compose
K8S = {"period_s": 10.0, "timeout_s": 1.0, "failures": 3}  # Kubernetes liveness probe
PLAYBOOK_POLL_S = 10.0  # the DGX Spark playbook: a person polling /health


# ---------------------------------------------------------------------------- pure helpers (the formulas)


def at_interval(interval_s: float, detect_s: float, after_s: float = 0.0) -> tuple[float, float]:
    """(mean, worst) from a fault to an outcome when checks run every ``interval_s``.

    A fault falls at a uniformly random moment between two scheduled checks: the next check starts
    after ``interval_s / 2`` on average and ``interval_s`` at worst; then ``detect_s`` (the check's
    detection latency, measured from a check run right after the onset) and ``after_s`` (what
    follows the event: the automation and the recovery, 0 for the unhealthy event itself):
    mean = I/2 + d + after, worst = I + d + after.
    """
    if interval_s <= 0:
        raise ValueError(f"interval must be > 0, got {interval_s}")
    if detect_s < 0 or after_s < 0:
        raise ValueError("latencies cannot be negative")
    return interval_s / 2 + detect_s + after_s, interval_s + detect_s + after_s


def probe_anchor(period_s: float, failures: int, probe_s: float = 0.0) -> tuple[float, float]:
    """(mean, worst) from a fault that fails a probe to the probe's verdict, for a probe that runs
    ``period_s`` after the previous one ended and must fail ``failures`` times in a row (docker's
    HEALTHCHECK retries, Kubernetes' failureThreshold); ``probe_s``: how long each failing probe
    takes (0: it fails at once, e.g. connection refused; its timeout when it hangs).

    mean = P/2 + (n - 1)(P + t) + t, worst = P + (n - 1)(P + t) + t.
    """
    if period_s <= 0 or failures < 1 or probe_s < 0:
        raise ValueError("period > 0, failures >= 1, probe time >= 0")
    rest = (failures - 1) * (period_s + probe_s) + probe_s
    return period_s / 2 + rest, period_s + rest


def wedge_named_after(interval_s: float, window_s: float, check_s: float, limit: int = 1000) -> tuple[float, int]:
    """When the progress layer names a wedge "wedged": seconds from the start of the first check
    after the onset to the event of the check that does, and how many scheduled checks the
    deployment's concurrency limit (1, CANCEL_NEW) cancels meanwhile.

    Scheduled checks start every ``interval_s``; each check of a wedged engine takes ``check_s``
    (it waits its whole answer budget for the smoke answer); a check that would start while the
    previous one still runs is cancelled. The first check records the in-flight snapshot; the first
    check that runs at least ``window_s`` after it names the wedge, at its start + ``check_s``.
    """
    if interval_s <= 0 or window_s < 0 or check_s < 0:
        raise ValueError("interval > 0, window and check time >= 0")
    busy_until, cancelled = check_s, 0
    for k in range(1, limit + 1):
        start = k * interval_s
        if start < busy_until:
            cancelled += 1
            continue
        if start >= window_s:
            return start + check_s, cancelled
        busy_until = start + check_s
    raise ValueError("no check names the wedge within the limit")


def per_day(per_check: float, interval_s: float) -> float:
    """What checks every ``interval_s`` add in a day: per_check x 86400 / I."""
    if interval_s <= 0:
        raise ValueError(f"interval must be > 0, got {interval_s}")
    return per_check * DAY_S / interval_s


def spread(values: list[float]) -> tuple[float, float]:
    """(median, max)."""
    return statistics.median(values), max(values)


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def fmt_pair(pair: tuple[float, float] | None) -> str:
    return "never" if pair is None else f"{fmt_s(pair[0])} / {fmt_s(pair[1])}"


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


# ---------------------------------------------------------------------------- the server's database


def db_path() -> Path | None:
    """The harness's SQLite file, from the server's connection URL (None when it is not SQLite)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value() or ""
    if not url.startswith("sqlite"):
        return None
    return Path(url.split(":///", 1)[1])


@dataclass
class DbSnapshot:
    rows: dict[str, int]
    used_bytes: int  # (page_count - freelist_count) x page_size: the committed data, WAL included
    file_bytes: int  # the .db file plus its -wal file, as on disk
    table_bytes: dict[str, int] = field(default_factory=dict)  # per table, its indexes included (SQLite's dbstat)

    def minus(self, other: DbSnapshot) -> DbSnapshot:
        tables = set(self.rows) | set(other.rows)
        sized = set(self.table_bytes) | set(other.table_bytes)
        return DbSnapshot(
            {t: self.rows.get(t, 0) - other.rows.get(t, 0) for t in tables},
            self.used_bytes - other.used_bytes,
            self.file_bytes - other.file_bytes,
            {t: self.table_bytes.get(t, 0) - other.table_bytes.get(t, 0) for t in sized},
        )


def db_snapshot(path: Path) -> DbSnapshot:
    """Row counts of every table and the database's size, read through a read-only connection."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        tables = [
            r[0]
            for r in connection.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        rows = {t: connection.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        owners = dict(connection.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))
        table_bytes: dict[str, int] = {}
        try:
            for name, size in connection.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                owner = owners.get(name, name)
                table_bytes[owner] = table_bytes.get(owner, 0) + size
        except sqlite3.OperationalError:  # an SQLite built without the dbstat table: totals only
            table_bytes = {}
    finally:
        connection.close()
    wal = path.with_name(path.name + "-wal")
    return DbSnapshot(
        rows, (pages - free) * page_size, path.stat().st_size + (wal.stat().st_size if wal.exists() else 0), table_bytes
    )


def settled(path: Path, quiet_s: float, timeout_s: float = 30.0) -> DbSnapshot:
    """A snapshot once the row counts stopped moving for ``quiet_s`` (logs and events reach the
    database in batches: the client's log worker every 2 s, the event persister's flush)."""
    last, since = db_snapshot(path), time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = db_snapshot(path)
        if now.rows != last.rows:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return last


# ---------------------------------------------------------------------------- reads through the Prefect client


def run_states(client, flow_run_id) -> dict[str, float]:
    """The first time of each state type of a flow run (epoch seconds), as the server recorded them."""
    first: dict[str, float] = {}
    for state in sorted(client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp):
        first.setdefault(state.type.value, state.timestamp.timestamp())
    return first


def run_rows(client, flow_run_id) -> dict[str, int]:
    """The rows one flow run left, read through the Prefect client."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.events.filters import (
        EventAnyResourceFilter,
        EventFilter,
        EventOccurredFilter,
    )

    run = client.read_flow_run(flow_run_id)
    by_id = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    task_runs = client.read_task_runs(flow_run_filter=by_id, limit=200)
    logs, offset = 0, 0
    while True:
        page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=offset)
        logs += len(page)
        offset += len(page)
        if len(page) < 200:
            break
    artifacts = client.read_artifacts(flow_run_filter=by_id)
    since = run.created.timestamp() - 60
    from datetime import datetime

    events = client.read_events(
        filter=EventFilter(
            any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            occurred=EventOccurredFilter(
                since=datetime.fromtimestamp(since, UTC), until=datetime.fromtimestamp(time.time() + 60, UTC)
            ),
        ),
        limit=1,
    )
    return {
        "flow runs": 1,
        "flow run states": len(client.read_flow_run_states(flow_run_id)),
        "task runs": len(task_runs),
        "task run states": sum(len(client.read_task_run_states(t.id)) for t in task_runs),
        "logs": logs,
        "artifacts": len(artifacts),
        "artifact keys": len({a.key for a in artifacts if a.key}),
        "events": events.total,
    }


def variables(client) -> dict[str, tuple[float, int]]:
    """Every Variable: (updated, the length of its value as Prefect measures it: compact JSON bytes)."""
    import orjson

    return {
        v.name: (v.updated.timestamp() if v.updated else 0.0, len(orjson.dumps(v.value)))
        for v in client.read_variables()
    }


def service_events(client, target: str, names: list[str], since: float) -> list:
    """The target's vllm.service.<name> events since ``since`` (epoch seconds), oldest first."""
    from datetime import datetime

    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    page = client.read_events(
        filter=EventFilter(
            event=EventNameFilter(name=[f"vllm.service.{n}" for n in names]),
            resource=EventResourceFilter(id=[f"vllm.service.{target}"]),
            occurred=EventOccurredFilter(
                since=datetime.fromtimestamp(since - 1, UTC), until=datetime.fromtimestamp(time.time() + 60, UTC)
            ),
        ),
        limit=50,
    )
    return sorted((e for e in page.events if e.occurred.timestamp() >= since), key=lambda e: e.occurred)


def wait_for_event(target: str, name: str, since: float, timeout_s: float = 30.0):
    """The first vllm.service.<name> of the target since ``since``, once the server persisted it."""
    from prefect import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = service_events(client, target, [name], since)
            if found:
                return found[0]
            time.sleep(0.5)
    return None


# ---------------------------------------------------------------------------- one fault


@dataclass
class CheckSeen:
    verdict: str
    condition: str
    layer: str
    wall_s: float
    started: float


@dataclass
class FaultRow:
    key: str
    label: str
    onset: str  # what the onset is and how its time is taken
    checks: list[CheckSeen] = field(default_factory=list)
    detect_s: float | None = None  # onset -> the first unhealthy event's occurred time
    detect_check: int | None = None  # which check after the onset (1-based) said unhealthy
    detect_default_s: float | None = None  # the same at the default thresholds (wedge: answer budget)
    event_to_created_s: float | None = None
    created_to_pending_s: float | None = None
    pending_to_running_s: float | None = None
    automation_s: float | None = None  # event occurred -> recover-vllm Running
    received_lag_s: float | None = None  # event occurred -> received by the server
    recover_outcome: str = "-"
    recover_wall_s: float | None = None
    recover_startup_s: float = 0.0
    recover_scaled_s: float | None = None
    after: CheckSeen | None = None
    healthy_again: bool = False
    docker_restarts: str = ""  # what docker did with the old container meanwhile
    note: str = ""


class Bench:
    def __init__(self, client: docker.DockerClient, root: Path, hub_url: str, scale: float, run_id: str) -> None:
        self.client, self.root, self.hub_url, self.scale, self.run_id = client, root, hub_url, scale, run_id
        self.cache = root / "hf"  # one staged cache for every target (staged by the first deploy)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.targets: list[str] = []
        self.recover_deployment_id = None

    def target(self, key: str, extra_env: dict[str, str] | None = None, save: bool = True):
        from deployments.targets import sim_target
        from sim.ports import free_port

        name = f"sim-bh{self.run_id}-{key}"
        target = sim_target(
            name,
            self.root / name,
            self.hub_url,
            free_port(),
            time_scale=self.scale,
            extra_env=extra_env,
            cache_dir=str(self.cache),
            prune_scope="project",
        )
        if save:
            target.save(name, overwrite=True)
            self.targets.append(name)
        return target

    def without_fault(self, target) -> None:
        """Save the target block without the fault's knobs: recover-vllm's new server is a clean one
        (a fault that a restart clears), while the running container keeps them."""
        from deployments.targets import sim_target

        clean = sim_target(
            target.name,
            self.root / target.name,
            self.hub_url,
            target.host_port,
            time_scale=self.scale,
            cache_dir=str(self.cache),
            prune_scope="project",
        )
        clean.save(target.name, overwrite=True)

    def cleanup(self, name: str) -> None:
        from tasks.container import managed_containers, remove_managed

        for container in managed_containers(self.client, name):
            try:
                remove_managed(container, stop_timeout=None)
            except Exception:  # noqa: BLE001 - already gone
                pass

    # ---------------------------------------------------------------- checks

    def check(self, name: str, thresholds=None) -> tuple[CheckSeen, Any]:
        from flows.health import health_check

        started, t0 = time.time(), time.monotonic()
        state = health_check(target=name, limits=thresholds.model_dump() if thresholds else None, return_state=True)
        wall = time.monotonic() - t0
        if not state.is_completed():  # the flow run itself failed: no verdict
            why = (state.message or state.type.value).split("\n")
            return CheckSeen("failed", " ".join(why[:3])[:300], "-", wall, started), state
        report = state.result()
        return CheckSeen(report.verdict.value, report.condition.value, report.layer.value, wall, started), state

    def checks_until_unhealthy(self, row: FaultRow, name: str, onset: float, thresholds=None) -> float | None:
        """Checks back to back from the onset until one says unhealthy; the onset -> its event."""
        for i in range(MAX_CHECKS_PER_FAULT):
            seen, _state = self.check(name, thresholds)
            row.checks.append(seen)
            if seen.verdict == "unhealthy":
                event = wait_for_event(name, "unhealthy", onset)
                if event is None:
                    row.note += " the unhealthy event was not found through the API;"
                    return None
                row.detect_check = i + 1
                row.received_lag_s = event.received.timestamp() - event.occurred.timestamp()
                return event.occurred.timestamp()
        return None

    # ---------------------------------------------------------------- the automation and recover-vllm

    def follow_recovery(
        self, row: FaultRow, name: str, event_at: float, watch, old_ids: set[str], timeout_s: float = 180.0
    ) -> None:
        from prefect import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        from bench.recovery import READY_LINE, scaled_back

        deadline = time.monotonic() + timeout_s
        run = None
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.recover_deployment_id])),
                    limit=50,
                )
                mine = [r for r in runs if r.parameters.get("target") == name]
                if mine and mine[0].state and mine[0].state.is_final():
                    run = mine[0]
                    break
                time.sleep(0.5)
            if run is None:
                row.recover_outcome = "no finished recover-vllm run within the bound"
                return
            first = run_states(client, run.id)
            row.event_to_created_s = run.created.timestamp() - event_at
            if "PENDING" in first and "SCHEDULED" in first:
                row.created_to_pending_s = first["PENDING"] - first["SCHEDULED"]
            if "RUNNING" in first and "PENDING" in first:
                row.pending_to_running_s = first["RUNNING"] - first["PENDING"]
            if "RUNNING" not in first:
                row.recover_outcome = f"{run.state.type.value} without running"
                return
            row.automation_s = first["RUNNING"] - event_at
            end = run.state.timestamp.timestamp()
            row.recover_wall_s = end - first["RUNNING"]
            row.recover_outcome = self._outcome(client, name, run, first["RUNNING"])
            if not run.state.is_completed():
                row.recover_outcome += f" ({run.state.type.value}: {(run.state.message or '')[:160]})"
        # the imitation's startup phases of the servers recover-vllm started (not docker's restarts of the old one)
        startup = 0.0
        for start in list(watch.starts):
            if start.container in old_ids or start.at < first["RUNNING"] or start.at > end or not start.lines:
                continue
            ready = start.first(READY_LINE, start.at)
            stop = ready if ready is not None else (start.died_at or start.lines[-1][0])
            startup += max(0.0, stop - start.lines[0][0])
        row.recover_startup_s = min(startup, row.recover_wall_s)
        row.recover_scaled_s = scaled_back(row.recover_wall_s, row.recover_startup_s, self.scale)

    @staticmethod
    def _outcome(client, name: str, run, running_at: float, timeout_s: float = 15.0) -> str:
        """What recover-vllm did: its outcome event, or its "nothing to recover" log line (it emits
        no event then); both reach the database a few seconds after the run ended (the event
        persister's flush, the flow-run process's last log batch)."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        deadline = time.monotonic() + timeout_s
        while True:
            outcome = service_events(
                client, name, ["recovered", "recovery-failed", "needs-operator", "rolled-back"], running_at
            )
            if outcome:
                return outcome[0].event.removeprefix("vllm.service.")
            logs = [
                log.message
                for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)
            ]
            said = next((m for m in logs if "nothing to recover" in m), None)
            if said:
                return f'nothing to recover (its log: "{said[:100]}")'
            if time.monotonic() > deadline:
                return f"{run.state.type.value.lower()}, no outcome event or line found"
            time.sleep(0.5)

    def after_recovery(self, row: FaultRow, name: str, thresholds=None) -> None:
        seen, _ = self.check(name, thresholds)
        row.after = seen
        row.healthy_again = seen.verdict in ("healthy", "degraded")

    @staticmethod
    def restarts_of(watch, old_ids: set[str], after: float) -> str:
        """What docker's restart policy did with the old container after the fault."""
        from tasks.vllm.failures import classify_failure

        restarts = [s for s in watch.starts if s.container in old_ids and s.at > after]
        kinds = []
        for start in restarts:
            if start.died_at is None:
                continue
            kind = classify_failure([line for _, line in start.lines]).kind.value
            if kind not in kinds:
                kinds.append(kind)
        return (
            f"docker restarted it {len(restarts)} time(s) before it was removed; failed with: {', '.join(kinds) or '-'}"
        )

    # ---------------------------------------------------------------- the faults

    def crash(self) -> FaultRow:
        """The engine core dies (vLLM's EngineDeadError): /health 500, the process exits 1 s later;
        docker's restart policy restarts it, and the restart fails on the page cache."""
        from bench.recovery import Watch
        from flows.deploy import deploy_qwen

        row = FaultRow(
            "crash",
            f"crash: the engine core dies ({DIE_AFTER_S:g} s after ready; /health 500, exit 1 a second later)",
            "the first /health that is not 200 (polled every 20 ms)",
        )
        target = self.target("crash", {"VLLM_SIM_FAULT_DIE_AFTER_S": str(DIE_AFTER_S)})
        watch = Watch(self.client, target.name)
        try:
            deploy_qwen(target=target.name)
            self.without_fault(target)
            old_ids = {s.container for s in watch.starts}
            onset = None
            deadline = time.monotonic() + DIE_AFTER_S + 30
            with httpx.Client(base_url=target.endpoint, timeout=2) as http:
                while time.monotonic() < deadline:
                    try:
                        if http.get("/health").status_code != 200:
                            onset = time.time()
                            break
                    except httpx.HTTPError:
                        onset = time.time()
                        break
                    time.sleep(0.02)
            if onset is None:
                row.note = "the engine did not die"
                return row
            event_at = self.checks_until_unhealthy(row, target.name, onset)
            if event_at is None:
                return row
            row.detect_s = row.detect_default_s = event_at - onset
            self.follow_recovery(row, target.name, event_at, watch, old_ids)
            row.docker_restarts = self.restarts_of(watch, old_ids, onset)
            self.after_recovery(row, target.name)
            return row
        finally:
            watch.close()
            self.cleanup(target.name)

    def crash_loop(self) -> FaultRow:
        from bench.recovery import Watch
        from flows.deploy import deploy_qwen

        target = self.target("loop")
        watch = Watch(self.client, target.name)
        try:
            deploy_qwen(target=target.name)
            return self._crash_loop(target.name, watch)
        finally:
            watch.close()
            self.cleanup(target.name)

    def _crash_loop(self, name: str, watch) -> FaultRow:
        """The server's process ends (its PID 1 gets SIGTERM, exit 0); docker restarts it, the
        restart fails on the page cache the first load left: the crash loop (the integration test's
        sequence). The onset is that failed restart's end; the check runs right after it."""
        from tasks.container import managed_containers

        row = FaultRow(
            "loop",
            "crash loop on the page cache: the server's PID 1 ends (SIGTERM), "
            "docker restarts it, the restart fails on the page cache",
            "docker's `die` event of the first failed restart",
        )
        [server] = managed_containers(self.client, name)
        old_ids = {server.id}
        killed = time.time()
        server.exec_run(SIGTERM_PID1)

        def failed_restart(starts):
            again = [s for s in starts if s.container == server.id and s.at > killed]
            return next((s for s in again if s.died_at), None)

        restart = watch.wait_for(failed_restart, 60)
        if restart is None:
            row.note = "docker did not restart the server, or the restart did not fail"
            return row
        onset = restart.died_at
        first_die = next(
            (s.died_at for s in watch.starts if s.container == server.id and s.died_at and s.at < killed), None
        )
        row.note = (
            f"the kill -> the process's exit {first_die - killed:.2f} "
            f"s, -> the failed restart's exit {onset - killed:.2f} s"
            f" (it failed with: {restart.outcome()})"
            if first_die
            else ""
        )
        event_at = self.checks_until_unhealthy(row, name, onset)
        if event_at is None:
            return row
        row.detect_s = row.detect_default_s = event_at - onset
        self.follow_recovery(row, name, event_at, watch, old_ids)
        row.docker_restarts = self.restarts_of(watch, old_ids, onset)
        self.after_recovery(row, name)
        return row

    def wedge(self) -> FaultRow:
        """The engine deadlocks while /health and /v1/models keep answering 200 (vllm issue 39863)."""
        from bench.recovery import READY_LINE, Watch
        from flows.deploy import deploy_qwen
        from tasks.health.observation import Thresholds

        limits = Thresholds(**WEDGE_LIMITS)
        row = FaultRow(
            "wedge",
            f"wedge: the engine deadlocks ({HANG_AFTER_S:g} s after ready), /health and /v1/models still 200",
            f"the server's ready line (docker's timestamp) + {HANG_AFTER_S:g} s",
        )
        target = self.target(
            "wedge", {"VLLM_SIM_FAULT_HANG_AFTER_S": str(HANG_AFTER_S), "VLLM_SIM_FAULT_HANG_SCOPE": "engine"}
        )
        watch = Watch(self.client, target.name)
        try:
            deploy_qwen(target=target.name)
            self.without_fault(target)
            serving = watch.serving(0)
            if serving is None:
                row.note = "no ready line seen"
                return row
            old_ids = {s.container for s in watch.starts}
            onset = serving.first(READY_LINE, serving.at) + HANG_AFTER_S
            time.sleep(max(0.0, onset + 0.05 - time.time()))
            event_at = self.checks_until_unhealthy(row, target.name, onset, limits)
            if event_at is None:
                return row
            row.detect_s = event_at - onset
            # at the default answer budget a check of a wedged engine waits that budget for its smoke answer
            row.detect_default_s = row.detect_s - limits.answer_budget_s + Thresholds().answer_budget_s
            if not any(c.condition == "wedged" for c in row.checks):  # the progress layer's own verdict, a window later
                seen, _ = self.check(target.name, limits)
                row.checks.append(seen)
            self.follow_recovery(row, target.name, event_at, watch, old_ids)
            self.after_recovery(row, target.name, limits)
            return row
        finally:
            watch.close()
            self.cleanup(target.name)


# ---------------------------------------------------------------------------- one check's run time and rows


def timed_worker_check(client, deployment_id, name: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """One run of health-check/sim through the worker: created -> final, split by its states."""
    t0 = time.time()
    run = client.create_flow_run_from_deployment(deployment_id, parameters={"target": name})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = client.read_flow_run(run.id)
        if current.state and current.state.is_final():
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"health-check/sim for {name} did not finish within {timeout_s:.0f} s")
    seen = time.time()
    first = run_states(client, run.id)
    final = current.state.timestamp.timestamp()
    return {
        "id": run.id,
        "state": current.state.type.value,
        "wall": seen - t0,
        "pickup": first["PENDING"] - first["SCHEDULED"],
        "process": first["RUNNING"] - first["PENDING"],
        "flow": final - first["RUNNING"],
    }


def disable_schedules(client, deployment) -> int:
    """Pause the deployment's schedules and delete the runs they already scheduled: the bench runs
    its checks itself (a run at the schedule's time would land in the middle of a measurement)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    for schedule in deployment.schedules or []:
        client.update_deployment_schedule(deployment.id, schedule.id, active=False)
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
    )
    for run in runs:
        client.delete_flow_run(run.id)
    return len(runs)


@dataclass
class HistoryLimit:
    """The health check's own state on one target, check after check."""

    sizes: list[tuple[int, int]]  # (checks since the history was emptied, the state variable's length after them)
    failed_at: int | None = None  # the first check number whose flow run failed
    error: str = ""
    failed_again: bool = False  # the check after it failed too
    service_events_ok: int | None = None  # vllm.service.* events of the last check that worked
    service_events_failed: int | None = None  # ... of the check that failed
    keep_rows: int = 0  # tasks.state.HEALTH_HISTORY
    max_len: int = 0  # Prefect's MAX_VARIABLE_VALUE_LENGTH


def count_service_events(client, flow_run_id) -> int:
    """The vllm.service.* events a flow run emitted (they carry the run as a related resource)."""
    from datetime import datetime

    from prefect.events.filters import (
        EventAnyResourceFilter,
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
    )

    run = client.read_flow_run(flow_run_id)
    page = client.read_events(
        filter=EventFilter(
            event=EventNameFilter(prefix=["vllm.service."]),
            any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            occurred=EventOccurredFilter(
                since=datetime.fromtimestamp(run.created.timestamp() - 60, UTC),
                until=datetime.fromtimestamp(time.time() + 60, UTC),
            ),
        ),
        limit=1,
    )
    return page.total


def history_limit(bench: Bench, name: str, done: int, flush_s: float) -> HistoryLimit:
    """Check the steady target until its check fails (at most until the history is full, + 2):
    the state variable's length after each check, and the events of the last good and the first
    failed check."""
    from prefect import get_client
    from prefect.types import MAX_VARIABLE_VALUE_LENGTH

    from tasks.state import HEALTH_HISTORY, HEALTH_PREFIX

    result = HistoryLimit(sizes=[], keep_rows=HEALTH_HISTORY, max_len=MAX_VARIABLE_VALUE_LENGTH)
    last_ok = failed_id = None
    with get_client(sync_client=True) as api:
        size = variables(api).get(HEALTH_PREFIX + name, (0, 0))[1]
        result.sizes.append((done, size))
        number = done
        while number < HEALTH_HISTORY + 2:
            number += 1
            seen, state = bench.check(name)
            if seen.verdict == "failed":
                result.failed_at, result.error, failed_id = number, seen.condition, state.state_details.flow_run_id
                again, _ = bench.check(name)
                result.failed_again = again.verdict == "failed"
                break
            last_ok = state.state_details.flow_run_id
            result.sizes.append((number, variables(api).get(HEALTH_PREFIX + name, (0, 0))[1]))
        time.sleep(flush_s + 1.5)  # the event persister's flush
        if last_ok is not None:
            result.service_events_ok = count_service_events(api, last_ok)
        if failed_id is not None:
            result.service_events_failed = count_service_events(api, failed_id)
    return result


def limit_lines(limit: HistoryLimit | None, default_interval: float) -> str:
    """The section's paragraph about the state variable's limit."""
    if limit is None or not limit.sizes:
        return ""
    (n0, s0), (n1, s1) = limit.sizes[0], limit.sizes[-1]
    growth = (s1 - s0) / (n1 - n0) if n1 > n0 else 0.0
    full = limit.sizes[-1][1] + growth * max(0, limit.keep_rows - n1)
    lines = [
        f"The health check's state on one target (the variable vllm-health-<target>: verdict, since, /metrics snapshot,"
        f" restart count; its last {limit.keep_rows} checks are the history table artifact, not the variable):"
        f" {s0:,} characters (compact JSON, as Prefect counts) after {n0} more checks, {s1:,} after {n1}, so"
        f" {growth:.0f} per check; at {limit.keep_rows} checks about {full:,.0f}. Prefect refuses a Variable value"
        f" longer than {limit.max_len:,} characters (an earlier version kept the rows in the variable and failed"
        " every check after 11: this bench found it)."
    ]
    if limit.failed_at is not None:
        at = [
            fmt_s((limit.failed_at - 1) * i) for i in (default_interval, FAST_INTERVAL_S)
        ]  # check K runs (K - 1) x I after the first
        lines.append(
            f"**Check {limit.failed_at} since the history was emptied failed** (`{limit.error[:200]}`)"
            + (", and so did the next one" if limit.failed_again else "")
            + ": `save_health_state` runs before the event is emitted, "
            "so a failed check emits no `vllm.service.*` event"
            f" ({limit.service_events_failed} for the failed run, {limit.service_events_ok} for the last good one) and"
            " no automation can fire, and every later check fails "
            "the same way (the stored history never shrinks). On a"
            f" target checked every {default_interval:g} s that is {at[0]} "
            f"after its first check, every {FAST_INTERVAL_S:g} s"
            f" {at[1]}; the rows of unhealthy checks are longer, so "
            "sooner. Found by this bench, left as it is (tasks/state.py,"
            " flows/health.py); the in-process and worker checks "
            "above stay under it, and the fault rows below each run on"
            " a fresh target."
        )
    else:
        lines.append(f"No check failed up to {n1} checks.")
    return " ".join(lines)


# ---------------------------------------------------------------------------- the section


def fault_tables(
    rows: list[FaultRow], default_interval: float, wedge_check_default_s: float | None, one_start_scaled: float | None
) -> tuple[str, str, list[str]]:
    """The measured parts per fault, and the combined figures next to the anchors."""
    from tasks.health.observation import Thresholds

    defaults = Thresholds()
    measured, combined, notes = [], [], []
    for r in rows:
        seq = (
            "; ".join(
                f"{i + 1}: {c.verdict} ({c.layer}: {c.condition}), {c.wall_s:.2f} s" for i, c in enumerate(r.checks)
            )
            or "-"
        )
        auto = (
            "-"
            if r.automation_s is None
            else (
                f"{r.automation_s:.2f} ({r.event_to_created_s:.2f} "
                f"/ {r.created_to_pending_s:.2f} / {r.pending_to_running_s:.2f})"
            )
        )
        detect = "-" if r.detect_s is None else f"{r.detect_s:.2f} (check {r.detect_check})"
        if r.key == "wedge" and r.detect_default_s is not None:
            detect += f"; at the default {defaults.answer_budget_s:g} s answer budget: {r.detect_default_s:.2f}"
        recover = (
            "-"
            if r.recover_wall_s is None
            else (
                f"{r.recover_outcome}: {r.recover_wall_s:.2f} s, of which {r.recover_startup_s:.2f} "
                f"s startup phases -> {fmt_s(r.recover_scaled_s)} scaled back"
            )
        )
        after = "-" if r.after is None else f"{r.after.verdict} ({r.after.layer}: {r.after.condition})"
        measured.append(f"| {r.label} | {r.onset} | {seq} | {detect} | {auto} | {recover} | {after} |")

        cells = []
        for interval in (default_interval, FAST_INTERVAL_S):
            if r.detect_default_s is None:
                cells += ["not measured", "not measured"]
                continue
            unhealthy = at_interval(interval, r.detect_default_s)
            if r.healthy_again and r.automation_s is not None and r.recover_scaled_s is not None:
                healthy = fmt_pair(at_interval(interval, r.detect_default_s, r.automation_s + r.recover_scaled_s))
            else:
                healthy = "never (automatically)"
            cells += [fmt_pair(unhealthy), healthy]
        combined.append(
            f"| {r.label.split(':')[0]} | " + " | ".join(cells) + f" | {anchor_cells(r.key, one_start_scaled)} |"
        )
        if r.note.strip():
            notes.append(f"- {r.label.split(':')[0]}: {r.note.strip()}")
        if r.docker_restarts:
            notes.append(f"- {r.label.split(':')[0]}, the old container meanwhile: {r.docker_restarts}")
    autos = [r.automation_s for r in rows if r.automation_s is not None]
    if autos:
        notes.append(
            f"- the automation latency a over the {len(autos)} "
            f"faults: {min(autos):.2f} / {statistics.median(autos):.2f} /"
            f" {max(autos):.2f} s (min / median / max), one sample per fault (the trigger acts once per target)"
        )
    for r in rows:
        if "nothing to recover" in r.recover_outcome and not r.healthy_again:
            notes.append(
                f"- {r.label.split(':')[0]}: recover-vllm found /health 200 and /v1/models listing the model (its"
                " `endpoint_ready`) and returned without touching the server, which was still"
                f" {r.after.condition if r.after else 'unhealthy'} at the check after it: no automatic way back"
            )
    if wedge_check_default_s is not None:
        for interval in (default_interval, FAST_INTERVAL_S):
            named, cancelled = wedge_named_after(interval, defaults.wedge_window_s, wedge_check_default_s)
            notes.append(
                f"- wedge at I = {interval:g} s: the progress layer names it `wedged` (rather than the function layer's"
                f" unanswered smoke question) {fmt_s(named)} after the first check's start ({cancelled} scheduled"
                f" check(s) cancelled meanwhile by the deployment's concurrency limit, 1 with CANCEL_NEW, as a wedged"
                f" check takes {wedge_check_default_s:.1f} s)"
            )
    return "\n".join(measured), "\n".join(combined), notes


def anchor_cells(key: str, one_start_scaled: float | None) -> str:
    """docker HEALTHCHECK | Kubernetes liveness | the playbook's loop, for one fault."""
    start = fmt_s(one_start_scaled) if one_start_scaled else "one start"
    poll = at_interval(PLAYBOOK_POLL_S, 0.0)
    if key == "wedge":
        never = "never: /health answers 200 (vllm issue 39863)"
        return f"{never} | {never} | {never}"
    docker_cell = (
        "the exit is seen at once (no probe needed); restarted with the same command, which fails on the"
        " page cache again: never healthy"
    )
    k8s_cell = (
        "the exit is seen at once; restarted with the same arguments (CrashLoopBackOff), which fail on the"
        " page cache again: never healthy"
    )
    playbook = (
        f"a person sees /health fail after {fmt_pair(poll)} (if watching); healthy after their drop_caches and"
        f" restart: their time + {start}"
    )
    return f"{docker_cell} | {k8s_cell} | {playbook}"


def body(
    args,
    run_s: float,
    default_interval: float,
    inproc: list[float],
    inproc_flow: list[float],
    worker: list[dict],
    rows: list[FaultRow],
    rows_one: dict[str, int] | None,
    rows_worker_one: dict[str, int] | None,
    var_updates: tuple[int, int, int] | None,
    db_inproc: tuple[DbSnapshot, int] | None,
    db_worker: tuple[DbSnapshot, int] | None,
    calib: dict[str, float],
    retention: str,
    prefect_deploy_s: float,
    limit: HistoryLimit | None = None,
) -> str:
    from prefect.settings import get_current_settings

    from deployments.dev.worker import WORKER_ENV
    from tasks.health.observation import Thresholds

    defaults = Thresholds()
    events_days = get_current_settings().server.events.retention_period.total_seconds() / DAY_S
    wedge = next((r for r in rows if r.key == "wedge" and r.checks), None)
    # a wedged check at the defaults: the measured wedged checks, minus the short answer budget, plus the default one
    wedge_check_default = None
    if wedge:
        walls = [c.wall_s for c in wedge.checks if c.verdict == "unhealthy"]
        if walls:
            wedge_check_default = statistics.median(walls) - WEDGE_LIMITS["answer_budget_s"] + defaults.answer_budget_s
    measured, combined, notes = fault_tables(rows, default_interval, wedge_check_default, calib.get("one_start_scaled"))

    def cell(values: list[float]) -> str:
        if not values:
            return "- | -"
        med, top = spread(values)
        return f"{med:.2f} | {top:.2f}"

    run_table = [
        f"| in-process `health_check(target)`, the call's wall time | {len(inproc)} | {cell(inproc)} |",
        "| the same checks, the flow run's own duration (Running -> Completed "
        f"on the server) | {len(inproc_flow)} | {cell(inproc_flow)} |",
    ]
    if worker:
        run_table += [
            "| through the worker (deployment health-check/sim; final "
            f"states: {', '.join(sorted({w['state'] for w in worker}))}): the run's creation "
            f"-> its final state seen | {len(worker)} | {cell([w['wall'] for w in worker])} |",
            "| of which Scheduled -> Pending (the worker's poll) "
            f"| {len(worker)} | {cell([w['pickup'] for w in worker])} |",
            "| of which Pending -> Running (the flow-run process starts) "
            f"| {len(worker)} | {cell([w['process'] for w in worker])} |",
            f"| of which Running -> final (the check itself) | {len(worker)} | {cell([w['flow'] for w in worker])} |",
        ]

    db_lines = []
    if rows_one:
        order = ["flow runs", "flow run states", "task runs", "task run states", "logs", "artifacts", "events"]
        for key in order:
            one = rows_one.get(key, 0)
            via_worker = rows_worker_one.get(key, 0) if rows_worker_one else None
            scheduled = one if via_worker is None else via_worker  # a scheduled check runs through the worker
            extra = " (2 keys: a new version of each)" if key == "artifacts" else ""
            days = [per_day(scheduled, i) for i in (default_interval, FAST_INTERVAL_S)]
            if key == "events":
                extra = f" (deleted after {events_days:g} days: at most that many days' worth)"
                cells = " | ".join(f"{d:,.0f} (at most {d * events_days:,.0f})" for d in days)
            else:
                cells = " | ".join(f"{d:,.0f}" for d in days)
            db_lines.append(f"| {key}{extra} | {one} | {'-' if via_worker is None else via_worker} | {cells} |")
        if var_updates:
            created, updated, size = var_updates
            db_lines.append(
                "| variables: created / updated (vllm-health-<target>, "
                f"now {size:,} characters) | {created} / {updated} | | "
                f"0 new rows; {per_day(updated, default_interval):,.0f} updates | "
                f"0 new rows; {per_day(updated, FAST_INTERVAL_S):,.0f} updates |"
            )

    def growth(entry: tuple[DbSnapshot, int] | None, label: str) -> list[str]:
        if entry is None:
            return []
        delta, n = entry
        tables = ", ".join(f"{t} {v / n:.1f}" for t, v in sorted(delta.rows.items(), key=lambda kv: -kv[1]) if v)
        used, on_disk = delta.used_bytes / n, delta.file_bytes / n
        line = (
            f"- {label} ({n} checks): rows per check by table: {tables or 'none'}; the database's used pages grew"
            f" {human_bytes(used)} per check, so {human_bytes(per_day(used, default_interval))} a day at"
            f" {default_interval:g} s and {human_bytes(per_day(used, FAST_INTERVAL_S))} a day at {FAST_INTERVAL_S:g} s"
            f" (the file with its WAL: {human_bytes(on_disk)} per check)."
        )
        if delta.table_bytes:
            events = sum(v for t, v in delta.table_bytes.items() if t in EVENT_TABLES) / n
            kept = sum(v for t, v in delta.table_bytes.items() if t not in EVENT_TABLES) / n
            line += (
                f" By table (SQLite's dbstat, indexes included): the events ({', '.join(EVENT_TABLES)})"
                f" {human_bytes(events)} per check, deleted after {events_days:g} days, so at most"
                f" {human_bytes(per_day(events, default_interval) * events_days)} at {default_interval:g} s and"
                f" {human_bytes(per_day(events, FAST_INTERVAL_S) * events_days)} at {FAST_INTERVAL_S:g} s; the rest"
                f" {human_bytes(kept)} per check, kept: {human_bytes(per_day(kept, default_interval) * 365)} a year at"
                f" {default_interval:g} s, {human_bytes(per_day(kept, FAST_INTERVAL_S) * 365)} "
                f"at {FAST_INTERVAL_S:g} s."
            )
        return [line]

    db_growth = growth(db_inproc, "in-process checks") + growth(db_worker, "checks through the worker")
    anchors_docker = probe_anchor(DOCKER["period_s"], DOCKER["failures"])
    anchors_docker_hang = probe_anchor(DOCKER["period_s"], DOCKER["failures"], DOCKER["timeout_s"])
    anchors_k8s = probe_anchor(K8S["period_s"], K8S["failures"])
    anchors_k8s_hang = probe_anchor(K8S["period_s"], K8S["failures"], K8S["timeout_s"])
    calib_line = (
        (
            f"One start of this run (the first target's deploy): {calib['python']:.2f} s of Python start-up and"
            f" {calib['startup']:.2f} s of startup phases at time scale {args.time_scale}, so"
            f" {fmt_s(calib['one_start_scaled'])} scaled back (the runbook: 3-4 minutes from a warm cache)."
        )
        if calib
        else ""
    )

    keep_note = ""
    if limit is not None:
        keep_note = (
            f"; it would stop growing at its {limit.keep_rows} history rows, but fails first (above)"
            if limit.failed_at
            else f" and keeps its last {limit.keep_rows} history rows"
        )
    return f"""{machine_line()}
`python -m bench.health --time-scale {args.time_scale} --checks {args.checks} --worker-checks {args.worker_checks}` \
(the whole
run: {run_s:.0f} s): a throwaway Prefect server (`prefect_test_harness`, SQLite), the Hub imitation, the vLLM
imitation in docker; `prefect deploy --name recover-vllm/sim --name health-check/sim` \
({prefect_deploy_s:.0f} s; the schedule of
health-check/sim paused and its scheduled runs deleted, so that only the bench's own checks run), a process worker
from deployments/dev/worker.py (polling \
every {WORKER_ENV["PREFECT_WORKER_QUERY_SECONDS"]} s); every fault on its own target
named sim-... (the trigger of recover-vllm/sim matches vllm.service.sim* and acts once per target per 600 s).
The default interval, {default_interval:g} s, is prefect.yaml's health-check schedule; a schedule cannot be waited
out here, so the parts are measured and combined.

### One check's run time (a healthy server)

| how | n | median s | max s |
|---|---|---|---|
{chr(10).join(run_table)}

The call's wall time also carries the flow engine's set-up in the caller and, at its end, the join of
Prefect's heartbeat thread (see "Deploy flow"); through the worker, most of it is the flow-run process's start.

{limit_lines(limit, default_interval)}

### The parts, measured per fault

The detection latency d: from the fault's onset to the `vllm.service.unhealthy` event's `occurred` time (read
through the API), the checks run in-process back to back from the onset. The automation latency a: from that
event to recover-vllm's flow run Running, through the worker (the event -> the flow run created by the trigger
/ -> Pending, picked up by the worker / -> Running, its process started). recover-vllm's run: Running -> final
on the server; scaled back with bench/recovery.py's `scaled_back`: `wall - startup + startup / {args.time_scale}`,
where startup is the imitation's startup phases (first log line to ready line) of the servers recover-vllm
started; the rest (the flow, docker, the memory reads, the wait for the dead server's memory) is kept as
measured. After it: one more check. {calib_line}

| fault | onset (how its time is taken) | the checks after the onset: verdict (layer: condition), wall | \
d, s | a, s (-> created / -> Pending / -> Running) | recover-vllm: outcome, wall, scaled back | after it |
|---|---|---|---|---|---|---|
{measured}

### Fault to unhealthy, fault to healthy again (mean / worst)

| fault | I = {default_interval:g} s: fault -> unhealthy | I = {default_interval:g} s: fault -> healthy | I \
= {FAST_INTERVAL_S:g} s: fault -> unhealthy | I = {FAST_INTERVAL_S:g} s: fault -> healthy | \
docker HEALTHCHECK 30 s x 3 | Kubernetes liveness 10 s x 3 | the playbook's manual loop (10 s) |
|---|---|---|---|---|---|---|---|
{combined}

The formulas. A fault falls at a uniformly random moment between two scheduled checks, so the next check starts
after I/2 on average and I at worst: fault -> unhealthy = I/2 + d (mean), I + d (worst); fault -> healthy =
that + a + r, with r recover-vllm's run scaled back; "never (automatically)" when the check after recover-vllm
was not healthy or degraded. The wedge's d is measured with a {WEDGE_LIMITS["answer_budget_s"]:g} s answer budget and a
{WEDGE_LIMITS["wedge_window_s"]:g} s wedge window (as \
tests/integration/test_health.py); a check of a wedged engine waits its whole
answer budget for the smoke answer, so at the defaults d = measured d \
- {WEDGE_LIMITS["answer_budget_s"]:g} + {defaults.answer_budget_s:g} s. The first
check after the onset already says unhealthy when the smoke question goes unanswered (the function layer);
the progress layer's `wedged` needs a second check at least the \
wedge window ({defaults.wedge_window_s:g} s by default) after
the first, i.e. one more interval at I >= {defaults.wedge_window_s:g} \
s and ceil(window / I) more at shorter ones, less any the
concurrency limit cancels (see below). The anchors by the same formula, for a fault that fails /health: a probe
every P s after the previous one ended, n failures in a row, each failing probe taking t s: mean P/2 + (n - 1)(P + t)
+ t, worst P + (n - 1)(P + t) + t. docker HEALTHCHECK (30 s \
x 3): {fmt_pair(anchors_docker)} when the probe fails at once,
{fmt_pair(anchors_docker_hang)} when each probe hangs to its 30 s timeout; an unhealthy container is never restarted
(moby issue 28400). Kubernetes liveness (10 s x 3): {fmt_pair(anchors_k8s)} ({fmt_pair(anchors_k8s_hang)} with 1 s
timeouts), then a restart with the same arguments, which on a Spark fails on the page cache again (CrashLoopBackOff):
never healthy. The playbook's loop: a person polling /health \
every {PLAYBOOK_POLL_S:g} s, {fmt_pair(at_interval(PLAYBOOK_POLL_S, 0))},
then recovery by hand. A crash ends the process, so docker and Kubernetes act on the exit, not on a probe.

{chr(10).join(notes)}

### What one check adds to the server's database

Rows of one check, read through the Prefect client (the last in-process check, a steady one; and the last check
through the worker), and per day at each interval (the worker's figure, as a scheduled check runs through the
worker, x 86400 / I; checks per day: {per_day(1, default_interval):,.0f} at
{default_interval:g} s, {per_day(1, FAST_INTERVAL_S):,.0f} at {FAST_INTERVAL_S:g} s):

| what | one check, in-process | one check, through the worker | per \
day at {default_interval:g} s | per day at {FAST_INTERVAL_S:g} s |
|---|---|---|---|---|
{chr(10).join(db_lines)}

The SQLite file itself (the harness's temporary database; read-only row counts of every table and
`(page_count - freelist_count) x page_size` before and after, once the counts had stopped moving):

{chr(10).join(db_growth) or "- not measured"}

{retention} The health check's state variable is rewritten by every check (an update, no new row){keep_note}.
Measured on these 2 cores with the imitations, not on a Spark.
"""


def retention_line() -> str:
    """What the server deletes by itself, from its settings."""
    from prefect.settings import get_current_settings

    settings = get_current_settings().server
    kinds = sorted(settings.services.db_vacuum.enabled_vacuum_types)
    events_days = settings.events.retention_period.total_seconds() / DAY_S
    flow_runs = (
        "flow runs older than "
        f"{settings.services.db_vacuum.retention_period.total_seconds() / DAY_S:g} days are deleted"
        if "flow_runs" in kinds
        else "flow runs, task runs, logs and artifacts are kept for ever (the `flow_runs` vacuum is off)"
    )
    return (
        f"What the server deletes by itself (its settings): the database vacuum runs {', '.join(kinds) or 'nothing'};"
        f" events are kept {events_days:g} days (so the event rows level off at {events_days:g} days' worth);"
        f" {flow_runs}."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--checks", type=int, default=10)
    parser.add_argument("--worker-checks", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=300, help="start no new fault after this long")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    began = time.monotonic()
    operator_env = dict(os.environ)  # the CLI and the worker run as an operator runs them
    operator_env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    operator_env.pop("PREFECT_WORKER_QUERY_SECONDS", None)  # the project's polling (deployments/dev/worker.py)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import yaml
    from prefect import get_client
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    from deployments.dev.worker import ROOT, start_worker, stop_worker
    from deployments.setup import ensure_work_pool
    from flows.deploy import deploy_qwen
    from sim.hub import HubServer, RepoSpec
    from sim.image import ensure_sim_image

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [health_sim] = [d for d in spec["deployments"] if d["name"] == "sim" and d["entrypoint"].endswith(":health_check")]
    default_interval = float(health_sim["schedules"][0]["interval"])
    flush_s = get_current_settings().server.services.event_persister.flush_interval

    client = docker.from_env()
    ensure_sim_image(client)
    rows: list[FaultRow] = []
    inproc, inproc_flow, worker_runs = [], [], []
    rows_one = rows_worker_one = var_updates = db_inproc = db_worker = limit = None
    calib: dict[str, float] = {}
    bench = None
    worker = None
    prefect_deploy_s = 0.0
    with (
        tempfile.TemporaryDirectory(prefix="bench-health-") as tmp,
        prefect_test_harness(server_startup_timeout=90),
        HubServer(
            repos=[RepoSpec(n_shards=7, shard_bytes=1024 * 1024)], data_dir=Path(tmp) / "hub", token=TOKEN
        ) as hub,
    ):
        from bench.recovery import READY_LINE, Watch

        Secret(value=TOKEN).save("hf-token", overwrite=True)
        bench = Bench(client, Path(tmp), hub.url, args.time_scale, uuid.uuid4().hex[:4])
        env = {**operator_env, "PREFECT_API_URL": PREFECT_API_URL.value()}
        path = db_path()
        try:
            ensure_work_pool(WORK_POOL)
            # registering the deployments runs beside the first deploy (neither is measured)
            t_deploy = time.monotonic()
            registering = subprocess.Popen(
                [PREFECT, "--no-prompt", "deploy", "--name", "recover-vllm/sim", "--name", "health-check/sim"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            steady = bench.target("steady")
            watch = Watch(client, steady.name)
            deploy_qwen(target=steady.name)
            serving = watch.serving(0)
            if serving is not None:
                python_s = serving.lines[0][0] - serving.at
                startup_s = serving.first(READY_LINE, serving.at) - serving.lines[0][0]
                calib = {
                    "python": python_s,
                    "startup": startup_s,
                    "one_start_scaled": python_s + startup_s / args.time_scale,
                }
            out, _ = registering.communicate(timeout=240)
            prefect_deploy_s = time.monotonic() - t_deploy
            if registering.returncode != 0:
                raise RuntimeError(f"prefect deploy failed:\n{out.decode(errors='replace')[-3000:]}")
            with get_client(sync_client=True) as api:
                health_dep = api.read_deployment_by_name("health-check/sim")
                bench.recover_deployment_id = api.read_deployment_by_name("recover-vllm/sim").id
                disable_schedules(api, health_dep)

            # one check's run time, in-process; the database's growth over checks 2..N
            ids = []
            before_vars = None
            for i in range(args.checks):
                if i == 1 and path:
                    db_first = settled(path, flush_s + 1)
                if i == args.checks - 1:
                    with get_client(sync_client=True) as api:
                        before_vars = variables(api)
                seen, state = bench.check(steady.name)
                inproc.append(seen.wall_s)
                ids.append(state.state_details.flow_run_id)
            with get_client(sync_client=True) as api:
                if path and args.checks > 1:
                    db_inproc = (settled(path, flush_s + 1).minus(db_first), args.checks - 1)
                for run_id in ids:
                    first = run_states(api, run_id)
                    run = api.read_flow_run(run_id)
                    inproc_flow.append(run.state.timestamp.timestamp() - first["RUNNING"])
                rows_one = run_rows(api, ids[-1])
                after_vars = variables(api)
                if before_vars is not None:
                    created = len(set(after_vars) - set(before_vars))
                    updated = sum(1 for k, v in after_vars.items() if k in before_vars and v[0] != before_vars[k][0])
                    var_updates = (created, updated, after_vars.get(f"vllm-health-{steady.name}", (0, 0))[1])
                disable_schedules(api, api.read_deployment_by_name("health-check/sim"))

            # the target's history starts empty again: the checks below stay under Prefect's limit on a
            # Variable's length, and `history_limit` counts from here (see `limit_lines`)
            from tasks.state import health_state, save_health_state

            save_health_state(steady.name, health_state(steady.name))
            worker = start_worker(WORK_POOL, f"bench-health-{bench.run_id}", Path(tmp) / "worker.log", env=env)
            if args.worker_checks:
                with get_client(sync_client=True) as api:
                    db_before = settled(path, flush_s + 1) if path else None
                    for _ in range(args.worker_checks):
                        worker_runs.append(timed_worker_check(api, health_dep.id, steady.name))
                    if path:
                        db_worker = (settled(path, flush_s + 1).minus(db_before), args.worker_checks)
                    rows_worker_one = run_rows(api, worker_runs[-1]["id"])

            # how long the check keeps working on one target: its state variable grows by a history row per check
            limit = history_limit(bench, steady.name, len(worker_runs), flush_s)
            watch.close()
            bench.cleanup(steady.name)

            faults = [("crash", bench.crash), ("wedge", bench.wedge), ("loop", bench.crash_loop)]
            for key, run_fault in faults:
                if time.monotonic() - began > args.budget_s:
                    print(f"time budget spent: {key} not run", flush=True)
                    continue
                row = run_fault()
                rows.append(row)
                print(f"{key}: {row}", flush=True)
        finally:
            if worker is not None:
                print(stop_worker(worker), flush=True)
            for name in bench.targets:
                bench.cleanup(name)
    run_s = time.monotonic() - began
    order = {"crash": 0, "wedge": 1, "loop": 2}
    rows.sort(key=lambda r: order[r.key])
    text = body(
        args,
        run_s,
        default_interval,
        inproc,
        inproc_flow,
        worker_runs,
        rows,
        rows_one,
        rows_worker_one,
        var_updates,
        db_inproc,
        db_worker,
        calib,
        retention_line(),
        prefect_deploy_s,
        limit,
    )
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
