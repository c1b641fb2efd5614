"""Model staging figures: our stage-model flow against `hf download` (huggingface_hub 2.4), on the
Hub imitation, and record them in docs/benchmarks.md under `## Model staging` (other sections kept).

For each link (no throttle, and a 100 MB/s total throttle that mimics a real download link):
- cold download of the whole repo: wall time of the process, the transfer window (first byte on
  disk -> process exit, polled the same way for both tools) and the time a `sync` then needs (hf
  leaves its blobs in the page cache; ours fsyncs each blob before its rename);
- kill at 50 %: SIGKILL the tool when the bytes on disk (complete blobs + partials) reach half,
  then run it again: bytes the Hub served in the second run / bytes that were missing after the
  kill (repo size - bytes on disk), and partial files left on disk afterwards;
- re-run over the complete cache: wall time and bytes served.

Both tools run as separate processes with 8 parallel files, against the imitation started as its
own process (`python -m sim.hub`), on the same disk. Our flow reports to a Prefect server started
here (prefect's test harness, SQLite).

Usage: python bench/staging.py [--shards 7] [--shard-mib 320] [--throttle-mbps 100] [--links both]
       [--work DIR] [--keep-hub-data]

``--links no-throttle`` measures only the unthrottled link (about half the run time); the section
written then has only that link's rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import write_section  # noqa: E402

PY = sys.executable
HF = str(Path(PY).parent / "hf")
REPO_ID = "Qwen/Qwen3-32B-FP8"
SECTION = "## Model staging"

_CHILD = """
import json, sys
from flows.stage import stage_model
kw = json.loads(sys.argv[1])
r = stage_model(**kw)
print("RESULT " + r.model_dump_json(), flush=True)
"""


# ---------------------------------------------------------------------------------------------
# The Hub imitation as a process
# ---------------------------------------------------------------------------------------------
class Hub:
    def __init__(self, data_dir: Path, shards: int, shard_bytes: int) -> None:
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "sim.hub",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                "--repo",
                REPO_ID,
                "--shards",
                str(shards),
                "--shard-bytes",
                str(shard_bytes),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.url = ""
        deadline = time.monotonic() + 600
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the Hub imitation exited before serving")
            m = re.search(r"serving (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        threading.Thread(target=self._drain, daemon=True).start()
        self.http = httpx.Client(base_url=self.url, timeout=30)
        info = self.http.get("/_sim/repos").json()
        (repo,) = [r for r in info if r["repo_id"] == REPO_ID]
        self.files = repo["files"]
        self.total = sum(f["size"] for f in self.files)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def throttle(self, bytes_per_s: float | None) -> None:
        self.http.delete("/_sim/faults")
        if bytes_per_s:
            self.http.post("/_sim/faults", json={"total_throttle_bytes_per_s": bytes_per_s}).raise_for_status()

    def stats(self) -> dict:
        return self.http.get("/_sim/stats").json()

    def quiesce_and_reset(self) -> None:
        deadline = time.monotonic() + 30
        while self.stats()["active_bodies"] and time.monotonic() < deadline:
            time.sleep(0.05)
        self.http.delete("/_sim/stats")

    def stop(self) -> None:
        self.http.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
def blobs_dir(cache: Path) -> Path:
    return cache / ("models--" + REPO_ID.replace("/", "--")) / "blobs"


def on_disk(cache: Path) -> tuple[int, int]:
    """(bytes of complete blobs, bytes of partial files) in the repo's blobs/."""
    complete = partial = 0
    try:
        entries = list(os.scandir(blobs_dir(cache)))
    except FileNotFoundError:
        return 0, 0
    for e in entries:
        try:
            n = e.stat().st_size
        except FileNotFoundError:
            continue
        if e.name.endswith(".incomplete"):
            partial += n
        else:
            complete += n
    return complete, partial


