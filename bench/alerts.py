"""From a fault to the operator's message in the webhook receiver: a crash, a wedge and a service-level
breach, at prefect.yaml's 300 s health-check schedule and at 30 s, next to the anchors (docker
HEALTHCHECK, a Kubernetes liveness probe, the Spark watchdog of eugr/spark-vllm-docker), against the
goal of issue 18: a message within one check interval plus `GOAL_SLACK_S` of the fault.
Written to docs/benchmarks.md (## Alerts: fault to the message in the receiver).

Two parts, on a throwaway Prefect server (`prefect_test_harness`, SQLite), the Hub imitation, the vLLM
imitation in docker, a loopback webhook receiver (sim/webhook.py, an imitation of Slack's side) and
`configure_notifications(receiver.url)` (the custom webhook block and the notify automation):

- per fault, on its own target: deploy, inject the fault, run the check right after the onset (in
  process, as a scheduled check that lands just after it would), and measure onset -> the check's
  verdict (its run time) -> the ``vllm.incident.opened`` event -> the message's arrival (its ``time``);
- at 30 s for real: `prefect deploy` of health-check/sim, its schedule set to a 30 s interval for one
  target, a process worker (deployments/dev/worker.py); the server's process ended at a random phase
  of the schedule; ``--samples`` times fault -> message end to end (the scheduler, the worker's
  pickup, the flow run's start, the check, the automation, the webhook). 300 s cannot be waited out:
  those measured parts are combined with bench/health.py's `at_interval` (mean I/2 + d, worst I + d).

    .venv/bin/python -m bench.alerts [--samples 3] [--time-scale 0.01] [--seed 18] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import httpx

from bench.health import (
    DIE_AFTER_S,
    DOCKER,
    FAST_INTERVAL_S,
    HANG_AFTER_S,
    K8S,
    PREFECT,
    SIGTERM_PID1,
    TOKEN,
    Bench,
    CheckSeen,
    at_interval,
    disable_schedules,
    fmt_pair,
    fmt_s,
    probe_anchor,
    run_states,
)
from bench.report import machine_line, write_section
from blocks.shared import WORK_POOL

HEADING = "Alerts: fault to the message in the receiver"
#: Issue 18's goal: the message within one check interval plus this of the fault (the check and the delivery).
GOAL_SLACK_S = 10.0
MAX_CHECKS = 4
# The Spark watchdog (eugr/spark-vllm-docker, examples/glm-watchdog.sh): `sleep 120` then a tiny completion with
# `curl -m 120`; 3 failures in a row -> restart; at most 3 restarts per 6 h, then it touches a file and stands down.
WATCHDOG_PERIOD_S, WATCHDOG_TIMEOUT_S, WATCHDOG_FAILURES = 120.0, 120.0, 3
# The breach: the imitation's outside load (POST /_sim/pressure, docs/imitations.md) delays every first token.
PRESSURE_PATH = "/_sim/pressure"
SLO_DELAY_S = 1.3  # the first-token delay the imitation adds to every request
SLO_REQUESTS = 12  # sent at once: over the default min_window_requests (10), so the p99 is judged
SLO_LINE_S = 1.0  # the TTFT line of the scaled run (default 30 s); the other limits stay at their defaults
MODEL = "Qwen/Qwen3-32B-FP8"


# ---------------------------------------------------------------------------- pure helpers (the formulas)


def goal_s(interval_s: float) -> float:
    """Issue 18's goal for fault -> message at a check interval: I + `GOAL_SLACK_S`.

    A fault waits at most one interval for the next check; the check and the delivery get the rest.
    """
    if interval_s <= 0:
        raise ValueError(f"interval must be > 0, got {interval_s}")
    return interval_s + GOAL_SLACK_S


def meets_goal(interval_s: float, worst_s: float) -> bool:
    """Whether the worst fault -> message at ``interval_s`` is within `goal_s` (so: d <= `GOAL_SLACK_S`)."""
    return worst_s <= goal_s(interval_s)


def fault_to_message(interval_s: float, to_message_s: float) -> tuple[float, float]:
    """(mean, worst) fault -> message at ``interval_s``, from ``to_message_s``: the first check's
    scheduled start -> the message (the worker's pickup, the flow run's start, the check, the automation,
    the webhook). bench/health.py's `at_interval`: mean I/2 + d, worst I + d."""
    return at_interval(interval_s, to_message_s)


