"""A private PostgreSQL cluster for the fleet tests and bench/fleet.py, from Debian's binaries.

Test equipment, not the operator's path: an operator runs deployments/postgres-compose.yaml (the
official image; docs/fleet.md). The test rig reaches no registry, so it runs the binaries of Debian's
``postgresql`` package (deployments/bootstrap.sh installs them) directly: ``initdb``, ``pg_ctl
start`` on 127.0.0.1 and a port of the caller's, a login role and its database, ``pg_ctl stop``.

initdb and postgres refuse to run as root: as root every binary runs as the ``postgres`` OS user
(``runuser``), so the data directory's parents must be searchable by it (pytest's tmp directories,
0700, are not; a ``tempfile.mkdtemp()`` under /tmp made 0711 is). The password (hex, so the URL
needs no quoting) reaches psql on stdin, never a command line.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

#: Debian's PostgreSQL binaries: /usr/lib/postgresql/<major>/bin.
PG_LIB = Path("/usr/lib/postgresql")
#: The environment variable the Prefect server reads its database from.
URL_ENV = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


class PostgresError(RuntimeError):
    """A PostgreSQL binary failed (its output and the server log's tail are in the message)."""


def bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has initdb."""
    found = sorted(
        (int(d.name), d / "bin") for d in PG_LIB.glob("*") if d.name.isdigit() and (d / "bin/initdb").exists()
    )
    if not found:
        raise PostgresError(f"no PostgreSQL binaries under {PG_LIB}/<version>/bin: run deployments/bootstrap.sh")
    return found[-1][1]


def _run(data_dir: Path, *argv: str, stdin: str | None = None) -> None:
    """A binary of `bin_dir`, as the postgres OS user when we are root."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        [*prefix, str(bin_dir() / argv[0]), *argv[1:]],
        input=stdin, capture_output=True, text=True, cwd=data_dir, env=env, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        log = (
            (data_dir / "postgres.log").read_text(errors="replace")[-2000:]
            if (data_dir / "postgres.log").exists()
            else ""
        )
        raise PostgresError(f"{argv[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}\n{log}")


def start(data_dir: Path, port: int) -> str:
    """Create and start a cluster in ``data_dir`` on 127.0.0.1:``port``; the URL Prefect's server takes."""
    pgdata, run = data_dir / "pgdata", data_dir / "run"
    data_dir.chmod(0o711)
    for path in (pgdata, run):
        path.mkdir(mode=0o700)
    (data_dir / "postgres.log").touch()
    if os.geteuid() == 0:
        for path in (pgdata, run, data_dir / "postgres.log"):
            subprocess.run(["chown", "postgres:postgres", str(path)], check=True)
    _run(data_dir, "initdb", "-D", str(pgdata), "-U", "postgres", "--auth-local=peer", "--auth-host=scram-sha-256")
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={run}"
    _run(data_dir, "pg_ctl", "start", "-w", "-D", str(pgdata), "-l", str(data_dir / "postgres.log"), "-o", options)
    password = secrets.token_hex(16)
    script = f"CREATE ROLE prefect LOGIN PASSWORD '{password}';\nCREATE DATABASE prefect OWNER prefect;\n"
    psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(run), "-p", str(port), "-U", "postgres"]
    _run(data_dir, *psql, "-d", "postgres", stdin=script)
    return f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{port}/prefect"


def stop(data_dir: Path) -> None:
    """Stop the cluster in ``data_dir`` (fast: open sessions are ended); nothing when none runs."""
    if (data_dir / "pgdata" / "postmaster.pid").exists():
        _run(data_dir, "pg_ctl", "stop", "-w", "-m", "fast", "-D", str(data_dir / "pgdata"))


def asyncpg_dsn(url: str) -> str:
    """The same database as a DSN for ``asyncpg.connect`` (no SQLAlchemy dialect suffix)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
