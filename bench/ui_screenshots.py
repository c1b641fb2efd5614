"""Screenshots of what an operator sees in the Prefect UI, rendered by headless Chromium (docs/ui.md).

    .venv/bin/python -m bench.ui_screenshots [--out docs/images] [--target sim-ui]
    .venv/bin/python -m bench.ui_screenshots --server http://127.0.0.1:4200 --target sim   # after `make demo`

Without ``--server``: a throwaway `prefect server start` (UI included; PREFECT_HOME in a temporary
directory, a free port), the Hub imitation and the imitation image through real docker, and one
target's story run in this process: deploy-qwen, a small bench-qwen (concurrency 1 and 4, four
short requests each, a few seconds at the imitation's instant decoding), a health check (healthy),
the container removed, a health check (unhealthy), recover-vllm, a health check (healthy again).
With ``--server``: only the screenshots, of a target that server already knows (the benchmark's
page only once bench-qwen has run on it). Either way the pages are the classic UI's
deep links (``/artifacts/artifact/<id>``, ``/events?resource=...``, ``/variables``), rendered with
``--virtual-time-budget`` (the UI fills them from ``/api`` after load), each checked for its
content before its PNG is kept.

The helpers (finding Chromium, a UI server of one's own, the rendered DOM as text) are shared with
tests/integration/test_ui.py. Prefect's test harness serves no UI (its server runs with
PREFECT_UI_ENABLED=0), hence a real `prefect server start` here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
#: Debian's headless-only build first (what deployments/bootstrap.sh installs), the full browser second.
CHROMIUM_BINARIES = ("chromium-headless-shell", "chromium")
#: As root on a closed network: no sandbox, no GPU, and none of Chromium's own connections
#: (update checks, sync, QUIC probes), which this network refuses (.library/env/machines/python.md).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
#: Virtual milliseconds the page gets after load: the UI asks /api for the page's data first.
VIRTUAL_TIME_BUDGET_MS = 15_000
TOKEN = "hf_ui_screenshot_token_3b9e1f"


class ChromiumError(RuntimeError):
    """Chromium did not render the page (its stderr's tail is in the message)."""


# --- Chromium --------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """The path of a headless-capable Chromium, or None when none is installed."""
    for name in CHROMIUM_BINARIES:
        if path := shutil.which(name):
            return path
    return None


def _chromium(args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    binary = find_chromium()
    if binary is None:
        raise ChromiumError(
            f"no Chromium installed (looked for {', '.join(CHROMIUM_BINARIES)}): run deployments/bootstrap.sh"
        )
    with tempfile.TemporaryDirectory(prefix="ui-chromium-") as profile:  # a new empty profile each time
        command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False
        )
    if done.returncode != 0:
        raise ChromiumError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def dump_dom(url: str, *, budget_ms: int = VIRTUAL_TIME_BUDGET_MS, timeout_s: float = 60.0) -> str:
    """The page's DOM after ``budget_ms`` of virtual time (its scripts have run and fetched)."""
    return _chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout_s).stdout


def screenshot(
    url: str,
    out: Path,
    *,
    size: tuple[int, int] = (1400, 1000),
    budget_ms: int = VIRTUAL_TIME_BUDGET_MS,
    timeout_s: float = 60.0,
) -> Path:
    """A PNG of the page at ``size`` (width, height) after ``budget_ms`` of virtual time."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _chromium(
        [f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
        timeout_s,
    )
    if not out.exists() or out.stat().st_size == 0:
        raise ChromiumError(f"no screenshot of {url} in {out}")
    return out


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript", "template") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def page_text(html: str) -> str:
    """The text a reader sees in a rendered DOM: no markup, scripts or styles, one space between."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    return " ".join(" ".join(parser.parts).split())


# --- a Prefect server that serves the UI ------------------------------------------------------


