"""A restore's PostgreSQL side: the sandbox guard, staging databases, pg_restore, and the
swap that puts a validated restore in place of a database (which is renamed aside, never
dropped). Used by the yearly drill (into a sandbox) and by disaster recovery."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.backup_dr.policy import Policy
from include.backup_dr.postgres import PgConnectionInfo, pg_tool, run_sql
from include.backup_dr.restore.errors import RestoreFailed, RestoreRefused, SwapFailed
from include.backup_dr.restore.validation import ValidationResult

if TYPE_CHECKING:
    from include.backup_dr.restore.select import Selection
    from include.backup_dr.stores import Stores

log = logging.getLogger(__name__)


def server_info(conn_id: str, database: str = "postgres") -> PgConnectionInfo:
    return PgConnectionInfo.from_airflow(conn_id, database)


def validate_restored(
    stores: Stores, selection: Selection, conn_id: str, database: str
) -> ValidationResult:
    """Run the manifest suite and the target's business-rule suite with Great Expectations
    on the restored `database` at `conn_id` (a sandbox, or dr_restore's staging database)."""
    from include.backup_dr.restore.validation import validate_database

    manifest = stores.by_region(selection.region).manifest(selection.backup)
    assert manifest is not None
    url = server_info(conn_id).sqlalchemy_url(database)
    return validate_database(url, selection.backup.target, manifest.tables())


def guard_sandbox(policy: Policy, sandbox_conn_id: str) -> PgConnectionInfo:
    """Refuse a sandbox that is, or points at, a production server; return it otherwise."""
    # A server's streaming standby is production too: it is the continuous tier's replica.
    production = [(server.name, server.conn_id) for server in policy.servers] + [
        (f"{server.name}'s standby", server.standby.conn_id)
        for server in policy.servers
        if server.standby is not None
    ]
    if sandbox_conn_id in {conn_id for _, conn_id in production}:
        raise RestoreRefused(
            f"refusing sandbox connection {sandbox_conn_id!r}: it is a production server's "
            "connection in the policy"
        )
    sandbox = server_info(sandbox_conn_id)
    for name, conn_id in production:
        source = server_info(conn_id)
        same_host = source.host == sandbox.host or bool(
            _addresses(source.host) & _addresses(sandbox.host)
        )
        if same_host and source.port == sandbox.port:
            raise RestoreRefused(
                f"refusing sandbox connection {sandbox_conn_id!r}: {sandbox.host}:{sandbox.port} "
                f"is production server {name} ({conn_id})"
            )
    return sandbox


def _addresses(host: str) -> set[str]:
    """Every address a host name stands for ('localhost' and '127.0.0.1' are one server)."""
    if host.startswith("/"):  # a Unix socket directory
        return {host}
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return {host}


_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _admin(info: PgConnectionInfo, sql: str) -> list[tuple]:
    connection = info.connect()
    connection.autocommit = True
    return run_sql(connection, sql)


def database_exists(server: PgConnectionInfo, name: str) -> bool:
    _check_name(name)
    return bool(_admin(server, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))


def database_is_empty(server: PgConnectionInfo, name: str) -> bool:
    """True when the database has no user tables (a fresh database is empty)."""
    inside = PgConnectionInfo(server.host, server.port, server.user, name, server.env)
    rows = _admin(
        inside,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
    )
    return rows[0][0] == 0


def create_database(server: PgConnectionInfo, name: str) -> None:
    _check_name(name)
    _admin(server, f'CREATE DATABASE "{name}"')


def drop_database(server: PgConnectionInfo, name: str) -> bool:
    """Drop `name` if it exists (forcing other sessions off); True when something was dropped."""
    existed = database_exists(server, name)
    _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return existed


def database_size(server: PgConnectionInfo, name: str) -> int:
    _check_name(name)
    return int(_admin(server, f"SELECT pg_database_size('{name}')")[0][0])


def _check_name(name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise RestoreRefused(f"{name!r} is not a safe database name")


def staging_name(database: str, run_id: str) -> str:
    """Where a DR restore is built before it may replace `database`: unique per run and
    database, and the same again when that run is retried."""
    digest = hashlib.sha256(f"{run_id}/{database}".encode()).hexdigest()[:8]
    return f"{database[:40]}__restoring_{digest}"


def aside_name(server: PgConnectionInfo, database: str, stamp: datetime) -> str:
    """A free name to keep the database being replaced under: `<db>__before_<run stamp>`."""
    base = f"{database[:32]}__before_{stamp:%Y%m%d_%H%M%S}"
    name, n = base, 1
    while database_exists(server, name):
        n += 1
        name = f"{base}_{n}"
    return name


def terminate_sessions(server: PgConnectionInfo, name: str) -> int:
    """End every other session on database `name`; returns how many were ended."""
    _check_name(name)
    rows = _admin(
        server,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0])


def rename_databases(server: PgConnectionInfo, renames: list[tuple[str, str]]) -> int:
    """Rename each (old, new) in order, in one transaction: all of them happen or none does, so
    a swap cut short at any point (its worker killed, the connection lost) never leaves the
    destination missing. PostgreSQL refuses while anyone is connected to a database being
    renamed, so other sessions are terminated first (and again if one slipped in); returns
    how many were terminated."""
    import psycopg2.errors

    for old, new in renames:
        _check_name(old)
        _check_name(new)
        if server.database in (old, new):
            raise RestoreRefused(f"refusing to rename {old} to {new}: it is the admin database")
    terminated, attempts = 0, 5
    for attempt in range(1, attempts + 1):
        terminated += sum(terminate_sessions(server, old) for old, _ in renames)
        connection = server.connect()
        try:
            with connection.cursor() as cursor:
                for old, new in renames:
                    cursor.execute(f'ALTER DATABASE "{old}" RENAME TO "{new}"')
            connection.commit()
            return terminated
        except psycopg2.errors.ObjectInUse:
            connection.rollback()
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
        finally:
            connection.close()
    return terminated


def swap_in(server: PgConnectionInfo, staging: str, database: str, stamp: datetime) -> str | None:
    """Put the validated `staging` database in place of `database`. The database it replaces
    is renamed aside, never dropped, in the same transaction as the restore takes its name:
    at every moment `database` is the old one or the new one. Returns the old one's new name
    (None when there was none)."""
    previous = aside_name(server, database, stamp) if database_exists(server, database) else None
    renames = [(database, previous)] if previous is not None else []
    renames.append((staging, database))
    try:
        ended = rename_databases(server, renames)
    except Exception as exc:
        raise SwapFailed(
            f"could not swap the validated restore {staging} in as {database} ({exc}); nothing "
            f"was renamed: {database} is unchanged and the restore is kept in {staging}"
        ) from exc
    if previous is not None:
        log.warning(
            "Swap: %s on %s:%s was renamed aside to %s; it is kept, not dropped: drop it once "
            "the restore is confirmed good",
            database,
            server.host,
            server.port,
            previous,
        )
    log.info(
        "Swap: %s is now %s on %s:%s (%d session(s) on them terminated)",
        staging,
        database,
        server.host,
        server.port,
        ended,
    )
    return previous


def pg_restore(
    archive: Path, server: PgConnectionInfo, database: str, jobs: int, *, owners: bool
) -> float:
    """Restore a custom-format archive into an existing empty database; returns seconds.
    `owners`: keep the archive's owners and grants (the roles were restored first, see
    pg_globals); without, everything belongs to the restoring user."""
    target = PgConnectionInfo(server.host, server.port, server.user, database, server.env)
    started = time.monotonic()
    done = subprocess.run(
        [
            pg_tool("pg_restore"),
            f"--jobs={jobs}",
            *([] if owners else ["--no-owner", "--no-privileges"]),
            "--exit-on-error",
            *target.args(),
            str(archive),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **target.env},
        check=False,
    )
    if done.returncode != 0:
        raise RestoreFailed(
            f"pg_restore into {target} exited with {done.returncode}: {done.stderr[-2000:].strip()}"
        )
    return time.monotonic() - started


@dataclass
class Replaced:
    """How a database restore went: built and validated aside, then swapped in (or not)."""

    staging: str
    restore_seconds: float
    restored_bytes: int
    validation: ValidationResult
    previous_database: str | None = None
    swapped: bool = False
    problems: list[str] = field(default_factory=list)

    def steps(self) -> dict[str, Any]:
        return {
            "restored_bytes": self.restored_bytes,
            "staged_in": self.staging,
            "swapped_in": self.swapped,
            "previous_database": self.previous_database,
        }


def replace_database(
    server: PgConnectionInfo,
    database: str,
    staging: str,
    restore: Callable[[str], float],
    check: Callable[[str], ValidationResult],
    *,
    overwrite: bool,
    stamp: datetime,
) -> Replaced:
    """Restore into the new database `staging`, validate it there, and only then swap it in.
    Until the swap `database` is untouched; at the swap it is renamed aside, never dropped.
    The caller has proven the backup's bytes before calling: nothing here needs the store."""
    drop_database(server, staging)  # only this run's own staging database: the name says so
    create_database(server, staging)
    try:
        seconds = restore(staging)
    except Exception:
        drop_database(server, staging)  # a half-restored copy is of no use to anyone
        raise
    result = Replaced(staging, seconds, database_size(server, staging), check(staging))
    keep = f"{database} was not touched; the restore is kept in {staging} for inspection"
    if not result.validation.ok:
        result.problems.append(f"the restore failed validation; {keep}")
    elif (
        not overwrite
        and database_exists(server, database)
        and not database_is_empty(server, database)
    ):
        result.problems.append(
            f"{database} gained tables during the restore (overwrite=false); {keep}"
        )
    else:
        result.previous_database = swap_in(server, staging, database, stamp)
        result.swapped = True
    return result