def at_default(measured_s: float, scaled_wait_s: float, default_wait_s: float) -> float:
    """A figure measured with a scaled wait inside the check, at the default wait: a wedged engine's check
    waits its whole answer budget, a breach's check waits the slow first token of its own question."""
    if min(measured_s, scaled_wait_s, default_wait_s) < 0 or scaled_wait_s > measured_s:
        raise ValueError("the measured figure includes the scaled wait; nothing is negative")
    return measured_s - scaled_wait_s + default_wait_s


def next_start(anchor: float, interval_s: float, t: float) -> float:
    """The first start of a schedule (``anchor`` + k x ``interval_s``, k >= 0) at or after ``t``."""
    if interval_s <= 0:
        raise ValueError(f"interval must be > 0, got {interval_s}")
    if t <= anchor:
        return anchor
    k = -(-(t - anchor) // interval_s)  # ceil
    return anchor + k * interval_s


def median(values: list[float | None]) -> float | None:
    """The median of the values measured (None: none was)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


# ---------------------------------------------------------------------------- measured rows


@dataclass
class FaultSeen:
    """One fault, the checks after its onset (in process), the message."""

    key: str
    label: str
    onset_how: str
    onset: float | None = None
    checks: list[CheckSeen] = field(default_factory=list)
    event_at: float | None = None  # the vllm.incident.opened event's occurred time
    message_at: float | None = None  # its arrival in the receiver
    subject: str = ""
    default_wait: tuple[float, float] | None = None  # (scaled, default) wait inside the deciding check
    note: str = ""

    def part(self, a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    @property
    def deciding(self) -> CheckSeen | None:
        return self.checks[-1] if self.checks and self.message_at is not None else None

    @property
    def total_s(self) -> float | None:
        return self.part(self.onset, self.message_at)

    @property
    def total_default_s(self) -> float | None:
        if self.total_s is None:
            return None
        return self.total_s if self.default_wait is None else at_default(self.total_s, *self.default_wait)


@dataclass
class Sample:
    """One fault at a random phase of the 30 s schedule, through the scheduler and the worker."""

    target: str
    onset: float
    phase_s: float  # the onset after the previous scheduled start
    scheduled: float | None = None  # the detecting run's expected start
    pending: float | None = None
    running: float | None = None
    event_at: float | None = None
    message_at: float | None = None
    verdict: str = ""

    def between(self, a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a


# ---------------------------------------------------------------------------- reads


def opened_for(name: str):
    """The receiver's predicate for the incident-opened message about one target."""
    return lambda m: (m.get("json") or {}).get("subject", "").startswith(f"[{name}] OPENED")


def incident_event(name: str, since: float, timeout_s: float = 20.0):
    """The target's first vllm.incident.opened event since ``since``, once the server stored it."""
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    from blocks.target import service_resource_id
    from tasks.events import IncidentEvent

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[IncidentEvent.OPENED.event]),
                    resource=EventResourceFilter(id=[service_resource_id(name)]),
                    occurred=EventOccurredFilter(
                        since=datetime.fromtimestamp(since - 1, UTC), until=datetime.now(UTC) + timedelta(minutes=1)
                    ),
                ),
                limit=10,
            )
            if page.events:
                return min(page.events, key=lambda e: e.occurred)
            time.sleep(0.5)
    return None


def flow_run_of(event) -> str | None:
    """The flow run an event was emitted from (Prefect adds it as a related resource)."""
    for related in event.related:
        if related.id.startswith("prefect.flow-run."):
            return related.id.removeprefix("prefect.flow-run.")
    return None


