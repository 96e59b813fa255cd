"""The audit's reads and writes: evidence records streamed from both regions' stores, the
report built from them, and the report kept as evidence. Never Airflow's database.

Listings are streamed and each record becomes a small `records.Record` as it is read; records
are selected by the time stamped in their key before they are fetched, so a year of evidence
costs one GET per record of the period, not of all time. Evidence written to both regions
(prune plans, drills) is read once, from the first region that has it; integrity records are
per region, and so are manifests.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

from include.backup_dr.audit.join import build_report, period_bounds
from include.backup_dr.audit.records import (
    BackupRecord,
    BreakGlassRecord,
    Deletion,
    DrillRecord,
    FailoverRecord,
    FirstSeen,
    IntegrityRecord,
    LockSample,
    PruneRecord,
    Record,
    RefusalRecord,
    RestoreRunRecord,
    WindowRecord,
)
from include.backup_dr.audit.report import AuditReport
from include.backup_dr.catalogue import (
    MANIFEST_NAME,
    BackupId,
    Manifest,
    Verification,
    copy_from_listing,
    parse_window,
)
from include.backup_dr.evidence import REFUSALS_SUFFIX, evidence_key, write_files_everywhere
from include.backup_dr.immutability import expiry
from include.backup_dr.pitr.window import WINDOW_EVIDENCE
from include.backup_dr.policy import CONTINUOUS, Policy
from include.backup_dr.promotion import promoted_label
from include.backup_dr.store import ObjectStore
from include.backup_dr.subjects import backup_subjects, drill_subjects

log = logging.getLogger(__name__)

#: Backups per tier and region whose Object Lock the audit reads (manifest and artifact), and
#: integrity records per subject and region, chosen by a hash of their key: the same sample
#: from the same evidence, spread over the period.
LOCK_SAMPLE = 4


def build_audit(
    policy: Policy,
    stores: Iterable[ObjectStore],
    start: date,
    end: date,
    now: datetime | None = None,
) -> AuditReport:
    """The audit report of [start, end] (whole UTC days) from the evidence in `stores`."""
    regions = list(stores)
    now = now or datetime.now(UTC)
    return build_report(policy, read_records(policy, regions, start, end), start, end, now)


def read_records(
    policy: Policy, stores: Sequence[ObjectStore], start: date, end: date
) -> Iterator[Record]:
    """Every record the report of [start, end] reads, one at a time."""
    begin, stop = period_bounds(start, end)
    for item in backup_subjects(policy):
        tier_prefix = f"{item.category}/{item.subject}/{item.tier}/"
        for store in stores:
            yield from _backups(policy, store, tier_prefix, begin, stop)
    for category, subject in dict.fromkeys(
        (i.category, i.subject) for i in backup_subjects(policy)
    ):
        for store in stores:
            yield from _integrity(store, category, subject, begin)
    for item in backup_subjects(policy):
        prefix = f"evidence/prune/{item.category}/{item.subject}/{item.tier}/"
        for key, store in _stamped_once(stores, prefix, begin, stop):
            yield prune_record(key, store.get_json(key) or {})
    for key, store in _stamped_once(stores, "evidence/break-glass/", begin, stop):
        yield _break_glass(key, store.get_json(key) or {})
    for key, store in _stamped_once(stores, "evidence/estate/dr_restore/", begin, stop):
        yield _restore_run(key, store.get_json(key) or {})
    for server in policy.continuous_servers():
        for store in stores:  # per region: each region's window is its own
            prefix = f"{WINDOW_EVIDENCE}/{server.name}/{store.region.name}/"
            for key, found in _stamped_once([store], prefix, begin, stop):
                yield _window(key, found.get_json(key) or {})
    for subject in drill_subjects(policy):
        for kind in ("restore_verification", "dr_restore"):
            prefix = f"evidence/{kind}/{subject}/"
            for key, store in _stamped_once(stores, prefix, begin, stop, suffix="/report.json"):
                yield _drill(policy, key, store.get_json(key) or {}, kind)
    for server in policy.servers:
        prefix = f"evidence/failover/{server.name}/"
        for key, store in _stamped_once(stores, prefix, begin, stop):
            yield _failover(key, store.get_json(key) or {})


def _failover(key: str, doc: dict[str, Any]) -> FailoverRecord:
    loss = doc.get("loss") or {}
    when = doc.get("writable_at") or doc.get("preflight_at")
    return FailoverRecord(
        server=str(doc.get("server")),
        key=key,
        recorded_at=datetime.fromisoformat(when)
        if when
        else parse_window(key.rsplit("/", 1)[-1][:16]),
        planned=bool(doc.get("planned")),
        approved_by=doc.get("approved_by"),
        approval_to_writable_seconds=doc.get("approval_to_writable_seconds"),
        loss_seconds=loss.get("seconds"),
        lost_heartbeats=loss.get("heartbeats"),
        timeline=doc.get("timeline"),
        old_primary=str(doc.get("old_primary") or "no evidence"),
        problems=tuple(doc.get("problems") or ()),
    )


def _backups(
    policy: Policy, store: ObjectStore, prefix: str, begin: datetime, stop: datetime
) -> Iterator[BackupRecord | FirstSeen | LockSample]:
    """The period's backups of one tier in one region, the tier's first evidence (a manifest
    before the period counts), and the Object Lock of a sample of the period's backups."""
    listing = store.listing(prefix)
    if listing.manifests:
        first = min(listing.manifests)
        yield FirstSeen(first.target, first.window)
    found = []
    for backup, manifest in listing.manifests.items():
        if not begin <= backup.window < stop:
            continue
        verdict = copy_from_listing(listing, backup).verification
        found.append(backup)
        yield backup_record(manifest, store.region.name, verified=verdict is Verification.PASSED)
    if store.lock is not None:
        sample = sorted(found, key=lambda b: _sample_order(str(b)))
        for backup in sample[:LOCK_SAMPLE]:
            yield from _lock_samples(policy, store, backup, listing.manifests[backup].artifact.key)


