"""The point-in-time recovery drill (restore_verification, per continuous server): recover
to a recorded heartbeat + 0.5 s, prove it, validate the production databases, project the
measured throughput onto the RTO, and write the evidence (JSON + Markdown) to both regions."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from include.backup_dr.catalogue import build_catalogue
from include.backup_dr.evidence import evidence_key, write_files_everywhere
from include.backup_dr.pitr.heartbeat import HeartbeatSample, choose_sample, heartbeat_proof
from include.backup_dr.pitr.server import RecoveredServer, recover
from include.backup_dr.pitr.window import (
    BaseBackup,
    RecoveryRange,
    _provenance,
    check_target,
    choose_region,
    recovery_range,
)
from include.backup_dr.policy import CONTINUOUS, Policy, Target, format_duration
from include.backup_dr.postgres import database_of
from include.backup_dr.restore.errors import RestoreRefused
from include.backup_dr.restore.record import restore_rate, rto_projection
from include.backup_dr.restore.select import select_backup
from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)


# ---- validation and sizes -------------------------------------------------------------------


def production_targets(policy: Policy, server: str) -> list[Target]:
    """The production databases of a server, in priority order."""
    return [
        t
        for t in policy.targets_on(policy.subject(server, CONTINUOUS).category, server)
        if t.is_production
    ]


def key_facts(policy: Policy, store: ObjectStore, target: str, tier: str) -> tuple[dict, str]:
    """Tables and keys from the newest verified `tier` dump of `target` in this region, without
    row counts (nobody counted rows at T); and where they came from."""
    try:
        selection = select_backup(policy, store, target, tier)
    except RestoreRefused as exc:
        return {}, f"no key checks: {exc}"
    manifest = store.manifest(selection.backup)
    if manifest is None:
        return {}, f"no key checks: {selection.backup} has no manifest"
    tables = {name: {**facts, "rows": None} for name, facts in manifest.tables().items()}
    return tables, f"tables and keys from {selection.backup} in {selection.region}"


def merge_validations(validations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One validation document for several databases; each result names its database."""
    results = [
        {**result, "suite": f"{result['suite']} [{database}]"}
        for database, document in validations.items()
        for result in document["results"]
    ]
    failed = sum(1 for r in results if not r["success"])
    return {
        "ok": bool(results) and all(d["ok"] for d in validations.values()),
        "seconds": round(sum(d["seconds"] for d in validations.values()), 3),
        "evaluated": len(results),
        "passed": len(results) - failed,
        "failed": failed,
        "suites": sorted({r["suite"] for r in results}),
        "databases": {
            db: {k: d.get(k) for k in ("ok", "evaluated", "failed", "key_checks")}
            for db, d in validations.items()
        },
        "results": results,
    }


def validate_recovered(
    policy: Policy, store: ObjectStore, recovered: RecoveredServer, tier: str
) -> dict[str, Any]:
    """Business rules and key checks on every production database of the recovered server."""
    from include.backup_dr.restore.validation import validate_database

    validations = {}
    for target in production_targets(policy, recovered.server):
        assert target.database is not None
        tables, source = key_facts(policy, store, target.name, tier)
        log.info("Validating %s at %s: %s", target.database, recovered.target, source)
        result = validate_database(recovered.url(target.database), target.name, tables)
        validations[target.database] = {**result.to_document(), "key_checks": source}
    return merge_validations(validations)


def projection(
    policy: Policy, store: ObjectStore, restored_bytes: int, seconds: float
) -> dict[str, Any]:
    """The measured recovery throughput applied to the largest continuous server, sized from
    its newest base backup in `store` (not from production, which may be down), vs the RTO."""
    sizes = []
    for server in policy.continuous_servers():
        category = policy.subject(server.name, CONTINUOUS).category
        backups, _ = build_catalogue([store.listing(f"{category}/{server.name}/{CONTINUOUS}/")])
        if backups:
            newest = store.manifest(max(backups, key=lambda b: b.id.window).id)
            sizes.append((server.name, newest.artifact.size if newest else 0))
    largest, largest_bytes = max(sizes, key=lambda item: item[1], default=("-", 0))
    return rto_projection(
        restore_rate(restored_bytes, seconds) or 0.0,
        largest,
        largest_bytes,
        f"newest base backups in {store.region.name}",
        policy.objectives.rto,
    )


