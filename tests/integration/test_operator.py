"""As an operator: `prefect deploy --all`, a process worker, `prefect deployment run deploy-qwen/...`.

And the Spark path run here, where there is no GPU runtime and no registry: it must stop in
preflight, say what is missing, and leave nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from deployments.setup import ensure_work_pool
from deployments.targets import spark_target
from flows.deploy import deploy_qwen
from sim.ports import free_port
from tests.integration.conftest import SESSION_PREFIX, target_containers

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def test_deployment_run_through_a_worker(make_sim_target, prefect_server, docker_client, tmp_path):
    target = make_sim_target()
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    ensure_work_pool()
    subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=180)
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "spark-vllm", "--name", f"test-{uuid.uuid4().hex[:6]}"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        run = subprocess.run(
            [PREFECT, "deployment", "run", "deploy-qwen/sim", "--param", f"target={target.name}", "--watch", "--watch-timeout", "300"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=360,
        )
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "worker.log").read_text()[-3000:]
    assert "Completed" in run.stdout
    assert httpx.get(f"{target.endpoint}/health").status_code == 200
    assert len(target_containers(docker_client, target.name)) == 1


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
