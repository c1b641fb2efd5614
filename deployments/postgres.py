"""PostgreSQL for a fleet's Prefect server: the connection URL, and a private cluster on loopback.

Why PostgreSQL: Prefect's server keeps its state in SQLite by default, which Prefect documents
for one machine. A fleet has several workers (one per DGX Spark) and their flow runs writing
states, logs, events and variables to the one server at once; SQLite takes one writer at a time,
and under that load the server answers ``sqlite3.OperationalError: database is locked``. Prefect
supports PostgreSQL for that case: the server reads its database from
``PREFECT_SERVER_DATABASE_CONNECTION_URL`` (``postgresql+asyncpg://user:password@host:port/db``),
creates the tables on its first start (its migrations) and needs nothing else.

Two ways to get one:

- ``deployments/postgres-compose.yaml``: the official ``postgres:16`` image, for an operator whose
  machine can pull it (documented there; not used on the test rig, which reaches no registry);
- this module: a private cluster made with Debian's ``postgresql`` package binaries
  (``/usr/lib/postgresql/<version>/bin``; deployments/bootstrap.sh installs the package), in a
  directory the caller chooses, listening on 127.0.0.1 only, on the caller's port. The test rig
  (tests/fleet) and a single-box operator use it. It never uses or touches the distribution's own
  cluster (``pg_lsclusters``: ``15/main`` on 5432).

    python -m deployments.postgres start  --data-dir /var/lib/spark-vllm-pg --port 5433
    python -m deployments.postgres status --data-dir /var/lib/spark-vllm-pg
    python -m deployments.postgres stop   --data-dir /var/lib/spark-vllm-pg

``start`` prints one line for the shell, the only output that carries the password:
``export "$(python -m deployments.postgres start --data-dir D --port P)"``. Everything else it
logs (stderr) shows the URL with the password replaced by ``***``.

Layout of the data directory (``start`` creates what is missing; a second ``start`` on a running
cluster reuses it, with the same password)::

    D/                   the caller's; made searchable (0711) so the postgres user can reach pgdata
    D/pgdata/            the cluster (initdb), owned by the postgres OS user, 0700
    D/run/               its unix socket (used only to create the role and the database)
    D/postgres.log       the server's log
    D/credentials.json   user, database, password, port (0600, the caller's): how a restart knows
                         the password

initdb and the server refuse to run as root: as root, every PostgreSQL binary runs as the
``postgres`` OS user (``runuser -u postgres --``, which the package creates); as anyone else, as
that user. So every parent of ``D`` must be searchable by ``postgres``: pytest's tmp directories
(0700) are not, a ``tempfile.mkdtemp()`` under /tmp made 0711 is.

Local connections (the socket) use peer authentication (only the cluster's OS user, to create
the role and the database); TCP connections (Prefect's) use scram-sha-256 with the password. The
password goes to psql on stdin, never on a command line (``ps``) or in a log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

log = logging.getLogger(__name__)

#: Debian's PostgreSQL binaries live in /usr/lib/postgresql/<major>/bin.
PG_LIB = Path("/usr/lib/postgresql")
#: The OS user the package creates; the cluster runs as it when we are root.
PG_OS_USER = "postgres"
DEFAULT_USER = "prefect"
DEFAULT_DB = "prefect"
DEFAULT_HOST = "127.0.0.1"
#: Not 5432: that is the distribution's own cluster's port (which this module never uses).
DEFAULT_PORT = 5433
#: The environment variable the Prefect server reads its database from.
URL_ENV = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CONF_INCLUDE = "include_if_exists = 'spark_vllm.conf'"


class PostgresError(RuntimeError):
    """The cluster could not be made, started or stopped (the log's tail is in the message)."""


# --- URLs ------------------------------------------------------------------------------------


def connection_url(
    user: str, password: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, db: str = DEFAULT_DB
) -> str:
    """The value of ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` for this database.

    ``postgresql+asyncpg://`` because the Prefect server talks to PostgreSQL through SQLAlchemy's
    asyncpg dialect (asyncpg comes with Prefect). User and password are percent-encoded, so any
    password works in the URL.
    """
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql+asyncpg://{credentials}@{host}:{int(port)}/{quote(db, safe='')}"


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (what logs and status lines show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def asyncpg_dsn(url: str) -> str:
    """The same database as a DSN for ``asyncpg.connect`` (no SQLAlchemy dialect suffix)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


# --- the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """A private cluster: where it is and how Prefect reaches it (``url`` carries the password)."""

    data_dir: Path
    port: int
    user: str
    db: str
    password: str
    host: str = DEFAULT_HOST
    reused: bool = False  # it was already running

    @property
    def url(self) -> str:
        return connection_url(self.user, self.password, self.host, self.port, self.db)

    def __repr__(self) -> str:  # never the password, whoever prints the object
        return f"Cluster(data_dir={str(self.data_dir)!r}, url={redact(self.url)!r}, reused={self.reused})"

    __str__ = __repr__


def bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has initdb (Debian's layout)."""
    candidates = []
    if PG_LIB.is_dir():
        for entry in PG_LIB.iterdir():
            if entry.name.isdigit() and (entry / "bin" / "initdb").exists():
                candidates.append((int(entry.name), entry / "bin"))
    if not candidates:
        raise PostgresError(
            f"no PostgreSQL binaries under {PG_LIB}/<version>/bin: install Debian's `postgresql` "
            "package (deployments/bootstrap.sh does)"
        )
    return max(candidates)[1]


def _paths(data_dir: Path) -> dict[str, Path]:
    data_dir = Path(data_dir).absolute()
    return {
        "root": data_dir,
        "pgdata": data_dir / "pgdata",
        "run": data_dir / "run",
        "log": data_dir / "postgres.log",
        "credentials": data_dir / "credentials.json",
    }


def _as_cluster_user() -> list[str]:
    """The prefix that runs a PostgreSQL binary as the cluster's owner (nothing unless root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", PG_OS_USER, "--"]
    raise PostgresError("running as root needs `runuser` (util-linux) to run PostgreSQL as the postgres user")


def _owner_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise PostgresError(f"no `{PG_OS_USER}` OS user: install Debian's `postgresql` package") from None
    return entry.pw_uid, entry.pw_gid


def _run(
    argv: list[str], paths: dict[str, Path], *, stdin: str | None = None, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary as the cluster's owner, from a directory it can enter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGHOST/PGPASSWORD
    env["LC_ALL"] = env.get("LC_ALL") or "C.UTF-8"
    done = subprocess.run(
        [*_as_cluster_user(), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=paths["root"],
        env=env,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise PostgresError(
            f"{Path(argv[0]).name} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}{_log_tail(paths)}"
        )
    return done


def _log_tail(paths: dict[str, Path], chars: int = 2000) -> str:
    try:
        text = paths["log"].read_text(errors="replace")[-chars:]
    except OSError:
        return ""
    return f"\n--- {paths['log']} (tail) ---\n{text}" if text else ""


def _check_reachable(paths: dict[str, Path]) -> None:
    """The postgres OS user must be able to enter the data directory (see the module docstring)."""
    if os.geteuid() != 0:
        return
    done = subprocess.run([*_as_cluster_user(), "test", "-x", str(paths["root"])], cwd="/", capture_output=True)
    if done.returncode != 0:
        raise PostgresError(
            f"the {PG_OS_USER} OS user cannot enter {paths['root']}: a parent directory is not searchable "
            "(pytest's tmp directories are 0700); choose a directory such as /var/lib/spark-vllm-pg "
            "or a tempfile.mkdtemp() under /tmp"
        )


def _read_credentials(paths: dict[str, Path]) -> dict | None:
    try:
        return json.loads(paths["credentials"].read_text())
    except (OSError, ValueError):
        return None


def _write_credentials(paths: dict[str, Path], credentials: dict) -> None:
    target = paths["credentials"]
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(credentials, out)
    os.replace(tmp, target)


def running_port(data_dir: Path) -> int | None:
    """The port of the cluster running in ``data_dir`` (None when it is not running).

    ``pg_ctl status`` says whether the postmaster of ``pgdata/postmaster.pid`` is alive; the
    file's fourth line is the port it listens on.
    """
    paths = _paths(data_dir)
    if not (paths["pgdata"] / "PG_VERSION").exists():
        return None
    if _run([str(bin_dir() / "pg_ctl"), "status", "-D", str(paths["pgdata"])], paths, check=False).returncode != 0:
        return None
    try:
        lines = (paths["pgdata"] / "postmaster.pid").read_text().splitlines()
        return int(lines[3])
    except (OSError, IndexError, ValueError):
        return None


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _initdb(paths: dict[str, Path], bins: Path) -> None:
    log.info("creating a PostgreSQL cluster in %s (%s)", paths["pgdata"], bins.parent.name)
    paths["pgdata"].mkdir(mode=0o700, exist_ok=True)
    _chown(paths["pgdata"])
    _run(
        [
            str(bins / "initdb"),
            "-D",
            str(paths["pgdata"]),
            "-U",
            PG_OS_USER,
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
        ],
        paths,
    )
    with open(paths["pgdata"] / "postgresql.conf", "a") as conf:
        conf.write(f"\n# spark-vllm (deployments/postgres.py): address, port and socket\n{_CONF_INCLUDE}\n")


def _chown(path: Path) -> None:
    ids = _owner_ids()
    if ids is not None:
        os.chown(path, *ids)


def _write_server_conf(paths: dict[str, Path], host: str, port: int) -> None:
    """Rewritten at every start: loopback only, the caller's port, the socket in D/run.

    max_connections: the Prefect server keeps a pool (5 + 10 overflow by default) per process;
    a fleet's server, its services and a bench fit well in 100.
    """
    conf = paths["pgdata"] / "spark_vllm.conf"
    conf.write_text(
        f"listen_addresses = '{host}'\n"
        f"port = {int(port)}\n"
        f"unix_socket_directories = '{paths['run']}'\n"
        "max_connections = 100\n"
    )
    _chown(conf)


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ensure_role_and_db(paths: dict[str, Path], bins: Path, port: int, user: str, password: str, db: str) -> None:
    """Create (or re-password) the login role and create its database: idempotent."""
    psql = [
        str(bins / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(paths["run"]),
        "-p",
        str(port),
        "-U",
        PG_OS_USER,
        "-d",
        "postgres",
    ]
    # CREATE/ALTER ROLE in one DO block (the password on stdin, never argv); CREATE DATABASE cannot
    # run in a block, so \gexec runs it only when the database is missing.
    script = (
        "SET log_statement = 'none';\nSET log_min_error_statement = 'panic';\n"  # no password in the log
        "DO $spark$ BEGIN\n"
        f"  IF EXISTS (SELECT FROM pg_roles WHERE rolname = {_sql_literal(user)}) THEN\n"
        f"    ALTER ROLE {user} WITH LOGIN PASSWORD {_sql_literal(password)};\n"
        "  ELSE\n"
        f"    CREATE ROLE {user} WITH LOGIN PASSWORD {_sql_literal(password)};\n"
        "  END IF;\n"
        "END $spark$;\n"
        f"SELECT 'CREATE DATABASE {db} OWNER {user}' "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {_sql_literal(db)})\\gexec\n"
    )
    if "$spark$" in password:
        raise PostgresError("the password must not contain '$spark$'")
    _run(psql, paths, stdin=script)


def start(
    data_dir: Path | str,
    port: int = DEFAULT_PORT,
    *,
    user: str = DEFAULT_USER,
    db: str = DEFAULT_DB,
    password: str | None = None,
    host: str = DEFAULT_HOST,
    timeout_s: float = START_TIMEOUT_S,
) -> Cluster:
    """Start (creating it first if needed) the private cluster in ``data_dir``; return how to reach it.

    Idempotent: a cluster already running there is reused (it must be on ``port``); a stopped one
    is started again with its data and password. The password is generated (and kept in
    ``credentials.json``) unless given; a given one replaces the role's.
    """
    for name in (user, db):
        if not _IDENTIFIER.match(name):
            raise PostgresError(f"{name!r}: user and database names must be lower-case identifiers")
    paths = _paths(Path(data_dir))
    bins = bin_dir()
    paths["root"].mkdir(parents=True, exist_ok=True)
    paths["root"].chmod(paths["root"].stat().st_mode | 0o711)
    _check_reachable(paths)

    stored = _read_credentials(paths) or {}
    if password is None:
        password = stored.get("password") or secrets.token_urlsafe(24)
    credentials = {"user": user, "db": db, "host": host, "port": int(port), "password": password}

    current = running_port(paths["root"])
    reused = current is not None
    if reused:
        if current != int(port):
            raise PostgresError(
                f"the cluster in {paths['root']} already runs on port {current}, not {port}: "
                f"stop it first (python -m deployments.postgres stop --data-dir {paths['root']})"
            )
        log.info("PostgreSQL already running in %s on %s:%s: reusing it", paths["pgdata"], host, current)
    else:
        if _port_taken(host, int(port)):
            raise PostgresError(f"{host}:{port} is already in use by another process: choose another --port")
        if not (paths["pgdata"] / "PG_VERSION").exists():
            _initdb(paths, bins)
        paths["run"].mkdir(mode=0o700, exist_ok=True)
        _chown(paths["run"])
        paths["log"].touch(exist_ok=True)
        _chown(paths["log"])
        _write_server_conf(paths, host, int(port))
        log.info("starting PostgreSQL in %s on %s:%s (log: %s)", paths["pgdata"], host, port, paths["log"])
        _run(
            [
                str(bins / "pg_ctl"),
                "start",
                "-D",
                str(paths["pgdata"]),
                "-l",
                str(paths["log"]),
                "-w",
                "-t",
                str(int(timeout_s)),
            ],
            paths,
            timeout=timeout_s + 10,
        )
    _ensure_role_and_db(paths, bins, int(port), user, password, db)
    _write_credentials(paths, credentials)
    cluster = Cluster(
        data_dir=paths["root"], port=int(port), user=user, db=db, password=password, host=host, reused=reused
    )
    log.info("PostgreSQL ready: %s", redact(cluster.url))
    return cluster


def stop(data_dir: Path | str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the cluster in ``data_dir`` (fast shutdown: open sessions are ended). False if not running."""
    paths = _paths(Path(data_dir))
    if running_port(paths["root"]) is None:
        log.info("PostgreSQL in %s is not running", paths["pgdata"])
        return False
    log.info("stopping PostgreSQL in %s", paths["pgdata"])
    _run(
        [str(bin_dir() / "pg_ctl"), "stop", "-D", str(paths["pgdata"]), "-m", "fast", "-w", "-t", str(int(timeout_s))],
        paths,
        timeout=timeout_s + 10,
    )
    return True


def status(data_dir: Path | str) -> Cluster | None:
    """The running cluster in ``data_dir`` (None when it is not running)."""
    paths = _paths(Path(data_dir))
    port = running_port(paths["root"])
    stored = _read_credentials(paths)
    if port is None or stored is None:
        return None
    return Cluster(
        data_dir=paths["root"],
        port=port,
        user=stored["user"],
        db=stored["db"],
        password=stored["password"],
        host=stored.get("host", DEFAULT_HOST),
        reused=True,
    )


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    """Wait until the database accepts a login with this URL (asyncpg, as the Prefect server will)."""
    import asyncio

    import asyncpg

    async def attempt() -> None:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
        await connection.close()

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            asyncio.run(attempt())
            return
        except (TimeoutError, OSError, asyncpg.PostgresError) as failure:
            if time.monotonic() > deadline:
                raise PostgresError(f"{redact(url)} does not accept logins: {failure}") from None
            time.sleep(0.3)


# --- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.postgres", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "status"):
        sub = commands.add_parser(name)
        sub.add_argument("--data-dir", type=Path, required=True)
        if name == "start":
            sub.add_argument("--port", type=int, default=DEFAULT_PORT)
            sub.add_argument("--user", default=DEFAULT_USER)
            sub.add_argument("--db", default=DEFAULT_DB)
            sub.add_argument(
                "--password-env",
                metavar="VAR",
                help="take the password from this environment variable (default: generated, kept)",
            )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[postgres] %(message)s", stream=sys.stderr)
    try:
        if args.command == "start":
            password = os.environ.get(args.password_env) if args.password_env else None
            if args.password_env and not password:
                print(f"[postgres] ${args.password_env} is empty or unset", file=sys.stderr)
                return 2
            cluster = start(args.data_dir, args.port, user=args.user, db=args.db, password=password)
            print(f"{URL_ENV}={cluster.url}")  # the one line with the password: for `export "$(...)"`
            return 0
        if args.command == "stop":
            stop(args.data_dir)
            return 0
        cluster = status(args.data_dir)
        print(f"running: {redact(cluster.url)}" if cluster else "not running")
        return 0 if cluster else 1
    except PostgresError as failure:
        print(f"[postgres] {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