def backup_record(manifest: Manifest, region: str, *, verified: bool) -> BackupRecord:
    """What the report reads of one region's manifest, and whether that copy passed its check."""
    backup = manifest.backup
    return BackupRecord(
        key=backup.key(MANIFEST_NAME),
        target=backup.target,
        tier=backup.tier,
        window=backup.window,
        region=region,
        finished_at=manifest.finished_at,
        run_id=manifest.run.get("run_id", ""),
        verified=verified,
        sha256=manifest.artifact.sha256,
        artifact_key=manifest.artifact.key,
        promoted_from=promoted_label(manifest.derived_from),
        not_derived=manifest.not_derived,
    )


def _lock_samples(
    policy: Policy, store: ObjectStore, backup: BackupId, artifact_key: str
) -> Iterator[LockSample]:
    """The lock of a kept backup's manifest and artifact against its need: prune may delete it
    from its window plus its tier's retention on (`immutability.expiry`)."""
    needed = expiry(policy, backup)
    for key in (backup.key(MANIFEST_NAME), artifact_key):
        yield LockSample(key, store.region.name, store.locked_until(key), needed)


def _stamp(key: str, prefix: str) -> datetime | None:
    """The time in a record key `<prefix><YYYYmmddTHHMMSSZ>-<id>...`; None for other keys."""
    try:
        return parse_window(key.removeprefix(prefix).split("-", 1)[0])
    except ValueError:
        return None


def _integrity(
    store: ObjectStore, category: str, subject: str, begin: datetime
) -> Iterator[IntegrityRecord | FirstSeen | LockSample]:
    """Checks stamped since the period began: a window of the period may be checked after it
    (a backfill), never before it. Also the subject's first evidence, and in a region that
    locks, the lock of a sample of the records (evidence is locked from its write for the
    evidence retention, which the audit year needs)."""
    prefix = f"evidence/integrity/{category}/{subject}/"
    first = True
    stamped: list[tuple[str, datetime]] = []
    for obj in store.list_objects(prefix):
        stamp = _stamp(obj.key, prefix)
        if stamp is None:
            continue
        if first:  # the listing is in time order: the subject's first evidence, ever
            yield FirstSeen(subject, stamp)
            first = False
        if stamp < begin:
            continue
        stamped.append((obj.key, stamp))
        doc = store.get_json(obj.key) or {}
        target, tier, label = str(doc.get("backup", "")).split("/")
        yield IntegrityRecord(
            key=obj.key,
            target=target,
            tier=tier,
            window=parse_window(label),
            region=doc.get("region", store.region.name),
            checked_at=datetime.fromisoformat(doc["checked_at"]),
            ok=bool(doc.get("ok")),
            failures=tuple(
                f"{c['name']}: {c['detail']}" for c in doc.get("checks", []) if not c.get("ok")
            ),
            sha256=doc.get("artifact_sha256"),
            promoted_from=promoted_label(doc.get("derived_from")),
            not_derived=doc.get("not_derived"),
            says_origin="derived_from" in doc,
        )
    if store.lock is not None:
        retention = store.lock.evidence_retention
        for key, stamp in sorted(stamped, key=lambda k: _sample_order(k[0]))[:LOCK_SAMPLE]:
            yield LockSample(key, store.region.name, store.locked_until(key), stamp + retention)


def _sample_order(key: str) -> bytes:
    """Where a key falls in the lock sample: a hash, so the sample spreads over the period."""
    return hashlib.sha256(key.encode()).digest()


def _stamped_once(
    stores: Sequence[ObjectStore],
    prefix: str,
    begin: datetime,
    stop: datetime,
    suffix: str = ".json",
) -> Iterator[tuple[str, ObjectStore]]:
    """Keys under `prefix` stamped in [begin, stop), each with the first region that has it
    (both regions hold the same record, unless a region was down when it was written)."""
    seen: set[str] = set()
    for store in stores:
        keys = [
            obj.key
            for obj in store.list_objects(prefix)
            if obj.key.endswith(suffix) and obj.key not in seen
        ]
        for key in keys:
            stamp = _stamp(key, prefix)
            if stamp is not None and begin <= stamp < stop:
                seen.add(key)
                yield key, store


