"""Helpers for the staging tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from sim.hub import HubServer

REPO = "Qwen/Qwen3-32B-FP8"
GATED = "Qwen/Qwen3-Gated-Test"
BIG = "Qwen/Qwen3-One-Big-Shard-Test"  # one shard > huggingface_hub's 10 MiB write chunk
BIG_SHARD = 24 * 1024 * 1024
SHARD = 4 * 1024 * 1024
N_SHARDS = 4
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_test_token_" + secrets.token_hex(8)


class Capture(logging.Handler):
    """Every log record of the run, formatted, wherever it propagates (Prefect's loggers included)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001
            self.lines.append(str(record.msg))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def shard_names() -> list[str]:
    return [f"model-{i:05d}-of-{N_SHARDS:05d}.safetensors" for i in range(1, N_SHARDS + 1)]


def file_info(hub: HubServer, path: str, repo: str = REPO) -> tuple[str, int, str, bool]:
    return next(f for f in hub.files(repo) if f[0] == path)


def quiesce(hub: HubServer) -> None:
    """Wait until no body is being sent (a killed client's connection may still be draining),
    then reset the counters."""
    wait_for(lambda: hub.stats()["active_bodies"] == 0, 10, what="the Hub to finish sending")
    hub.reset_stats()


def repo_bytes(hub: HubServer, repo: str = REPO) -> int:
    return sum(f[1] for f in hub.files(repo))


def blobs_dir(cache: Path, repo: str = REPO) -> Path:
    return cache / ("models--" + repo.replace("/", "--")) / "blobs"


def stage(hub: HubServer, cache: Path, **kw):
    from flows.stage import stage_model

    kw.setdefault("endpoint", hub.url)
    kw.setdefault("max_workers", 4)
    return stage_model(cache_dir=str(cache), **kw)


_CHILD = """
import json, sys
from flows.stage import stage_model
kw = json.loads(sys.argv[1])
r = stage_model(**kw)
print("RESULT " + r.model_dump_json())
"""


def spawn_stage(prefect_api: str, cache: Path, endpoint: str, log: Path, **kw) -> subprocess.Popen:
    """stage-model in a separate process (same Prefect server), output to ``log``."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_TOKEN": TOKEN,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("HF_HUB_OFFLINE", None)
    args = {"cache_dir": str(cache), "endpoint": endpoint, "max_workers": 4, **kw}
    out = open(log, "wb")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def child_result(log: Path) -> dict:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError("child printed no result:\n" + log.read_text(errors="replace")[-4000:])


def wait_for(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
