"""Restoring a backup: choose it, prove its bytes, and rebuild it in a PostgreSQL database.

Used by the yearly restore drill (into a sandbox) and by on-demand disaster recovery. The bytes
are re-hashed while they download and compared with the manifest *before* pg_restore sees them,
so a tampered or rotten backup is never restored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.catalogue import BackupId, Manifest, Verification, build_catalogue
from include.backup_dr.engines.pg_dump import PgConnectionInfo, pg_tool
from include.backup_dr.policy import Policy
from include.backup_dr.store import READ_CHUNK, ObjectStore

log = logging.getLogger(__name__)


class RestoreRefused(AirflowFailException):
    """A restore that would be unsafe was refused; nothing was changed."""


class TamperedBackup(AirflowFailException):
    """The downloaded bytes do not match the manifest; the backup was not restored."""


class RestoreFailed(AirflowFailException):
    """pg_restore failed; the message carries its error output."""


@dataclass(frozen=True)
class Selection:
    """The backup chosen for a restore, where it is read from, and why it was chosen."""

    backup: BackupId
    region: str
    reason: str

    def to_ref(self) -> dict[str, str]:
        return {
            "category": self.backup.category,
            "target": self.backup.target,
            "tier": self.backup.tier,
            "window": self.backup.window.isoformat(),
            "region": self.region,
            "reason": self.reason,
        }

    @classmethod
    def from_ref(cls, ref: dict[str, str]) -> Selection:
        backup = BackupId(
            ref["category"], ref["target"], ref["tier"], datetime.fromisoformat(ref["window"])
        )
        return cls(backup, ref["region"], ref["reason"])


def select_backup(
    policy: Policy,
    store: ObjectStore,
    target: str,
    tier: str,
    window: datetime | None = None,
) -> Selection:
    """The chosen window, or else the newest backup whose copy in `store`'s region passed."""
    category = policy.target(target).category
    backups, _ = build_catalogue([store.listing(f"{category}/{target}/{tier}/")])
    region = store.region.name
    if window is not None:
        chosen = next((b for b in backups if b.id.window == window), None)
        if chosen is None:
            raise RestoreRefused(f"no backup of {target}/{tier} for window {window} in {region}")
        state = chosen.copies[region].verification.value
        return Selection(chosen.id, region, f"window {window.isoformat()} requested ({state})")
    verified = [b for b in backups if b.copies[region].verification is Verification.PASSED]
    if not verified:
        raise RestoreRefused(
            f"no verified backup of {target}/{tier} in {region} ({len(backups)} unverified)"
        )
    newest = max(verified, key=lambda b: b.id.window)
    return Selection(
        newest.id,
        region,
        f"newest of {len(verified)} verified backups of {target}/{tier} in {region} "
        f"(window {newest.id.window.isoformat()})",
    )


def server_info(conn_id: str, database: str = "postgres") -> PgConnectionInfo:
    return PgConnectionInfo.from_airflow(conn_id, database)


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
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


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


class SwapFailed(AirflowFailException):
    """Swapping a restored database in failed; the message says where each database is."""


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


def rename_database(server: PgConnectionInfo, old: str, new: str, attempts: int = 5) -> int:
    """Rename `old` to `new`. PostgreSQL refuses while anyone is connected, so other sessions
    are terminated first (and again if one slipped in); returns how many were terminated."""
    import psycopg2.errors

    _check_name(old)
    _check_name(new)
    if server.database in (old, new):
        raise RestoreRefused(f"refusing to rename {old} to {new}: it is the admin database")
    terminated = 0
    for attempt in range(1, attempts + 1):
        terminated += terminate_sessions(server, old)
        try:
            _admin(server, f'ALTER DATABASE "{old}" RENAME TO "{new}"')
            return terminated
        except psycopg2.errors.ObjectInUse:
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
    return terminated


def swap_in(server: PgConnectionInfo, staging: str, database: str, stamp: datetime) -> str | None:
    """Put the validated `staging` database in place of `database`. The database it replaces
    is renamed aside, never dropped; returns its new name (None when there was none)."""
    previous = None
    if database_exists(server, database):
        previous = aside_name(server, database, stamp)
        try:
            ended = rename_database(server, database, previous)
        except Exception as exc:
            raise SwapFailed(
                f"could not rename {database} aside to {previous} ({exc}); {database} is "
                f"unchanged and the validated restore is kept in {staging}"
            ) from exc
        log.warning(
            "Swap: terminated %d session(s) on %s on %s:%s and renamed it aside to %s; "
            "it is kept, not dropped: drop it once the restore is confirmed good",
            ended,
            database,
            server.host,
            server.port,
            previous,
        )
    try:
        ended = rename_database(server, staging, database)
    except Exception as exc:
        where = "does not exist now"
        if previous is not None:
            try:
                rename_database(server, previous, database)
                where = "is back in place"
            except Exception:
                where = f"is kept as {previous}"
        raise SwapFailed(
            f"could not rename the validated restore {staging} to {database} ({exc}); the "
            f"old {database} {where}"
        ) from exc
    log.info(
        "Swap: %s is now %s on %s:%s (%d session(s) on it terminated)",
        staging,
        database,
        server.host,
        server.port,
        ended,
    )
    return previous


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    seconds: float


def fetch(store: ObjectStore, manifest: Manifest, dest: Path) -> None:
    """Download the artifact with parallel ranged GETs, after checking its size; unverified:
    callers prove the bytes with `prove_bytes` before anything uses them."""
    expected = manifest.artifact
    head = store.head(expected.key)
    if head is None:
        raise RestoreRefused(f"{manifest.backup}: {store.where(expected.key)} does not exist")
    if int(head["ContentLength"]) != expected.size:
        raise TamperedBackup(
            f"{manifest.backup} in {store.region.name}: the object has {head['ContentLength']} "
            f"bytes, the manifest says {expected.size}; not restored"
        )
    store.download(expected.key, dest, expected.size)


def prove_bytes(manifest: Manifest, region: str, digest: str, size: int) -> None:
    """Refuse bytes whose size or SHA-256 differ from what the manifest vouches for."""
    expected = manifest.artifact
    if size != expected.size or digest != expected.sha256:
        raise TamperedBackup(
            f"{manifest.backup} in {region}: downloaded {size} bytes with sha256 "
            f"{digest[:16]}..., the manifest says {expected.size} bytes with sha256 "
            f"{expected.sha256[:16]}...; not restored"
        )


def download_verified(store: ObjectStore, manifest: Manifest, dest: Path) -> Download:
    """Download the artifact, then re-hash it; refuse it unless size and SHA-256 match.

    The hash reads the file back from the page cache. Nothing reaches pg_restore before the
    bytes are proven.
    """
    started = time.monotonic()
    fetch(store, manifest, dest)
    digest = hashlib.sha256()
    size = 0
    with dest.open("rb") as archive:
        for chunk in iter(lambda: archive.read(READ_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    seconds = time.monotonic() - started
    try:
        prove_bytes(manifest, store.region.name, digest.hexdigest(), size)
    except TamperedBackup:
        dest.unlink(missing_ok=True)
        raise
    log.info(
        "Downloaded and verified %s (%d bytes) in %.1f s", manifest.artifact.key, size, seconds
    )
    return Download(dest, size, seconds)


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
