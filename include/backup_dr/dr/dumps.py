"""Disaster recovery from dumps (`dr_restore`): restore named targets at a destination.

A database is downloaded and proven first, restored into a new database, validated, and only
then swapped in; the one it replaces is renamed aside, never dropped."""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.backup_dr import pg_globals
from include.backup_dr.dr.request import DrRequest, Unit
from include.backup_dr.policy import Policy
from include.backup_dr.restore import media as media_restore
from include.backup_dr.restore.database import (
    pg_restore,
    replace_database,
    server_info,
    staging_name,
    validate_restored,
)
from include.backup_dr.restore.download import download_verified, read_globals
from include.backup_dr.restore.errors import DrillFailed
from include.backup_dr.restore.record import describe_failure, provenance, record_restore
from include.backup_dr.restore.select import Selection, manifest_of
from include.backup_dr.restore.validation import ValidationResult
from include.backup_dr.store import ObjectStore
from include.backup_dr.stores import Stores

log = logging.getLogger(__name__)


def restore_unit(
    policy: Policy,
    stores: Stores,
    request: DrRequest,
    unit: Unit,
    run: dict[str, str],
    began: datetime,
) -> list[dict[str, Any]]:
    """One approved unit of `dr_restore`: a target from the backup the plan chose (or, for a
    point in time, a server's cluster and then each of its targets). Every target leaves its
    own evidence record, returned (`raise_for` turns failures into a failed task)."""
    if unit.kind == "pitr":
        from include.backup_dr.dr.pitr import recover_targets

        targets = [policy.target(name) for name in unit.targets]
        records = recover_targets(policy, stores, targets, request, run, began=began)
    else:
        records = [_restore_one(policy, stores, request, unit, run, began)]
    return records


def raise_for(records: list[dict[str, Any]]) -> None:
    """Fail the task when any target failed, or succeeded without evidence in every region."""
    failed = [r for r in records if r["outcome"] != "passed"]
    if failed:
        raise DrillFailed(
            "DR restore failed for "
            + "; ".join(f"{r['target']}: {', '.join(r['problems'])}" for r in failed)
        )
    if partial := [r for r in records if r.get("evidence_missing_in")]:
        raise DrillFailed(
            "DR restore succeeded, but its evidence is missing in "
            + "; ".join(f"{r['target']}: {', '.join(r['evidence_missing_in'])}" for r in partial)
        )


def _restore_one(
    policy: Policy,
    stores: Stores,
    request: DrRequest,
    unit: Unit,
    run: dict[str, str],
    began: datetime,
) -> dict[str, Any]:
    """A dump or media target: restored, validated, recorded (a failure is recorded too)."""
    (ref,) = unit.refs
    target = policy.target(unit.name)
    selection = Selection.from_ref(ref)
    bucket = None
    if unit.kind == "media":
        assert request.bucket is not None
        bucket = ObjectStore.for_bucket(request.bucket_connection, request.bucket)
        destination = bucket.where(request.dest_prefix)
    else:
        destination = f"{target.database} via {request.connection}"
    ref = {**ref, "destination": destination}
    started = datetime.now(UTC)
    log.info("Restoring %s from %s", unit.name, unit.source)
    try:
        problems: list[str] = []
        if bucket is not None:
            store = stores.by_region(selection.region)
            manifest = manifest_of(store, selection)
            where = {"key_prefix": request.prefix, "dest_prefix": request.dest_prefix}
            restored = {
                **media_restore.restore_snapshot(store, manifest, bucket, **where),
                **provenance(manifest),
            }
            validation = media_restore.verify_restored(store, manifest, bucket, **where)
        else:
            assert target.database is not None
            restored, validation, problems = _replace_from_dump(
                policy,
                stores,
                selection,
                request.connection,
                target.database,
                run,
                request.overwrite,
                began,
            )
        restored = {
            **restored,
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds_since_run_start": (datetime.now(UTC) - began).total_seconds(),
        }
        return record_restore(
            policy, stores, ref, restored, validation.to_document(), run, "dr_restore", problems
        )
    except Exception as exc:  # recorded; the other units run in tasks of their own
        log.exception("Restore of %s failed", unit.name)
        return record_restore(
            policy, stores, ref, None, None, run, "dr_restore", [describe_failure(exc)]
        )


def _replace_from_dump(
    policy: Policy,
    stores: Stores,
    selection: Selection,
    conn_id: str,
    database: str,
    run: dict[str, str],
    overwrite: bool,
    began: datetime,
) -> tuple[dict[str, Any], ValidationResult, list[str]]:
    """dr_restore from a pg_dump backup: prove the bytes, then `replace_database`."""
    store = stores.by_region(selection.region)
    manifest = manifest_of(store, selection)
    server = server_info(conn_id)
    staging = staging_name(database, run.get("run_id", began.isoformat()))
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch:
        # Downloaded and re-hashed before anything on the destination server changes.
        download = download_verified(store, manifest, Path(scratch) / "archive.pgdump")
        kept = read_globals(store, manifest)
        replaced = replace_database(
            server,
            database,
            staging,
            lambda into: pg_globals.restore_with_globals(
                kept,
                server,
                into,
                lambda owners: pg_restore(download.path, server, into, 2, owners=owners),
                passwords=True,
            ),
            lambda into: validate_restored(stores, selection, conn_id, into),
            overwrite=overwrite,
            stamp=began,
        )
    restored = {
        "archive_bytes": download.size,
        **replaced.steps(),
        "timings": {
            "download + SHA-256 check": round(download.seconds, 3),
            "pg_restore": round(replaced.restore_seconds, 3),
        },
        **provenance(manifest),
    }
    return restored, replaced.validation, replaced.problems