def child_cpu_s() -> float:
    """CPU seconds of every child reaped so far: the delta around one tool's run is that run's CPU.

    The Hub imitation and the Prefect server are children too, but they are reaped only at the
    end, so they never enter a delta; the `sync` after a run is measured after the delta is taken.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    wall_s: float = 0.0
    window_s: float = 0.0  # first byte on disk -> every blob complete on disk
    sync_s: float = 0.0
    cpu_s: float = 0.0  # user + system CPU of the tool's process (and its children), start-up included
    returncode: int | None = None
    killed_at: tuple[int, int] | None = None  # (complete, partial) at the kill
    result: dict = field(default_factory=dict)


def command(tool: str, cache: Path, hub: Hub, api: str) -> tuple[list[str], dict]:
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_XET": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("HF_HUB_OFFLINE", None)
    if tool == "ours":
        args = {"cache_dir": str(cache), "endpoint": hub.url, "max_workers": 8}
        return [PY, "-c", _CHILD, json.dumps(args)], env
    env["HF_ENDPOINT"] = hub.url
    return [HF, "download", REPO_ID, "--cache-dir", str(cache), "--max-workers", "8", "-q"], env


def run(tool: str, cache: Path, hub: Hub, api: str, kill_at: float | None = None, log: Path | None = None) -> Run:
    cmd, env = command(tool, cache, hub, api)
    out = open(log or os.devnull, "w")  # noqa: SIM115
    r = Run()
    first_byte: list[float] = []
    all_done: list[float] = []
    t0 = time.monotonic()
    cpu0 = child_cpu_s()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    baseline = sum(on_disk(cache))
    while proc.poll() is None:
        c, p = on_disk(cache)
        if not first_byte and c + p > baseline:
            first_byte.append(time.monotonic())
        if not all_done and c >= hub.total and p == 0:
            all_done.append(time.monotonic())
        if kill_at is not None and c + p >= kill_at * hub.total:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            r.killed_at = on_disk(cache)
            break
        time.sleep(0.01)
    end = time.monotonic()
    out.close()
    r.cpu_s = child_cpu_s() - cpu0  # the tool was the only child reaped in between
    r.returncode = proc.returncode
    r.wall_s = end - t0
    if not all_done and sum(on_disk(cache)) >= hub.total:
        all_done.append(end)
    r.window_s = (all_done[0] if all_done else end) - (first_byte[0] if first_byte else t0)
    if r.killed_at is None:
        ts = time.monotonic()
        subprocess.run(["sync"], check=False)
        r.sync_s = time.monotonic() - ts
    if tool == "ours" and log is not None and r.killed_at is None:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("RESULT "):
                r.result = json.loads(line[7:])
    return r


def fresh(cache: Path) -> None:
    shutil.rmtree(cache, ignore_errors=True)
    subprocess.run(["sync"], check=False)


def cold(tool: str, cache: Path, hub: Hub, api: str, work: Path) -> Run:
    fresh(cache)
    hub.quiesce_and_reset()
    r = run(tool, cache, hub, api, log=work / f"{tool}-cold.log")
    assert r.returncode == 0, (work / f"{tool}-cold.log").read_text()[-3000:]
    served = hub.stats()["bytes_total"]
    assert served >= hub.total, (tool, served, hub.total)
    return r


def kill_and_resume(tool: str, cache: Path, hub: Hub, api: str, work: Path) -> dict:
    fresh(cache)
    hub.quiesce_and_reset()
    killed = run(tool, cache, hub, api, kill_at=0.5, log=work / f"{tool}-killed.log")
    assert killed.killed_at is not None, f"{tool} finished before the kill"
    complete, partial = killed.killed_at
    missing = hub.total - complete - partial
    hub.quiesce_and_reset()
    again = run(tool, cache, hub, api, log=work / f"{tool}-resume.log")
    assert again.returncode == 0, (work / f"{tool}-resume.log").read_text()[-3000:]
    served = hub.stats()["bytes_total"]
    left_complete, left_partial = on_disk(cache)
    return {
        "on_disk_at_kill": complete + partial,
        "partial_at_kill": partial,
        "missing": missing,
        "served_after": served,
        "ratio": served / missing if missing else float("nan"),
        "leftover_partials": left_partial,
        "resume_wall_s": again.wall_s,
    }


def rerun(tool: str, cache: Path, hub: Hub, api: str, work: Path) -> tuple[Run, int]:
    hub.quiesce_and_reset()
    r = run(tool, cache, hub, api, log=work / f"{tool}-rerun.log")
    assert r.returncode == 0
    return r, hub.stats()["bytes_total"]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def transfer_cpu_per_gb(cold: Run, rerun: Run, total: int) -> float:
    """CPU seconds per GB the bytes themselves cost: the cold run's CPU minus the re-run's (the same
    process start-up, listing and flow run with no byte to move), over the repo size."""
    return max(cold.cpu_s - rerun.cpu_s, 0.0) / (total / 1e9)


def render(args, hub: Hub, links: dict, started: float) -> str:
    cores = os.cpu_count()
    lines = [
        f"`python bench/staging.py` — {dt.date.today().isoformat()}, {platform.machine()}, {cores} cores, "
        f"Python {platform.python_version()}, huggingface_hub {version('huggingface_hub')} `hf download` vs "
        f"`stage-model` "
        f"({(time.monotonic() - started) / 60:.1f} min for the whole run).",
        f"Repo: the Hub imitation's `{REPO_ID}`, {args.shards} shards x {args.shard_mib} MiB + the small files "
        f"= {mb(hub.total)} ({hub.total} bytes). Both tools: separate processes, 8 files in parallel, same disk; "
        f"the imitation in its own process on loopback.",
        "",
        "| link | tool | cold wall | transfer window | MB/s (window) | + `sync` after | CPU cold / re-run | transfer "
        "CPU per GB | kill at 50 %: re-downloaded / missing | partials left after resume | re-run wall | re-run "
        "bytes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for link, data in links.items():
        for tool in ("ours", "hf"):
            d = data[tool]
            c: Run = d["cold"]
            k = d.get("kill")
            rr, rb = d["rerun"]
            kill_txt = f"{k['ratio']:.3f} ({mb(k['served_after'])} / {mb(k['missing'])})" if k else "—"
            left = mb(k["leftover_partials"]) if k else "—"
            name = "stage-model" if tool == "ours" else "`hf download`"
            lines.append(
                f"| {link} | {name} | {c.wall_s:.1f} s | {c.window_s:.1f} s | {hub.total / c.window_s / 1e6:.0f} | "
                f"{c.sync_s:.1f} s | {c.cpu_s:.1f} s / {rr.cpu_s:.1f} s | {transfer_cpu_per_gb(c, rr, hub.total):.2f} "
                f"s | "
                f"{kill_txt} | {left} | {rr.wall_s:.1f} s | {rb} |"
            )
    lines += ["", "Ratios (stage-model over `hf download`, > 1 means ours is faster):", ""]
    for link, data in links.items():
        o, h = data["ours"]["cold"], data["hf"]["cold"]
        lines.append(
            f"- {link}: transfer window {h.window_s / o.window_s:.2f}, process wall {h.wall_s / o.wall_s:.2f}, "
            f"wall + sync (bytes durable on disk) {(h.wall_s + h.sync_s) / (o.wall_s + o.sync_s):.2f}."
        )
    ours_rr = links[next(iter(links))]["ours"]["rerun"][0]
    in_flow = [d["ours"]["rerun_result"].get("duration_s") for d in links.values() if d["ours"].get("rerun_result")]
    ours_walls = [d["ours"]["rerun"][0].wall_s for d in links.values()]
    hf_walls = [d["hf"]["rerun"][0].wall_s for d in links.values()]
    throttled = [link for link in links if link != "no throttle"]
    link_rate = (
        f" On the {throttled[0].removesuffix(' total')} link both tools move bytes at the link's rate, and the "
        "fixed cost is the whole difference in wall time."
        if throttled
        else ""
    )
    lines += [
        "",
        "Reading the figures:",
        "",
        "- *Transfer window* is first byte on disk to the moment every blob is complete on disk (polled every "
        "10 ms the same way for both tools): process start-up and teardown are left out; *cold wall* includes "
        "them. That fixed cost is what the *re-run wall* shows: "
        f"{min(ours_walls):.1f}-{max(ours_walls):.1f} s for a fresh stage-model process here (Python + Prefect "
        "import, flow-run creation and teardown — Prefect 3.9's flow engine waits up to 1 s for its heartbeat "
        f"thread at exit), {max(hf_walls):.1f} s at most for the CLI. Inside the deploy flow staging runs inside "
        "the deploy's own flow run, so neither the import nor a flow run's set-up is paid per staging." + link_rate,
        "- *CPU cold / re-run*: user + system CPU of the tool's process; *transfer CPU per GB* is their "
        "difference over the repo size, i.e. what moving, hashing and writing the bytes costs once start-up, "
        "listing and the flow run (the same in both runs) are taken out.",
        "- *+ `sync` after*: the time a `sync` takes once the tool has exited. stage-model writes back as it "
        "goes (`fdatasync` every 64 MiB, `fsync` before each rename), so its blobs are durable when it exits; "
        "`hf download` leaves them as dirty pages. *Wall + sync* compares the time until the model is safely "
        "on disk.",
        "- *Missing* = repo size - bytes on disk at the kill (complete blobs + partial files). huggingface_hub "
        "2.4 writes each attempt to a new `<etag>.<8 hex>.incomplete` and never reads it again, so every shard "
        "that was in flight starts over and its orphan stays on disk; stage-model continues the same bytes "
        "(its own `<etag>.incomplete`, or huggingface_hub's orphan, adopted).",
        f"- Re-run over the complete cache: {ours_rr.wall_s:.1f} s for the stage-model process, of which the "
        f"flow itself took {', '.join(f'{x:.2f} s' for x in in_flow if x is not None)} (no byte downloaded, "
        "nothing re-hashed: the manifest vouches for every blob); the rest is Python/Prefect start-up.",
    ]
    return "\n".join(lines) + "\n"


def selected_links(which: str, throttle_mbps: float) -> list[tuple[str, float | None]]:
    """The (label, total bytes/s or None) links ``--links`` asks for, unthrottled first."""
    links: list[tuple[str, float | None]] = []
    if which in ("both", "no-throttle"):
        links.append(("no throttle", None))
    if which in ("both", "throttled"):
        links.append((f"{throttle_mbps:.0f} MB/s total", throttle_mbps * 1e6))
    return links


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=7)
    ap.add_argument("--shard-mib", type=int, default=320)
    ap.add_argument("--throttle-mbps", type=float, default=100.0, help="total link rate, MB/s")
    ap.add_argument(
        "--links",
        choices=("both", "no-throttle", "throttled"),
        default="both",
        help="which links to measure (default both)",
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir, removed)")
    ap.add_argument("--keep-hub-data", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not touch docs/")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-staging-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    print(f"[bench] generating/serving {args.shards} x {args.shard_mib} MiB in {work}", flush=True)
    hub = Hub(work / "hub-data", args.shards, args.shard_mib * 1024 * 1024)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    links: dict[str, dict] = {}
    try:
        with prefect_test_harness(server_startup_timeout=120):
            api = PREFECT_API_URL.value()
            for link, rate in selected_links(args.links, args.throttle_mbps):
                hub.throttle(rate)
                data: dict[str, dict] = {}
                for tool in ("ours", "hf"):
                    d: dict = {}
                    d["cold"] = cold(tool, cache, hub, api, work)
                    print(
                        f"[bench] {link} {tool} cold: wall {d['cold'].wall_s:.1f}s window {d['cold'].window_s:.1f}s "
                        f"sync {d['cold'].sync_s:.1f}s",
                        flush=True,
                    )
                    rr = rerun(tool, cache, hub, api, work)
                    d["rerun"] = rr
                    print(
                        f"[bench] {link} {tool} CPU: cold {d['cold'].cpu_s:.1f}s, re-run {rr[0].cpu_s:.1f}s, "
                        f"transfer {transfer_cpu_per_gb(d['cold'], rr[0], hub.total):.2f} s/GB",
                        flush=True,
                    )
                    if tool == "ours":
                        log = (work / "ours-rerun.log").read_text(errors="replace").splitlines()
                        d["rerun_result"] = next((json.loads(x[7:]) for x in log if x.startswith("RESULT ")), {})
                    print(f"[bench] {link} {tool} re-run: {rr[0].wall_s:.1f}s, {rr[1]} bytes", flush=True)
                    d["kill"] = kill_and_resume(tool, cache, hub, api, work)
                    print(f"[bench] {link} {tool} kill@50%: {json.dumps(d['kill'])}", flush=True)
                    data[tool] = d
                    fresh(cache)
                links[link] = data
            hub.throttle(None)
    finally:
        hub.stop()
        fresh(cache)
        if not args.keep_hub_data:
            shutil.rmtree(work / "hub-data", ignore_errors=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = render(args, hub, links, started)
    print(f"{SECTION}\n\n{text}")
    if not args.no_write:
        print(f"[bench] wrote {write_section(SECTION.removeprefix('## '), text)}")


if __name__ == "__main__":
    main()
