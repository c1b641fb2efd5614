"""The shared memory ledger: how several imitation containers see each other.

Why a directory of files: on a real Spark every process shares one pool of
unified memory, so a second vLLM sees the first one's allocation and the page
cache left by earlier loads.  The deploy code bind-mounts one host directory
into every imitation container; the files in it stand in for the machine:

    held/<name>.json   one per running server: {"gib", "state", "model", "pid", "heartbeat"}
                       refreshed every ~1 s; ignored once the heartbeat is older than
                       VLLM_SIM_HEARTBEAT_STALE_S (default 5 s) or when the owner
                       deleted it on SIGTERM.  <name> = VLLM_SIM_INSTANCE_ID, else the
                       hostname (the container id) when running as PID 1, else
                       "<hostname>-<pid>" so host processes do not collide.
    page_cache.json    {"<repo>@<commit>": {"gib", "loaded_at"}}: weights read by any
                       load (the same snapshot counts once), kept after the server stops.
    drop_caches        write "3" (or "1") to it to drop the page cache, as
                       `sync; echo 3 > /proc/sys/vm/drop_caches` does on the Spark:
                       page-cache entries older than its mtime stop counting.
    meminfo            the machine's memory in /proc/meminfo's format (MemTotal, MemFree,
                       MemAvailable, Cached, in kB), rewritten by every server whenever the
                       ledger changes (heartbeat, load, release), so the flows read the
                       imitation's memory with the code that reads /proc/meminfo on a Spark.
                       Between servers it keeps the last state written; a drop_caches shows
                       in it once a server next writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional


def default_instance_name(explicit: str = "") -> str:
    """Ledger name of this server (see module docstring)."""
    if explicit:
        return explicit
    host = socket.gethostname() or "localhost"
    return host if os.getpid() == 1 else f"{host}-{os.getpid()}"


class Ledger:
    """File-backed view of what the other processes on this 'machine' hold."""

    def __init__(self, root: Path, name: str, stale_s: float = 5.0,
                 total_gib: Optional[float] = None, baseline_gib: float = 0.0) -> None:
        self.root = root
        self.name = name
        self.stale_s = stale_s
        self.total_gib = total_gib  # None: no meminfo file is kept
        self.baseline_gib = baseline_gib
        (self.root / "held").mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, root: str, name: str, stale_s: float = 5.0,
             total_gib: Optional[float] = None, baseline_gib: float = 0.0) -> "Ledger":
        """Use `root` when it exists (the bind mount); otherwise a private temp dir."""
        path = Path(root)
        if not path.is_dir():
            path = Path(tempfile.mkdtemp(prefix="vllm-sim-ledger-"))
        return cls(path, name, stale_s, total_gib, baseline_gib)

    # --- locking -------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_json(self, path: Path, data: object) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    @staticmethod
    def _read_json(path: Path) -> Optional[dict]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # --- memory held by running servers --------------------------------------
    @property
    def held_path(self) -> Path:
        return self.root / "held" / f"{self.name}.json"

    def publish(self, gib: float, state: str, model: str) -> None:
        """Announce (and heartbeat) what this server holds."""
        self._write_json(self.held_path, {
            "gib": round(gib, 3), "state": state, "model": model,
            "pid": os.getpid(), "heartbeat": time.time(),
        })
        self.write_meminfo()

    def release(self) -> None:
        """Give the memory back (SIGTERM, failed start)."""
        try:
            self.held_path.unlink()
        except FileNotFoundError:
            pass
        self.write_meminfo()

    def others_held_gib(self, now: Optional[float] = None, include_self: bool = False) -> float:
        """Sum of live entries other than ours (or all of them)."""
        now = time.time() if now is None else now
        total = 0.0
        for path in (self.root / "held").glob("*.json"):
            if path.stem == self.name and not include_self:
                continue
            entry = self._read_json(path)
            if not entry:
                continue
            if now - float(entry.get("heartbeat", 0)) > self.stale_s:
                continue
            total += float(entry.get("gib", 0))
        return total

    # --- page cache ----------------------------------------------------------
    def dropped_at(self) -> Optional[float]:
        """mtime of the last `echo 1|3 > drop_caches`, if any."""
        path = self.root / "drop_caches"
        try:
            content = path.read_text().strip()
            mtime = path.stat().st_mtime
        except OSError:
            return None
        return mtime if content in ("1", "3") else None

    def _live_page_cache(self) -> Dict[str, dict]:
        entries = self._read_json(self.root / "page_cache.json") or {}
        dropped = self.dropped_at()
        live: Dict[str, dict] = {}
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            if dropped is not None and float(entry.get("loaded_at", 0)) <= dropped:
                continue
            live[key] = entry
        return live

    def page_cache_gib(self) -> float:
        """Weights left in page cache by loads since the last drop_caches."""
        return sum(float(e.get("gib", 0)) for e in self._live_page_cache().values())

    def record_load(self, key: str, gib: float) -> None:
        """A load read `gib` of snapshot `key` into page cache (same files count once)."""
        with self._locked():
            live = self._live_page_cache()
            prior = live.get(key)
            gib = max(gib, float(prior.get("gib", 0))) if prior else gib
            live[key] = {"gib": round(gib, 3), "loaded_at": time.time()}
            self._write_json(self.root / "page_cache.json", live)
        self.write_meminfo()

    # --- the machine's meminfo -------------------------------------------------
    def meminfo_text(self) -> str:
        """/proc/meminfo lines for the state the ledger holds now (kB, as the kernel writes them)."""
        total = float(self.total_gib or 0.0)
        cached = self.page_cache_gib()
        free = max(0.0, total - self.baseline_gib - self.others_held_gib(include_self=True) - cached)
        kib = lambda gib: int(round(gib * 1024 * 1024))  # noqa: E731
        rows = (("MemTotal", total), ("MemFree", free), ("MemAvailable", free + cached), ("Cached", cached))
        return "".join(f"{name + ':':<16}{kib(value):>8} kB\n" for name, value in rows)

    def write_meminfo(self) -> None:
        if self.total_gib is None:
            return
        path = self.root / "meminfo"
        tmp = path.with_name(f".meminfo.{os.getpid()}.tmp")
        tmp.write_text(self.meminfo_text())
        os.replace(tmp, path)
