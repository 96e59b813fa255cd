"""The restore drill (`restore_verification`) and disaster recovery (`dr_restore`), step by step.

A drill restores a backup into a fresh sandbox (a database, validated with Great Expectations;
or a prefix of a scratch bucket for media, every object re-hashed against the snapshot),
measures how long the restore took, and leaves an evidence record (JSON plus a readable
Markdown page) in both regions. ISO 27001 A.8.13 / A.5.30 ask for exactly this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr import media_restore
from include.backup_dr.catalogue import Manifest, build_catalogue
from include.backup_dr.pipeline import Stores
from include.backup_dr.policy import CONTINUOUS, Policy, Target, format_duration
from include.backup_dr.restore import (
    RestoreRefused,
    Selection,
    create_database,
    database_exists,
    database_is_empty,
    database_size,
    download_verified,
    drop_database,
    guard_sandbox,
    pg_restore,
    select_backup,
    server_info,
)
from include.backup_dr.store import ObjectStore
from include.backup_dr.validation import ValidationReport

log = logging.getLogger(__name__)


class DrillFailed(AirflowFailException):
    """The drill's outcome is a failure; the evidence record says why."""


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


def _is_media(policy: Policy, category: str) -> bool:
    return policy.categories[category].engine == "media"


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
    if _is_media(policy, ref["category"]):
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
    """Restore the selected backup into the sandbox that `provision` made."""
    drill = policy.restore_verification
    assert drill is not None
    if _is_media(policy, selection.backup.category):
        store = stores.by_region(selection.region)
        manifest = _manifest(store, selection)
        restored = media_restore.restore_snapshot(
            store, manifest, sandbox_bucket(policy), dest_prefix=sandbox
        )
        return {**restored, **_provenance(manifest)}
    return restore_into(policy, stores, selection, drill.sandbox_conn_id, sandbox, drill.jobs)


def validate_sandbox(
    policy: Policy, stores: Stores, selection: Selection, sandbox: str
) -> ValidationReport:
    """Databases: Great Expectations suites. Media: every object re-hashed against the listing."""
    drill = policy.restore_verification
    assert drill is not None
    if _is_media(policy, selection.backup.category):
        store = stores.by_region(selection.region)
        return media_restore.verify_restored(
            store, _manifest(store, selection), sandbox_bucket(policy), dest_prefix=sandbox
        )
    return validate(policy, stores, selection, drill.sandbox_conn_id, sandbox)


def _manifest(store: ObjectStore, selection: Selection) -> Manifest:
    manifest = store.manifest(selection.backup)
    if manifest is None:
        raise RestoreRefused(f"{selection.backup}: no manifest in {selection.region}")
    return manifest


def _provenance(manifest: Manifest) -> dict[str, Any]:
    return {
        "age_seconds": round((datetime.now(UTC) - manifest.finished_at).total_seconds()),
        "taken_at": manifest.finished_at.isoformat(),
        "sha256": manifest.artifact.sha256,
    }


def restore_into(
    policy: Policy, stores: Stores, selection: Selection, conn_id: str, database: str, jobs: int
) -> dict[str, Any]:
    """Download (re-hashing against the manifest) and pg_restore into an existing database."""
    store = stores.by_region(selection.region)
    manifest = _manifest(store, selection)
    server = server_info(conn_id)
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch:
        download = download_verified(store, manifest, Path(scratch) / "archive.pgdump")
        restore_seconds = pg_restore(download.path, server, database, jobs)
    return {
        "archive_bytes": download.size,
        "restored_bytes": database_size(server, database),
        "timings": {
            "download + SHA-256 check": round(download.seconds, 3),
            "pg_restore": round(restore_seconds, 3),
        },
        **_provenance(manifest),
    }


def validate(policy: Policy, stores: Stores, selection: Selection, conn_id: str, database: str):
    """Run the manifest suite and the target's business-rule suite with Great Expectations."""
    from include.backup_dr.validation import validate_database

    manifest = stores.by_region(selection.region).manifest(selection.backup)
    assert manifest is not None
    url = server_info(conn_id).sqlalchemy_url(database)
    return validate_database(url, selection.backup.target, manifest.tables())


