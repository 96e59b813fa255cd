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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr import media_restore, pg_globals
from include.backup_dr.catalogue import Manifest, build_catalogue
from include.backup_dr.engines.pg_dump import PgConnectionInfo
from include.backup_dr.pipeline import Stores
from include.backup_dr.policy import CONTINUOUS, Policy, Target, format_duration
from include.backup_dr.restore import (
    RestoreRefused,
    Selection,
    SwapFailed,
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
    staging_name,
    swap_in,
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
        restore_seconds = pg_globals.restore_with_globals(
            pg_globals.read_verified(store, manifest),
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
        **_provenance(manifest),
    }


def validate(policy: Policy, stores: Stores, selection: Selection, conn_id: str, database: str):
    """Run the manifest suite and the target's business-rule suite with Great Expectations."""
    from include.backup_dr.validation import validate_database

    manifest = stores.by_region(selection.region).manifest(selection.backup)
    assert manifest is not None
    url = server_info(conn_id).sqlalchemy_url(database)
    return validate_database(url, selection.backup.target, manifest.tables())


def largest_backed_up(policy: Policy, store: ObjectStore, category: str) -> tuple[str, int]:
    """The largest production target of the category, sized from its newest backup's manifest
    in `store` (dump bytes for a database, listed bytes for media). Read from the store, not
    from production servers, so the drill's projection works while production is down."""
    sizes = []
    for target in policy.targets:
        if not target.is_production or target.category != category:
            continue
        manifest = _newest_manifest(store, target)
        if manifest is None:
            continue
        if _is_media(policy, category):
            sizes.append((target.name, int(manifest.source.get("bytes", 0))))
        else:
            sizes.append((target.name, manifest.artifact.size))
    return max(sizes, key=lambda item: item[1], default=("-", 0))


def _newest_manifest(store: ObjectStore, target: Target) -> Manifest | None:
    backups, _ = build_catalogue([store.listing(f"{target.category}/{target.name}/")])
    if not backups:
        return None
    return store.manifest(max(backups, key=lambda b: b.id.window).id)


def _drill_projection(
    policy: Policy, stores: Stores, ref: dict[str, str], restored: dict[str, Any]
) -> dict[str, Any]:
    """The drill's measured throughput applied to the largest production target, vs the RTO.
    Both sides are in the same unit: dump bytes for databases (the archive restored per
    second), listed bytes for media."""
    rto = policy.objectives.rto.total_seconds()
    seconds = sum(restored["timings"].values())
    media = _is_media(policy, ref["category"])
    measured = restored["restored_bytes"] if media else restored.get("archive_bytes", 0)
    throughput = measured / seconds if seconds else 0.0
    store = stores.by_region(ref["region"])
    largest, largest_bytes = largest_backed_up(policy, store, ref["category"])
    projected = largest_bytes / throughput if throughput else float("inf")
    return {
        "restore_throughput_mb_per_s": round(throughput / 1e6, 2),
        "throughput_of": "listed bytes" if media else "dump (archive) bytes",
        "largest_production_target": largest,
        "largest_production_bytes": largest_bytes,
        "sized_from": f"newest backup manifests in {store.region.name}",
        "projected_restore_seconds": round(projected, 1),
        "rto_seconds": rto,
        "within_rto": projected <= rto,
    }


def _measured_projection(policy: Policy, restored: dict[str, Any]) -> dict[str, Any]:
    """dr_restore: the real restore, measured (no projection, no production server needed):
    the target's own steps and the time since the DR run began, against the RTO."""
    rto = policy.objectives.rto.total_seconds()
    seconds = sum(restored["timings"].values())
    elapsed = float(restored.get("seconds_since_run_start", seconds))
    throughput = restored["restored_bytes"] / seconds if seconds else 0.0
    return {
        "restore_throughput_mb_per_s": round(throughput / 1e6, 2),
        "restored_bytes": restored["restored_bytes"],
        "restore_seconds": round(seconds, 3),
        "seconds_since_run_start": round(elapsed, 3),
        "projected_restore_seconds": round(elapsed, 1),
        "rto_seconds": rto,
        "within_rto": elapsed <= rto,
    }


def report(
    policy: Policy,
    stores: Stores,
    ref: dict[str, str],
    restored: dict[str, Any] | None,
    validation: dict[str, Any] | None,
    run: dict[str, str],
    kind: str = "restore_verification",
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """Write the evidence record (JSON + Markdown) to both regions; return it. Built from what
    the run knows and the store: no production server is needed, so it works in a disaster.
    `problems` are failures the caller met (a refused backup, a failed swap)."""
    rto = policy.objectives.rto
    problems = list(problems or [])
    projection: dict[str, Any] = {}
    if restored is None:
        if not problems:
            problems.append("the restore did not complete (see the restore task's log)")
    else:
        if kind == "dr_restore":
            projection = _measured_projection(policy, restored)
            what = ref["target"]
        else:
            projection = _drill_projection(policy, stores, ref, restored)
            what = projection["largest_production_target"]
        if not projection["within_rto"]:
            projected = projection["projected_restore_seconds"]
            problems.append(
                f"restore of {what} takes {timedelta(seconds=round(projected))}, "
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
    # The random suffix keeps two records of one second apart; the stamp keeps them in order.
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    prefix = f"evidence/{kind}/{ref['target']}/{stamp}"
    written, unwritten = [], []
    for store in stores:  # one region down must not cost the evidence in the other
        try:
            body = json.dumps(document, indent=2, default=str) + "\n"
            store.put_json(f"{prefix}/report.json", body)
            store.put_bytes(
                f"{prefix}/report.md", render_markdown(document).encode(), "text/markdown"
            )
            written.append(store.region.name)
        except Exception:
            log.exception("Evidence could not be written to %s", store.region.name)
            unwritten.append(store.region.name)
    if not written:
        raise DrillFailed(f"evidence {prefix} could not be written to any region")
    document["evidence_prefix"] = prefix
    document["evidence_missing_in"] = unwritten
    log.info("Evidence written to %s/report.{json,md} in %s", prefix, ", ".join(written))
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
        *(
            [f"- Database it replaced: renamed aside to {steps['previous_database']} (kept)"]
            if steps.get("previous_database")
            else []
        ),
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
        f"- Projected (dr_restore: measured) restore: "
        f"{projection.get('projected_restore_seconds', '-')} s "
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


@dataclass
class Replaced:
    """How a database restore went: built and validated aside, then swapped in (or not)."""

    staging: str
    restore_seconds: float
    restored_bytes: int
    validation: ValidationReport
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
    check: Callable[[str], ValidationReport],
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


def failure_ref(
    target: Target, tier: str, region: str, window: str, destination: str
) -> dict[str, str]:
    """The evidence reference of a target whose restore failed before a backup was chosen."""
    return {
        "category": target.category,
        "target": target.name,
        "tier": tier,
        "window": window,
        "region": region,
        "reason": "no backup could be restored (see problems)",
        "destination": destination,
    }


def describe_failure(exc: BaseException) -> str:
    """A failure for the evidence: what happened, and whether the destination was changed."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SwapFailed):
        return text  # its message says where each database is
    return f"{text}; the destination was not touched"


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
                manifest = _manifest(store, selection)
                where = {"key_prefix": key_prefix, "dest_prefix": dest_prefix}
                restored = {
                    **media_restore.restore_snapshot(store, manifest, bucket, **where),
                    **_provenance(manifest),
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
    manifest = _manifest(store, selection)
    server = server_info(conn_id)
    staging = staging_name(database, run.get("run_id", began.isoformat()))
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch:
        # Downloaded and re-hashed before anything on the destination server changes.
        download = download_verified(store, manifest, Path(scratch) / "archive.pgdump")
        kept = pg_globals.read_verified(store, manifest)
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
        **_provenance(manifest),
    }
    return restored, replaced.validation, replaced.problems
