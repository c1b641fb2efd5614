"""Memory recovery on the imitations: the planner (deploy-qwen's recovery, recover-vllm) against the
runbook's blind ladder (0.90 -> 0.75 -> 0.70, then max-model-len 16384), written to
docs/benchmarks.md (## Memory recovery: planner vs runbook ladder).

For each fault class, on a fresh sim target each (its own ledger: a fresh machine): the attempts
and the wall time from the start that meets the fault to a healthy server, and the KV cache tokens
and spec of the server that serves in the end; once through the planner (``deploy_qwen(recover=True)``),
once through the ladder run by the same harness on the same fault (``deploy_qwen(recover=False)``,
the next rung's overrides after each failure). The startup runs at ``--time-scale``; the scaled
figure puts the imitation's own startup back at real speed and keeps the orchestration as measured
(see `scaled_back`).

Per vLLM version (``--vllm``, default the runbook's 0.10.1.1 and NGC 26.10's 0.31.0: the imitation image
of each, deployments/targets.py `SIM_IMAGES`), one table each, with whether the page cache was dropped:
0.10.x's free-memory check counts it as used, 0.31's does not (docs/versions.md), so a drop there is
never needed.

Runs a throwaway Prefect server, the Hub imitation and the imitation image through real docker,
loopback only, one server at a time.
    .venv/bin/python -m bench.recovery [--time-scale 0.02] [--budget-s 960] [--no-write]
        [--vllm 0.10.1.1 0.31.0] [--only page_cache held kv shortage peak unsteady died]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from bench.report import machine_line, write_section
from tasks.recovery.kv_model import QWEN3_32B_FP8_WEIGHTS_GIB, SPARK_TOTAL_GIB
from tasks.state import last_healthy, recent_recoveries

TOKEN = "hf_bench_token_5d1c2b3a4f"
HEADING = "Memory recovery: planner vs runbook ladder"
READY_LINE = "Application startup complete."
KV_LINE = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
UTIL_ARG = re.compile(r"'gpu_memory_utilization': ([\d.]+)")
LOADED_LINE = "Model loading took"  # the imitation holds the profile overshoot from here ...
PROFILED_LINE = "Available KV cache memory"  # ... to here (or to the guard's kill)
TOTAL_GIB, BASELINE_GIB = SPARK_TOTAL_GIB, 3.0  # the imitation's Spark: CUDA's total, what the system holds
EARLIER_WEIGHTS_GIB = QWEN3_32B_FP8_WEIGHTS_GIB  # an earlier load's weights, left in the page cache
BENCH_LABEL = "org.spark-vllm.bench"  # on the holders this script starts by hand (value: its pid)
DIE_AFTER_S = 8.0  # engine_died: the imitation's engine dies this long after ready (real seconds)
RESTART_WINDOW_S = 45.0  # engine_died, runbook side: how long docker's restart policy is given to serve again
#: The runbook's blind ladder ("Container Fails with Memory Errors"), one start per rung, each after
#: `docker compose down` and `docker system prune -f`: the baseline the planner is benchmarked against.
RUNBOOK_LADDER: tuple[dict[str, Any], ...] = (
    {"gpu_memory_utilization": 0.90},
    {"gpu_memory_utilization": 0.75},
    {"gpu_memory_utilization": 0.70},
    {"gpu_memory_utilization": 0.70, "max_model_len": 16384},
)


def runbook_ladder(attempt: int) -> dict[str, Any]:
    """The spec overrides of the runbook's ladder for one start: 0 = the first start (0.90), then
    0.75, 0.70, then 0.70 with max_model_len 16384.

    Raises:
        ValueError: ``attempt`` is past the ladder's last rung (the runbook has no further step).
    """
    if not 0 <= attempt < len(RUNBOOK_LADDER):
        raise ValueError(
            f"the runbook's ladder has {len(RUNBOOK_LADDER)} rungs (0-{len(RUNBOOK_LADDER) - 1}), got {attempt}"
        )
    return dict(RUNBOOK_LADDER[attempt])


DEFAULT_REQUEST = {
    "gpu_memory_utilization": 0.90,
    "max_model_len": 32000,
    "max_num_batched_tokens": 16384,
    "max_num_seqs": 64,
}


# ---------------------------------------------------------------------------- pure helpers


def scaled_back(wall_s: float, startup_s: float, scale: float) -> float:
    """Wall time with the imitation's own (time-scaled) startup put back at real speed.

    ``startup_s`` is the part of ``wall_s`` that the imitation's time scale shortened (its startup
    phases, summed over every container started in the window); the rest of ``wall_s`` (the flows,
    docker, the meminfo helpers, each container's Python start-up) is kept as measured:
    ``wall - startup + startup / scale``.
    """
    if scale <= 0:
        raise ValueError(f"time scale must be > 0, got {scale}")
    if not 0 <= startup_s <= wall_s + 1e-6:
        raise ValueError(f"startup ({startup_s:.3f} s) must be within the wall time ({wall_s:.3f} s)")
    return wall_s - startup_s + startup_s / scale


def one_retry(attempts: int | None, healed: bool) -> bool:
    """The goal "one retry": served, after at most one retry (two attempts)."""
    return healed and attempts is not None and attempts <= 2


def kv_verdict(planner_kv: int | None, ladder_kv: int | None) -> str:
    """ "more" / "equal" / "less" KV cache for the planner against the ladder; a side that ended
    without a server has none ("neither" when both did)."""
    if planner_kv is None and ladder_kv is None:
        return "neither"
    if ladder_kv is None:
        return "more"
    if planner_kv is None:
        return "less"
    return "more" if planner_kv > ladder_kv else "equal" if planner_kv == ladder_kv else "less"


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------------------- docker: what the servers did


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$")


def docker_time(stamp: str) -> float:
    """docker's RFC 3339 (nano) timestamp as seconds since the epoch (docker trims trailing zeros)."""
    found = _STAMP.match(stamp)
    if not found:
        raise ValueError(f"not a docker timestamp: {stamp!r}")
    whole = datetime.fromisoformat(found[1]).replace(tzinfo=UTC).timestamp()
    return whole + float(f"0.{found[2] or 0}")


@dataclass
class Start:
    """One start of one server container: docker's `start` event, its log lines, its `die` event."""

    container: str
    at: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    died_at: float | None = None
    exit_code: str = ""  # docker's `die` event's exitCode

    def first(self, needle: str, after: float = 0.0) -> float | None:
        return next((t for t, line in self.lines if needle in line and t >= after), None)

    def kv_tokens(self) -> int | None:
        found = [KV_LINE.search(line) for _, line in self.lines]
        found = [m for m in found if m]
        return int(found[-1][1].replace(",", "")) if found else None

    def utilization(self) -> float | None:
        """--gpu-memory-utilization, from vLLM's `non-default args` line (absent there: vLLM's 0.9)."""
        for _, line in self.lines:
            if "non-default args:" in line:
                found = UTIL_ARG.search(line)
                return float(found[1]) if found else 0.9
        return None

    def outcome(self) -> str:
        """ "serving", or the failure kind classified from its own log (as the readiness gate does)."""
        from tasks.vllm.failures import classify_failure

        if self.first(READY_LINE, self.at) is not None:
            return "serving"
        kind = classify_failure([line for _, line in self.lines]).kind.value
        if kind == "unknown" and self.exit_code:
            # a kill leaves no cause in the container's own log (the gate's guard builds its cause from
            # its own reading)
            return f"killed, exit {self.exit_code}" if self.exit_code == "137" else f"exit {self.exit_code}"
        return kind

    def budget_window(self) -> float | None:
        """How long the server held its whole budget before it was ready: from the KV cache line
        (it allocates util x total there) to the ready line."""
        kv, ready = self.first("GPU KV cache size", self.at), self.first(READY_LINE, self.at)
        return ready - kv if kv is not None and ready is not None else None


class Watch:
    """docker's `start` / `die` events of one target's server containers, and each start's log
    lines with docker's own timestamps (followed live: a failed start's container is removed by the
    flow within a second of its exit, its log with it)."""

    def __init__(self, client: docker.DockerClient, target: str) -> None:
        from blocks.shared import LABEL_TARGET

        self.starts: list[Start] = []
        self._lock = threading.Lock()
        self._stream = client.events(decode=True, filters={"label": f"{LABEL_TARGET}={target}", "type": "container"})
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{target}")
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                status, cid, at = event.get("status"), event.get("id", ""), event.get("timeNano", 0) / 1e9
                if status == "start":
                    start = Start(cid, at)
                    with self._lock:
                        self.starts.append(start)
                    threading.Thread(target=self._follow, args=(start,), daemon=True).start()
                elif status == "die":
                    with self._lock:
                        mine = [s for s in self.starts if s.container == cid and s.died_at is None]
                    if mine:
                        mine[-1].died_at = at
                        mine[-1].exit_code = str((event.get("Actor") or {}).get("Attributes", {}).get("exitCode", ""))
        except Exception:  # noqa: BLE001 - the stream is closed at the end of the row
            pass

    def _follow(self, start: Start) -> None:
        client = docker.from_env()
        try:
            stream = client.api.logs(start.container, stream=True, follow=True, timestamps=True, since=start.at - 0.01)
            buffer = ""
            for chunk in stream:
                buffer += chunk.decode("utf-8", "replace")
                *complete, buffer = buffer.split("\n")
                for raw in complete:
                    stamp, _, line = raw.partition(" ")
                    try:
                        start.lines.append((docker_time(stamp), line))
                    except ValueError:
                        continue
        except Exception:  # noqa: BLE001 - the container was removed: its lines so far are kept
            pass
        finally:
            client.close()

    def wait_for(self, predicate, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                found = predicate(list(self.starts))
            if found:
                return found
            time.sleep(0.05)
        return None

    def serving(self, after: float, timeout_s: float = 5.0) -> Start | None:
        """The last start after ``after`` that logged the ready line (waits for the follower)."""

        def ready(starts: list[Start]) -> Start | None:
            done = [s for s in starts if s.at >= after and s.first(READY_LINE) is not None]
            return done[-1] if done else None

        return self.wait_for(ready, timeout_s)

    def close(self) -> None:
        self._stream.close()


@dataclass
class Window:
    """From the start that meets the fault (``t0``) to the serving server's ready line."""

    t0: float
    starts: list[Start]
    healthy_at: float | None
    startup_s: float  # the time-scaled part: the imitation's startup phases, summed over the starts
    real_in_startup_s: float  # what the imitation spent in real seconds inside its startup (see below)


def window(watch: Watch, t0: float, serving: Start | None, real_between: tuple[str, str] | None = None) -> Window:
    """The starts between ``t0`` and healthy, and how much of their time the time scale shortened.

    Per start: docker's `start` to the first log line is the container's Python start-up (real time,
    not scaled); the first line to its end (the ready line for the server that serves, docker's `die`
    for one that failed) is the imitation's startup, scaled; except the span between the two marker
    lines of ``real_between`` (or to the end), which the imitation holds for real seconds (the
    profile-overshoot knob), kept unscaled.
    """
    end_of_window = serving.first(READY_LINE, serving.at) if serving else None
    starts = [s for s in watch.starts if s.at >= t0 and (end_of_window is None or s.at <= end_of_window)]
    scaled = real = 0.0
    for s in starts:
        if not s.lines:
            continue
        first = s.lines[0][0]
        end = s.first(READY_LINE, s.at) if s is serving else s.died_at
        if end is None:
            end = s.lines[-1][0]
        span = max(0.0, end - first)
        if real_between:
            held_from = s.first(real_between[0], s.at)
            if held_from is not None:
                held_to = s.first(real_between[1], held_from) or end
                kept = max(0.0, min(held_to, end) - held_from)
                span -= kept
                real += kept
        scaled += span
    return Window(t0, starts, end_of_window, scaled, real)


# ---------------------------------------------------------------------------- the faults


@dataclass(frozen=True)
class Fault:
    """One memory situation on a fresh machine, and what the class row says about it."""

    key: str
    label: str  # the table's class cell
    holder_gib: float = 0.0  # another process's memory (`vllm_sim hold`)
    page_cache_gib: float = 0.0  # an earlier load's weights in the page cache
    overrides: dict[str, Any] = field(default_factory=dict)  # the request (both sides start with it)
    extra_env: dict[str, str] = field(default_factory=dict)  # the imitation's fault knobs
    real_between: tuple[str, str] | None = None
    engine: bool = False  # engine_died: recover-vllm after a death, against docker's restart policy


def shortage_holder(
    limits, total_gib: float, baseline_gib: float, max_model_len: int, batched: int, seqs: int
) -> tuple[float, bool, str]:
    """A holder size whose free memory fits a utilization within the floor, preferring one where the
    planner's KV fit also lowers max_model_len; (GiB, lowers, why)."""
    from tasks.recovery.sizing import fit_utilization

    floor = limits.floor_utilization
    at_floor = limits.max_len_at(floor, total_gib, batched, seqs)
    if at_floor < max_model_len:
        # a utilization between the floor and the one whose KV holds max_model_len: lowers it
        need = limits.utilization_for(max_model_len, total_gib, batched, seqs)
        util = round((floor + need) / 2, 2)
        gib = round(total_gib - baseline_gib - limits.margin_gib - util * total_gib - 0.05, 1)
        return (
            gib,
            True,
            f"fits {fit_utilization(total_gib - baseline_gib - gib, total_gib, limits.margin_gib)},"
            f" where the KV cache holds less than {max_model_len}",
        )
    return (
        45.0,
        False,
        (
            f"no holder within the floor makes the planner lower max_model_len: at the floor "
            f"{floor} the KV model still holds {at_floor:,} tokens, more than max_model_len {max_model_len}"
        ),
    )


def available_at_budget(util: float, held_gib: float) -> float:
    """MemAvailable once a server holds its whole budget (util x total) beside the holder."""
    return TOTAL_GIB - BASELINE_GIB - held_gib - util * TOTAL_GIB


def overshoot_gib(floor_gib: float, high: float = 0.90, low: float = 0.85) -> float:
    """The profile overshoot that trips the guard at ``high`` and not at ``low`` (the planner's first
    utilization step): midway between the two thresholds, available = total - baseline - util x total - N."""

    def threshold(util: float) -> float:
        return TOTAL_GIB - BASELINE_GIB - util * TOTAL_GIB - floor_gib

    return round((threshold(high) + threshold(low)) / 2, 1)


# ---------------------------------------------------------------------------- one side of one row


@dataclass
class Side:
    """What one side (planner or ladder) did on one fault."""

    attempts: int | None = None
    started: int = 0
    healed: bool = False
    wall_s: float | None = None
    scaled_s: float | None = None
    startup_s: float = 0.0
    kv: int | None = None
    running: str = "-"
    classes: list[str] = field(default_factory=list)
    note: str = ""
    containers: list[str] = field(
        default_factory=list
    )  # per container started: utilization, outcome, MemAvailable left
    budget_windows: list[float] = field(default_factory=list)  # serving containers: budget held before ready, s
    dropped: bool = False  # the page cache was dropped (the target's drop_caches file was written)


class Bench:
    def __init__(
        self, client: docker.DockerClient, root: Path, hub_url: str, scale: float, run_id: str, image: str
    ) -> None:
        from tasks.readiness import ReadinessTimeouts

        self.client, self.root, self.hub_url, self.scale, self.run_id = client, root, hub_url, scale, run_id
        self.image = image  # the imitation of one vLLM version (SIM_IMAGES)
        self.cache = root / "hf"  # one staged cache, mounted by every target (staged by the calibration)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.holders: list = []
        self.targets: list[str] = []
        # bounds: every phase of a start at this time scale takes seconds, not minutes
        self.timeouts = ReadinessTimeouts(starting_s=90, loading_s=120, compiling_s=90, kv_cache_s=90, serving_s=60)

    def target(self, key: str, extra_env: dict[str, str] | None = None, **overrides):
        from deployments.targets import sim_target
        from sim.ports import free_port

        name = f"brec-{self.run_id}-{key}".replace("_", "-")
        target = sim_target(
            name,
            self.root / name,
            self.hub_url,
            free_port(),
            time_scale=self.scale,
            extra_env=extra_env,
            cache_dir=str(self.cache),
            prune_scope="project",
            **{"image": self.image, **overrides},
        )
        target.save(name, overwrite=True)
        self.targets.append(name)
        return target

    def hold(self, target, gib: float) -> None:
        from deployments.targets import SIM_IMAGE, SIM_LEDGER_MOUNT

        ledger = str(Path(target.drop_caches_path).parent)
        container = self.client.containers.run(
            SIM_IMAGE,
            ["python3", "-m", "vllm_sim", "hold", "--gib", str(gib)],
            detach=True,
            labels={BENCH_LABEL: str(os.getpid())},
            volumes={ledger: {"bind": SIM_LEDGER_MOUNT, "mode": "rw"}},
            network_mode="none",
            name=f"brec-holder-{uuid.uuid4().hex[:8]}",
        )
        self.holders.append(container)
        deadline = time.monotonic() + 30
        while b"holding" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        if b"holding" not in container.logs():
            raise RuntimeError(f"the holder did not start: {container.logs()[-500:]!r}")

    def machine(self, fault: Fault, side: str):
        """A fresh target with the fault's memory situation on its ledger."""
        from sim.vllm.vllm_sim.ledger import Ledger

        target = self.target(f"{fault.key}-{side}", extra_env=fault.extra_env)
        if fault.page_cache_gib:
            ledger_dir = Path(target.drop_caches_path).parent
            Ledger(ledger_dir, "earlier", total_gib=TOTAL_GIB, baseline_gib=BASELINE_GIB).record_load(
                "Qwen/Qwen3-32B-FP8@old", fault.page_cache_gib
            )
        if fault.holder_gib:
            self.hold(target, fault.holder_gib)
        return target

    def finish(self, side: Side, watch: Watch, t0: float, fault: Fault, target_name: str) -> Side:
        from blocks.target import TargetMachine

        drop_file = Path(TargetMachine.named(target_name).drop_caches_path)
        side.dropped = drop_file.read_text().strip() == "3"  # what `sync; echo 3 > drop_caches` leaves
        serving = watch.serving(t0) if side.healed else None
        span = window(watch, t0, serving, fault.real_between)
        side.started = len(span.starts)
        side.startup_s = span.startup_s
        for start in span.starts:
            util = start.utilization()
            if util is None:
                side.containers.append("(no log)")
                continue
            left = available_at_budget(util, fault.holder_gib)
            side.containers.append(f"{util:.2f} {start.outcome()} (leaves {left:.1f} GiB MemAvailable at its budget)")
            if start is serving and start.budget_window() is not None:
                side.budget_windows.append(start.budget_window())
        if serving is not None and span.healthy_at is not None:
            side.wall_s = span.healthy_at - t0
            side.scaled_s = scaled_back(side.wall_s, span.startup_s, self.scale)
            side.kv = serving.kv_tokens()
            spec = last_healthy(target_name)
            side.running = describe(spec) if spec else "?"
        else:
            side.healed = False
        return side

    def cleanup(self, target_name: str) -> None:
        from tasks.container import managed_containers, remove_managed

        for container in managed_containers(self.client, target_name):
            remove_managed(container, stop_timeout=None)
        for holder in self.holders:
            try:
                holder.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.holders.clear()

    # ---------------------------------------------------------------- the planner

    def planner(self, fault: Fault) -> Side:
        from flows.deploy import deploy_qwen
        from tasks.serve import StartFailed

        target = self.machine(fault, "p")
        watch = Watch(self.client, target.name)
        side = Side()
        try:
            t0 = time.time()
            state = deploy_qwen(
                target=target.name,
                overrides=fault.overrides or None,
                stage=False,
                timeouts=self.timeouts,
                return_state=True,
            )
            if state.is_completed():
                result = state.result()
                side.attempts, side.healed = result.attempts, True
            else:
                try:
                    state.result()
                except StartFailed as failed:
                    side.attempts = len(failed.attempts)
                    side.note = (
                        f"gave up: {failed.steps[-1].reason}" if failed.steps else str(failed).splitlines()[0]
                    )[:600]
                except Exception as exc:  # noqa: BLE001 - reported as is
                    side.note = f"failed: {str(exc).splitlines()[0][:300]}"
            side.classes = [s.klass.value for s in recent_recoveries(target.name)]
            return self.finish(side, watch, t0, fault, target.name)
        finally:
            watch.close()
            self.cleanup(target.name)

    # ---------------------------------------------------------------- the runbook's ladder

    def ladder(self, fault: Fault) -> Side:
        """The requested spec first, then the ladder's next rung after each failure, until one serves
        or the ladder ends. A failed start's container is already removed by deploy-qwen (the
        runbook's `docker compose down`); no prune between rungs (a prune frees disk, not memory)."""
        from flows.deploy import deploy_qwen
        from tasks.memory import NotEnoughMemory

        target = self.machine(fault, "l")
        watch = Watch(self.client, target.name)
        side = Side(attempts=0)
        try:
            t0 = time.time()
            for rung in range(len(RUNBOOK_LADDER)):
                overrides = dict(fault.overrides) if rung == 0 else {**fault.overrides, **runbook_ladder(rung)}
                state = deploy_qwen(
                    target=target.name,
                    overrides=overrides or None,
                    stage=False,
                    recover=False,
                    timeouts=self.timeouts,
                    return_state=True,
                )
                side.attempts += 1
                if state.is_completed():
                    side.healed = True
                    break
                try:
                    state.result()
                except NotEnoughMemory:
                    side.classes.append("free_memory (refused by the pre-start check)")
                except Exception as exc:  # noqa: BLE001 - the failure that sends the ladder to its next rung
                    kind = getattr(getattr(exc, "cause", None), "kind", None)
                    side.classes.append(kind.value if kind is not None else type(exc).__name__)
            if not side.healed:
                side.note = f"the ladder ended after {side.attempts} attempts: {', '.join(side.classes)}"
            return self.finish(side, watch, t0, fault, target.name)
        finally:
            watch.close()
            self.cleanup(target.name)

    # ---------------------------------------------------------------- engine_died

    def engine(self, fault: Fault, runbook: bool) -> Side:
        """Deploy, let the engine die after ready, then: recover-vllm at once (planner side, the
        container created with restart policy "no" so docker does not restart it meanwhile), or
        docker's own `restart: unless-stopped` (the runbook's compose file)."""
        from flows.deploy import deploy_qwen
        from flows.recover import recover_vllm

        target = self.machine(fault, "l" if runbook else "p")
        overrides = {} if runbook else {"restart_policy": "no"}
        watch = Watch(self.client, target.name)
        side = Side()
        try:
            deploy_qwen(target=target.name, overrides=overrides or None, stage=False, timeouts=self.timeouts)
            died = watch.wait_for(lambda starts: next((s.died_at for s in starts if s.died_at), None), DIE_AFTER_S + 30)
            if died is None:
                side.note = "the engine did not die"
                return side
            if runbook:
                side.attempts = 1
                side.healed = watch.serving(died, timeout_s=RESTART_WINDOW_S) is not None
                if not side.healed:
                    side.note = restart_loop_note(watch, died)
            else:
                state = recover_vllm(
                    target=target.name,
                    reason="bench: engine died",
                    overrides=overrides,
                    timeouts=self.timeouts,
                    return_state=True,
                )
                try:
                    result = state.result()
                    side.attempts, side.healed = result.attempts, result.status == "recovered"
                    side.classes = result.classes
                except Exception as exc:  # noqa: BLE001 - reported as is
                    side.note = f"failed: {str(exc).splitlines()[0][:300]}"
                    side.classes = [s.klass.value for s in recent_recoveries(target.name)]
            return self.finish(side, watch, died, fault, target.name)
        finally:
            watch.close()
            self.cleanup(target.name)

    # ---------------------------------------------------------------- one clean start

    def calibrate(self) -> dict[str, float]:
        """One deploy on a clean machine (it also stages the shared cache): what one start takes."""
        from flows.deploy import deploy_qwen

        target = self.target("clean")
        watch = Watch(self.client, target.name)
        try:
            t0 = time.time()
            result = deploy_qwen(target=target.name, timeouts=self.timeouts)
            serving = watch.serving(t0)
            span = window(watch, t0, serving)
            ready_line = serving.first(READY_LINE, serving.at)
            python_s = serving.lines[0][0] - serving.at
            return {
                "startup": span.startup_s,
                "python": python_s,
                "docker_start_to_ready": ready_line - serving.at,
                "one_start_scaled": python_s + span.startup_s / self.scale,
                "kv": float(serving.kv_tokens() or 0),
                "flow": result.duration_s,
            }
        finally:
            watch.close()
            self.cleanup(target.name)


def counted(items: list[str]) -> list[str]:
    """Runs of the same item as one, with its count: ["a", "a", "b"] -> ["2 x a", "b"]."""
    out: list[tuple[int, str]] = []
    for item in items:
        if out and out[-1][1] == item:
            out[-1] = (out[-1][0] + 1, item)
        else:
            out.append((1, item))
    return [item if n == 1 else f"{n} x {item}" for n, item in out]


def restart_loop_note(watch: Watch, died: float) -> str:
    """What docker's restarts after the death did: how many, and what each failed with (classified
    from its own log lines, as the readiness gate classifies a start)."""
    from tasks.vllm.failures import classify_failure

    restarts = [s for s in watch.starts if s.at >= died]
    kinds: list[str] = []
    for start in restarts:
        if start.died_at is None:
            continue
        kind = classify_failure([line for _, line in start.lines]).kind.value
        if kind not in kinds:
            kinds.append(kind)
    return (
        f"docker's restart policy restarted the container {len(restarts)} times in {RESTART_WINDOW_S:g} s after the"
        f" death, none served; the restarts failed with: {', '.join(kinds) or 'nothing logged'}"
    )


def describe(spec) -> str:
    """The spec's memory settings, the batch settings only where they differ from the request."""
    text = f"{spec.gpu_memory_utilization:.2f} / {spec.max_model_len}"
    if (spec.max_num_batched_tokens, spec.max_num_seqs) != (
        DEFAULT_REQUEST["max_num_batched_tokens"],
        DEFAULT_REQUEST["max_num_seqs"],
    ):
        text += f", batch {spec.max_num_batched_tokens}/{spec.max_num_seqs}"
    return text


# ---------------------------------------------------------------------------- the section


def cells(side: Side | None) -> str:
    if side is None:
        return "not run | | | | |"
    tries = "-" if side.attempts is None else f"{side.attempts} ({side.started} started)"
    dropped = "yes" if side.dropped else "no"
    if not side.healed:
        return f"{tries} | not healthy | | - | - | {dropped}"
    return f"{tries} | {side.wall_s:.1f} | {minutes(side.scaled_s)} | {side.kv:,} | {side.running} | {dropped}"


def planner_margin() -> float:
    """The GiB the planner keeps free in a computed utilization (its default, raised above the
    target's host-memory floor as the flows do; not restated here)."""
    from blocks.target import TargetMachine
    from tasks.recovery.step import RecoveryLimits

    return RecoveryLimits().guarded(TargetMachine.model_fields["host_memory_floor_gib"].default).margin_gib


@dataclass
class VersionRun:
    """One vLLM version's rows: its imitation image, the calibration start, each fault's two sides."""

    version: str
    image: str
    calib: dict[str, float]
    rows: dict[str, tuple[Side | None, Side | None]] = field(default_factory=dict)


def version_table(faults: list[Fault], run: VersionRun) -> str:
    """One version's table, its goal lines and its notes per row."""
    from tasks.vllm.versions import FREE_MEMORY, parse_vllm_version, select

    rows = run.rows
    table = "\n".join(
        f"| {f.label} | {cells(rows[f.key][0])} | {cells(rows[f.key][1])} |" for f in faults if f.key in rows
    )
    retry_line, kv_line = _goal_lines(faults, rows)
    reads = select(FREE_MEMORY, parse_vllm_version(run.version))
    drop_line = _drop_line(faults, rows, reads.value)
    return f"""### vLLM {run.version} (`{run.image}`: its free-memory check reads {reads.value})

| class (fault set up) | planner: attempts (containers started) | wall s | wall, scaled | KV cache tokens | running \
spec (util / max-model-len) | cache dropped | ladder: attempts (started) | wall s | wall, scaled | KV cache tokens \
| running spec | cache dropped |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{table}

{retry_line}
{kv_line}
{drop_line}

One clean start (the calibration deploy): {int(run.calib["kv"]):,} KV cache tokens at the runbook's spec,
{minutes(run.calib["one_start_scaled"])} scaled back.

Per row (what each side named, why a side ended without a server; per container started: its utilization,
its outcome, the MemAvailable it leaves at its budget):

{chr(10).join(_row_notes(faults, rows))}
"""


def _drop_line(faults: list[Fault], rows: dict[str, tuple[Side | None, Side | None]], reads: str) -> str:
    """The goal "never a cache drop the version does not need": on a MemAvailable version no drop at all;
    on a MemFree version the rows whose page cache was dropped (the flows drop only when vLLM's check
    would refuse the start without it: tasks/memory.py `room_for_start`, the planner's `drop_needed_for`)."""
    dropped = [f.label for f in faults if f.key in rows and rows[f.key][0] is not None and rows[f.key][0].dropped]
    if reads == "MemAvailable":
        verdict = "met" if not dropped else "not met"
        none = ", ".join(dropped) or "none"
        return f"**No page-cache drop on a version that reads MemAvailable: {verdict}** (dropped: {none})."
    return (
        "Page cache dropped by the planner's side (MemFree: the page cache counts as used, a drop is the fix "
        f"where it stands in the way): {', '.join(dropped) or 'none'}."
    )


def body(
    args: argparse.Namespace,
    faults: list[Fault],
    runs: list[VersionRun],
    shortage_note: str,
    overshoot: float,
    run_s: float,
    floor_gib: float,
) -> str:
    """The section of docs/benchmarks.md: how it ran, a table per vLLM version with the goals, how the
    figures are taken, the faults, the guard's part."""
    rows = {f"{run.version}/{key}": pair for run in runs for key, pair in run.rows.items()}
    guard = _guard_text(args, faults, rows, floor_gib)
    how = _how_measured(args, runs[0].calib) if runs else ""
    described = _faults_text(shortage_note, overshoot, floor_gib)
    tables = "\n".join(version_table(faults, run) for run in runs)
    return f"""{machine_line()}
`python -m bench.recovery --time-scale {args.time_scale} --vllm {" ".join(args.vllm)}` (the whole run: {run_s:.0f} s):
deploy-qwen on the vLLM imitation of each version in docker, a throwaway Prefect server (SQLite), the Hub
imitation; every side of every row on a fresh target (its own memory ledger: a fresh machine), the fault
set up before the first start, one server at a time. Planner: `deploy_qwen(recover=True)` (max_attempts 2,
the default); engine_died: `recover_vllm` at the engine's death. Ladder: the request first, then after each
failure `deploy_qwen(recover=False, overrides=runbook_ladder(n))`, n = 1, 2, 3 (0.75, 0.70, 0.70 +
max-model-len 16384), until one serves or the ladder ends; a failed start's container is already removed by
deploy-qwen (the runbook's `docker compose down`), and no prune runs between rungs (a prune frees disk, not
memory; the planner's held_by_others step runs its project-scoped prune). Both sides with `stage=False` on
one cache staged before (the runbook's `docker compose up -d` stages nothing). "cache dropped": the target's
drop_caches file was written during that side (deploy-qwen's pre-start check or a recovery step).

{tables}
{how}

{described}

{guard}

Measured on these 2 cores with the imitations, not on a Spark.
"""


def _row_notes(faults: list[Fault], rows: dict[str, tuple[Side | None, Side | None]]) -> list[str]:
    """Per row: what each side named, why a side ended without a server, its containers."""
    notes = []
    for f in faults:
        planner, ladder = rows.get(f.key, (None, None))
        bits = []
        if planner is not None:
            named = ", ".join(planner.classes) or "none (no failure reached the planner)"
            bits.append(
                f"planner's classes: {named}"
                + (f"; {planner.note}" if planner.note else "")
                + f"; its containers: {'; '.join(counted(planner.containers)) or 'none'}"
            )
        if ladder is not None:
            bits.append(
                "ladder: "
                + (f"{ladder.note}; " if ladder.note else "")
                + f"its containers: {'; '.join(counted(ladder.containers)) or 'none'}"
            )
        if bits:
            notes.append(f"- {f.label}: " + "; ".join(bits))

    return notes


def _goal_lines(faults: list[Fault], rows: dict[str, tuple[Side | None, Side | None]]) -> tuple[str, str]:
    """The two goals, met or not: one retry per class, more KV cache than the ladder."""
    known = [f for f in faults if f.key in rows and rows[f.key][0] is not None]
    retry_ok = [f.label for f in known if one_retry(rows[f.key][0].attempts, rows[f.key][0].healed)]
    retry_bad = [
        f"{f.label} ({rows[f.key][0].attempts} attempts, {'healthy' if rows[f.key][0].healed else 'not healthy'})"
        for f in known
        if f.label not in retry_ok
    ]
    verdicts = {
        f.label: kv_verdict(
            rows[f.key][0].kv if rows[f.key][0].healed else None,
            rows[f.key][1].kv if rows[f.key][1] and rows[f.key][1].healed else None,
        )
        for f in known
        if rows[f.key][1] is not None
    }
    more = [k for k, v in verdicts.items() if v == "more"]
    not_more = [f"{k} ({v})" for k, v in verdicts.items() if v != "more"]
    retry_line = (
        f"**One retry for every class the planner knows: {'met' if not retry_bad else 'not met'}**"
        f" (at most two attempts and healthy: {', '.join(retry_ok) or 'none'}"
        + (f"; not: {', '.join(retry_bad)}" if retry_bad else "")
        + ")."
    )
    kv_line = (
        f"**More KV cache than the ladder leaves: {'met' if not not_more else 'not met'}**"
        f" (more: {', '.join(more) or 'none'}" + (f"; not more: {', '.join(not_more)}" if not_more else "") + ")."
    )

    return retry_line, kv_line


def _guard_text(
    args: argparse.Namespace, faults: list[Fault], rows: dict[str, tuple[Side | None, Side | None]], floor_gib: float
) -> str:
    """The host-memory guard's part: which containers left less than the floor, and for how long."""
    windows = sorted(w for side in (x for pair in rows.values() for x in pair if x) for w in side.budget_windows)
    window_s = windows[len(windows) // 2] if windows else None
    below = sorted(
        {
            c.split(" (")[0] + f" ({f.label})"
            for f in faults
            if f.key in rows
            for side in rows[f.key]
            if side
            for c in side.containers
            if "leaves" in c and float(c.split("leaves ")[1].split(" ")[0]) < floor_gib
        }
    )
    guard = (
        f"The host-memory guard and the computed utilizations. Once a server holds its budget, MemAvailable is "
        f"{TOTAL_GIB} - {BASELINE_GIB} - held - util x {TOTAL_GIB} GiB; the planner keeps a margin of "
        f"{planner_margin():g} GiB free, the guard stops a start below {floor_gib:g} GiB, reading "
        f"once a second until the server is ready. Containers of this run that left less than the floor at their "
        f"budget: {'; '.join(below) or 'none'}. The serving containers held their whole budget for "
        + (f"{window_s:.2f} s (median)" if window_s is not None else "an unknown time")
        + " before they were ready (the KV cache line to the ready line: CUDA graph capture and the API start"
        + (f"; {window_s / args.time_scale:.1f} s scaled back" if window_s is not None else "")
        + "), so at this time scale a guard read falls into that span only now and then: which of those starts "
        "the guard stopped is chance here; by the imitation's timings at real speed (several reads in that span) "
        "it would stop every one of them."
    )

    return guard


def _how_measured(args: argparse.Namespace, calib: dict[str, float]) -> str:
    """How attempts, wall time, scaled time and KV cache tokens are taken."""
    return f"""How the figures are taken. Attempts: deploy-qwen's starts (`DeployResult.attempts`, `recover_vllm`'s
`attempts`; a start that the pre-start memory check refuses counts, though no container is created: the
count in brackets is the containers docker started). Wall: from the call that meets the fault (for
engine_died: docker's `die` event of the dead server) to the serving server's "{READY_LINE}" (docker's
timestamp of that log line); the smoke test after it is not counted. KV cache tokens: that server's
"GPU KV cache size" line. Scaled: `wall - startup + startup / {args.time_scale}`, where startup is, summed
over every container started in the window, its first log line to its ready line (or docker's `die` for
one that failed), i.e. the imitation's startup phases that `VLLM_SIM_TIME_SCALE={args.time_scale}` shortens; docker's
`start` to the first line (the container's Python start-up), the flows, docker and the meminfo helpers
are kept as measured, unscaled. One clean start on this run (the calibration deploy, which also staged the
cache): {calib["docker_start_to_ready"]:.2f} s from docker's \
`start` to ready, of which {calib["python"]:.2f} s Python start-up
and {calib["startup"]:.2f} s startup phases, so {minutes(calib["one_start_scaled"])} scaled back
(the runbook: 3-4 minutes from a warm cache), {int(calib["kv"]):,} KV cache tokens at the runbook's spec."""


def _faults_text(shortage_note: str, overshoot: float, floor_gib: float) -> str:
    """How each fault is set up on the imitation."""
    return f"""The faults. page_cache: an earlier \
load's {EARLIER_WEIGHTS_GIB} GiB of weights in the ledger's page cache;
on 0.10.x deploy-qwen's pre-start memory check drops it before the first start (that vLLM counts it as used
on GB10), on both sides, so no start meets it; on 0.31 nothing is dropped (MemAvailable counts it free) and
the first start serves with the weights still warm. unsteady_memory: `VLLM_SIM_FAULT_PROFILING_RELEASE_GIB=40`
(40 GiB released by another process while the first start profiles: vLLM's "Error in memory profiling"
assertion; later starts on that machine profile steadily). held_by_others, shortage: a `vllm_sim hold`
container (not ours) on the target's ledger; the shortage row: {shortage_note}; and deploy-qwen's
`observe-memory` never reports `others_gib`, so with a holder the planner names held_by_others (its prune
first), not shortage (which it reaches only after a prune, or when nothing is held). kv_too_small: 66 GiB \
held (the 0.38 start leaves 5.2 GiB, above the guard's floor) and a request of
0.38, which starts and then fails vLLM's KV sizing; the ladder's rungs are absolute utilizations, so
after the failed 0.38 it asks 0.75, 0.70, 0.70 + 16384 of a machine with 50.7 GiB free. activation_peak:
`VLLM_SIM_FAULT_CUDA_OOM=1` fails every start at any spec (it could not heal on either side), so
`VLLM_SIM_FAULT_PROFILE_OVERSHOOT_GIB={overshoot:g}` instead: the profiling run holds the budget + {overshoot:g} GiB,
which the gate's host-memory guard ({floor_gib:g} GiB floor) stops at 0.90 and not at 0.85; the imitation's
overshoot does not depend on the batch settings, which the planner's activation_peak step lowers first
(16384/64 -> 8192/32 -> 8192/16, only then the utilization), so the imitation does not reward that step.
The overshoot holds for 5 real seconds (so that the guard's 1 s reads see it), kept unscaled in the scaled
figure: on a Spark that span is the ~19 s of torch.compile and profiling. A start the guard kills (SIGKILL)
cannot release its ledger entry: the imitation counts it until its heartbeat is 5 s old
(`VLLM_SIM_HEARTBEAT_STALE_S`), as a killed vLLM's memory comes back only seconds after its container is
gone on a Spark (vllm issue 34643; recover-vllm waits for it, `wait_for_release`); deploy-qwen's recovery
loop (`tasks/serve.py`) and the ladder here both make their next attempt without waiting. engine_died:
`VLLM_SIM_FAULT_DIE_AFTER_S={DIE_AFTER_S:g}` (the engine \
dies {DIE_AFTER_S:g} s after ready, every start of that target: the
recovered server too, after it was measured); the planner side's container has restart policy "no" (else
docker restarts it while recover-vllm runs), the ladder column is the runbook's own answer,
`restart: unless-stopped` (docker restarts the container with the same command, given {RESTART_WINDOW_S:g} s to serve;
the ladder itself is for memory errors at start)."""


def _faults(floor_gib: float, overshoot: float) -> tuple[list[Fault], str]:
    """The faults the bench sets up, one per recovery class, and why the shortage row holds what it holds."""
    from tasks.recovery.step import RecoveryLimits

    limits = RecoveryLimits().guarded(floor_gib)  # the margin the flows use
    short_gib, _lowers, short_why = shortage_holder(
        limits,
        TOTAL_GIB,
        BASELINE_GIB,
        DEFAULT_REQUEST["max_model_len"],
        DEFAULT_REQUEST["max_num_batched_tokens"],
        DEFAULT_REQUEST["max_num_seqs"],
    )
    faults = [
        Fault(
            "page_cache",
            f"page_cache ({EARLIER_WEIGHTS_GIB} GiB of an earlier load cached)",
            page_cache_gib=EARLIER_WEIGHTS_GIB,
        ),
        Fault("held", "held_by_others (30 GiB held)", holder_gib=30),
        Fault(
            "kv", "kv_too_small (66 GiB held, request 0.38)", holder_gib=66, overrides={"gpu_memory_utilization": 0.38}
        ),
        Fault("shortage", f"shortage within the floor ({short_gib:g} GiB held)", holder_gib=short_gib),
        Fault(
            "peak",
            f"activation_peak (profile overshoot {overshoot:g} GiB)",
            extra_env={"VLLM_SIM_FAULT_PROFILE_OVERSHOOT_GIB": str(overshoot)},
            real_between=(LOADED_LINE, PROFILED_LINE),
        ),
        Fault(
            "unsteady",
            "unsteady_memory (40 GiB released while the first start profiles)",
            extra_env={"VLLM_SIM_FAULT_PROFILING_RELEASE_GIB": "40"},
        ),
        Fault(
            "died",
            f"engine_died (engine dies {DIE_AFTER_S:g} s after ready)",
            extra_env={"VLLM_SIM_FAULT_DIE_AFTER_S": str(DIE_AFTER_S)},
            engine=True,
        ),
    ]
    return faults, short_why


def image_of(version: str) -> tuple[str, str]:
    """The imitation image of a vLLM version given as its release (``0.31.0``) or in full; (full version, tag)."""
    from deployments.targets import SIM_IMAGES

    found = [(full, tag) for full, tag in SIM_IMAGES.items() if full == version or full.split("+")[0] == version]
    if not found:
        raise SystemExit(f"no imitation image of vLLM {version}: choose from {', '.join(SIM_IMAGES)}")
    return found[0]


def run_version(client, tmp: Path, hub_url: str, args, faults: list[Fault], version: str, began: float) -> VersionRun:
    """Every fault on both sides, on the imitation of one vLLM version."""
    full, image = image_of(version)
    bench = Bench(client, tmp / full, hub_url, args.time_scale, uuid.uuid4().hex[:4], image)
    run = VersionRun(full, image, {})
    try:
        run.calib = bench.calibrate()
        print(f"{full}: calibration: {run.calib}", flush=True)
        for fault in faults:
            if time.monotonic() - began > args.budget_s:
                print(f"{full}: time budget spent: {fault.key} not run", flush=True)
                continue
            if fault.engine:
                planner, ladder = bench.engine(fault, runbook=False), bench.engine(fault, runbook=True)
            else:
                planner, ladder = bench.planner(fault), bench.ladder(fault)
            run.rows[fault.key] = (planner, ladder)
            print(f"{full} {fault.key}: planner {planner}\n{full} {fault.key}: ladder {ladder}", flush=True)
    finally:
        for name in bench.targets:
            bench.cleanup(name)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--budget-s", type=float, default=960, help="stop starting new rows after this long")
    parser.add_argument("--vllm", nargs="*", default=["0.10.1.1", "0.31.0"], help="vLLM versions (SIM_IMAGES)")
    parser.add_argument("--only", nargs="*", help="fault keys to run (default: all)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    began = time.monotonic()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.blocks.system import Secret
    from prefect.testing.utilities import prefect_test_harness

    from blocks.target import TargetMachine
    from sim.hub import HubServer, RepoSpec
    from sim.image import ensure_sim_image

    floor_gib = TargetMachine.model_fields["host_memory_floor_gib"].default
    overshoot = overshoot_gib(floor_gib)
    faults, short_why = _faults(floor_gib, overshoot)
    if args.only:
        faults = [f for f in faults if f.key in args.only]
    for version in args.vllm:
        image_of(version)  # refuse an unknown version before anything starts

    client = docker.from_env()
    ensure_sim_image(client)
    with (
        tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp,
        prefect_test_harness(server_startup_timeout=90),
        HubServer(
            repos=[RepoSpec(n_shards=7, shard_bytes=1024 * 1024)], data_dir=Path(tmp) / "hub", token=TOKEN
        ) as hub,
    ):
        Secret(value=TOKEN).save("hf-token", overwrite=True)
        runs = [run_version(client, Path(tmp), hub.url, args, faults, v, began) for v in args.vllm]
    run_s = time.monotonic() - began
    text = body(args, faults, runs, short_why, overshoot, run_s, floor_gib)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