def largest_production(policy: Policy, stores: Stores, category: str) -> tuple[str, int]:
    """The largest production target of the category and its size now: a database measured on
    its server; a media target by the bytes its newest snapshot lists."""
    sizes = []
    for target in policy.targets:
        if not target.is_production or target.category != category:
            continue
        if _is_media(policy, category):
            sizes.append((target.name, _newest_snapshot_bytes(stores.primary, target)))
        else:
            server = server_info(policy.server(target.server).conn_id)
            sizes.append((target.name, database_size(server, target.database)))
    return max(sizes, key=lambda item: item[1])


def _newest_snapshot_bytes(store: ObjectStore, target: Target) -> int:
    backups, _ = build_catalogue([store.listing(f"{target.category}/{target.name}/")])
    if not backups:
        return 0
    newest = max(backups, key=lambda b: b.id.window)
    manifest = store.manifest(newest.id)
    return int(manifest.source.get("bytes", 0)) if manifest else 0


def report(
    policy: Policy,
    stores: Stores,
    ref: dict[str, str],
    restored: dict[str, Any] | None,
    validation: dict[str, Any] | None,
    run: dict[str, str],
    kind: str = "restore_verification",
) -> dict[str, Any]:
    """Write the evidence record (JSON + Markdown) to both regions; return it."""
    rto = policy.objectives.rto
    problems = []
    projection: dict[str, Any] = {}
    if restored is None:
        problems.append("the restore did not complete (see the restore task's log)")
    else:
        seconds = sum(restored["timings"].values())
        throughput = restored["restored_bytes"] / seconds if seconds else 0.0
        largest, largest_bytes = largest_production(policy, stores, ref["category"])
        projected = largest_bytes / throughput if throughput else float("inf")
        projection = {
            "restore_throughput_mb_per_s": round(throughput / 1e6, 2),
            "largest_production_target": largest,
            "largest_production_bytes": largest_bytes,
            "projected_restore_seconds": round(projected, 1),
            "rto_seconds": rto.total_seconds(),
            "within_rto": projected <= rto.total_seconds(),
        }
        if not projection["within_rto"]:
            problems.append(
                f"projected restore of {largest} takes {timedelta(seconds=round(projected))}, "
                f"over the RTO of {format_duration(rto)}"
            )
    if validation is None:
        problems.append("validation did not run")
    elif not validation["ok"]:
        failed = [r for r in validation["results"] if not r["success"]]
        problems.append(
            f"{len(failed)} expectation(s) failed: "
            + "; ".join(
                f"{r['suite']}: {r['expectation']} on {r['table']} ({r['observed']})"
                for r in failed
            )
        )
    document = {
        "schema": f"backup-dr/{kind}/v1",
        "kind": kind,
        "target": ref["target"],
        "backup": {k: ref[k] for k in ("category", "target", "tier", "window", "region")},
        "selection_reason": ref["reason"],
        "restored_into": ref.get("sandbox") or ref.get("destination"),
        "recorded_at": datetime.now(UTC).isoformat(),
        "run": run,
        "steps": restored,
        "projection": projection,
        "validation": validation,
        "outcome": "passed" if not problems else "failed",
        "problems": problems,
    }
    prefix = f"evidence/{kind}/{ref['target']}/{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    for store in stores:
        store.put_json(f"{prefix}/report.json", json.dumps(document, indent=2, default=str) + "\n")
        store.put_bytes(f"{prefix}/report.md", render_markdown(document).encode(), "text/markdown")
    document["evidence_prefix"] = prefix
    log.info("Evidence written to %s/report.{json,md} in both regions", prefix)
    return document