def prune_record(key: str, doc: dict[str, Any]) -> PruneRecord | RefusalRecord:
    """A prune plan, or the refusals of one: told apart by the key, so that a refusals record
    written before it had its own shape (the plan again, `executed` and all, with the refused
    deletions added) is never read as a second executed plan."""
    if key.endswith(REFUSALS_SUFFIX):
        return RefusalRecord(
            key=key,
            target=doc["target"],
            tier=doc["tier"],
            planned_at=datetime.fromisoformat(doc["planned_at"]),
            refused=tuple(Deletion(r["subject"], r["reason"]) for r in doc.get("refused", [])),
            interrupted=doc.get("interrupted"),
        )
    decisions = doc.get("decisions", [])
    return PruneRecord(
        key=key,
        target=doc["target"],
        tier=doc["tier"],
        planned_at=datetime.fromisoformat(doc["planned_at"]),
        executed=bool(doc.get("executed")),
        dry_run=bool(doc.get("dry_run")),
        breaker=doc.get("circuit_breaker"),
        kept=sum(1 for d in decisions if d["action"] == "keep"),
        deletions=tuple(
            Deletion(d["subject"], d["reason"]) for d in decisions if d["action"] == "delete"
        ),
    )


def _break_glass(key: str, doc: dict[str, Any]) -> BreakGlassRecord:
    """A break-glass record; the operator who ran it approves it unless an approver is named."""
    operator = str(doc.get("operator") or NO_ONE)
    return BreakGlassRecord(
        key=key,
        requested_at=datetime.fromisoformat(doc["requested_at"]),
        backup=str(doc.get("backup")),
        region=str(doc.get("region")),
        operator=operator,
        approved_by=doc.get("approved_by") or doc.get("operator"),
        reason=str(doc.get("reason") or NO_ONE),
        outcome=str(doc.get("outcome") or "requested"),
    )


#: What a record that names nobody (or no reason) shows.
NO_ONE = "not recorded"


def _restore_run(key: str, doc: dict[str, Any]) -> RestoreRunRecord:
    wall = doc.get("wall_seconds")
    return RestoreRunRecord(
        key=key,
        began_at=datetime.fromisoformat(doc["began_at"]),
        wall_seconds=None if wall is None else float(wall),
        rto_seconds=float(doc.get("rto_seconds") or 0.0),
        within_rto=bool(doc.get("within_rto")),
        outcome=str(doc.get("outcome", "unknown")),
        problems=tuple(doc.get("problems") or ()),
        targets=tuple(str(t.get("target")) for t in doc.get("targets") or ()),
    )


def _window(key: str, doc: dict[str, Any]) -> WindowRecord:
    def at(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return WindowRecord(
        key=key,
        server=doc["server"],
        region=doc["region"],
        measured_at=datetime.fromisoformat(doc["measured_at"]),
        oldest=at(doc.get("oldest")),
        newest=at(doc.get("newest")),
        holes=tuple(
            (datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in doc["holes"]
        ),
    )


def _drill(policy: Policy, key: str, doc: dict[str, Any], kind: str) -> DrillRecord:
    backup = doc.get("backup") or {}
    steps = doc.get("steps") or {}
    projection = doc.get("projection") or {}
    timings = steps.get("timings") or {}
    tier = backup.get("tier")
    if tier == CONTINUOUS:
        proof = doc.get("proof") or {}
        rpo = proof.get("seconds_between_newest_and_target")
        measure = "newest restored heartbeat before T"
    else:
        rpo = steps.get("age_seconds")
        measure = "age of the restored backup"
    projected = projection.get("projected_restore_seconds")
    return DrillRecord(
        key=key.removesuffix("/report.json"),
        subject=doc["target"],
        recorded_at=datetime.fromisoformat(doc["recorded_at"]),
        outcome=str(doc.get("outcome", "unknown")),
        problems=tuple(doc.get("problems", [])),
        tier=tier,
        region=backup.get("region"),
        restore_seconds=sum(float(v) for v in timings.values()) if timings else None,
        projected_seconds=None if projected is None else float(projected),
        projected_of=projection.get("largest_production_target"),
        rpo_seconds=None if rpo is None else float(rpo),
        rpo_measure=measure,
        kind=kind,
    )


def evidence_prefix(report: AuditReport) -> str:
    """Where a report is kept: by its period, then the time it was made (unique)."""
    period = f"{report.start:%Y%m%d}-{report.end:%Y%m%d}"
    return evidence_key("audit", period, report.generated_at, ending="/")


def write_evidence(report: AuditReport, stores: Iterable[ObjectStore]) -> str:
    """report.md and report.html in both regions, under evidence.py's rule; the prefix they
    were written under."""
    prefix = evidence_prefix(report)
    files = {
        "report.md": (report.markdown().encode(), "text/markdown; charset=utf-8"),
        "report.html": (report.html().encode(), "text/html; charset=utf-8"),
    }
    written = write_files_everywhere(stores, prefix, files)
    log.info("Audit report written to %s{report.md,report.html} in %s", prefix, ", ".join(written))
    return prefix
