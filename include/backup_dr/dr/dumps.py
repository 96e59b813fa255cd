"""Disaster recovery from dumps (`dr_restore`): restore named targets at a destination.

A database is downloaded and proven first, restored into a new database, validated, and only
then swapped in; the one it replaces is renamed aside, never dropped."""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.backup_dr.drill.dumps import validate
from include.backup_dr.pipeline import Stores
from include.backup_dr.policy import Policy
from include.backup_dr.restore import media as media_restore
from include.backup_dr.restore.database import (
    database_exists,
    database_is_empty,
    pg_restore,
    replace_database,
    server_info,
    staging_name,
)
from include.backup_dr.restore.download import download_verified
from include.backup_dr.restore.errors import DrillFailed, RestoreRefused
from include.backup_dr.restore.record import describe_failure, failure_ref, provenance, report
from include.backup_dr.restore.select import Selection, is_media, manifest_of, select_backup
from include.backup_dr.restore.validation import ValidationReport
from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)


def restore_for_recovery(
    policy: Policy,
    stores: Stores,
    params: dict[str, Any],
    run: dict[str, str],
) -> list[dict[str, Any]]:
    """dr_restore: restore named targets, in the policy's priority order: databases into the
    `connection`, media into `bucket` (optionally only the keys under `prefix`).

    A database is downloaded and proven first, restored into a new database, validated, and
    only then swapped in; the one it replaces is renamed aside. A target that fails gets its
    own evidence record and the next target is restored all the same; the run fails at the end.
    """
    if str(params.get("confirm", "")).strip().lower() != "restore":
        raise RestoreRefused(
            "dr_restore needs the param confirm='restore' to run; nothing was restored"
        )
    names = params.get("targets") or []
    if not names:
        raise RestoreRefused("dr_restore needs at least one target in the param 'targets'")
    targets = sorted((policy.target(n) for n in names), key=lambda t: (t.priority, t.name))
    store = stores.role(params.get("region") or "secondary")
    window = datetime.fromisoformat(params["backup"]) if params.get("backup") else None
    if window is not None and len(targets) > 1:
        raise RestoreRefused("a chosen backup window applies to one target only")
    tier = params.get("tier") or "daily"
    overwrite = bool(params.get("overwrite"))
    key_prefix = params.get("prefix") or ""
    dest_prefix = params.get("dest_prefix") or ""
    media = [t for t in targets if is_media(policy, t.category)]
    databases = [t for t in targets if not is_media(policy, t.category)]
    point_in_time = params.get("target_time")
    if point_in_time and (media or window is not None):
        raise RestoreRefused(
            "target_time (point-in-time recovery) applies to databases only, without a backup "
            f"window; got {', '.join(t.name for t in media) or 'backup=' + params['backup']}"
        )
    # Check every target first: refuse before changing anything.
    bucket = None
    if media:
        if not params.get("bucket"):
            raise RestoreRefused("restoring media needs the param 'bucket' (and bucket_connection)")
        bucket = ObjectStore.for_bucket(params["bucket_connection"], params["bucket"])
        media_restore.ensure_empty(bucket, dest_prefix + key_prefix, overwrite)
    server = server_info(params["connection"]) if databases else None
    for target in databases:
        assert server is not None and target.database is not None
        occupied = database_exists(server, target.database) and not database_is_empty(
            server, target.database
        )
        if occupied and not overwrite:
            raise RestoreRefused(
                f"database {target.database} on {server.host}:{server.port} is not empty; "
                "set overwrite=true to replace it"
            )
    began = datetime.now(UTC)
    records = []
    if point_in_time:
        from include.backup_dr import pitr

        records = pitr.recover_targets(policy, stores, targets, params, run, began=began)
    for order, target in enumerate([] if point_in_time else targets, start=1):
        started = datetime.now(UTC)
        conn_id = params["connection"]
        if bucket is not None and target in media:
            destination = bucket.where(dest_prefix)
        else:
            destination = f"{target.database} via {conn_id}"
        ref = failure_ref(
            target, tier, store.region.name, window.isoformat() if window else "-", destination
        )
        try:
            selection = select_backup(policy, store, target.name, tier, window)
            ref = {**selection.to_ref(), "destination": destination}
            log.info("[%d/%d] restoring %s: %s", order, len(targets), target.name, selection.reason)
            problems: list[str] = []
            if bucket is not None and target in media:
                manifest = manifest_of(store, selection)
                where = {"key_prefix": key_prefix, "dest_prefix": dest_prefix}
                restored = {
                    **media_restore.restore_snapshot(store, manifest, bucket, **where),
                    **provenance(manifest),
                }
                validation = media_restore.verify_restored(store, manifest, bucket, **where)
            else:
                assert server is not None and target.database is not None
                restored, validation, problems = _replace_from_dump(
                    policy, stores, selection, conn_id, target.database, run, overwrite, began
                )
            restored = {
                **restored,
                "order": order,
                "started_at": started.isoformat(),
                "seconds_since_run_start": (datetime.now(UTC) - began).total_seconds(),
            }
            document = report(
                policy, stores, ref, restored, validation.to_document(), run, "dr_restore", problems
            )
        except Exception as exc:  # this target failed: record it, and go on to the next one
            log.exception("[%d/%d] restore of %s failed", order, len(targets), target.name)
            document = report(
                policy, stores, ref, None, None, run, "dr_restore", [describe_failure(exc)]
            )
        records.append(document)
    failed = [r for r in records if r["outcome"] != "passed"]
    if failed:  # every target was attempted first: a DR restore gets as far as it can
        raise DrillFailed(
            "DR restore failed for "
            + "; ".join(f"{r['target']}: {', '.join(r['problems'])}" for r in failed)
        )
    if partial := [r for r in records if r.get("evidence_missing_in")]:
        raise DrillFailed(
            "DR restore succeeded, but its evidence is missing in "
            + "; ".join(f"{r['target']}: {', '.join(r['evidence_missing_in'])}" for r in partial)
        )
    return records


def _replace_from_dump(
    policy: Policy,
    stores: Stores,
    selection: Selection,
    conn_id: str,
    database: str,
    run: dict[str, str],
    overwrite: bool,
    began: datetime,
) -> tuple[dict[str, Any], ValidationReport, list[str]]:
    """dr_restore from a pg_dump backup: prove the bytes, then `replace_database`."""
    store = stores.by_region(selection.region)
    manifest = manifest_of(store, selection)
    server = server_info(conn_id)
    staging = staging_name(database, run.get("run_id", began.isoformat()))
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch:
        # Downloaded and re-hashed before anything on the destination server changes.
        download = download_verified(store, manifest, Path(scratch) / "archive.pgdump")
        replaced = replace_database(
            server,
            database,
            staging,
            lambda into: pg_restore(download.path, server, into, 2),
            lambda into: validate(policy, stores, selection, conn_id, into),
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
