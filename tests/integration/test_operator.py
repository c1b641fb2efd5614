"""As an operator: `prefect deploy --all`, a process worker, `prefect deployment run deploy-qwen/...`.

And the Spark path run here, where there is no GPU runtime and no registry: it must stop in
preflight, say what is missing, and leave nothing behind.

The worker is started and stopped by deployments/dev/worker.py, as `make demo` / `make down` do: its
stop is bounded (SIGTERM, a deadline, then its process tree is killed), and the tests assert that
SIGTERM alone stopped it, also when the test session itself ignores SIGINT (as under a `&` job of
a non-interactive shell: Prefect's worker turns SIGTERM into SIGINT, which such a worker ignored).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.dev.worker import Worker, start_worker, stop_worker
from deployments.setup import ensure_work_pool
from deployments.targets import spark_target
from flows.deploy import deploy_qwen
from sim.ports import free_port
from tests.integration.conftest import SESSION_PREFIX, target_containers

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _gone(pid: int) -> bool:
    """Exited (a zombie has exited for good: its parent may be slow to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_deployment_run_through_a_worker(make_sim_target, prefect_server, docker_client, tmp_path):
    target = make_sim_target()
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    ensure_work_pool()
    subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=180
    )
    worker = start_worker("spark-vllm", f"test-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log", env=env, cwd=ROOT)
    try:
        run = subprocess.run(
            [
                PREFECT,
                "deployment",
                "run",
                "deploy-qwen/sim",
                "--param",
                f"target={target.name}",
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
    finally:
        stopped = stop_worker(worker)
    assert run.returncode == 0, run.stdout + run.stderr + worker.log_tail()
    assert "Completed" in run.stdout
    assert httpx.get(f"{target.endpoint}/health").status_code == 200
    assert len(target_containers(docker_client, target.name)) == 1
    assert stopped.graceful and not stopped.killed, f"{stopped}\n{worker.log_tail()}"
    assert "stopped!" in worker.log_tail()


def test_worker_stops_on_sigterm_even_when_started_with_sigint_ignored(prefect_server, tmp_path):
    """The flake's cause, pinned: a parent ignoring SIGINT must not make the worker ignore SIGTERM."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    ensure_work_pool()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the child, as from a `&` job
    try:
        worker = start_worker("spark-vllm", f"test-{uuid.uuid4().hex[:6]}", tmp_path / "worker.log", env=env, cwd=ROOT)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        raw = Path(f"/proc/{worker.pid}/environ").read_bytes().decode()
        environ = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
        # the project's polling (1 s), unless the environment chose another
        assert environ["PREFECT_WORKER_QUERY_SECONDS"] == os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "1")
    finally:
        stopped = stop_worker(worker)
    assert stopped.graceful and not stopped.killed, f"{stopped}\n{worker.log_tail()}"
    assert stopped.seconds < 10, stopped
    assert _gone(worker.pid)


def test_stop_is_bounded_and_kills_the_whole_tree(tmp_path):
    """A worker that ignores SIGTERM, with a child in a session of its own (as Prefect starts flow
    runs): after the deadline both are killed, and nothing is left."""
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    code = (
        ignore
        + "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
        + repr(ignore + "time.sleep(300)")
        + "], start_new_session=True); time.sleep(300)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(_tree(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = _tree(process.pid)
    assert len(tree) == 2 and os.getpgid(tree[1].pid) != process.pid  # the child is out of the worker's group
    stopped = stop_worker(Worker(process=process, name=""), grace_s=1.0)
    assert not stopped.graceful
    assert stopped.killed == (tree[1].pid,)
    assert 1.0 <= stopped.seconds < 8
    assert process.returncode == -signal.SIGKILL
    assert all(_gone(proc.pid) for proc in tree)


def test_spark_path_here_fails_in_preflight_and_leaves_nothing(prefect_server, docker_client, tmp_path):
    name = f"{SESSION_PREFIX}spark-{uuid.uuid4().hex[:6]}"
    cache = tmp_path / "hf"
    cache.mkdir()
    spark_target(name=name, host_port=free_port(), cache_dir=str(cache)).save(name, overwrite=True)
    state = deploy_qwen(target=name, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception) as failure:
        state.result()
    text = str(failure.value)
    assert "preflight" in text
    assert "NVIDIA Container Toolkit" in text
    assert "nvcr.io/nvidia/vllm:25.09-py3" in text and "cannot be pulled" in text
    assert target_containers(docker_client, name) == []
    assert list(cache.iterdir()) == []
