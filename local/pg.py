"""PostgreSQL 16 from the pgserver wheel's binaries, on TCP 127.0.0.1 with password auth.

pgserver's own API only offers a Unix socket, so we drive its bundled initdb/pg_ctl
directly. PostgreSQL refuses to run as root; as root, like pgserver, we run it as the
system user ``pgserver`` and hand it the data directory.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import psycopg

from local.config import HOST, PG_PASSWORD, PG_USER, STATE_DIR, Ports
from local.proc import StackError, alive, log_file

with warnings.catch_warnings():
    # Importing pgserver makes platformdirs warn about a runtime dir that we never use.
    warnings.simplefilter("ignore")
    import pgserver
    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

PG_BIN = Path(pgserver.__file__).parent / "pginstall" / "bin"
DATA_DIR = STATE_DIR / "pg"
OS_USER = "pgserver" if os.geteuid() == 0 else None

# Appended to postgresql.conf: fewer forced checkpoints while loading 1 GB+ sample data.
_CONF = """
# --- local stack ---
max_wal_size = '2GB'
"""


def pg_bin(tool: str) -> Path:
    """Path of a bundled client or server tool, e.g. ``pg_bin("pg_dump")``."""
    return PG_BIN / tool


def conninfo(dbname: str = "postgres", port: int | None = None) -> str:
    """libpq connection string for the local server as superuser."""
    port = port or Ports.from_env().pg
    return f"host={HOST} port={port} user={PG_USER} password={PG_PASSWORD} dbname={dbname}"


def connect(dbname: str = "postgres", *, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(conninfo(dbname), autocommit=autocommit, connect_timeout=5)


def _run(argv: list[str], log: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a server tool as the data directory's owner.

    Output goes to a file, never a pipe: the postmaster forked by ``pg_ctl start``
    inherits the descriptors and would keep a pipe open forever.
    """
    with (log or Path(os.devnull)).open("ab") as out:
        return subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, user=OS_USER, cwd=DATA_DIR, check=False
        )


def _grant_to_os_user() -> None:
    """Let the unprivileged server user reach the binaries, data and log (as pgserver does)."""
    if OS_USER is None:
        return
    entry = ensure_user_exists(OS_USER)
    ensure_prefix_permissions(DATA_DIR)
    ensure_prefix_permissions(PG_BIN)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(PG_BIN, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(PG_BIN.parent / "lib", readable)
    log = log_file("pg")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    for path in (DATA_DIR, log):
        os.chown(path, entry.pw_uid, entry.pw_gid)


def init_cluster() -> None:
    """initdb once: superuser ``postgres`` with a password; trust only on the Unix socket."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _grant_to_os_user()
    if (DATA_DIR / "PG_VERSION").exists():
        return
    with tempfile.NamedTemporaryFile("w", prefix="pgpw", delete=False) as pwfile:
        pwfile.write(PG_PASSWORD + "\n")
    try:
        if OS_USER is not None:
            entry = ensure_user_exists(OS_USER)
            os.chown(pwfile.name, entry.pw_uid, entry.pw_gid)
        argv = [str(pg_bin("initdb")), "-D", str(DATA_DIR), "-U", PG_USER]
        argv += [f"--pwfile={pwfile.name}", "--auth-local=trust", "--auth-host=scram-sha-256"]
        argv += ["--encoding=UTF8", "--locale=C"]
        result = _run(argv, log_file("pg"))
    finally:
        Path(pwfile.name).unlink()
    if result.returncode != 0:
        raise StackError(f"initdb failed (exit {result.returncode}); see {log_file('pg')}")
    with (DATA_DIR / "postgresql.conf").open("a") as conf:
        conf.write(_CONF)


def postmaster_pid() -> int | None:
    """PID recorded by the running server itself, or None if no server holds the data dir."""
    try:
        pid = int((DATA_DIR / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def start(port: int) -> int:
    """Start the server detached on ``HOST:port`` (socket in the data dir); returns its PID."""
    options = f"-h {HOST} -p {port} -k {DATA_DIR}"
    log = log_file("pg")
    argv = [str(pg_bin("pg_ctl")), "-D", str(DATA_DIR), "-l", str(log), "-o", options]
    result = _run([*argv, "-w", "-t", "60", "start"], log)
    pid = postmaster_pid()
    if result.returncode != 0 or pid is None:
        raise StackError(f"pg_ctl start failed (exit {result.returncode}); see {log}")
    return pid


def stop() -> None:
    """Fast shutdown: roll back open transactions, then a clean checkpoint."""
    argv = [str(pg_bin("pg_ctl")), "-D", str(DATA_DIR), "-m", "fast", "-w", "-t", "60", "stop"]
    _run(argv, log_file("pg"))
    if postmaster_pid() is not None:
        raise StackError(f"pg_ctl stop did not stop the server; see {log_file('pg')}")


def probe(port: int) -> None:
    """A real login over TCP with the password, then a query; raises until ready."""
    with psycopg.connect(conninfo("postgres", port), connect_timeout=3) as conn:
        conn.execute("SELECT 1").fetchone()