@contextmanager
def ui_server(home: Path, port: int | None = None, startup_timeout_s: float = 90.0) -> Iterator[str]:
    """`prefect server start` with its UI on ``port`` (a free one by default), state in ``home``.

    Yields the base URL (``http://127.0.0.1:<port>``; the API is ``<base>/api``). The UI is told
    where its API is (PREFECT_UI_API_URL): on any port but 4200 it would otherwise ask 4200's. Its
    own SQLite database in ``home`` whatever the environment names; stopped (its process group) on exit.
    """
    from sim.ports import free_port

    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    home = Path(home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_UI_API_URL=f"{base}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    )
    log = home / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server on {base} did not start; its log:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.25)
        yield base
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@contextmanager
def flows_against(api_url: str) -> Iterator[None]:
    """Run this process's flows, blocks and events against ``api_url`` while inside.

    Prefect keeps one events worker per process for every non-Cloud API (keyed by client type, not
    by URL: it would go on sending to the server it first met, e.g. the test harness's), so it is
    drained and stopped on the way in and on the way out: each side gets a fresh one bound to its
    own server, and nothing queued for one server is sent to the other or lost when it stops.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def drain() -> None:  # drain_all: never instance(), which would start one (with no API: a server)
        APILogWorker.drain_all()
        EventsWorker.drain_all()

    drain()
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            drain()


def latest_artifact_id(api_url: str, key: str) -> str:
    """The id of the newest artifact of ``key`` (its page is ``/artifacts/artifact/<id>``).

    Not ``GET /api/artifacts/<key>/latest``: in Prefect 3.9.1 that answers the key's *collection*
    row shaped as an artifact, whose ``id`` is the collection's (its page is empty)."""
    answer = httpx.post(
        f"{api_url}/artifacts/filter",
        timeout=10,
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1},
    )
    answer.raise_for_status()
    found = answer.json()
    if not found:
        raise LookupError(f"no artifact with key {key!r}")
    return found[0]["id"]


def wait_for_events(api_url: str, resource_id: str, names: Sequence[str], timeout_s: float = 30.0) -> list[dict]:
    """The `vllm.service.*` events of ``resource_id`` (newest 50) once every one of ``names`` is stored
    (the server writes events in batches, a few seconds after they arrive). Raises TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.post(
            f"{api_url}/events/filter",
            timeout=10,
            json={"filter": {"resource": {"id": [resource_id]}, "event": {"prefix": ["vllm.service."]}}, "limit": 50},
        )
        answer.raise_for_status()
        events = answer.json()["events"]
        missing = set(names) - {event["event"] for event in events}
        if not missing:
            return events
        if time.monotonic() > deadline:
            raise TimeoutError(f"events {sorted(missing)} of {resource_id} not stored after {timeout_s:.0f} s")
        time.sleep(0.5)


# --- the pages -------------------------------------------------------------------------------


def operator_pages(base: str, target: str) -> dict[str, tuple[str, tuple[str, ...], tuple[int, int]]]:
    """Per screenshot name: the page's URL, the strings it must show, the window size."""
    api = f"{base}/api"
    pages = {
        "ui-health": (
            f"{base}/artifacts/artifact/{latest_artifact_id(api, f'health-{target}')}",
            (f"{target}: ", "deciding layer", "Layers"),
            (1400, 1120),
        ),
        "ui-health-history": (
            f"{base}/artifacts/artifact/{latest_artifact_id(api, f'health-history-{target}')}",
            ("checked at", "verdict"),
            (1400, 560),
        ),
        "ui-deploy": (
            f"{base}/artifacts/artifact/{latest_artifact_id(api, f'deploy-{target}')}",
            (f"deploy-qwen on {target}", "spec hash"),
            (1400, 1500),
        ),
        "ui-events": (
            f"{base}/events?resource=vllm.service.{target}",
            (f"vllm.service.{target}", "vllm.service."),
            (1400, 1560),
        ),
    }
    try:  # tall: the runbook table, the text chart, the PNG chart (an <img> of a data URI), the results
        pages["ui-bench"] = (
            f"{base}/artifacts/artifact/{latest_artifact_id(api, f'bench-report-{target}')}",
            (f"bench-qwen on {target}", "measured beside the runbook", "Results"),
            (1400, 1500),
        )
    except LookupError:  # no benchmark yet on this target
        pass
    try:
        pages["ui-recover"] = (
            f"{base}/artifacts/artifact/{latest_artifact_id(api, f'recover-{target}')}",
            (f"recover-vllm on {target}", "Steps"),
            (1400, 640),
        )
    except LookupError:  # no recovery yet on this target
        pass
    return pages


def rendered_dom(url: str, expected: Sequence[str] = (), attempts: int = 3) -> str:
    """The page's DOM once its visible text shows every one of ``expected`` (up to ``attempts``
    renders, 2 s apart: on a loaded machine the API may answer after the budget); raises
    RuntimeError naming what is missing otherwise. For what the text has not: images, attributes."""
    for attempt in range(attempts):
        html = dump_dom(url)
        text = page_text(html)
        missing = [needle for needle in expected if needle not in text]
        if not missing:
            return html
        if attempt + 1 < attempts:
            time.sleep(2)
    raise RuntimeError(f"{url} rendered without {missing}: {text[:2000]}")


