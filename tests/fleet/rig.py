"""A second docker daemon on this box: the fleet rig's second "machine" (tests/fleet, benches).

A fleet test needs two docker hosts. One box can run two dockerd side by side as long as they share
*nothing* that either one owns::

    ROOT/docker.sock     its API socket (base URL ``unix://ROOT/docker.sock``)
    ROOT/data            --data-root (images, containers, volumes)
    ROOT/exec            --exec-root (its own containerd, netns, plugins)
    ROOT/docker.pid      --pidfile
    ROOT/daemon.json     --config-file ({}): /etc/docker/daemon.json (the first daemon's) not read
    ROOT/dockerd.log     its log
    bridge br-sv2        172.29.0.1/16, made here before the daemon starts (--bridge br-sv2)

HAZARD: a dockerd started with the default bridge or ``--bridge none`` takes over (or deletes) the
host daemon's ``docker0`` and breaks every container of the first daemon. So the bridge is
always given, is never ``docker0``/``none``, and must not overlap any other interface's network;
the paths must not be the first daemon's (/var/lib/docker, /var/run/docker, /var/run/docker.sock).

The daemon runs with ``--iptables=false`` (and ``--ip-forward=false``): it then never rewrites
the nat/filter chains the first daemon keeps (dockerd's bridge driver cleans up "its" DOCKER
chains at start-up, and both daemons would call them theirs). Published ports still work: on
loopback they are served by dockerd's userland proxy (docker-proxy), which connects to the
container over br-sv2. Containers of the second daemon get no outbound NAT (nothing here needs it:
there is no internet anyway). ``--containerd-namespace`` keeps its containers apart even if both
daemons ever talked to one containerd.

A session reuses a daemon already running (its socket answers ``/_ping``). At the end of the test
session (tests/fleet/conftest.py) `stop_second_dockerd` stops it (SIGTERM by the pid in its pid
file, then SIGKILL of that pid and its own containerd) and `remove_bridge` deletes br-sv2, unless
``SPARK_VLLM_KEEP_RIG=1`` keeps both for the next session (some 10 s faster) or another live
session still has containers on it.

Test containers follow tests/integration/conftest.py's rule: a test target is named
``test-<pid>-<hex>`` (label ``org.spark-vllm.target``), a container a test starts by hand carries
``org.spark-vllm.test=<pid>``; the pid is the pytest session's. The session's PostgreSQL clusters
(tests/fleet/conftest.py) live in ``/tmp/spark-vllm-pg-<pid>-*``: `remove_stale_clusters` stops and
deletes those of sessions that were killed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import ImageNotFound
from filelock import FileLock

from blocks.render import label_filters
from blocks.shared import LABEL_TARGET

from . import pg_cluster

#: Where the second daemon keeps everything (the environment may move it).
DEFAULT_ROOT = Path(os.environ.get("SPARK_VLLM_D2_ROOT", "/var/lib/spark-vllm-d2"))
BRIDGE = os.environ.get("SPARK_VLLM_D2_BRIDGE", "br-sv2")
BRIDGE_CIDR = os.environ.get("SPARK_VLLM_D2_CIDR", "172.29.0.1/16")
CONTAINERD_NAMESPACE = "spark-vllm-d2"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

#: The first daemon's own places: never used for the second one.
_HOST_DAEMON_PATHS = (
    Path("/var/lib/docker"),
    Path("/var/run/docker"),
    Path("/run/docker"),
    Path("/var/run/docker.sock"),
    Path("/run/docker.sock"),
)
_FORBIDDEN_BRIDGES = {"", "none", "docker0", "host", "default"}

# --- the naming rule of tests/integration/conftest.py ----------------------------------------
# The test rig's naming rule is tests/integration's (one rule: a session's containers carry its pid).
from tests.integration.conftest import (  # noqa: E402
    SESSION,
    TEST_LABEL,
    TEST_TARGET_PREFIX,
    session_alive,
    session_of,
)


class RigError(RuntimeError):
    """The second daemon could not be started or stopped (its log's tail is in the message)."""


# --- paths and checks ------------------------------------------------------------------------


def socket_path(root: Path | str = DEFAULT_ROOT) -> Path:
    return Path(root).absolute() / "docker.sock"


def base_url(root: Path | str = DEFAULT_ROOT) -> str:
    """``unix:///ROOT/docker.sock``: for ``docker.DockerClient(base_url=...)`` or ``DOCKER_HOST``."""
    return f"unix://{socket_path(root)}"


def _check_root(root: Path) -> None:
    for path in _HOST_DAEMON_PATHS:
        if root == path or path.is_relative_to(root) or root.is_relative_to(path):
            raise RigError(f"{root}: overlaps the first docker daemon's {path}; choose e.g. /var/lib/spark-vllm-d2")
    if len(str(root / "exec" / "containerd" / "containerd-debug.sock")) > 100:
        raise RigError(f"{root}: too long a path for the daemon's unix sockets (108 bytes)")


def ping(url: str, timeout_s: float = 2.0) -> bool:
    """Whether the daemon at ``unix://PATH`` answers ``GET /_ping`` with OK."""
    path = url.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0] and reply.endswith(b"OK")


