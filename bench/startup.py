"""Startup phases on the imitations: today's flow (the ``runbook`` preset: mmap, no cache mounts, the page
cache dropped before every start) against the new default (the ``auto`` loader, the compile and kernel
caches mounted from the target's ``vllm_cache_dir``), written to docs/benchmarks.md
(## Startup: today's flow vs fast restarts).

Per vLLM version profile (``--vllm``, default the runbook's 0.10.1.1 and NGC 26.10's 0.31.0: the imitation
image of each, deployments/targets.py `SIM_IMAGES`), both sides in one run, each on a fresh sim target
(fresh compile-cache directory, empty page cache), four scenarios in a row: the first start (cold disk, no
caches), a restart of the same spec (stop-qwen, then deploy-qwen), a restart after a spec change
(deploy-qwen with ``max_num_seqs`` 32 replaces the server) and a recovery's restart (the container killed,
then recover-vllm). Every phase is read from the serving container's log with docker's own timestamps
and put back at Spark speed (``/ --time-scale``, the imitation's phases are its parameters at scale 1,
docs/imitations.md "Startup phases"); the sensitivity table recomputes the same-spec restart from that
breakdown with each parameter at the ends of its range.

Runs a throwaway Prefect server, the Hub imitation and the imitation image through real docker,
loopback only, one server at a time.
    .venv/bin/python -m bench.startup [--time-scale 0.02] [--no-write] [--vllm 0.10.1.1 0.31.0]
        [--only first same changed recovery]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from bench.recovery import READY_LINE, TOKEN, Start, Watch, image_of
from bench.report import machine_line, write_section

HEADING = "Startup: today's flow vs fast restarts"
ANCHOR = "#startup-todays-flow-vs-fast-restarts"
SIDES = ("today", "default")  # today's flow: preset runbook; the new default: loader auto, caches mounted
SCENARIOS: dict[str, str] = {
    "first": "first start (cold disk, no caches)",
    "same": "restart, same spec (stop-qwen, deploy-qwen)",
    "changed": "restart after a spec change (max_num_seqs 64 -> 32, a replace)",
    "recovery": "recovery's restart (container killed, recover-vllm)",
}
CHANGED = {"max_num_seqs": 32}
#: every deploy of this bench: docker must not restart a killed container while recover-vllm runs (the
#: container's restart policy, not vLLM's command: the phases are the same)
BASE_OVERRIDES: dict[str, Any] = {"restart_policy": "no"}
GOAL_S = 60.0
#: The runbook's figures: 9-10 min for a first start with the download, 3-4 min for each later one.
RUNBOOK_FIRST_MIN, RUNBOOK_RESTART_MIN = (9, 10), (3, 4)

#: The log lines that close each phase (each version's forms: sim/vllm/vllm_sim/versions.py, from vLLM's
#: source): init (platform, config, engine spawn, CUDA) ends where loading starts; loading ends with
#: "Model loading took"; compiling (torch.compile or its cache) with "torch.compile takes|took"; KV cache
#: and CUDA graphs with "init engine (profile, create kv cache, warmup model)"; serving (the API server) with
#: the ready line.
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("init", ("Starting to load model",)),
    ("loading", ("Model loading took",)),
    ("compiling", ("torch.compile takes", "torch.compile took")),
    ("kv_graphs", ("init engine (profile",)),
    ("serving", (READY_LINE,)),
)

#: The imitation's startup parameters: default and range (docs/imitations.md "Startup phases", each
#: with its source there). Rates in GB/s; the compile-cache load in seconds.
PARAMETERS: dict[str, tuple[str, float, float, float]] = {
    "load_gbps": ("mmap from disk, GB/s (`VLLM_SIM_LOAD_GBPS`)", 0.168, 0.145, 0.168),
    "eager_gbps": ("eager from disk, GB/s (`VLLM_SIM_EAGER_GBPS`)", 0.91, 0.36, 0.91),
    "fastsafetensors_gbps": ("fastsafetensors from disk, GB/s (`VLLM_SIM_FASTSAFETENSORS_GBPS`)", 1.1, 0.56, 2.0),
    "page_cache_gbps": ("eager/fastsafetensors from page cache, GB/s (`VLLM_SIM_PAGE_CACHE_GBPS`)", 2.8, 2.8, 4.1),
    "mmap_warm_gbps": ("mmap from page cache, GB/s (`VLLM_SIM_MMAP_WARM_GBPS`)", 0.68, 0.168, 2.8),
    "compile_cache_load_s": ("compile-cache load, s (`VLLM_SIM_COMPILE_CACHE_LOAD_S`)", 1.8, 1.8, 7.5),
}
RATE_KNOBS = tuple(k for k in PARAMETERS if k.endswith("_gbps"))


# ---------------------------------------------------------------------------- pure helpers


def phase_spans(lines: list[tuple[float, str]], started: float) -> dict[str, float] | None:
    """Seconds of each phase of one start, from its log lines (docker's timestamps): ``python`` (docker's
    `start` to the first line: the container's own Python start-up), then each of `PHASES` up to its
    closing line. None when a closing line is missing (the start did not serve)."""
    if not lines:
        return None
    spans = {"python": max(0.0, lines[0][0] - started)}
    at = lines[0][0]
    for name, needles in PHASES:
        end = next((t for t, line in lines if t >= at and any(n in line for n in needles)), None)
        if end is None:
            return None
        spans[name], at = max(0.0, end - at), end
    return spans


def spark_phases(spans: dict[str, float], scale: float) -> dict[str, float]:
    """The phases at Spark speed: every imitation phase divided by the time scale; the container's Python
    start-up is real time on this machine (kept as measured)."""
    if scale <= 0:
        raise ValueError(f"time scale must be > 0, got {scale}")
    return {name: (s if name == "python" else s / scale) for name, s in spans.items()}


def read_rate_knob(total_bytes: int, loading_s: float) -> str:
    """Which read-rate parameter set this load's pace: the knob whose default rate is nearest (on a log
    scale) to ``total_bytes / loading_s``."""
    if loading_s <= 0:
        raise ValueError(f"a load takes time, got {loading_s} s")
    rate = total_bytes / loading_s / 1e9
    return min(RATE_KNOBS, key=lambda k: abs(math.log(rate / PARAMETERS[k][1])))


def restart_at(phases: dict[str, float], knob: str, value: float, rate_knob: str, cache_hit: bool) -> float:
    """The start's Spark-time total with one parameter at ``value`` instead of its default: a read rate
    rescales the loading phase when it is the rate this load ran at (``rate_knob``); the compile-cache
    load time moves the compiling phase by its difference when the start read the cache."""
    total = sum(phases.values())
    default = PARAMETERS[knob][1]
    if knob == "compile_cache_load_s":
        return total + (value - default) if cache_hit else total
    if knob == rate_knob:
        return total - phases["loading"] + phases["loading"] * default / value
    return total


def drop_stamp(path: Path) -> float | None:
    """When the target's drop_caches file was last written with a drop (``1`` or ``3``), else None."""
    try:
        return path.stat().st_mtime if path.read_text().strip() in ("1", "3") else None
    except OSError:
        return None


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}"


