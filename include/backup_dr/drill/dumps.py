"""The restore drill (`restore_verification`) and disaster recovery (`dr_restore`), step by step.

A drill restores a backup into a fresh sandbox (a database, validated with Great Expectations;
or a prefix of a scratch bucket for media, every object re-hashed against the snapshot),
measures how long the restore took, and leaves an evidence record (JSON plus a readable
Markdown page) in both regions. ISO 27001 A.8.13 / A.5.30 ask for exactly this.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.backup_dr import pg_globals
from include.backup_dr.policy import CONTINUOUS, Policy
from include.backup_dr.restore import media as media_restore
from include.backup_dr.restore.database import (
    create_database,
    database_size,
    drop_database,
    guard_sandbox,
    pg_restore,
    server_info,
    validate_restored,
)
from include.backup_dr.restore.download import download_verified, read_globals
from include.backup_dr.restore.errors import RestoreRefused
from include.backup_dr.restore.record import provenance
from include.backup_dr.restore.select import Selection, is_media, manifest_of, select_backup
from include.backup_dr.restore.validation import ValidationResult
from include.backup_dr.store import ObjectStore
from include.backup_dr.stores import Stores

log = logging.getLogger(__name__)


def sandbox_name(target: str, run_id: str) -> str:
    """Unique per run and target, and derivable again by the teardown even if provisioning died."""
    return f"drill_{target[:40]}_{hashlib.sha256(run_id.encode()).hexdigest()[:10]}"


def select(policy: Policy, stores: Stores, params: dict[str, Any]) -> list[dict[str, str]]:
    """Choose one backup per target to restore, and say why each was chosen."""
    drill = policy.restore_verification
    assert drill is not None
    tier = params.get("tier") or drill.tier
    store = stores.role(params.get("region") or drill.region)
    window = datetime.fromisoformat(params["backup"]) if params.get("backup") else None
    servers = {s.name for s in policy.continuous_servers()}
    if tier == CONTINUOUS or params.get("target") in servers:
        log.info("Only point-in-time recovery is drilled (the pitr step): no dump restores")
        return []
    if params.get("target"):
        targets = [policy.target(params["target"])]
    else:
        targets = [
            t for t in sorted(policy.targets, key=lambda t: (t.priority, t.name)) if t.is_production
        ]
    chosen = []
    for target in targets:
        if reason := target.skip_reason():
            raise RestoreRefused(reason)
        selection = select_backup(policy, store, target.name, tier, window)
        log.info("Restoring %s from %s: %s", selection.backup, selection.region, selection.reason)
        chosen.append(selection.to_ref())
    return chosen


def sandbox_bucket(policy: Policy) -> ObjectStore:
    """The scratch bucket for media restore tests (the policy refuses a source or backup one)."""
    drill = policy.restore_verification
    assert drill is not None
    if drill.sandbox_bucket is None:
        raise RestoreRefused("restore_verification.sandbox_bucket is not set in the policy")
    return ObjectStore.for_bucket(drill.sandbox_bucket.conn_id, drill.sandbox_bucket.bucket)


def provision(policy: Policy, ref: dict[str, str], run_id: str) -> dict[str, str]:
    """A fresh, uniquely named sandbox: a database on the sandbox server (never a production
    one) for a database, an empty prefix of the sandbox bucket for media."""
    drill = policy.restore_verification
    assert drill is not None
    name = sandbox_name(ref["target"], run_id)
    if is_media(policy, ref["category"]):
        bucket = sandbox_bucket(policy)
        bucket.delete_all_versions(f"{name}/")
        log.info("Sandbox prefix %s is empty", bucket.where(f"{name}/"))
        return {**ref, "sandbox": f"{name}/"}
    server = guard_sandbox(policy, drill.sandbox_conn_id)
    drop_database(server, name)
    create_database(server, name)
    log.info("Sandbox database %s created on %s:%s", name, server.host, server.port)
    return {**ref, "sandbox": name}


def restore_sandbox(
    policy: Policy, stores: Stores, selection: Selection, sandbox: str
) -> dict[str, Any]:
    """Restore the selected backup into the sandbox that `provision` made; the record says
    when it started (the estate rehearsal's clock)."""
    started = {"started_at": datetime.now(UTC).isoformat()}
    drill = policy.restore_verification
    assert drill is not None
    if is_media(policy, selection.backup.category):
        store = stores.by_region(selection.region)
        manifest = manifest_of(store, selection)
        restored = media_restore.restore_snapshot(
            store, manifest, sandbox_bucket(policy), dest_prefix=sandbox
        )
        return {**restored, **provenance(manifest), **started}
    restored = restore_into(policy, stores, selection, drill.sandbox_conn_id, sandbox, drill.jobs)
    return {**restored, **started}


def validate_sandbox(
    policy: Policy, stores: Stores, selection: Selection, sandbox: str
) -> ValidationResult:
    """Databases: Great Expectations suites. Media: every object re-hashed against the listing."""
    drill = policy.restore_verification
    assert drill is not None
    if is_media(policy, selection.backup.category):
        store = stores.by_region(selection.region)
        return media_restore.verify_restored(
            store, manifest_of(store, selection), sandbox_bucket(policy), dest_prefix=sandbox
        )
    return validate_restored(stores, selection, drill.sandbox_conn_id, sandbox)


def restore_into(
    policy: Policy, stores: Stores, selection: Selection, conn_id: str, database: str, jobs: int
) -> dict[str, Any]:
    """Download (re-hashing against the manifest) and pg_restore into an existing database."""
    store = stores.by_region(selection.region)
    manifest = manifest_of(store, selection)
    server = server_info(conn_id)
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch:
        download = download_verified(store, manifest, Path(scratch) / "archive.pgdump")
        restore_seconds = pg_globals.restore_with_globals(
            read_globals(store, manifest),
            server,
            database,
            lambda owners: pg_restore(download.path, server, database, jobs, owners=owners),
            passwords=False,  # a sandbox: no production password works outside production
        )
    return {
        "archive_bytes": download.size,
        "restored_bytes": database_size(server, database),
        "timings": {
            "download + SHA-256 check": round(download.seconds, 3),
            "pg_restore": round(restore_seconds, 3),
        },
        **provenance(manifest),
    }


def teardown(policy: Policy, ref: dict[str, str], run_id: str) -> bool:
    """Drop the drill's sandbox (database or bucket prefix); safe whether or not it was made."""
    drill = policy.restore_verification
    assert drill is not None
    name = sandbox_name(ref["target"], run_id)
    if is_media(policy, ref["category"]):
        dropped = sandbox_bucket(policy).delete_all_versions(f"{name}/") > 0
    else:
        dropped = drop_database(guard_sandbox(policy, drill.sandbox_conn_id), name)
    log.info("Sandbox for %s %s", ref["target"], "dropped" if dropped else "was not there")
    return dropped
