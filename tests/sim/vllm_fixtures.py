"""Fixtures for the vLLM imitation's tests: a small HF cache and host-process servers.

Kept in its own module (imported by the test files) so the Hub imitation's
tests can own tests/sim/conftest.py without clobbering these.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sim.vllm.vllm_sim.testing import FakeCache, build_hf_cache  # noqa: E402

MODEL = "Qwen/Qwen3-32B-FP8"
READY_LINE = "Application startup complete."
FAST_TIME_SCALE = "0.001"  # whole startup in well under a second


def runbook_args(cache_dir: Path) -> list[str]:
    """The runbook's compose command line, with the cache at `cache_dir`."""
    return [
        MODEL,
        "--download-dir",
        str(cache_dir),
        "--max-model-len",
        "32000",
        "--gpu-memory-utilization",
        "0.90",
        "--max-num-batched-tokens",
        "16384",
        "--max-num-seqs",
        "64",
        "--enable-prefix-caching",
        "--trust-remote-code",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sim_env(cache_dir: Path, ledger_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a fast, offline imitation using `cache_dir` and `ledger_dir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "HF_"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(cache_dir),
            "VLLM_SIM_LEDGER_DIR": str(ledger_dir),
            "VLLM_SIM_TIME_SCALE": FAST_TIME_SCALE,
            "VLLM_SIM_DECODE_TIME_SCALE": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class SimServer:
    """A `python -m sim.vllm serve ...` host process whose output is collected live."""

    def __init__(self, args: Sequence[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sim.vllm", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 20.0) -> bool:
        """True once `text` appears in the output; False if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(text in line for line in self.lines):
                    return True
                if self.proc.poll() is not None and not self._reader.is_alive():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))

    def wait_ready(self, timeout: float = 20.0) -> None:
        if not self.wait_for(READY_LINE, timeout):
            raise AssertionError(f"imitation not ready (rc={self.proc.poll()}):\n{self.output[-4000:]}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait_exit(timeout)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kwargs.pop("timeout", 10.0), **kwargs)  # type: ignore[arg-type]


def start_sim(
    cache: FakeCache,
    ledger_dir: Path,
    extra_args: Sequence[str] = (),
    env_extra: dict[str, str] | None = None,
    args: Sequence[str] | None = None,
) -> SimServer:
    env = sim_env(cache.root, ledger_dir, **(env_extra or {}))
    return SimServer(list(args) if args is not None else runbook_args(cache.root) + list(extra_args), env, free_port())


@pytest.fixture
def hf_cache(tmp_path: Path) -> FakeCache:
    return build_hf_cache(tmp_path / "hf")


@pytest.fixture
def ledger_dir(tmp_path: Path) -> Path:
    path = tmp_path / "ledger"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def runbook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    """One imitation with the runbook's command line, shared by a test module."""
    root = tmp_path_factory.mktemp("runbook")
    cache = build_hf_cache(root / "hf")
    ledger = root / "ledger"
    ledger.mkdir()
    server = start_sim(cache, ledger)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