def first_unhealthy(http: httpx.Client, timeout_s: float) -> float | None:
    """The first moment /health is not 200 (polled every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if http.get("/health").status_code != 200:
                return time.time()
        except httpx.HTTPError:
            return time.time()
        time.sleep(0.02)
    return None


# ---------------------------------------------------------------------------- the faults, in process


class Alerts:
    def __init__(self, bench: Bench, receiver) -> None:
        self.bench, self.receiver = bench, receiver

    def until_message(self, row: FaultSeen, name: str, limits=None) -> None:
        """Checks from the onset until one opens the incident (at most `MAX_CHECKS`); the event and the message."""
        from tasks.health.verdict import SERVICE_LEVEL_CONDITIONS

        levels = {c.value for c in SERVICE_LEVEL_CONDITIONS}
        for _ in range(MAX_CHECKS):
            seen, _state = self.bench.check(name, limits)
            row.checks.append(seen)
            if seen.verdict == "unhealthy" or (seen.verdict == "degraded" and seen.condition in levels):
                break
        else:
            row.note += f" no check of {MAX_CHECKS} opened an incident;"
            return
        try:
            message = self.receiver.wait_for(opened_for(name), timeout_s=30)
        except AssertionError as exc:
            row.note += f" no message: {str(exc)[:200]};"
            return
        row.message_at, row.subject = message["time"], message["json"]["subject"]
        event = incident_event(name, row.onset or 0)
        row.event_at = event.occurred.timestamp() if event else None

    def crash(self) -> FaultSeen:
        """bench/health.py's crash: the engine core dies (/health 500, the process exits a second later)."""
        from flows.deploy import deploy_qwen

        row = FaultSeen(
            "crash",
            f"crash: the engine core dies ({DIE_AFTER_S:g} s after ready; /health 500, exit 1 a second later)",
            "the first /health that is not 200 (polled every 20 ms)",
        )
        target = self.bench.target("crash", {"VLLM_SIM_FAULT_DIE_AFTER_S": str(DIE_AFTER_S)})
        try:
            deploy_qwen(target=target.name)
            with httpx.Client(base_url=target.endpoint, timeout=2) as http:
                row.onset = first_unhealthy(http, DIE_AFTER_S + 30)
            if row.onset is None:
                row.note = "the engine did not die"
                return row
            self.until_message(row, target.name)
            return row
        finally:
            self.bench.cleanup(target.name)

    def wedge(self) -> FaultSeen:
        """bench/health.py's wedge: the engine deadlocks while /health and /v1/models answer 200."""
        from bench.recovery import READY_LINE, Watch
        from flows.deploy import deploy_qwen

        row = FaultSeen(
            "wedge",
            f"wedge: the engine deadlocks ({HANG_AFTER_S:g} s after ready), /health and /v1/models still 200",
            f"the server's ready line (docker's timestamp) + {HANG_AFTER_S:g} s",
        )
        target = self.bench.target(
            "wedge", {"VLLM_SIM_FAULT_HANG_AFTER_S": str(HANG_AFTER_S), "VLLM_SIM_FAULT_HANG_SCOPE": "engine"}
        )
        watch = Watch(self.bench.client, target.name)
        try:
            deploy_qwen(target=target.name)
            serving = watch.serving(0)
            if serving is None:
                row.note = "no ready line seen"
                return row
            ready = serving.first(READY_LINE, serving.at)
            if ready is None:
                row.note = "no ready line seen"
                return row
            row.onset = ready + HANG_AFTER_S
            time.sleep(max(0.0, row.onset + 0.05 - time.time()))
            self.until_message(row, target.name)  # the default limits: the stall is judged at 10 s
            return row
        finally:
            watch.close()
            self.bench.cleanup(target.name)

    def breach(self) -> tuple[FaultSeen, CheckSeen | None]:
        """Slow first tokens: the imitation delays every first token by `SLO_DELAY_S` and the bench sends
        `SLO_REQUESTS` at once; the check right after them judges p99 TTFT over the window since the
        previous check. First with every limit scaled alike (the TTFT line, the smoke answer's slow line
        and budget, as at the defaults 30 / 10 / 60 s), then with only the TTFT line scaled."""
        from flows.deploy import deploy_qwen
        from tasks.health.limits import Thresholds

        defaults = Thresholds()
        ratio = SLO_LINE_S / defaults.ttft_p99_s
        alike = Thresholds(
            ttft_p99_s=SLO_LINE_S,
            answer_slow_s=defaults.answer_slow_s * ratio,
            answer_budget_s=defaults.answer_budget_s * ratio,
        )
        line_only = Thresholds(ttft_p99_s=SLO_LINE_S)
        row = FaultSeen(
            "breach",
            f"SLO breach: p99 TTFT over the line (every first token {SLO_DELAY_S:g} s late, line {SLO_LINE_S:g} s;"
            f" {SLO_REQUESTS} requests in the window)",
            "the last of the slow requests answered (its first token is in /metrics)",
            default_wait=(SLO_DELAY_S, 0.0),  # a breach the short smoke question does not feel (see `body`)
        )
        target = self.bench.target("breach")
        try:
            deploy_qwen(target=target.name)
            with httpx.Client(base_url=target.endpoint, timeout=60) as http:
                self.bench.check(target.name, line_only)  # the window starts here
                http.post(PRESSURE_PATH, json={"first_token_delay_s": SLO_DELAY_S}).raise_for_status()
                slow_requests(target.endpoint)
                row.onset = time.time()
                self.until_message(row, target.name, line_only)
                # after the measured one: a breach it opened first would leave the measured check no message to send
                slow_requests(target.endpoint)
                scaled_alike, _ = self.bench.check(target.name, alike)
                http.delete(PRESSURE_PATH).raise_for_status()
            if any(opened_for(target.name)(m) and m["time"] < (row.onset or 0) for m in self.receiver.messages):
                row.note += " the check with every limit scaled alike sent a message too;"
            return row, scaled_alike
        finally:
            self.bench.cleanup(target.name)


