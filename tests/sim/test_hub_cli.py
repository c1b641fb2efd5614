"""``python -m sim.hub`` as a separate process: readiness line, runtime faults over HTTP, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hub_fixtures import client_env
from huggingface_hub import HfApi, hf_hub_download

REPO = "Qwen/Qwen3-32B-FP8"
HTTP = httpx.Client(timeout=30)


def _start(data_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim.hub",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--repo",
            REPO,
            "--repo",
            "sim-org/other",
            "--shards",
            "3",
            "--shard-bytes",
            str(128 * 1024),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=client_env("unused", data_dir / "hf_home"),
    )
    line = proc.stdout.readline().strip()
    assert line.startswith("Hub imitation serving http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
    return proc, line.rsplit(" ", 1)[1]


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


def test_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc, url = _start(tmp_path, "--token", "hf_cli_token", "--gated-repo", "sim-org/other", "--tree-page-size", "4")
    try:
        assert HTTP.get(f"{url}/_sim/health").json() == {"ok": True}
        repos = {r["repo_id"]: r for r in HTTP.get(f"{url}/_sim/repos").json()}
        assert set(repos) == {REPO, "sim-org/other"} and repos["sim-org/other"]["gated"]
        assert len(repos[REPO]["files"]) == 13  # 3 shards + index + 9 small files
        assert HTTP.get(f"{url}/api/models/{REPO}").status_code == 401  # token required
        # a fault set at run time from another process
        HTTP.post(f"{url}/_sim/faults", json={"cut_after_bytes": 1000, "path_glob": "*.safetensors", "times": 1})
        auth = {"Authorization": "Bearer hf_cli_token"}
        shard = f"{url}/{REPO}/resolve/main/model-00001-of-00003.safetensors"
        with pytest.raises(httpx.RemoteProtocolError):
            HTTP.get(shard, headers=auth, follow_redirects=True)
        assert len(HTTP.get(shard, headers=auth, follow_redirects=True).content) == 128 * 1024
        # the real client, pointed at the process
        commit = repos[REPO]["commit"]
        path = hf_hub_download(REPO, "config.json", endpoint=url, cache_dir=tmp_path / "c", token="hf_cli_token")
        assert commit in path
        tree = list(HfApi(endpoint=url, token="hf_cli_token").list_repo_tree(REPO, revision=commit))
        assert len(tree) == 13
        stats = HTTP.get(f"{url}/_sim/stats").json()
        assert stats["cut_connections"] == 1
        assert stats["requests"][f"GET /api/models/{REPO}/tree/{commit}"] == 4  # 13 files, 4 per page
    finally:
        rc = _stop(proc)
    assert rc == 0


def test_cli_throttle_flag(tmp_path: Path) -> None:
    proc, url = _start(tmp_path, "--throttle", str(512 * 1024), "--fault-glob", "*.safetensors")
    try:
        t0 = time.monotonic()
        r = HTTP.get(f"{url}/{REPO}/resolve/main/model-00001-of-00003.safetensors", follow_redirects=True)
        assert r.status_code == 200 and len(r.content) == 128 * 1024
        assert time.monotonic() - t0 >= 0.22  # 128 KiB at 512 KiB/s
        assert HTTP.get(f"{url}/_sim/faults").json()[0]["throttle_bytes_per_s"] == 512 * 1024
    finally:
        assert _stop(proc) == 0
