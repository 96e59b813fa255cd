"""The join, without I/O: evidence records in, the audit report out, a pure function of the
policy and the records. Every figure comes from a record: where there is none, the report says
"no evidence" instead of a number (a count of zero would be a claim)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta

from include.backup_dr.audit.findings import findings
from include.backup_dr.audit.records import (
    BackupRecord,
    BreakGlassRecord,
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
from include.backup_dr.audit.rows import (
    DrillRow,
    IntegrityFailure,
    IntegrityRow,
    PlannedDeletion,
    PruneRow,
    RecoveryRow,
)
from include.backup_dr.audit.windows import expected_windows, tier_windows
from include.backup_dr.policy import CONTINUOUS, Policy
from include.backup_dr.subjects import backup_subjects, drill_subjects


def period_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """The period as [first midnight, the midnight after the last day), in UTC."""
    return (
        datetime.combine(start, time(), UTC),
        datetime.combine(end + timedelta(days=1), time(), UTC),
    )


def run_period(logical_date: datetime, params: Mapping[str, str | None]) -> tuple[date, date]:
    """The period a yearly run reports on: params `from` / `to` when given, else the calendar
    year before the run."""
    first, last = params.get("from"), params.get("to")
    if first and last:
        return date.fromisoformat(first), date.fromisoformat(last)
    year = logical_date.astimezone(UTC).year - 1
    return date(year, 1, 1), date(year, 12, 31)


def drill_rpo(policy: Policy, category: str, tier: str | None) -> timedelta:
    """The RPO the drill's restore path answers for: the category's own (1 s, 2 h) for the
    continuous tier and media; a database dump serves the RPO for older data (6 h)."""
    cat = policy.categories[category]
    if tier == CONTINUOUS or cat.rpo_after is None:
        return cat.rpo
    return cat.rpo_after.rpo


def build_report(
    policy: Policy, records: Iterable[Record], start: date, end: date, now: datetime
) -> AuditReport:
    """Join the records into the report: a pure function of the policy and the records."""
    begin, stop = period_bounds(start, end)
    regions = tuple(r.name for r in policy.iter_regions())
    backups: dict[tuple[str, str, datetime], dict[str, BackupRecord]] = defaultdict(dict)
    checks: dict[tuple[str, str, datetime], dict[str, list[IntegrityRecord]]] = defaultdict(
        lambda: defaultdict(list)
    )
    counted: dict[tuple[str, str, str], list[IntegrityRecord]] = defaultdict(list)
    plans: dict[tuple[str, str], list[PruneRecord]] = defaultdict(list)
    refusals: dict[tuple[str, str], list[RefusalRecord]] = defaultdict(list)
    drills: dict[str, list[DrillRecord]] = defaultdict(list)
    dr_restores: list[DrillRecord] = []
    measured: dict[tuple[str, str], list[WindowRecord]] = defaultdict(list)
    failovers: list[FailoverRecord] = []
    glass: list[BreakGlassRecord] = []
    runs: list[RestoreRunRecord] = []
    samples: list[LockSample] = []
    first_seen: dict[str, datetime] = {}

    def seen(subject: str, at: datetime) -> None:
        first_seen[subject] = min(at, first_seen.get(subject, at))

    for record in records:
        match record:
            case FailoverRecord():
                if begin <= record.recorded_at < stop:
                    failovers.append(record)
            case FirstSeen():
                seen(record.subject, record.at)
            case RefusalRecord():
                if begin <= record.planned_at < stop:
                    refusals[(record.target, record.tier)].append(record)
            case BreakGlassRecord():
                if begin <= record.requested_at < stop:
                    glass.append(record)
            case RestoreRunRecord():
                if begin <= record.began_at < stop:
                    runs.append(record)
            case LockSample():
                samples.append(record)
            case BackupRecord():
                backups[(record.target, record.tier, record.window)][record.region] = record
                seen(record.target, record.window)
            case IntegrityRecord():
                checks[(record.target, record.tier, record.window)][record.region].append(record)
                seen(record.target, record.window)
                if begin <= record.window < stop:
                    counted[(record.target, record.tier, record.region)].append(record)
            case PruneRecord():
                if begin <= record.planned_at < stop:
                    plans[(record.target, record.tier)].append(record)
            case DrillRecord() if record.kind == "dr_restore":
                if begin <= record.recorded_at < stop:
                    dr_restores.append(record)
            case DrillRecord():
                if begin <= record.recorded_at < stop:
                    drills[record.subject].append(record)
            case WindowRecord():
                if begin <= record.measured_at < stop:
                    measured[(record.server, record.region)].append(record)
    grace = policy.compliance.grace
    windows, integrity, prune = [], [], []
    for item in backup_subjects(policy):
        schedule = _schedule(policy, item.category, item.tier)
        since, since_from = _since(policy, item.subject, first_seen.get(item.subject))
        counted_from = max(begin, datetime.combine(since, time(), UTC)) if since else begin
        expected = expected_windows(schedule, counted_from, stop, now - grace)
        row = tier_windows(
            item.subject,
            item.tier,
            schedule,
            expected,
            regions,
            backups,
            checks,
            begin,
            stop,
            grace,
        )
        windows.append(dataclasses.replace(row, since=since, since_from=since_from))
        for region in regions:
            integrity.append(_integrity_row(item.subject, item.tier, region, counted))
        prune.append(
            _prune_row(
                item.subject,
                item.tier,
                plans.get((item.subject, item.tier)),
                refusals.get((item.subject, item.tier), []),
            )
        )
    drill_rows = []
    for subject in drill_subjects(policy):
        found = drills.get(subject, [])
        newest = max(found, key=lambda d: d.recorded_at, default=None)
        category = _category_of(policy, subject)
        tier = newest.tier if newest else (CONTINUOUS if _is_server(policy, subject) else None)
        drill_rows.append(
            DrillRow(subject, newest, policy.objectives.rto, drill_rpo(policy, category, tier))
        )
    retention = (
        policy.categories[policy.continuous.category].tiers[CONTINUOUS].retention
        if policy.continuous is not None
        else timedelta(0)
    )
    recovery = tuple(
        RecoveryRow(
            server.name,
            region,
            retention,
            tuple(sorted(measured.get((server.name, region), []), key=lambda r: r.measured_at)),
        )
        for server in policy.continuous_servers()
        for region in regions
    )
    report = AuditReport(
        start,
        end,
        now,
        regions,
        tuple(windows),
        tuple(integrity),
        tuple(prune),
        tuple(drill_rows),
        recovery=recovery,
        failovers=tuple(sorted(failovers, key=lambda f: f.recorded_at)),
        refusals=tuple(
            sorted((r for found in refusals.values() for r in found), key=lambda r: r.planned_at)
        ),
        break_glass=tuple(sorted(glass, key=lambda g: g.requested_at)),
        dr_restores=tuple(
            DrillRow(
                d.subject,
                d,
                policy.objectives.rto,
                drill_rpo(policy, _category_of(policy, d.subject), d.tier),
            )
            for d in sorted(dr_restores, key=lambda d: d.recorded_at)
        ),
        restore_runs=tuple(sorted(runs, key=lambda r: r.began_at)),
        lock_samples=tuple(sorted(samples, key=lambda s: (s.region, s.key))),
        rto=policy.objectives.rto,
        failover_rpo=(
            policy.categories[policy.continuous.category].rpo
            if policy.continuous is not None
            else None
        ),
    )
    return AuditReport(**{**report.__dict__, "exceptions": tuple(findings(report))})


def _since(policy: Policy, subject: str, first: datetime | None) -> tuple[date | None, str | None]:
    """The day a subject's windows are counted from: the policy's `since`, else the day of its
    first evidence; a deployment that began last week has no year of missed windows."""
    declared = next((t.since for t in policy.targets if t.name == subject), None)
    if declared is not None:
        return declared, "policy"
    if first is not None:
        return first.astimezone(UTC).date(), "first evidence"
    return None, None


def _schedule(policy: Policy, category: str, tier: str) -> str:
    if tier == CONTINUOUS:
        assert policy.continuous is not None
        return policy.continuous.base_backup_schedule
    return policy.categories[category].tiers[tier].schedule


def _is_server(policy: Policy, subject: str) -> bool:
    return subject in {s.name for s in policy.continuous_servers()}


def _category_of(policy: Policy, subject: str) -> str:
    if _is_server(policy, subject):
        assert policy.continuous is not None
        return policy.continuous.category
    return policy.target(subject).category


def _integrity_row(
    subject: str, tier: str, region: str, counted: dict[tuple[str, str, str], list]
) -> IntegrityRow:
    found: list[IntegrityRecord] = [
        r for r in counted.get((subject, tier, region), []) if r.tier == tier
    ]
    if not found:
        return IntegrityRow(subject, tier, region, None, None, ())
    failures = tuple(
        IntegrityFailure(r.window, r.checked_at, r.failures)
        for r in sorted(found, key=lambda r: r.checked_at)
        if not r.ok
    )
    return IntegrityRow(subject, tier, region, len(found) - len(failures), len(failures), failures)


def _prune_row(
    subject: str, tier: str, found: list[PruneRecord] | None, refusals: list[RefusalRecord]
) -> PruneRow:
    refused = tuple(
        PlannedDeletion(r.planned_at, d.subject, d.reason)
        for r in sorted(refusals, key=lambda r: r.planned_at)
        for d in r.refused
    )
    if not found:
        return PruneRow(subject, tier, None, 0, 0, (), 0, (), refused)
    found = sorted(found, key=lambda p: p.planned_at)
    kept_anyway = {(r.planned_at, r.subject) for r in refused}
    return PruneRow(
        subject,
        tier,
        plans=len(found),
        executed=sum(p.executed for p in found),
        dry_runs=sum(p.dry_run for p in found),
        breaker_trips=tuple((p.planned_at, p.breaker) for p in found if p.breaker),
        kept=sum(p.kept for p in found),
        deletions=tuple(
            PlannedDeletion(p.planned_at, d.subject, d.reason)
            for p in found
            if p.executed
            for d in p.deletions
            if (p.planned_at, d.subject) not in kept_anyway
        ),
        refused=refused,
    )