def slow_requests(endpoint: str, n: int = SLO_REQUESTS) -> None:
    """``n`` short completions at once, each waiting for its (delayed) first token; returns when all answered."""
    body = {"model": MODEL, "prompt": "Say hello.", "max_tokens": 4}
    threads = [
        threading.Thread(target=httpx.post, args=(f"{endpoint}/v1/completions",), kwargs={"json": body, "timeout": 60})
        for _ in range(n)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# ---------------------------------------------------------------------------- at 30 s, for real


def point_schedule(api, deployment_id, name: str, interval_s: float) -> None:
    """The deployment's one schedule, every ``interval_s`` for target ``name``, and its next runs.

    Updating a schedule deletes the runs it had scheduled; the server's scheduler service creates runs
    minutes ahead of their start, so it is not in the fault -> message path; here its work is asked
    for at once (``POST /deployments/{id}/schedule``, what the service calls) rather than waited for.
    """
    from prefect.client.schemas.schedules import IntervalSchedule

    deployment = api.read_deployment(deployment_id)
    first, *rest = deployment.schedules
    for schedule in rest:
        api.delete_deployment_schedule(deployment_id, schedule.id)
    api.update_deployment_schedule(
        deployment_id,
        first.id,
        active=True,
        schedule=IntervalSchedule(interval=timedelta(seconds=interval_s), anchor_date=datetime.now(UTC)),
        parameters={"target": name},
    )
    ahead = {"min_runs": 6, "max_runs": 12, "min_time": 6 * interval_s}
    # through the Prefect client, which retries a 503 (SQLite busy while the server's own scheduler writes)
    api.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id}, json=ahead).raise_for_status()


def first_scheduled(api, deployment_id, name: str, timeout_s: float = 90.0) -> float | None:
    """The expected start of the earliest scheduled run of the deployment for ``name``."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = api.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])), limit=50
        )
        starts = [r.expected_start_time.timestamp() for r in runs if r.parameters.get("target") == name]
        if starts:
            return min(starts)
        time.sleep(0.5)
    return None


def scheduled_sample(bench: Bench, receiver, api, deployment_id, rng: random.Random, k: int) -> Sample | str:
    """Deploy a fresh target, point the 30 s schedule at it, end its server at a random phase of the schedule,
    wait for the message; the detecting run's states. A string says what went wrong."""
    from flows.deploy import deploy_qwen
    from tasks.container import managed_containers

    target = bench.target(f"s{k}")
    deploy_qwen(target=target.name)
    point_schedule(api, deployment_id, target.name, FAST_INTERVAL_S)
    first = first_scheduled(api, deployment_id, target.name)
    if first is None:
        return "no scheduled run appeared within 90 s"
    inject_at = first + rng.uniform(0, FAST_INTERVAL_S)
    time.sleep(max(0.0, inject_at - time.time()))
    [server] = managed_containers(bench.client, target.name)
    with httpx.Client(base_url=target.endpoint, timeout=2) as http:
        server.exec_run(SIGTERM_PID1, detach=True)
        onset = first_unhealthy(http, 30)
    if onset is None:
        return "the server did not stop answering"
    previous = next_start(first, FAST_INTERVAL_S, onset) - FAST_INTERVAL_S
    sample = Sample(target.name, onset, onset - previous if previous >= first else onset - first)
    try:
        message = receiver.wait_for(opened_for(target.name), timeout_s=FAST_INTERVAL_S + 90)
    except AssertionError as exc:
        return f"no message: {str(exc)[:200]}"
    sample.message_at = message["time"]
    event = incident_event(target.name, onset)
    run_id = flow_run_of(event) if event else None
    if event is None or run_id is None:
        return "the incident event or its flow run was not found"
    sample.event_at = event.occurred.timestamp()
    run = api.read_flow_run(run_id)
    states = run_states(api, run_id)
    sample.scheduled = run.expected_start_time.timestamp()
    sample.pending, sample.running = states.get("PENDING"), states.get("RUNNING")
    sample.verdict = str(event.payload.get("subject", ""))[:120]
    return sample