# --- the bridge ------------------------------------------------------------------------------


def _ip_json(*args: str) -> list[dict]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout or "[]")


def ensure_bridge(name: str = BRIDGE, cidr: str = BRIDGE_CIDR) -> None:
    """Create the bridge ``name`` with address ``cidr`` (up) unless it is there: never docker0.

    Refuses a network that overlaps another interface's (docker0's 172.17.0.0/16 in particular).
    """
    if name in _FORBIDDEN_BRIDGES or not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name):
        raise RigError(f"bridge {name!r}: the second daemon needs its own bridge device (never docker0 or none)")
    wanted = ipaddress.ip_interface(cidr)
    links = _ip_json("addr", "show")
    ours = None
    for link in links:
        if link.get("ifname") == name:
            ours = link
            continue
        for info in link.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            network = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
            if network.overlaps(wanted.network):
                raise RigError(f"{cidr} overlaps {link['ifname']}'s {network}: choose another SPARK_VLLM_D2_CIDR")
    if ours is None:
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
        ours = {"addr_info": []}
    present = {f"{i['local']}/{i['prefixlen']}" for i in ours.get("addr_info", []) if i.get("family") == "inet"}
    if str(wanted) not in present:
        if present:
            raise RigError(f"bridge {name} already has {sorted(present)}, not {cidr}")
        subprocess.run(["ip", "addr", "add", str(wanted), "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


def remove_bridge(name: str = BRIDGE) -> None:
    """Delete the second daemon's bridge (only ever that one): after `stop_second_dockerd`."""
    if name in _FORBIDDEN_BRIDGES:
        raise RigError(f"refusing to delete {name!r}")
    if any(link.get("ifname") == name for link in _ip_json("link", "show")):
        subprocess.run(["ip", "link", "del", name], check=True)


# --- the daemon ------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")[:-1]
    except OSError:
        return []


def _is_zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return raw[raw.rindex(")") + 2 :].split()[0] in ("Z", "X")


def daemon_pid(root: Path | str = DEFAULT_ROOT) -> int | None:
    """The live dockerd that ``ROOT/docker.pid`` names, if it really is ours (pid reuse checked)."""
    root = Path(root).absolute()
    try:
        pid = int((root / "docker.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    argv = _cmdline(pid)
    if not argv or _is_zombie(pid) or Path(argv[0]).name != "dockerd" or str(root / "docker.pid") not in argv:
        return None
    return pid


def _log_tail(root: Path, chars: int = 3000) -> str:
    try:
        return (root / "dockerd.log").read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def dockerd_command(root: Path, bridge: str = BRIDGE) -> list[str]:
    """The second daemon's command line (see the module docstring for each choice)."""
    return [
        "dockerd",
        "--host",
        base_url(root),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "--config-file",
        str(root / "daemon.json"),
        "--bridge",
        bridge,
        "--iptables=false",
        "--ip-forward=false",
        "--containerd-namespace",
        CONTAINERD_NAMESPACE,
        "--containerd-plugins-namespace",
        f"{CONTAINERD_NAMESPACE}-plugins",
    ]


def start_second_dockerd(
    root: Path | str = DEFAULT_ROOT,
    *,
    bridge: str = BRIDGE,
    cidr: str = BRIDGE_CIDR,
    timeout_s: float = START_TIMEOUT_S,
) -> str:
    """Start the second daemon in ``root`` (or reuse the one running there); return its base URL.

    Idempotent and safe to call from two sessions at once (a file lock in ``root``). Returns once
    the daemon answers ``/_ping``; raises `RigError` with its log's tail otherwise.
    """
    root = Path(root).absolute()
    _check_root(root)
    url = base_url(root)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "rig.lock"), timeout=timeout_s + 30):
        if ping(url):
            return url
        process = None
        if daemon_pid(root) is None:
            ensure_bridge(bridge, cidr)
            (root / "daemon.json").write_text("{}\n")
            with open(root / "dockerd.log", "ab") as out:
                out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start_second_dockerd\n".encode())
                out.flush()
                process = subprocess.Popen(
                    dockerd_command(root, bridge),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=root,
                )
        deadline = time.monotonic() + timeout_s
        while not ping(url):
            if process is not None and process.poll() is not None:
                raise RigError(
                    f"the second dockerd exited ({process.returncode}); {root}/dockerd.log:\n{_log_tail(root)}"
                )
            if time.monotonic() > deadline:
                raise RigError(
                    f"the second dockerd did not answer within {timeout_s:.0f} s; "
                    f"{root}/dockerd.log:\n{_log_tail(root)}"
                )
            time.sleep(0.2)
    return url


def stop_second_dockerd(root: Path | str = DEFAULT_ROOT, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the second daemon of ``root`` (False when none runs). Its containers stop with it.

    Only the pid of ``ROOT/docker.pid`` (checked to be this daemon) is signalled, and on SIGKILL
    its own supervised containerd too; the bridge stays (`remove_bridge` deletes it).
    """
    root = Path(root).absolute()
    pid = daemon_pid(root)
    if pid is None:
        return False
    children = [int(p) for p in _children(pid)]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon_pid(root) != pid:
            return True
        time.sleep(0.2)
    for victim in [pid, *children]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` that are containerd (the daemon's own, supervised one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid and "containerd" in " ".join(_cmdline(int(entry.name))):
            found.append(int(entry.name))
    return found


# --- images ----------------------------------------------------------------------------------


def copy_image(src_client: docker.DockerClient, dst_client: docker.DockerClient, tag: str) -> bool:
    """Copy image ``tag`` from one daemon to the other (``docker save | docker load``, streamed).

    Skipped (returns False) when the destination already has the same image id under ``tag``;
    save/load keeps the id, the tag and the labels (sim/image.py's content label included).
    """
    source = src_client.images.get(tag)
    try:
        if dst_client.images.get(tag).id == source.id:
            return False
    except ImageNotFound:
        pass
    for message in dst_client.api.load_image(src_client.api.get_image(tag)):
        if isinstance(message, dict) and message.get("error"):
            raise RigError(f"loading {tag} into the second daemon: {message['error']}")
    if dst_client.images.get(tag).id != source.id:
        raise RigError(f"{tag}: the copy's image id differs from the source's")
    return True


# --- test containers (tests/integration/conftest.py's rule) ----------------------------------


def test_containers(client: docker.DockerClient) -> list:
    """Containers of test targets (``test-...``) and those tests started by hand (TEST_LABEL)."""
    found = client.containers.list(all=True, filters=label_filters(), ignore_removed=True)
    by_hand = client.containers.list(all=True, filters={"label": TEST_LABEL}, ignore_removed=True)
    targets = [c for c in found if c.labels.get(LABEL_TARGET, "").startswith(TEST_TARGET_PREFIX)]
    return targets + [c for c in by_hand if c.id not in {t.id for t in targets}]


test_containers.__test__ = False  # not a pytest test, whatever the importing module is


def remove_session_containers(client: docker.DockerClient, session: str = SESSION) -> list[str]:
    """Remove the test containers of ``session``; the names removed."""
    removed = []
    for container in test_containers(client):
        if session_of(container) == session:
            container.remove(force=True)
            removed.append(container.name)
    return removed


def remove_stale_containers(client: docker.DockerClient, session: str = SESSION) -> list[str]:
    """Remove the test containers of sessions no longer alive (never a running session's)."""
    removed = []
    for container in test_containers(client):
        owner = session_of(container)
        if owner != session and not session_alive(owner):
            container.remove(force=True)
            removed.append(container.name)
    return removed


# --- PostgreSQL data directories of test sessions ------------------------------------------

#: This session's PostgreSQL data directories: /tmp/spark-vllm-pg-<pid>-XXXX (not tmp_path_factory:
#: pytest's tmp directories are 0700, and the postgres OS user must enter them).
PG_DIR_PREFIX = f"spark-vllm-pg-{SESSION}-"


def pg_data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix=PG_DIR_PREFIX))


def remove_stale_clusters() -> list[Path]:
    """Stop and delete the clusters of killed sessions (their pid no longer runs)."""
    removed = []
    for data_dir in Path(tempfile.gettempdir()).glob("spark-vllm-pg-*-*"):
        owner = data_dir.name.split("-")[3]
        if not owner.isdigit() or owner == SESSION or session_alive(owner):
            continue
        try:
            pg_cluster.stop(data_dir)
        except (pg_cluster.PostgresError, subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(data_dir, ignore_errors=True)
        removed.append(data_dir)
    return removed


# --- start-up shared by tests/fleet/conftest.py and bench/fleet.py ----------------------------

PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_TIMEOUT_S = 90.0
#: Settings of the calling process that would point the server elsewhere: not passed to it.
_SERVER_ENV_DROP = ("PREFECT_API_", "PREFECT_SERVER_", "PREFECT_PROFILE", "PREFECT_HOME", "PREFECT_UI_")


def start_postgres() -> tuple[Path, str]:
    """A private PostgreSQL cluster in a fresh /tmp directory (`pg_data_dir`) on a free loopback
    port, once it answers; returns ``(data_dir, url)``, the url being the value of
    PREFECT_SERVER_DATABASE_CONNECTION_URL. Clusters of killed sessions are removed first.
    `stop_postgres(data_dir)` stops and deletes it (done here already when the start fails)."""
    from sim.ports import free_port

    remove_stale_clusters()
    data_dir = pg_data_dir()
    try:
        url = pg_cluster.start(data_dir, free_port())
    except BaseException:
        stop_postgres(data_dir)
        raise
    return data_dir, url


def stop_postgres(data_dir: Path) -> None:
    try:
        pg_cluster.stop(data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def die_with_parent() -> None:
    """In a child (``preexec_fn``): SIGTERM when the parent dies (even by SIGKILL), so no server outlives it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class PrefectServer:
    """A `prefect server start` subprocess on PostgreSQL (`start_prefect_server`)."""

    process: subprocess.Popen
    api_url: str
    home: Path

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_prefect_server(postgres_url: str, home: Path, *, timeout_s: float = SERVER_START_TIMEOUT_S) -> PrefectServer:
    """`prefect server start` on ``postgres_url`` (its own PREFECT_HOME ``home``, a free port on
    127.0.0.1, UI and analytics off, none of the caller's PREFECT_API_/SERVER_ settings), dying with
    the caller (PDEATHSIG); returns once ``/api/health`` answers. Raises `RigError` with its log's
    tail (having stopped it) when it exits or does not answer within ``timeout_s``."""
    import httpx

    from sim.ports import free_port

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVER_ENV_DROP)}
    env.update(
        {
            "PREFECT_HOME": str(home),
            pg_cluster.URL_ENV: postgres_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
    )
    with open(home / "server.log", "wb") as out:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    server = PrefectServer(process, f"http://127.0.0.1:{port}/api", home)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RigError(
                    f"prefect server exited ({process.returncode}) before answering; its log:\n{server.log_tail()}"
                )
            try:
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RigError(f"prefect server did not answer /api/health in {timeout_s:.0f} s:\n{server.log_tail()}")
            time.sleep(0.25)
    except BaseException:
        stop_prefect_server(process)
        raise


def stop_prefect_server(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


async def public_tables(url: str) -> set[str]:
    """The tables of the ``public`` schema of the database at ``url`` (a PostgreSQL URL)."""
    import asyncpg

    connection = await asyncpg.connect(pg_cluster.asyncpg_dsn(url), timeout=10)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


def prepare_second_docker(first: docker.DockerClient, root: Path | str = DEFAULT_ROOT) -> str:
    """Start (or reuse) the second daemon, load the sim image into it from ``first`` and remove
    the test containers of dead sessions from it; its base URL."""
    from sim.image import ensure_sim_image

    url = start_second_dockerd(root)
    second = docker.DockerClient(base_url=url)
    try:
        copy_image(first, second, ensure_sim_image(first))
        remove_stale_containers(second)
    finally:
        second.close()
    return url
