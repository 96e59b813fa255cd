"""PostgreSQL 16 from the pgserver wheel's binaries, on TCP 127.0.0.1 with password auth.

The stack runs two separate servers from the same binaries, each with its own data
directory, port, PID file and log (see ``Server``):

* ``platform`` (stack part ``pg``, ``$BACKUP_PG_PORT``, data ``pg/``): the production
  stand-in that backups dump from; it holds the sample databases.
* ``sandbox`` (stack part ``pg-sandbox``, ``$BACKUP_PG_SANDBOX_PORT``, data ``pg-sandbox/``):
  where restore tests restore to, so they never touch the platform server. It holds
  nothing but the ``postgres`` database.
* ``standby`` (stack part ``pg-standby``, ``$BACKUP_PG_STANDBY_PORT``, data ``pg-standby/``):
  the platform server's physical streaming replica (the continuous tier), made with
  ``pg_basebackup -R`` from a replication slot. The platform server archives every WAL
  segment to both S3 regions (see ``local.wal``).
* ``tenants`` (stack part ``pg-tenants``, ``$BACKUP_PG_TENANTS_PORT``) and its standby
  ``tenants_standby`` (``pg-tenants-standby``, ``$BACKUP_PG_TENANTS_STANDBY_PORT``): the
  estate's second production server (``local.estate``), started only when the estate is asked
  for. It archives its WAL as policy server ``platform_tenants``, as the platform one does.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
OS_USER = "pgserver" if os.geteuid() == 0 else None

ServerName = Literal["platform", "sandbox", "standby", "tenants", "tenants_standby"]

#: The primaries, by the policy server name their WAL is archived under (``wal/<name>/``).
ARCHIVES_AS: dict[str, str] = {"platform": "platform_primary", "tenants": "platform_tenants"}

# Appended to postgresql.conf: fewer forced checkpoints while loading 1 GB+ sample data.
_CONF = """
# --- local stack ---
max_wal_size = '2GB'
"""


def pg_bin(tool: str) -> Path:
    """Path of a bundled client or server tool, e.g. ``pg_bin("pg_dump")``."""
    return PG_BIN / tool


@dataclass(frozen=True)
class Server:
    """One PostgreSQL instance of the stack.

    ``part`` is its name in ``local.stack`` and names its PID and log files; the port is
    the ``Ports`` field ``port_field``, read from the environment at call time.
    """

    name: ServerName
    part: str
    data_dir: Path
    port_field: str

    @property
    def port(self) -> int:
        return getattr(Ports.from_env(), self.port_field)

    @property
    def log(self) -> Path:
        return log_file(self.part)

    def conninfo(self, dbname: str = "postgres", port: int | None = None) -> str:
        """libpq connection string for this server as superuser."""
        port = port or self.port
        return f"host={HOST} port={port} user={PG_USER} password={PG_PASSWORD} dbname={dbname}"

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(dbname), autocommit=autocommit, connect_timeout=5)

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        """Run a server tool as the data directory's owner, output appended to the log.

        Output goes to a file, never a pipe: the postmaster forked by ``pg_ctl start``
        inherits the descriptors and would keep a pipe open forever.
        """
        with self.log.open("ab") as out:
            return subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=OS_USER,
                cwd=self.data_dir,
                check=False,
            )

    def _grant_to_os_user(self) -> None:
        """Let the unprivileged server user reach the binaries, data and log (as pgserver does)."""
        if OS_USER is None:
            return
        entry = ensure_user_exists(OS_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(PG_BIN)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(PG_BIN, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(PG_BIN.parent / "lib", readable)
        log = self.log
        log.touch()
        for path in (self.data_dir, log):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init_cluster(self) -> None:
        """initdb once: superuser ``postgres`` with a password; trust only on the Unix socket."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._grant_to_os_user()
        if (self.data_dir / "PG_VERSION").exists():
            return
        with tempfile.NamedTemporaryFile("w", prefix="pgpw", delete=False) as pwfile:
            pwfile.write(PG_PASSWORD + "\n")
        try:
            if OS_USER is not None:
                entry = ensure_user_exists(OS_USER)
                os.chown(pwfile.name, entry.pw_uid, entry.pw_gid)
            argv = [str(pg_bin("initdb")), "-D", str(self.data_dir), "-U", PG_USER]
            argv += [f"--pwfile={pwfile.name}", "--auth-local=trust", "--auth-host=scram-sha-256"]
            argv += ["--encoding=UTF8", "--locale=C"]
            result = self._run(argv)
        finally:
            Path(pwfile.name).unlink()
        if result.returncode != 0:
            raise StackError(
                f"{self.part}: initdb failed (exit {result.returncode}); see {self.log}"
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(_CONF)

    def postmaster_pid(self) -> int | None:
        """PID recorded by the running server itself, or None if no server holds the data dir."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def _write_role_conf(self) -> None:
        """A primary archives WAL and feeds its standby; settings rewritten each start."""
        archives_as = ARCHIVES_AS.get(self.name)
        if archives_as is None:
            return
        from local import wal

        included = self.data_dir / "backup_dr.conf"
        directory = wal.WAL_DIR if self.name == "platform" else STATE_DIR / f"wal-{self.name}"
        included.write_text(wal.primary_conf(archives_as, OS_USER, directory))
        conf = self.data_dir / "postgresql.conf"
        line = "include_if_exists = 'backup_dr.conf'\n"
        if line not in conf.read_text():
            with conf.open("a") as out:
                out.write(line)

    def start(self, port: int | None = None) -> int:
        """Start the server detached on ``HOST:port`` (socket in the data dir); returns its PID."""
        self._write_role_conf()
        options = f"-h {HOST} -p {port or self.port} -k {self.data_dir}"
        argv = [str(pg_bin("pg_ctl")), "-D", str(self.data_dir), "-l", str(self.log)]
        result = self._run([*argv, "-o", options, "-w", "-t", "60", "start"])
        pid = self.postmaster_pid()
        if result.returncode != 0 or pid is None:
            raise StackError(
                f"{self.part}: pg_ctl start failed (exit {result.returncode}); see {self.log}"
            )
        return pid

    def stop(self) -> None:
        """Fast shutdown: roll back open transactions, then a clean checkpoint."""
        argv = [str(pg_bin("pg_ctl")), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60"]
        self._run([*argv, "stop"])
        if self.postmaster_pid() is not None:
            raise StackError(f"{self.part}: pg_ctl stop did not stop the server; see {self.log}")

    def probe(self, port: int | None = None) -> None:
        """A real login over TCP with the password, then a query; raises until ready."""
        with psycopg.connect(self.conninfo("postgres", port), connect_timeout=3) as conn:
            conn.execute("SELECT 1").fetchone()


@dataclass(frozen=True)
class StandbyServer(Server):
    """A streaming replica of ``primary``: cloned with pg_basebackup instead of initdb."""

    primary: Server | None = None
    slot: str = "backup_dr_standby"

    def init_cluster(self) -> None:
        """Clone the running primary once (``-R`` writes primary_conninfo and the slot)."""
        assert self.primary is not None
        if (self.data_dir / "PG_VERSION").exists():
            self._grant_to_os_user()
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # PostgreSQL refuses a data directory others can read
        self._grant_to_os_user()
        with self.primary.connect() as conn:
            # A slot left by an earlier standby would pin WAL from its old position forever.
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (self.slot,),
            )
        argv = [str(pg_bin("pg_basebackup")), "-D", str(self.data_dir), "-R", "-X", "stream"]
        argv += ["-S", self.slot, "--create-slot", "-h", HOST, "-p", str(self.primary.port)]
        argv += ["-U", PG_USER, "-c", "fast", "-d", "application_name=backup_dr_standby"]
        with self.log.open("ab") as out:
            result = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=OS_USER,
                cwd=self.data_dir,
                env={**os.environ, "PGPASSWORD": PG_PASSWORD},
                check=False,
            )
        if result.returncode != 0:
            raise StackError(
                f"{self.part}: pg_basebackup from {self.primary.part} failed "
                f"(exit {result.returncode}); see {self.log}"
            )


PLATFORM = Server("platform", "pg", STATE_DIR / "pg", "pg")
SANDBOX = Server("sandbox", "pg-sandbox", STATE_DIR / "pg-sandbox", "pg_sandbox")
STANDBY = StandbyServer("standby", "pg-standby", STATE_DIR / "pg-standby", "pg_standby", PLATFORM)
TENANTS = Server("tenants", "pg-tenants", STATE_DIR / "pg-tenants", "pg_tenants")
TENANTS_STANDBY = StandbyServer(
    "tenants_standby",
    "pg-tenants-standby",
    STATE_DIR / "pg-tenants-standby",
    "pg_tenants_standby",
    TENANTS,
)
SERVERS: dict[str, Server] = {
    s.name: s for s in (PLATFORM, SANDBOX, STANDBY, TENANTS, TENANTS_STANDBY)
}
DATA_DIR = PLATFORM.data_dir  # the platform server's, as before there were two


def get_server(server: ServerName | Server = "platform") -> Server:
    """The ``Server`` called ``server`` ("platform", "sandbox", "tenants", ...)."""
    if isinstance(server, Server):
        return server
    try:
        return SERVERS[server]
    except KeyError:
        raise ValueError(
            f"unknown PostgreSQL server {server!r}; choose from {', '.join(SERVERS)}"
        ) from None


def conninfo(
    dbname: str = "postgres", port: int | None = None, *, server: ServerName = "platform"
) -> str:
    """libpq connection string for a local server (the platform one by default) as superuser."""
    return get_server(server).conninfo(dbname, port)


def connect(
    dbname: str = "postgres", *, server: ServerName = "platform", autocommit: bool = True
) -> psycopg.Connection:
    """Superuser connection to a local server: ``server="platform"`` (default), ``"sandbox"``..."""
    return get_server(server).connect(dbname, autocommit=autocommit)