def fmt_min(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------------------- one start measured


@dataclass
class Measured:
    """One scenario on one side: the serving start's phases (Spark time), what the flow did, its wall."""

    scenario: str
    side: str
    phases: dict[str, float] | None = None  # Spark time
    measured: dict[str, float] | None = None  # as measured (scaled)
    loader: str = "?"
    cache_hit: bool = False
    dropped: bool = False
    wall_s: float | None = None  # the flow call (or kill -> ready for the recovery)
    server_s: float | None = None  # docker `start` -> ready, as measured
    starts: int = 0
    note: str = ""
    served: str = ""  # a recovery's restart: what recover-vllm found and what it served

    @property
    def spark_s(self) -> float | None:
        return sum(self.phases.values()) if self.phases else None

    @property
    def flow_s(self) -> float | None:
        """What the flows, docker and the helpers added, measured (not scaled)."""
        if self.wall_s is None or self.server_s is None:
            return None
        return max(0.0, self.wall_s - self.server_s)


@dataclass
class VersionRun:
    version: str
    image: str
    rows: dict[tuple[str, str], Measured] = field(default_factory=dict)


class Bench:
    """The targets of one version profile, one per side, and the four scenarios on each."""

    def __init__(self, client: docker.DockerClient, root: Path, hub_url: str, scale: float, image: str) -> None:
        from tasks.readiness import ReadinessTimeouts

        self.client, self.root, self.hub_url, self.scale, self.image = client, root, hub_url, scale, image
        self.cache = root.parent / "hf"  # one staged model cache for every target of the run
        self.cache.mkdir(parents=True, exist_ok=True)
        self.run_id = uuid.uuid4().hex[:4]
        self.targets: list[str] = []
        self.timeouts = ReadinessTimeouts(starting_s=90, loading_s=120, compiling_s=90, kv_cache_s=90, serving_s=60)

    def target(self, side: str):
        from deployments.targets import sim_target
        from sim.ports import free_port

        name = f"bst-{self.run_id}-{side}"
        target = sim_target(
            name,
            self.root / name,
            self.hub_url,
            free_port(),
            time_scale=self.scale,
            cache_dir=str(self.cache),
            prune_scope="project",
            image=self.image,
        )
        target.save(name, overwrite=True)
        self.targets.append(name)
        return target

    def measure(self, m: Measured, watch: Watch, t0: float, result: Any, wall_s: float | None) -> None:
        """Fill ``m`` from the serving start after ``t0`` (its log) and the flow's result."""
        from tasks.vllm.logs import summarize_startup
        from tasks.vllm.versions import version_of_image

        serving: Start | None = watch.serving(t0, timeout_s=10)
        m.starts = len([s for s in watch.starts if s.at >= t0])
        if serving is None:
            m.note = m.note or "no start served"
            return
        spans = phase_spans(serving.lines, serving.at)
        m.measured = spans
        m.phases = spark_phases(spans, self.scale) if spans else None
        ready = serving.first(READY_LINE, serving.at)
        m.server_s = ready - serving.at if ready is not None else None
        m.wall_s = wall_s if wall_s is not None else (ready - t0 if ready is not None else None)
        stats = summarize_startup([line for _, line in serving.lines], version_of_image(self.image))
        m.cache_hit = stats.compile_cache_hit
        loader = getattr(result, "loader", None)
        m.loader = (
            loader.name
            if loader is not None
            else next((name for name, desc in LOADER_BARS if serving.first(desc) is not None), "?")
        )

    def scenario(self, target, side: str, key: str, watch: Watch) -> Measured:
        """One scenario on a target already in the state the previous one left."""
        from flows.deploy import deploy_qwen
        from flows.recover import recover_vllm
        from flows.stop import stop_qwen

        preset = "runbook" if side == "today" else None
        overrides = dict(BASE_OVERRIDES) | (CHANGED if key in ("changed", "recovery") else {})
        drop_file = Path(target.drop_caches_path)
        m = Measured(key, side)
        if key == "same":
            stop_qwen(target=target.name)
        if key == "recovery":
            self.kill(target.name)
        if side == "today" and key != "first":
            drop_file.write_text("3")  # today's flow drops the page cache before every start after a load
        before = drop_stamp(drop_file)
        t0 = time.time()
        began = time.monotonic()
        result: Any = None
        try:
            if key == "recovery":
                result = recover_vllm(
                    target=target.name,
                    reason="bench: killed",
                    preset=preset,
                    overrides=overrides,
                    timeouts=self.timeouts,
                )
            else:
                result = deploy_qwen(
                    target=target.name, preset=preset, overrides=overrides, stage=key == "first", timeouts=self.timeouts
                )
        except Exception as exc:  # noqa: BLE001 - reported in the table
            m.note = f"failed: {str(exc).splitlines()[0][:200]}"
        wall = time.monotonic() - began if key != "recovery" else None
        if side == "today" and key != "first":
            m.note = (m.note + " " if m.note else "") + "(drop by the bench: today's flow drops always)"
        self.measure(m, watch, t0, result, wall)
        if key == "recovery" and result is not None:
            from bench.recovery import describe
            from tasks.state import last_healthy

            spec = last_healthy(target.name)
            m.served = (
                f"recover-vllm: {', '.join(result.classes) or 'no class'}; served {describe(spec) if spec else '?'}"
                " (utilization / max_model_len, batch tokens/seqs)"
            )
        after = drop_stamp(drop_file)
        m.dropped = (side == "today" and key != "first") or (after is not None and after != before)
        return m

    def kill(self, target_name: str) -> None:
        from tasks.container import managed_containers

        for container in managed_containers(self.client, target_name):
            container.kill()

    def side(self, side: str, keys: list[str]) -> list[Measured]:
        target = self.target(side)
        watch = Watch(self.client, target.name)
        rows = []
        try:
            for key in keys:
                m = self.scenario(target, side, key, watch)
                print(f"{side} {key}: {m}", flush=True)
                rows.append(m)
        finally:
            watch.close()
            self.cleanup(target.name)
        return rows

    def cleanup(self, target_name: str) -> None:
        from tasks.container import managed_containers, remove_managed

        for container in managed_containers(self.client, target_name):
            remove_managed(container, stop_timeout=None)


#: The loaders' shard-bar texts (docs/imitations.md "Startup phases"): the loader a start used, when the
#: flow's result does not say (a recovery's).
LOADER_BARS: tuple[tuple[str, str], ...] = (
    ("fastsafetensors", "Fastsafetensor loader"),
    ("fastsafetensors", "fastsafetensors checkpoint shards"),
    ("eager", "checkpoint shards (eager)"),
    ("mmap", "Loading safetensors checkpoint shards"),
)


def run_version(client, tmp: Path, hub_url: str, args, version: str) -> VersionRun:
    full, image = image_of(version)
    bench = Bench(client, tmp / full, hub_url, args.time_scale, image)
    run = VersionRun(full, image)
    keys = [k for k in SCENARIOS if not args.only or k in args.only]
    if "first" not in keys:
        keys.insert(0, "first")  # every later scenario needs a server
    for side in SIDES:
        for m in bench.side(side, keys):
            run.rows[(m.scenario, m.side)] = m
    return run


# ---------------------------------------------------------------------------- the section


def _version_table(run: VersionRun) -> str:
    head = (
        "| scenario | side | loader | compile cache hit | page cache dropped | init | loading | compiling "
        "| KV cache + graphs | serving | Python start (real) | **start, Spark time** | flow overhead (measured) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for key, label in SCENARIOS.items():
        for side in SIDES:
            m = run.rows.get((key, side))
            if m is None:
                continue
            p = m.phases or {}
            rows.append(
                f"| {label} | {'today (runbook)' if side == 'today' else 'new default'} | {m.loader} "
                f"| {'yes' if m.cache_hit else 'no'} | {'yes' if m.dropped else 'no'} "
                + " ".join(f"| {fmt_s(p.get(n))}" for n, _ in PHASES)
                + f" | {fmt_s(p.get('python'))} | **{fmt_min(m.spark_s)}** | {fmt_s(m.flow_s)} |"
                + (f" {m.note}" if m.note and m.phases is None else "")
            )
    return head + "\n" + "\n".join(rows)


def _sensitivity(runs: list[VersionRun]) -> str:
    """Each parameter at the ends of its range, the same-spec restart recomputed from its breakdown."""
    from sim.hub.repo import REAL_TOTAL_SIZE

    cols = [(r, side) for r in runs for side in SIDES if (r.rows.get(("same", side)) or Measured("", "")).phases]
    head = (
        "| parameter | default | range | "
        + " | ".join(f"{r.version.split('+')[0]} {'today' if s == 'today' else 'default'}, low / high" for r, s in cols)
        + " |\n|---|---|---|"
        + "---|" * len(cols)
    )
    lines = []
    for knob, (label, default, low, high) in PARAMETERS.items():
        cells = []
        for r, side in cols:
            m = r.rows[("same", side)]
            assert m.phases is not None
            rate = read_rate_knob(REAL_TOTAL_SIZE, m.phases["loading"])
            at = [restart_at(m.phases, knob, v, rate, m.cache_hit) for v in (low, high)]
            same = all(abs(a - (m.spark_s or 0)) < 0.05 for a in at)
            cells.append("unused" if same else f"{fmt_min(at[0])} / {fmt_min(at[1])}")
        lines.append(f"| {label} | {default:g} | {low:g}-{high:g} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(lines)


def headline(runs: list[VersionRun]) -> dict[str, dict[str, float | None]]:
    """Per version, the Spark-time start of each (scenario, side)."""
    return {r.version.split("+")[0]: {f"{k}/{s}": m.spark_s for (k, s), m in r.rows.items()} for r in runs}


def body(args: argparse.Namespace, runs: list[VersionRun], run_s: float) -> str:
    parts = [
        f"""{machine_line()}
`python -m bench.startup --time-scale {args.time_scale}`{" --only " + " ".join(args.only) if args.only else ""}
({run_s / 60:.1f} min): per vLLM version profile, two fresh sim targets (the imitation image of that version,
deployments/targets.py `SIM_IMAGES`; one staged model cache; a throwaway Prefect server, the Hub imitation),
deploy-qwen / stop-qwen / recover-vllm in-process. **Today**: the `runbook` preset (vLLM's mmap loader, no
cache mounts: the compose file's command) and the page cache dropped before every start after a load (the
flow before the versions issue; on 0.31.0 today's deploy-qwen no longer drops, so the bench writes the drop
itself). **New default**: the `auto` loader and the compile/kernel caches mounted from the target's
`vllm_cache_dir`; deploy-qwen drops the page cache only where the version needs it (0.10.x).
Every deploy runs with restart policy "no" (so that docker does not restart the killed container of the
recovery scenario); the vLLM command is the same.""",
        """**These figures are a model, not a Spark's**: each phase is the imitation's parameter at time scale 1
(docs/imitations.md "Startup phases", each with its source), read back from the serving container's log
(docker's timestamps of the lines that close each phase) and divided by the time scale; the container's
own Python start-up and the flows are real time on this machine. What counts is a Spark's own figure: the
deploy report's phase times are read from the real container's log, so an operator sees the real one.
A first start here is the server start on a staged cache: the runbook's 9-10 min include the download
(`hf download`), which is staging's (bench/staging.py), outside this bench.""",
    ]
    for r in runs:
        parts.append(f"**vLLM {r.version}** (`{r.image}`), seconds at Spark speed:\n\n{_version_table(r)}")
    parts.append(
        "Sensitivity: the same-spec restart (the start, Spark time) with one parameter at the low / high "
        "end of its range, the others at their defaults, recomputed from the breakdown above (a read rate "
        "scales the loading phase of the start that ran at it; the compile-cache load time moves the "
        'compiling phase of a start that read the cache); "unused": the parameter does not enter that '
        "start.\n\n" + _sensitivity(runs)
    )
    parts.append(_findings(runs))
    return "\n\n".join(parts)


PHASE_NAMES = {
    "python": "the container's Python start-up",
    "init": "init (platform, config, engine spawn, CUDA)",
    "loading": "loading",
    "compiling": "compiling",
    "kv_graphs": "profiling, KV cache and CUDA graphs",
    "serving": "the API server",
}


def _limits(m: Measured) -> str:
    """What the new default's same-spec restart still spends its time on, largest first, and why."""
    from sim.hub.repo import REAL_TOTAL_SIZE

    assert m.phases is not None
    ranked = sorted(m.phases.items(), key=lambda kv: -kv[1])[:3]
    why = []
    knob = read_rate_knob(REAL_TOTAL_SIZE, m.phases["loading"])
    rate = REAL_TOTAL_SIZE / m.phases["loading"] / 1e9
    why.append(
        f"the weights are read at {rate:.2f} GB/s ({PARAMETERS[knob][0].split(',')[0]}"
        + (", the page cache having been dropped before the start: this vLLM counts it as used" if m.dropped else "")
        + ")"
    )
    extra = m.phases["loading"] - REAL_TOTAL_SIZE / (PARAMETERS[knob][1] * 1e9)
    if extra > 1:
        why.append(
            f"{fmt_s(extra)} s of that loading is the imitation's own per-shard bookkeeping (ledger, page-cache "
            "records), real milliseconds magnified by 1 / time scale: the model's rate alone gives "
            f"{fmt_s(m.phases['loading'] - extra)} s"
        )
    if m.cache_hit and m.phases["compiling"] > 2 * PARAMETERS["compile_cache_load_s"][1]:
        why.append("the compile cache is read after Dynamo has traced the model again (no AOT artifact before 0.31)")
    return (
        "what is left: " + ", ".join(f"{PHASE_NAMES[n]} {fmt_s(s)} s" for n, s in ranked) + "; " + "; ".join(why) + "."
    )


def _findings(runs: list[VersionRun]) -> str:
    out = []
    for r in runs:
        v = r.version.split("+")[0]
        get = {key: m for key, m in r.rows.items()}
        same_d, same_t = get.get(("same", "default")), get.get(("same", "today"))
        chg = get.get(("changed", "default"))
        if same_d and same_d.spark_s is not None:
            verdict = "met" if same_d.spark_s < GOAL_S else "not met"
            out.append(
                f"- {v}: same-spec restart {fmt_min(same_d.spark_s)} with the new default "
                f"(loader {same_d.loader}, compile cache {'hit' if same_d.cache_hit else 'missed'}, "
                f"page cache {'dropped' if same_d.dropped else 'kept'}) against "
                f"{fmt_min(same_t.spark_s if same_t else None)} today and the runbook's "
                f"{RUNBOOK_RESTART_MIN[0]}-{RUNBOOK_RESTART_MIN[1]} min; under {GOAL_S:.0f} s: {verdict}. "
                f"Loading {fmt_s(same_d.phases['loading'] if same_d.phases else None)} s, compiling "
                f"{fmt_s(same_d.phases['compiling'] if same_d.phases else None)} s."
            )
        if same_d and same_d.phases:
            out.append(f"- {v}: {_limits(same_d)}")
        rec = get.get(("recovery", "default"))
        if rec and rec.served:
            out.append(
                f"- {v}: the recovery's restart: {rec.served}; compile cache {'hit' if rec.cache_hit else 'missed'}"
                " on the new default (a batch-token change is in this version's compile key where it missed)."
            )
        if chg:
            out.append(
                f"- {v}: after the spec change (max_num_seqs 64 -> 32) the compile cache "
                f"{'hit' if chg.cache_hit else 'missed'} on the new default: the imitation keys it by what "
                "vLLM hashes that it knows (max_model_len, max_num_batched_tokens, dtype, quantization, "
                "model, revision; sim/vllm/vllm_sim/compile_cache.py), not max_num_seqs (that changes only "
                "the CUDA graph sizes, captured anew at every start)."
            )
    return "Findings.\n\n" + "\n".join(out)


def summary_rows(runs: list[VersionRun], date: str) -> list[str]:
    """The rows of docs/benchmarks.md's summary table (printed: the table is kept by hand)."""

    def cell(key: str, side: str) -> str:
        parts = []
        for r in runs:
            m = r.rows.get((key, side))
            parts.append(f"{fmt_min(m.spark_s if m else None)} on {r.version.split('+')[0]}")
        return ", ".join(parts)

    link = f"[Startup]({ANCHOR})"
    lo, hi = RUNBOOK_RESTART_MIN
    return [
        f"| {link}: same-spec restart, Spark time (model) | the runbook: {lo}-{hi} min; today's flow: "
        f"{cell('same', 'today')} | < {GOAL_S:.0f} s on 0.31.0; 0.10.1.1 as low as its flags allow "
        f"| {cell('same', 'default')} | {date} |",
        f"| {link}: first start on a staged cache (no caches), Spark time (model) | the runbook: "
        f"{RUNBOOK_FIRST_MIN[0]}-{RUNBOOK_FIRST_MIN[1]} min with the download; today's flow: {cell('first', 'today')} "
        f"| — | {cell('first', 'default')} | {date} |",
        f"| {link}: restart after a spec change / a recovery's restart, Spark time (model) | today's flow: "
        f"{cell('changed', 'today')} / {cell('recovery', 'today')} | — "
        f"| {cell('changed', 'default')} / {cell('recovery', 'default')} | {date} |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--vllm", nargs="*", default=["0.10.1.1", "0.31.0"], help="vLLM versions (SIM_IMAGES)")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="scenarios (first always runs)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    began = time.monotonic()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.blocks.system import Secret
    from prefect.testing.utilities import prefect_test_harness

    from sim.hub import HubServer, RepoSpec
    from sim.image import ensure_sim_image

    for version in args.vllm:
        image_of(version)
    client = docker.from_env()
    ensure_sim_image(client)
    with (
        tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp,
        prefect_test_harness(server_startup_timeout=90),
        HubServer(
            repos=[RepoSpec(n_shards=7, shard_bytes=1024 * 1024)], data_dir=Path(tmp) / "hub", token=TOKEN
        ) as hub,
    ):
        Secret(value=TOKEN).save("hf-token", overwrite=True)
        runs = [run_version(client, Path(tmp), hub.url, args, v) for v in args.vllm]
    text = body(args, runs, time.monotonic() - began)
    print(text)
    print(headline(runs))
    print("\n".join(summary_rows(runs, time.strftime("%Y-%m-%d", time.gmtime()))))
    if not args.no_write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