# ---- the drill -------------------------------------------------------------------------------


def drill(
    policy: Policy,
    stores: Any,
    server: str,
    params: dict[str, Any],
    run: dict[str, str],
    *,
    rng: random.Random | None = None,
    scratch_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Recover `server` to a random recorded heartbeat + 0.5 s, prove it, validate, record the evidence.
    The servers' primaries are the ones the store names now (`roles.follow`)."""
    from include.backup_dr.roles import follow

    policy = follow(policy, stores)
    settings = policy.restore_verification
    assert settings is not None
    rng = rng or random.SystemRandom()
    role = params.get("region") or settings.region
    other = "primary" if role == "secondary" else "secondary"
    preferred = recovery_range(policy, stores.role(role), server)
    alternative = recovery_range(policy, stores.role(other), server)
    why = f"the drill's region ({role}{': the DR path' if role == 'secondary' else ''})"
    span, reason = choose_region(preferred, alternative, why)
    store = stores.by_region(span.region)
    log.info("PITR drill of %s: %s", server, reason)

    problems: list[str] = []
    sample = choose_sample(store, span, rng) if span.oldest else None
    if sample is not None:
        target: datetime | None = sample.target_time
    elif span.oldest is not None and span.newest is not None:
        problems.append(
            f"no heartbeat recorded by the continuous monitor in {span.region} lies inside "
            "the recovery range with its WAL archived: 1-second granularity is not proven"
        )
        start, end = rng.choice(span.intervals)  # never inside a hole
        target = start + (end - start) * rng.uniform(0.001, 1)
    else:
        target = None
    proof = validation = restored = projected = None
    base = None
    try:
        if target is None:
            check_target(span, None)  # raises, naming what is missing
        with recover(
            policy, stores, server, span.region, target, scratch_dir, span=span
        ) as recovered:
            base = recovered.base
            if sample is not None:
                connection = recovered.connect(database_of(policy.server(server).conn_id))
                try:
                    proof = heartbeat_proof(connection, sample, target)
                finally:
                    connection.close()
                if not proof["ok"]:
                    problems.append(f"heartbeat proof failed: {json.dumps(proof)}")
            validation = validate_recovered(policy, store, recovered, settings.tier)
            restored_bytes = recovered.restored_bytes()
            listen = recovered.query("postgres", "SHOW listen_addresses")[0][0]
            restored = {
                "timings": dict(recovered.timings),
                "archive_bytes": recovered.archive_bytes,
                "restored_bytes": restored_bytes,
                "listen_addresses": listen,
                **_provenance(recovered.base),
            }
    except Exception as exc:  # any failure is a finding of the drill: recorded, then failed
        log.exception("PITR drill of %s failed", server)
        problems.append(f"recovery failed: {exc}")
    if restored is not None:
        projected = projection(
            policy, store, restored["restored_bytes"], sum(restored["timings"].values())
        )
        if not projected["within_rto"]:
            problems.append(
                f"projected recovery of {projected['largest_production_target']} takes "
                f"{timedelta(seconds=round(projected['projected_restore_seconds']))}, over the "
                f"RTO of {format_duration(policy.objectives.rto)}"
            )
    if validation is not None and not validation["ok"]:
        failed = [r for r in validation["results"] if not r["success"]]
        problems.append(
            f"{len(failed)} expectation(s) failed: "
            + "; ".join(f"{r['suite']}: {r['expectation']} on {r['table']}" for r in failed)
        )
    elif validation is None and not problems:
        problems.append("validation did not run")
    document = _document(
        policy,
        server,
        span,
        reason,
        base,
        target,
        sample,
        proof,
        restored,
        projected,
        validation,
        problems,
        run,
    )
    return write_evidence(stores, document)


def _document(
    policy: Policy,
    server: str,
    span: RecoveryRange,
    reason: str,
    base: BaseBackup | None,
    target: datetime | None,
    sample: HeartbeatSample | None,
    proof: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    projected: dict[str, Any] | None,
    validation: dict[str, Any] | None,
    problems: list[str],
    run: dict[str, str],
) -> dict[str, Any]:
    """The drill's evidence record, shaped like restore.record's (render_markdown reads it)."""
    category = policy.subject(server, CONTINUOUS).category
    return {
        "schema": "backup-dr/restore_verification/pitr/v1",
        "kind": "restore_verification",
        "target": server,
        "backup": {
            "category": category,
            "target": server,
            "tier": CONTINUOUS,
            "window": base.id.window.isoformat() if base else "-",
            "region": span.region,
        },
        "selection_reason": reason,
        "restored_into": "a throwaway PostgreSQL server on a private Unix socket (no TCP port), "
        "deleted afterwards",
        "recorded_at": datetime.now(UTC).isoformat(),
        "run": run,
        "recovery_range": span.to_document(),
        "target_time": target.isoformat() if target else None,
        "heartbeat_sample": sample.to_document() if sample else None,
        "proof": proof,
        "steps": restored,
        "projection": projected or {},
        "validation": validation,
        "outcome": "passed" if not problems else "failed",
        "problems": problems,
    }


def write_evidence(stores: Any, document: dict[str, Any]) -> dict[str, Any]:
    """report.json + report.md under a unique prefix, in both regions under evidence.py's rule;
    the document, with where it is and the regions it is missing in."""
    from include.backup_dr.restore.record import render_markdown

    stores = list(stores)
    prefix = evidence_key(document["kind"], document["target"], datetime.now(UTC), ending="")
    page = render_markdown(document) + render_pitr_markdown(document)
    files = {
        "report.json": (
            (json.dumps(document, indent=2, default=str) + "\n").encode(),
            "application/json",
        ),
        "report.md": (page.encode(), "text/markdown"),
    }
    written = write_files_everywhere(stores, prefix + "/", files)
    log.info("PITR evidence written to %s/report.{json,md} in %s", prefix, ", ".join(written))
    missing = [s.region.name for s in stores if s.region.name not in written]
    return {**document, "evidence_prefix": prefix, "evidence_missing_in": missing}


def render_pitr_markdown(document: dict[str, Any]) -> str:
    """The PITR facts an auditor looks for, appended to the common restore page."""
    span = document.get("recovery_range") or {}
    proof = document.get("proof") or {}
    sample = document.get("heartbeat_sample") or {}
    lines = [
        "## Point-in-time recovery",
        "",
        f"- Recoverable in {span.get('region', '?')}: after {span.get('oldest')} up to "
        f"{span.get('newest')} (WAL: {span.get('wal', '?')})",
        f"- Target time T: {document.get('target_time')}",
        f"- Heartbeat chosen: seq {sample.get('seq', '-')} written at "
        f"{sample.get('written_at', '-')} (next at {sample.get('next_written_at', '-')})",
        f"- Heartbeat present after recovery: {proof.get('seq_present', '-')}",
        f"- Heartbeats written after T: {proof.get('heartbeats_after_target', '-')}",
        f"- Newest restored heartbeat: seq {proof.get('newest_restored_seq', '-')} at "
        f"{proof.get('newest_restored_written_at', '-')} "
        f"({proof.get('seconds_between_newest_and_target', '-')} s before T)",
        f"- 1-second granularity proven: {'yes' if proof.get('ok') else 'NO'}",
        "",
    ]
    return "\n".join(lines)


def drill_servers(policy: Policy, params: dict[str, Any]) -> list[str]:
    """Servers whose PITR the drill proves: all continuous ones, or the one named in `target`.
    A database or media `target` is a single-target drill: no PITR then."""
    servers = [s.name for s in policy.continuous_servers()]
    chosen = params.get("target")
    if chosen:
        return [chosen] if chosen in servers else []
    return servers