def render_markdown(document: dict[str, Any]) -> str:
    """The evidence record as a page an auditor can read without tools."""
    backup = document["backup"]
    steps = document.get("steps") or {}
    projection = document.get("projection") or {}
    validation = document.get("validation") or {"results": []}
    lines = [
        f"# Restore test of {document['target']}: {document['outcome'].upper()}",
        "",
        f"- Recorded: {document['recorded_at']} (run {document['run'].get('run_id', '?')})",
        f"- Backup: {backup['target']}/{backup['tier']} window {backup['window']} "
        f"from region {backup['region']}",
        f"- Why this backup: {document['selection_reason']}",
        f"- Taken at: {steps.get('taken_at', '?')} (age {steps.get('age_seconds', '?')} s)",
        f"- Restored into: {document['restored_into']}",
        "",
        "## Steps",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in steps.get("timings", {}).items()),
        f"| validation | {validation.get('seconds', '-')} |",
        "",
        "## Recovery time objective",
        "",
        f"- Restore throughput: {projection.get('restore_throughput_mb_per_s', '-')} MB/s",
        f"- Largest production target: {projection.get('largest_production_target', '-')} "
        f"({projection.get('largest_production_bytes', '-')} bytes)",
        f"- Projected full restore: {projection.get('projected_restore_seconds', '-')} s "
        f"against an RTO of {projection.get('rto_seconds', '-')} s",
        "",
        "## Expectations",
        "",
        "| suite | table | expectation | result | observed |",
        "|---|---|---|---|---|",
        *(
            f"| {r['suite']} | {r['table']} | {r['expectation']} | "
            f"{'pass' if r['success'] else '**FAIL**'} | {r['observed']} |"
            for r in validation["results"]
        ),
        "",
        "## Outcome",
        "",
        document["outcome"].upper()
        + (": " + "; ".join(document["problems"]) if document["problems"] else ""),
        "",
    ]
    return "\n".join(lines)


def teardown(policy: Policy, ref: dict[str, str], run_id: str) -> bool:
    """Drop the drill's sandbox (database or bucket prefix); safe whether or not it was made."""
    drill = policy.restore_verification
    assert drill is not None
    name = sandbox_name(ref["target"], run_id)
    if _is_media(policy, ref["category"]):
        dropped = sandbox_bucket(policy).delete_all_versions(f"{name}/") > 0
    else:
        dropped = drop_database(guard_sandbox(policy, drill.sandbox_conn_id), name)
    log.info("Sandbox for %s %s", ref["target"], "dropped" if dropped else "was not there")
    return dropped


def restore_for_recovery(
    policy: Policy,
    stores: Stores,
    params: dict[str, Any],
    run: dict[str, str],
) -> list[dict[str, Any]]:
    """dr_restore: restore named targets, in the policy's priority order: databases into the
    `connection`, media into `bucket` (optionally only the keys under `prefix`)."""
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
    media = [t for t in targets if _is_media(policy, t.category)]
    databases = [t for t in targets if not _is_media(policy, t.category)]
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
        assert server is not None
        occupied = database_exists(server, target.database) and not database_is_empty(
            server, target.database
        )
        if occupied and not overwrite:
            raise RestoreRefused(
                f"database {target.database} on {server.host}:{server.port} is not empty; "
                "set overwrite=true to replace it"
            )
    records = []
    if point_in_time:
        from include.backup_dr import pitr

        records = pitr.recover_targets(policy, stores, targets, params, run)
    for order, target in enumerate([] if point_in_time else targets, start=1):
        selection = select_backup(policy, store, target.name, tier, window)
        log.info("[%d/%d] restoring %s: %s", order, len(targets), target.name, selection.reason)
        started = datetime.now(UTC)
        if bucket is not None and target in media:
            manifest = _manifest(store, selection)
            where = {"key_prefix": key_prefix, "dest_prefix": dest_prefix}
            restored = {
                **media_restore.restore_snapshot(store, manifest, bucket, **where),
                **_provenance(manifest),
            }
            validation = media_restore.verify_restored(store, manifest, bucket, **where)
            destination = bucket.where(dest_prefix)
        else:
            assert server is not None
            conn_id = params["connection"]
            drop_database(server, target.database)
            create_database(server, target.database)
            restored = restore_into(policy, stores, selection, conn_id, target.database, 2)
            validation = validate(policy, stores, selection, conn_id, target.database)
            destination = f"{target.database} via {conn_id}"
        document = report(
            policy,
            stores,
            {**selection.to_ref(), "destination": destination},
            {**restored, "order": order, "started_at": started.isoformat()},
            validation.to_document(),
            run,
            kind="dr_restore",
        )
        records.append(document)
    failed = [r for r in records if r["outcome"] != "passed"]
    if failed:  # every target was attempted first: a DR restore gets as far as it can
        raise DrillFailed(
            "DR restore failed for "
            + "; ".join(f"{r['target']}: {', '.join(r['problems'])}" for r in failed)
        )
    return records