# ---------------------------------------------------------------------------- the section


def fault_lines(rows: list[FaultSeen]) -> list[str]:
    lines = []
    for r in rows:
        d = r.deciding
        checks = "; ".join(f"{c.verdict} ({c.layer}: {c.condition}), {c.wall_s:.2f} s" for c in r.checks) or "-"
        cells = [
            fmt_s(r.part(r.onset, d.started)) if d else "-",
            fmt_s(d.wall_s) if d else "-",
            fmt_s(r.part(r.onset, r.event_at)),
            fmt_s(r.part(r.event_at, r.message_at)),
            fmt_s(r.total_s),
            "-" if r.default_wait is None else fmt_s(r.total_default_s),
        ]
        lines.append(f"| {r.label} | {r.onset_how} | {checks} | " + " | ".join(cells) + f" | {r.subject or r.note} |")
    return lines


def sample_lines(samples: list[Sample]) -> list[str]:
    lines = []
    for s in samples:
        parts = [
            s.phase_s,
            s.between(s.onset, s.scheduled),
            s.between(s.scheduled, s.pending),
            s.between(s.pending, s.running),
            s.between(s.running, s.event_at),
            s.between(s.event_at, s.message_at),
            s.between(s.scheduled, s.message_at),
            s.between(s.onset, s.message_at),
        ]
        lines.append(f"| {s.target} | " + " | ".join("-" if p is None else f"{p:.2f}" for p in parts) + " |")
    return lines


def anchor_cells(key: str) -> str:
    """docker HEALTHCHECK | Kubernetes liveness | the Spark watchdog, for one fault: when each acts, whom it tells."""
    docker_fail = fmt_pair(probe_anchor(DOCKER["period_s"], int(DOCKER["failures"])))
    k8s_fail = fmt_pair(probe_anchor(K8S["period_s"], int(K8S["failures"])))
    dog_fail = fmt_pair(probe_anchor(WATCHDOG_PERIOD_S, WATCHDOG_FAILURES))
    dog_hang = fmt_pair(probe_anchor(WATCHDOG_PERIOD_S, WATCHDOG_FAILURES, WATCHDOG_TIMEOUT_S))
    if key == "crash":
        return (
            f"marks it unhealthy after {docker_fail} (or the exit at once); tells no one | restarts it after"
            f" {k8s_fail} (or on the exit); tells no one | restarts it after {dog_fail}; tells no one"
        )
    if key == "wedge":
        return (
            "never: /health answers 200 (vllm issue 39863) | never: the same | its completion probe hangs to"
            f" its 120 s timeout: restart after {dog_hang}; tells no one"
        )
    return "never: /health answers | never: the same | never: its completion answers within its 120 s timeout"


