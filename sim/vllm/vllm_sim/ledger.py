"""The shared memory ledger: how several imitation containers see each other.

Why a directory of files: on a real Spark every process shares one pool of
unified memory, so a second vLLM sees the first one's allocation and the page
cache left by earlier loads.  The deploy code bind-mounts one host directory
into every imitation container; the files in it stand in for the machine:

    held/<name>.json   one per running server or holder: {"gib", "state", "model", "pid", "heartbeat"}
                       refreshed every ~1 s; ignored once the heartbeat is older than
                       VLLM_SIM_HEARTBEAT_STALE_S (default 5 s) or when the owner
                       deleted it on SIGTERM.  <name> = VLLM_SIM_INSTANCE_ID, else the
                       hostname (the container id) when running as PID 1, else
                       "<hostname>-<pid>" so host processes do not collide.
    faults/<name>.json {"fired": N}: a one-shot fault's count (VLLM_SIM_FAULT_PROFILING_RELEASE_TIMES)
    page_cache.json    {"<repo>@<commit>": {"gib", "loaded_at"}}: weights read by any
                       load (the same snapshot counts once), kept after the server stops.
    drop_caches        write "3" (or "1") to it to drop the page cache, as
                       `sync; echo 3 > /proc/sys/vm/drop_caches` does on the Spark:
                       page-cache entries older than its mtime stop counting.

The machine's /proc/meminfo is not a file here: `python3 -m vllm_sim meminfo` (machine.py)
renders `Ledger.meminfo_text()` from these files at the moment it runs, so it is always current
(a drop_caches or a dead server's stale heartbeat shows at once, with no server running).
A held entry need not be a server: `python3 -m vllm_sim hold --gib N` stands for any other
process holding unified memory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KIB_PER_GIB = 1024 * 1024


def default_instance_name(explicit: str = "") -> str:
    """Ledger name of this server (see module docstring)."""
    if explicit:
        return explicit
    host = socket.gethostname() or "localhost"
    return host if os.getpid() == 1 else f"{host}-{os.getpid()}"


@dataclass(frozen=True)
class MemoryView:
    """The machine's memory at one moment, as the ledger describes it (GiB).

    `free` is MemFree: what vLLM 0.10.x's startup check sees (mem_get_info on GB10: page cache
    counts as used; vllm issue 35313, measured on GB10 in unsloth PR 10704). `cached` is the
    page cache the kernel still keeps plus shmem: when processes hold so much that the page cache
    no longer fits beside them it is shown reclaimed down to what is left, so MemAvailable falls
    towards 0 under pressure as on a real machine (the ledger keeps the recorded page cache: it
    counts again once the pressure ends). `available` is MemAvailable, what vLLM 0.11.1+ reads
    on GB10 (vllm/utils/mem_utils.py:85-102 in 0.11.1).

    `shmem_gib` (shmem/tmpfs) is part of the system baseline: used memory that /proc/meminfo also
    shows inside `Cached`, and that drop_caches cannot free, so it never counts as available.
    """

    total_gib: float
    baseline_gib: float
    held_gib: float
    page_cache_gib: float
    shmem_gib: float = 0.0

    @property
    def _room_gib(self) -> float:
        return max(0.0, self.total_gib - self.baseline_gib - self.held_gib)

    @property
    def free_gib(self) -> float:
        return max(0.0, self._room_gib - self.page_cache_gib)

    @property
    def cached_gib(self) -> float:
        return min(self.page_cache_gib, self._room_gib) + self.shmem_gib

    @property
    def available_gib(self) -> float:
        return self.free_gib + min(self.page_cache_gib, self._room_gib)

    def reads(self, semantics: str) -> float:
        """The free memory vLLM sees: "MemFree" (0.10.x on GB10) or "MemAvailable" (0.11.1+)."""
        return self.available_gib if semantics == "MemAvailable" else self.free_gib

    def meminfo_text(self) -> str:
        """/proc/meminfo lines (kB, as the kernel writes them)."""
        rows = (
            ("MemTotal", self.total_gib),
            ("MemFree", self.free_gib),
            ("MemAvailable", self.available_gib),
            ("Cached", self.cached_gib),
            ("Shmem", self.shmem_gib),
        )
        return "".join(f"{name + ':':<16}{int(round(gib * KIB_PER_GIB)):>8} kB\n" for name, gib in rows)


class Ledger:
    """File-backed view of what the other processes on this 'machine' hold.

    Reading never writes: a reader (the meminfo command) may use a directory that does not
    exist yet (an empty machine) or a read-only mount.  The writers create what they write.
    """

    def __init__(
        self,
        root: Path,
        name: str,
        stale_s: float = 5.0,
        total_gib: float | None = None,
        baseline_gib: float = 0.0,
        shmem_gib: float = 0.0,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.stale_s = stale_s
        self.total_gib = total_gib  # for meminfo_text / view
        self.baseline_gib = baseline_gib
        self.shmem_gib = min(shmem_gib, baseline_gib)  # shmem is part of the baseline

    @classmethod
    def open(
        cls,
        root: str,
        name: str,
        stale_s: float = 5.0,
        total_gib: float | None = None,
        baseline_gib: float = 0.0,
        shmem_gib: float = 0.0,
    ) -> Ledger:
        """Use `root` when it exists (the bind mount); otherwise a private temp dir."""
        path = Path(root)
        if not path.is_dir():
            import tempfile  # only here: the meminfo command must start fast

            path = Path(tempfile.mkdtemp(prefix="vllm-sim-ledger-"))
        return cls(path, name, stale_s, total_gib, baseline_gib, shmem_gib)

    # --- locking -------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_json(self, path: Path, data: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # pid and thread in the name: two threads of one server never share a temp file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    @staticmethod
    def _read_json(path: Path) -> dict | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # --- memory held by running servers (and holders) ------------------------
    @property
    def held_path(self) -> Path:
        return self.root / "held" / f"{self.name}.json"

    def publish(self, gib: float, state: str, model: str) -> None:
        """Announce (and heartbeat) what this server holds."""
        self._write_json(
            self.held_path,
            {
                "gib": round(gib, 3),
                "state": state,
                "model": model,
                "pid": os.getpid(),
                "heartbeat": time.time(),
            },
        )

    def release(self) -> None:
        """Give the memory back (SIGTERM, failed start)."""
        try:
            self.held_path.unlink()
        except FileNotFoundError:
            pass

    def others_held_gib(self, now: float | None = None, include_self: bool = False) -> float:
        """Sum of live entries other than ours (or all of them)."""
        now = time.time() if now is None else now
        total = 0.0
        for path in (self.root / "held").glob("*.json"):
            if path.stem == self.name and not include_self:
                continue
            entry = self._read_json(path)
            if not entry:
                continue
            try:
                if now - float(entry.get("heartbeat", 0)) > self.stale_s:
                    continue
                total += float(entry.get("gib", 0))
            except (TypeError, ValueError):
                continue
        return total

    # --- page cache ----------------------------------------------------------
    def dropped_at(self) -> float | None:
        """mtime of the last `echo 1|3 > drop_caches`, if any."""
        path = self.root / "drop_caches"
        try:
            content = path.read_text().strip()
            mtime = path.stat().st_mtime
        except OSError:
            return None
        return mtime if content in ("1", "3") else None

    def _live_page_cache(self) -> dict[str, dict]:
        entries = self._read_json(self.root / "page_cache.json") or {}
        dropped = self.dropped_at()
        live: dict[str, dict] = {}
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

    def page_cache_of(self, key: str) -> float:
        """GiB of snapshot `key` in page cache now (0 after a drop_caches or before any load)."""
        entry = self._live_page_cache().get(key)
        return float(entry.get("gib", 0)) if entry else 0.0

    def record_load(self, key: str, gib: float) -> None:
        """A load read `gib` of snapshot `key` into page cache (same files count once)."""
        with self._locked():
            live = self._live_page_cache()
            prior = live.get(key)
            gib = max(gib, float(prior.get("gib", 0))) if prior else gib
            live[key] = {"gib": round(gib, 3), "loaded_at": time.time()}
            self._write_json(self.root / "page_cache.json", live)

    # --- the machine's memory ------------------------------------------------
    def view(self, include_self: bool = True, now: float | None = None) -> MemoryView:
        """The machine's memory now.  include_self=False is what this server's own startup
        check sees (it does not count its own entry, e.g. a dead predecessor's)."""
        return MemoryView(
            total_gib=float(self.total_gib or 0.0),
            baseline_gib=self.baseline_gib,
            held_gib=self.others_held_gib(now=now, include_self=include_self),
            page_cache_gib=self.page_cache_gib(),
            shmem_gib=self.shmem_gib,
        )

    # --- one-shot faults ------------------------------------------------------
    def take_fault(self, name: str, times: int) -> bool:
        """True for the first `times` calls with `name` on this ledger (all servers sharing it)."""
        with self._locked():
            path = self.root / "faults" / f"{name}.json"
            fired = int((self._read_json(path) or {}).get("fired", 0))
            if fired >= times:
                return False
            self._write_json(path, {"fired": fired + 1})
            return True

    def meminfo_text(self) -> str:
        """/proc/meminfo lines for the state the ledger holds now (kB, as the kernel writes them)."""
        return self.view().meminfo_text()