def rendered_text(url: str, expected: Sequence[str] = (), attempts: int = 3) -> str:
    """The page's visible text once it shows every one of ``expected`` (as `rendered_dom`)."""
    return page_text(rendered_dom(url, expected, attempts))


def save_screenshots(base: str, target: str, out_dir: Path) -> list[Path]:
    """Render each operator page, check its text, save its PNG; returns the PNGs."""
    saved = []
    for name, (url, expected, size) in operator_pages(base, target).items():
        rendered_text(url, expected)
        saved.append(screenshot(url, out_dir / f"{name}.png", size=size))
        shown = saved[-1].relative_to(ROOT) if saved[-1].is_relative_to(ROOT) else saved[-1]
        print(f"{name}: {url} -> {shown}", flush=True)
    return saved


# --- one target's story on the imitations ----------------------------------------------------


def run_story(api_url: str, target: str, work: Path, hub_url: str) -> None:
    """deploy, bench, check (healthy), remove the container, check (unhealthy), recover, check (healthy)."""
    import docker
    from prefect.blocks.system import Secret

    from deployments.targets import sim_target
    from flows.bench import bench_qwen
    from flows.deploy import deploy_qwen
    from flows.health import health_check
    from flows.recover import recover_vllm
    from sim.ports import free_port
    from tasks.loadtest.load import Workload

    with flows_against(api_url):
        Secret(value=TOKEN).save("hf-token-ui", overwrite=True)
        machine = sim_target(
            target, work / target, hub_url, free_port(), time_scale=0.01, hf_token_secret="hf-token-ui"
        )
        machine.save(target, overwrite=True)
        print(f"deploy-qwen: {deploy_qwen(target=target).status}", flush=True)
        [bench] = bench_qwen(
            target=target,
            concurrencies=[1, 4],
            results_dir=None,
            workload=Workload(input_len=16, output_len=8, num_prompts=4),
        )
        print(
            f"bench-qwen: {', '.join(f'{lv.label}: {lv.metrics.output_throughput:.0f} tok/s' for lv in bench.levels)}",
            flush=True,
        )
        print(f"health-check: {health_check(target=target).verdict.value}", flush=True)
        client = docker.from_env()
        client.containers.get(machine.container_name).remove(force=True)
        report = health_check(target=target)
        print(
            f"health-check after the container was removed: {report.verdict.value} ({report.layer.value})", flush=True
        )
        result = recover_vllm(target=target, reason=f"health check: {report.layer.value}: {report.reason}")
        print(f"recover-vllm: {result.status}", flush=True)
        print(f"health-check: {health_check(target=target).verdict.value}", flush=True)
    wait_for_events(
        api_url,
        f"vllm.service.{target}",
        ["vllm.service.deployed", "vllm.service.unhealthy", "vllm.service.recovered", "vllm.service.healthy"],
    )


def _remove_target_containers(target: str) -> None:
    import docker

    from blocks.render import label_filters

    for container in docker.from_env().containers.list(all=True, filters=label_filters(target)):
        container.remove(force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--target", default=None, help="target name (default: sim-ui, or sim with --server)")
    parser.add_argument("--server", help="base URL of a running Prefect server with its UI: only take the screenshots")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print(f"no Chromium installed ({', '.join(CHROMIUM_BINARIES)}): run deployments/bootstrap.sh", file=sys.stderr)
        return 2
    if args.server:
        save_screenshots(args.server.rstrip("/"), args.target or "sim", args.out)
        return 0

    import docker

    from sim.hub import HubServer, RepoSpec
    from sim.image import ensure_sim_image

    ensure_sim_image(docker.from_env())  # a fresh machine: the story's deploy needs the imitation image
    target = args.target or "sim-ui"
    with tempfile.TemporaryDirectory(prefix="ui-screenshots-") as tmp:
        work = Path(tmp)
        spec = RepoSpec(repo_id="Qwen/Qwen3-32B-FP8", n_shards=7, shard_bytes=512 * 1024, seed=0)
        with ui_server(work / "prefect") as base, HubServer(repos=[spec], data_dir=work / "hub", token=TOKEN) as hub:
            print(f"Prefect server with its UI at {base}", flush=True)
            try:
                run_story(f"{base}/api", target, work, hub.url)
                save_screenshots(base, target, args.out)
            finally:
                _remove_target_containers(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