def combined_lines(rows: list[FaultSeen], samples: list[Sample], default_interval: float) -> list[str]:
    """Per fault, at the default interval and at 30 s: mean / worst fault -> message, the goal, the anchors."""
    worker_overhead = median([s.between(s.scheduled, s.running) for s in samples if s.running and s.scheduled])
    crash_d = median([s.between(s.scheduled, s.message_at) for s in samples if s.scheduled and s.message_at])
    lines = []
    for r in rows:
        if r.key == "crash" and crash_d is not None:
            d, how = crash_d, f"{crash_d:.1f} s: scheduled start -> message, median of the {len(samples)} samples"
        elif r.total_default_s is not None and worker_overhead is not None:
            d, breach = worker_overhead + r.total_default_s, r.key == "breach"
            how = (
                f"{d:.1f} s: the worker's scheduled start -> Running {worker_overhead:.1f} s + onset -> message"
                f" in process {r.total_default_s:.1f} s"
                + (" (at the default limits)" if r.default_wait else "")
                + ("; one that every request feels: once the check's slow answer came (above)" if breach else "")
            )
        else:
            lines.append(f"| {r.label.split(':')[0]} | not measured | | | | | {anchor_cells(r.key)} |")
            continue
        cells = []
        for interval in (default_interval, FAST_INTERVAL_S):
            mean, worst = fault_to_message(interval, d)
            ok = "yes" if meets_goal(interval, worst) else "**no**"
            cells += [f"{fmt_s(mean)} / {fmt_s(worst)}", f"{fmt_s(goal_s(interval))}: {ok}"]
        lines.append(f"| {r.label.split(':')[0]} | {how} | " + " | ".join(cells) + f" | {anchor_cells(r.key)} |")
    return lines


