"""The globals taken at backup time (pg_dumpall with the dump's libpq settings, and the
database's own facts), kept beside the backup's archive in the store, copied with it to the
other region, and checked there like the archive."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from include.backup_dr.check import Check, encryption_check
from include.backup_dr.pg_globals.document import (
    OBJECT_NAME,
    PASSWORDS_KEPT,
    PASSWORDS_UNREADABLE,
    Globals,
)
from include.backup_dr.pg_globals.plan import DatabaseFacts, Grant
from include.backup_dr.pg_globals.statements import Kind, parse_globals
from include.backup_dr.postgres import PgConnectionInfo, SnapshotError, pg_tool

if TYPE_CHECKING:
    from include.backup_dr.catalogue import BackupId, Manifest
    from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)

_FACTS_SQL = """
SELECT pg_get_userbyid(d.datdba),
       d.datacl IS NULL,
       coalesce((SELECT json_agg(json_build_array(
                            CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                            a.privilege_type, a.is_grantable)
                        ORDER BY a.grantee, a.privilege_type)
                 FROM aclexplode(d.datacl) a), '[]'::json),
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                 WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}'),
       coalesce((SELECT json_agg(json_build_array(pg_get_userbyid(s.setrole), c)
                                 ORDER BY pg_get_userbyid(s.setrole), c)
                 FROM pg_db_role_setting s, unnest(s.setconfig) c
                 WHERE s.setdatabase = d.oid AND s.setrole <> 0), '[]'::json)
FROM pg_database d WHERE d.datname = current_database()
"""


def _pg_dumpall(info: PgConnectionInfo, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [pg_tool("pg_dumpall"), "--globals-only", "--no-tablespaces", "--no-security-labels"]
    return subprocess.run(
        [
            *argv,
            *extra,
            "-h",
            info.host,
            "-p",
            str(info.port),
            "-U",
            info.user,
            "-l",
            info.database,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **info.env},
        check=False,
    )


def capture(info: PgConnectionInfo) -> Globals:
    """The server's globals (the same libpq settings as the dump) and the database's facts."""
    done = _pg_dumpall(info)
    passwords = PASSWORDS_KEPT
    if done.returncode != 0 and "pg_authid" in done.stderr:
        log.warning(
            "pg_dumpall cannot read pg_authid as %s on %s (a managed service?): the roles are "
            "kept WITHOUT their passwords; new roles restored from this backup need new ones",
            info.user,
            info,
        )
        done = _pg_dumpall(info, "--no-role-passwords")
        passwords = PASSWORDS_UNREADABLE
    if done.returncode != 0:
        raise SnapshotError(
            f"pg_dumpall --globals-only of {info} exited with {done.returncode}: "
            f"{done.stderr[-2000:].strip()}"
        )
    try:
        statements = parse_globals(done.stdout)
    except ValueError as exc:
        raise SnapshotError(f"the globals of {info} cannot be restored: {exc}") from None
    connection = info.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(_FACTS_SQL)
            owner, default_acl, acl, settings, role_settings = cursor.fetchone()
    finally:
        connection.close()
    facts = DatabaseFacts(
        owner,
        None if default_acl else tuple(Grant(g, p, o) for g, p, o in acl),
        tuple(settings),
        tuple((role, config) for role, config in role_settings),
    )
    log.info(
        "Captured %d role(s) of %s:%s and the owner, ACL and settings of %s; passwords %s",
        sum(1 for s in statements if s.kind is Kind.CREATE),
        info.host,
        info.port,
        info.database,
        passwords,
    )
    return Globals(info.database, done.stdout, passwords, facts, datetime.now(UTC).isoformat())


def keep_beside(store: ObjectStore, backup: BackupId, info: PgConnectionInfo) -> dict[str, Any]:
    """Capture the globals and store them beside the backup's archive; returns the manifest's
    `source.globals` entry (key, size, SHA-256, how passwords were kept)."""
    kept = capture(info)
    body = kept.to_bytes()
    key = backup.key(OBJECT_NAME)
    store.put_bytes(key, body, "application/json")
    log.info("Kept the globals beside the backup: %s (%d bytes)", store.where(key), len(body))
    return {
        "key": key,
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "role_passwords": kept.passwords,
    }


class Entry(NamedTuple):
    """Where a backup's globals object is, and what the manifest says it holds."""

    key: str
    size: int
    sha256: str


def entry_of(manifest: Manifest) -> Entry | None:
    entry = manifest.source.get("globals")
    if entry is None:
        return None
    return Entry(entry["key"], int(entry["size"]), entry["sha256"])


def copy_beside(manifest: Manifest, source: ObjectStore, target: ObjectStore) -> str:
    """Copy the globals object with its backup (before the manifest, like the archive)."""
    entry = entry_of(manifest)
    if entry is None:
        return "nothing besides the archive"
    mode = target.copy_from(source, entry.key, entry.size)
    return f"the roles and grants ({OBJECT_NAME}) too: {mode}"


def read_entry(store: ObjectStore, entry: Entry) -> tuple[dict[str, Any] | None, bytes]:
    """The object's head and, when its size is the manifest's, its bytes (it is small)."""
    head = store.head(entry.key)
    if head is None or int(head["ContentLength"]) != entry.size:
        return head, b""
    return head, b"".join(store.iter_chunks(entry.key))


def check_beside(store: ObjectStore, manifest: Manifest) -> list[Check]:
    """Integrity of the globals object in one region: present, size, SHA-256, readable by the
    restore, and encrypted with the region's key. A backup without it cannot be restored whole."""
    entry = entry_of(manifest)
    if entry is None:
        return [Check("globals", True, "none kept: the backup predates roles and grants kept")]
    head, body = read_entry(store, entry)
    if head is None:
        where = store.where(entry.key)
        return [Check("globals", False, f"{where} does not exist: roles and grants are lost")]
    size = int(head["ContentLength"])
    digest = hashlib.sha256(body).hexdigest() if body or size == 0 else ""
    detail = (
        f"{size} bytes, sha256 {digest[:16]}...; manifest says {entry.size} bytes, "
        f"sha256 {entry.sha256[:16]}..."
    )
    ok = size == entry.size and digest == entry.sha256
    if ok:
        try:
            Globals.from_bytes(body)
            detail += "; the restore can read it"
        except ValueError as exc:
            ok, detail = False, f"{detail}; the restore cannot read it: {exc}"
    encrypted = encryption_check(store, head)
    return [
        Check("globals", ok, detail),
        Check("globals encrypted", encrypted.ok, encrypted.detail),
    ]
