"""The restore drill (`restore_verification`) and disaster recovery (`dr_restore`), step by step.

A drill restores a backup into a fresh sandbox database, validates it with Great Expectations,
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

from include.backup_dr.pipeline import Stores
from include.backup_dr.policy import Policy, format_duration
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
    if params.get("target"):
        targets = [policy.target(params["target"])]
    else:
        targets = [
            t
            for t in sorted(policy.targets, key=lambda t: (t.priority, t.name))
            if t.is_production and policy.categories[t.category].engine == "pg_dump"
        ]
    chosen = []
    for target in targets:
        if reason := target.skip_reason():
            raise RestoreRefused(reason)
        selection = select_backup(policy, store, target.name, tier, window)
        log.info("Restoring %s from %s: %s", selection.backup, selection.region, selection.reason)
        chosen.append(selection.to_ref())
    return chosen


def provision(policy: Policy, ref: dict[str, str], run_id: str) -> dict[str, str]:
    """Create a fresh, uniquely named database on the sandbox server (never a production one)."""
    drill = policy.restore_verification
    assert drill is not None
    server = guard_sandbox(policy, drill.sandbox_conn_id)
    name = sandbox_name(ref["target"], run_id)
    drop_database(server, name)
    create_database(server, name)
    log.info("Sandbox database %s created on %s:%s", name, server.host, server.port)
    return {**ref, "sandbox": name}


def restore_into(
    policy: Policy, stores: Stores, selection: Selection, conn_id: str, database: str, jobs: int
) -> dict[str, Any]:
    """Download (re-hashing against the manifest) and pg_restore into an existing database."""
    store = stores.by_region(selection.region)
    manifest = store.manifest(selection.backup)
    if manifest is None:
        raise RestoreRefused(f"{selection.backup}: no manifest in {selection.region}")
    server = server_info(conn_id)
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch:
        download = download_verified(store, manifest, Path(scratch) / "archive.pgdump")
        restore_seconds = pg_restore(download.path, server, database, jobs)
    size = database_size(server, database)
    return {
        "archive_bytes": download.size,
        "database_bytes": size,
        "download_seconds": round(download.seconds, 3),
        "pg_restore_seconds": round(restore_seconds, 3),
        "age_seconds": round((datetime.now(UTC) - manifest.finished_at).total_seconds()),
        "taken_at": manifest.finished_at.isoformat(),
        "sha256": manifest.artifact.sha256,
    }


def validate(policy: Policy, stores: Stores, selection: Selection, conn_id: str, database: str):
    """Run the manifest suite and the target's business-rule suite with Great Expectations."""
    from include.backup_dr.validation import validate_database

    manifest = stores.by_region(selection.region).manifest(selection.backup)
    assert manifest is not None
    server = server_info(conn_id)
    url = (
        f"postgresql+psycopg2://{server.user}:{server.env.get('PGPASSWORD', '')}"
        f"@{server.host}:{server.port}/{database}"
    )
    return validate_database(url, selection.backup.target, manifest.tables())


def largest_production_database(policy: Policy) -> tuple[str, int]:
    """The largest production database the policy backs up, measured on its server now."""
    sizes = []
    for target in policy.targets:
        if not target.is_production or policy.categories[target.category].engine != "pg_dump":
            continue
        server = server_info(policy.server(target.server).conn_id)
        sizes.append((target.name, database_size(server, target.database)))
    return max(sizes, key=lambda item: item[1])


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
        seconds = restored["download_seconds"] + restored["pg_restore_seconds"]
        throughput = restored["database_bytes"] / seconds if seconds else 0.0
        largest, largest_bytes = largest_production_database(policy)
        projected = largest_bytes / throughput if throughput else float("inf")
        projection = {
            "restore_throughput_mb_per_s": round(throughput / 1e6, 2),
            "largest_production_database": largest,
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
        "restored_into": ref.get("sandbox") or ref.get("database"),
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
        f"| download + SHA-256 check | {steps.get('download_seconds', '-')} |",
        f"| pg_restore | {steps.get('pg_restore_seconds', '-')} |",
        f"| validation | {validation.get('seconds', '-')} |",
        "",
        "## Recovery time objective",
        "",
        f"- Restore throughput: {projection.get('restore_throughput_mb_per_s', '-')} MB/s",
        f"- Largest production database: {projection.get('largest_production_database', '-')} "
        f"({projection.get('largest_production_bytes', '-')} bytes)",
        f"- Projected full restore: {projection.get('projected_restore_seconds', '-')} s "
        f"against an RTO of {projection.get('rto_seconds', '-')} s",
        "",
        "## Expectations (Great Expectations)",
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


def teardown(policy: Policy, target: str, run_id: str) -> bool:
    """Drop the drill's sandbox database; safe to call whether or not it was created."""
    drill = policy.restore_verification
    assert drill is not None
    server = guard_sandbox(policy, drill.sandbox_conn_id)
    dropped = drop_database(server, sandbox_name(target, run_id))
    log.info("Sandbox for %s %s", target, "dropped" if dropped else "was not there")
    return dropped


def restore_for_recovery(
    policy: Policy,
    stores: Stores,
    params: dict[str, Any],
    run: dict[str, str],
) -> list[dict[str, Any]]:
    """dr_restore: restore named targets into a connection, in the policy's priority order."""
    if str(params.get("confirm", "")).strip().lower() != "restore":
        raise RestoreRefused(
            "dr_restore needs the param confirm='restore' to run; nothing was restored"
        )
    names = params.get("targets") or []
    if not names:
        raise RestoreRefused("dr_restore needs at least one target in the param 'targets'")
    targets = sorted((policy.target(n) for n in names), key=lambda t: (t.priority, t.name))
    conn_id = params["connection"]
    server = server_info(conn_id)
    store = stores.role(params.get("region") or "secondary")
    window = datetime.fromisoformat(params["backup"]) if params.get("backup") else None
    if window is not None and len(targets) > 1:
        raise RestoreRefused("a chosen backup window applies to one target only")
    tier = params.get("tier") or "daily"
    for target in targets:  # check every target first: refuse before changing anything
        occupied = database_exists(server, target.database) and not database_is_empty(
            server, target.database
        )
        if occupied and not params.get("overwrite"):
            raise RestoreRefused(
                f"database {target.database} on {server.host}:{server.port} is not empty; "
                "set overwrite=true to replace it"
            )
    records = []
    for order, target in enumerate(targets, start=1):
        selection = select_backup(policy, store, target.name, tier, window)
        log.info("[%d/%d] restoring %s: %s", order, len(targets), target.name, selection.reason)
        drop_database(server, target.database)
        create_database(server, target.database)
        started = datetime.now(UTC)
        restored = restore_into(policy, stores, selection, conn_id, target.database, 2)
        validation = validate(policy, stores, selection, conn_id, target.database).to_document()
        ref = {**selection.to_ref(), "database": f"{target.database} via {conn_id}"}
        document = report(
            policy,
            stores,
            ref,
            {**restored, "order": order, "started_at": started.isoformat()},
            validation,
            run,
            kind="dr_restore",
        )
        records.append(document)
    return records