def body(args, run_s: float, deploy_s: float, default_interval: float, rows, samples, failures, alike) -> str:
    from tasks.health.limits import Thresholds

    defaults = Thresholds()
    measured_30 = [s.between(s.onset, s.message_at) for s in samples if s.message_at]
    predicted = None
    crash_d = median([s.between(s.scheduled, s.message_at) for s in samples if s.scheduled and s.message_at])
    if crash_d is not None:
        predicted = fault_to_message(FAST_INTERVAL_S, crash_d)
    check_30 = (
        f"Measured at 30 s: {', '.join(f'{v:.1f}' for v in measured_30)} s (mean {statistics.mean(measured_30):.1f} s,"
        f" max {max(measured_30):.1f} s); the formula from the same samples' d: {fmt_pair(predicted)} (mean / worst)."
        if measured_30
        else "No sample at 30 s completed."
    )
    alike_line = (
        f"With every limit scaled alike (TTFT line {SLO_LINE_S:g} s, the smoke answer's slow line"
        f" {defaults.answer_slow_s * SLO_LINE_S / defaults.ttft_p99_s:.2f} s and budget"
        f" {defaults.answer_budget_s * SLO_LINE_S / defaults.ttft_p99_s:.2f} s, the ratios of the defaults"
        f" {defaults.ttft_p99_s:g} / {defaults.answer_slow_s:g} / {defaults.answer_budget_s:g} s), the same slow first"
        f" tokens gave: **{alike.verdict} ({alike.layer}: {alike.condition})**."
        if alike
        else ""
    )
    return f"""{machine_line()}
`python -m bench.alerts --samples {args.samples} --time-scale {args.time_scale} --seed {args.seed}` (the whole run:
{run_s:.0f} s): a throwaway Prefect server (`prefect_test_harness`, SQLite), the Hub imitation, the vLLM imitation in
docker (time scale {args.time_scale}), a loopback webhook receiver (sim/webhook.py) and
`deployments.notify.configure_notifications(receiver.url)`: the custom webhook block `vllm-alerts` and the automation
`notify-vllm-incidents`, as `python -m deployments.setup --notify <url>` makes them. The message is the
`vllm.incident.opened` event's, its arrival time taken by the receiver. Every fault on its own target; no
recover-vllm is deployed (the message does not wait for it).

### The parts, measured per fault (the check in process, right after the onset)

The check is `health_check(target)` called in process just after the onset, as a scheduled check that lands right
after it would; the split: onset -> the deciding check's start; its run time (the call's wall time); onset -> the
`vllm.incident.opened` event (its `occurred`, emitted by the check); the event -> the message in the receiver (the
server's trigger and its `send-notification` action, the webhook's POST); onset -> message. The wedge's checks run
at the default limits: a check of a wedged engine streams its smoke question, gets no token for
`first_token_stall_s` ({defaults.first_token_stall_s:g} s), reads /metrics, finds `generation_tokens_total` unchanged
and stops waiting (tasks/health/smoke.py), rather than waiting out `answer_budget_s` ({defaults.answer_budget_s:g} s).
The breach: the imitation's outside load (`POST {PRESSURE_PATH}`
`first_token_delay_s`, docs/imitations.md) delays every first token by {SLO_DELAY_S:g} s, the bench sends
{SLO_REQUESTS} requests at once (more than the default `min_window_requests`, {defaults.min_window_requests}, so the
window's p99 is judged), the check runs with the TTFT line at {SLO_LINE_S:g} s (default
{defaults.ttft_p99_s:g} s) and the other limits at their defaults; p99 TTFT has no `for:` hold (the window between
checks is the span), unlike a full KV cache (5 min) or a long queue (3 min), which would need minutes of holding.
The breach's check waited the slow first token of its own smoke question too ({SLO_DELAY_S:g} s); "at the default
limits" is a breach that the short smoke question does not feel (long prompts, long prefills): measured -
{SLO_DELAY_S:g} s. One that every request feels is named the same, once the check's own slow answer has come (below).

| fault | onset (how its time is taken) | the checks after the onset: verdict (layer: condition), wall | \
onset -> check start | check run time | onset -> event | event -> message | onset -> message | \
the same at the default limits | the message's subject |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(fault_lines(rows))}

{alike_line} At the default limits a p99 TTFT over {defaults.ttft_p99_s:g} s that every request feels (a queue, a
slow engine) makes the check's own smoke answer slower than `answer_slow_s` ({defaults.answer_slow_s:g} s) too, but
the service-level rules come before `slow_answer` in tasks/health/verdict.py's table: the breach (`ttft_p99`) decides
and opens the incident, once that answer has come. A breach that only long prompts feel (the smoke question is
short) is named `ttft_p99` at once.

### At 30 s, end to end (the scheduler, the worker, the check, the automation, the webhook)

`prefect deploy --name health-check/sim` ({deploy_s:.0f} s), its schedule set to every {FAST_INTERVAL_S:g} s for one
target (a fresh one per sample), a process worker from deployments/dev/worker.py (polling every 1 s). Per sample the
server's process ends (its PID 1 gets SIGTERM; docker restarts it and the restart fails on the page cache) at a
uniformly random phase of the schedule; onset: the first /health that is not 200. Seconds:

| target | phase: onset after the previous scheduled start | onset -> the detecting run's scheduled start | \
scheduled -> Pending (negative: picked up ahead) | Pending -> Running (its process started, held to the \
scheduled start) | Running -> the event | event -> message | scheduled start -> message (d) | onset -> message |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(sample_lines(samples))}

The worker picks a run up ahead of its start (Prefect's worker prefetch, 10 s by default) and starts its process
at once; the server holds the run Pending until its scheduled start (Prefect's orchestration rule
WaitForScheduledTime), so the flow-run process's start is not in d.

{check_30}{" Failed samples: " + "; ".join(failures) + "." if failures else ""}

### Fault to message at each interval (mean / worst), the goal, the anchors

The formula (bench/health.py `at_interval`): a fault falls at a uniformly random moment between two scheduled checks,
so the next check starts after I/2 on average and I at worst: fault -> message = I/2 + d (mean), I + d (worst), with
d the first check's scheduled start -> the message. The crash's d is the 30 s samples' median (a run through the
worker does not depend on the interval); the wedge's and the breach's d is the worker's part of those samples
(scheduled start -> Running, median) plus the in-process onset -> message at the default limits. The goal (issue
18): the message within I + {GOAL_SLACK_S:g} s, i.e. d <= {GOAL_SLACK_S:g} s. The anchors by bench/health.py's
`probe_anchor` (a probe every P s after the previous one ended, n failures in a row, each failing probe taking t s:
mean P/2 + (n - 1)(P + t) + t, worst P + (n - 1)(P + t) + t): docker HEALTHCHECK {DOCKER["period_s"]:g} s x
{DOCKER["failures"]} marks the container unhealthy and neither restarts it nor tells anyone (moby issue 28400);
a Kubernetes liveness probe {K8S["period_s"]:g} s x {K8S["failures"]} restarts it and tells no one (an event in
the API, no message); the Spark watchdog (eugr/spark-vllm-docker, examples/glm-watchdog.sh) probes a tiny completion
every {WATCHDOG_PERIOD_S:g} s (`sleep 120`, `curl -m 120`), restarts after {WATCHDOG_FAILURES} failures in a
row, at most 3 restarts per 6 h, then touches a file and stands down: it tells no one either (its log and that
file).

| fault | d (how) | I = {default_interval:g} s: fault -> message | goal (I + {GOAL_SLACK_S:g} s) | \
I = {FAST_INTERVAL_S:g} s: fault -> message | goal | docker HEALTHCHECK 30 s x 3 | Kubernetes liveness 10 s x 3 | \
Spark watchdog 120 s x 3 |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(combined_lines(rows, samples, default_interval))}

Measured on these 2 cores with the imitations, not on a Spark: a Spark's check is the same flow against a real
server (its smoke answer ~1.5 s idle, docs/benchmarks.md "Health check").
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    began = time.monotonic()
    rng = random.Random(args.seed)
    operator_env = dict(os.environ)
    operator_env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    operator_env.pop("PREFECT_WORKER_QUERY_SECONDS", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import yaml
    from prefect import get_client
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from deployments.dev.worker import ROOT, start_worker, stop_worker
    from deployments.notify import configure_notifications
    from deployments.setup import ensure_work_pool
    from sim.hub import HubServer, RepoSpec
    from sim.image import ensure_sim_image
    from sim.webhook import WebhookReceiver

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [health_sim] = [d for d in spec["deployments"] if d["name"] == "sim" and d["entrypoint"].endswith(":health_check")]
    default_interval = float(health_sim["schedules"][0]["interval"])
    client = docker.from_env()
    ensure_sim_image(client)
    rows: list[FaultSeen] = []
    samples: list[Sample] = []
    failures: list[str] = []
    alike = None
    bench = worker = None
    deploy_s = 0.0
    with (
        tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp,
        prefect_test_harness(server_startup_timeout=90),
        HubServer(
            repos=[RepoSpec(n_shards=7, shard_bytes=1024 * 1024)], data_dir=Path(tmp) / "hub", token=TOKEN
        ) as hub,
        WebhookReceiver() as receiver,
    ):
        Secret(value=TOKEN).save("hf-token", overwrite=True)
        configure_notifications(receiver.url)
        bench = Bench(client, Path(tmp), hub.url, args.time_scale, uuid.uuid4().hex[:4])
        alerts = Alerts(bench, receiver)
        env = {**operator_env, "PREFECT_API_URL": PREFECT_API_URL.value()}
        try:
            ensure_work_pool(WORK_POOL)
            t_deploy = time.monotonic()
            registering = subprocess.Popen(  # beside the in-process faults (not measured)
                [PREFECT, "--no-prompt", "deploy", "--name", "health-check/sim"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for run_fault in (alerts.crash, alerts.wedge):
                rows.append(run_fault())
                print(rows[-1], flush=True)
            breach, alike = alerts.breach()
            rows.append(breach)
            print(breach, alike, flush=True)
            out, _ = registering.communicate(timeout=240)
            deploy_s = time.monotonic() - t_deploy
            if registering.returncode != 0:
                raise RuntimeError(f"prefect deploy failed:\n{out.decode(errors='replace')[-3000:]}")
            worker = start_worker(WORK_POOL, f"bench-alerts-{bench.run_id}", Path(tmp) / "worker.log", env=env)
            with get_client(sync_client=True) as api:
                deployment_id = api.read_deployment_by_name("health-check/sim").id
                for k in range(args.samples):
                    got = scheduled_sample(bench, receiver, api, deployment_id, rng, k)
                    if isinstance(got, str):
                        failures.append(got)
                    else:
                        samples.append(got)
                    print(got, flush=True)
                    disable_schedules(api, api.read_deployment(deployment_id))
                    for name in bench.targets:
                        bench.cleanup(name)
        finally:
            if worker is not None:
                print(stop_worker(worker), flush=True)
            for name in bench.targets:
                bench.cleanup(name)
    text = body(args, time.monotonic() - began, deploy_s, default_interval, rows, samples, failures, alike)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
