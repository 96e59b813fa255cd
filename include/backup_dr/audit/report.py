"""The annual audit report, without I/O: evidence records in, a report model out, rendered as
Markdown and HTML from the same blocks.

A window is *expected* when the tier's cron schedule fires in the period, on or after the day
the target entered the policy (its `since`, else its first evidence), and the backup has had
`compliance.grace` to be taken, copied and checked. It is *backed up* when the window's artifact
(by SHA-256: the newest manifest's, else the newest check's once pruned) passed its integrity
check in every region (the copy's own verdict while the manifest is kept, or a kept integrity
record of that same artifact once the prune has deleted it); a pass of another artifact of the
window proves nothing. Otherwise it is *missed*, and the report says what is lacking where.
Every figure comes from a record: where there is none, the report says "no evidence" instead of
a number (a count of zero would be a claim).

Every exception is tagged with the ISO/IEC 27001:2022 Annex A control it bears on (`CONTROLS`).
"""

from __future__ import annotations

import dataclasses
import html
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple

from croniter import croniter

from include.backup_dr.monitor.output import human
from include.backup_dr.monitor.subjects import backup_subjects, drill_subjects
from include.backup_dr.policy import CONTINUOUS, Policy, format_duration

NO_EVIDENCE = "no evidence"
BACKFILL_PREFIX = "backfill__"

#: ISO/IEC 27001:2022 Annex A controls each part of the report supports; every exception is
#: tagged with one or more of them.
BACKUP_CONTROL = "A.8.13"
CONTINUITY_CONTROL = "A.5.29, A.5.30"
#: A deletion the store refused: data kept longer than the policy says it is needed.
DELETION_CONTROL = "A.8.10"
#: A locked backup deleted through the privileged break-glass connection.
BREAK_GLASS_CONTROL = "A.8.2, A.8.13"
#: An evidence record left incomplete (an act without its outcome, a prune that died).
LOGGING_CONTROL = "A.8.15"
#: A kept object whose Object Lock does not reach what its retention needs.
LOCK_CONTROL = "A.8.13, A.5.33"
CONTROLS = (
    ("A.8.13", "Information backup: backups taken, copied to a second region, checked, pruned"),
    ("A.5.29", "Information security during disruption: restores proven from the DR region"),
    ("A.5.30", "ICT readiness for business continuity: restore time and data loss measured"),
    ("A.8.2", "Privileged access rights: each break-glass deletion, its reason and approver"),
    ("A.8.10", "Information deletion: what prune deleted, and what the store refused"),
    ("A.8.15", "Logging: evidence records complete (outcomes recorded, prunes not cut short)"),
    ("A.5.33", "Protection of records: backups and evidence held by Object Lock (sampled)"),
)


# ---- records: one per evidence document, only the fields the report reads --------------------


@dataclass(frozen=True)
class BackupRecord:
    """A committed manifest in one region, with the verdict of the check stored beside it."""

    key: str
    target: str
    tier: str
    window: datetime
    region: str
    finished_at: datetime
    run_id: str
    verified: bool
    #: The artifact the manifest vouches for, and where it is.
    sha256: str
    artifact_key: str


@dataclass(frozen=True)
class IntegrityRecord:
    """A kept integrity check of one region's copy (evidence/integrity/...)."""

    key: str
    target: str
    tier: str
    window: datetime
    region: str
    checked_at: datetime
    ok: bool
    failures: tuple[str, ...] = ()
    #: The artifact the check re-hashed (None in records older than that field).
    sha256: str | None = None


class Deletion(NamedTuple):
    subject: str
    reason: str


@dataclass(frozen=True)
class PruneRecord:
    """One prune plan (evidence/prune/...): how many copies it kept, and each deletion's reason."""

    key: str
    target: str
    tier: str
    planned_at: datetime
    executed: bool
    dry_run: bool
    breaker: str | None
    kept: int
    deletions: tuple[Deletion, ...]


@dataclass(frozen=True)
class RefusalRecord:
    """Deletions a prune planned and the store refused (evidence/prune/...-refused.json):
    kept under Object Lock longer than the plan knew. Never a deletion."""

    key: str
    target: str
    tier: str
    planned_at: datetime
    refused: tuple[Deletion, ...]
    #: The error that stopped the prune after these refusals; None when it ran to the end.
    interrupted: str | None


@dataclass(frozen=True)
class BreakGlassRecord:
    """A locked backup deleted through the break-glass connection (evidence/break-glass/...)."""

    key: str
    requested_at: datetime
    backup: str
    region: str
    operator: str
    approved_by: str | None
    reason: str
    outcome: str


@dataclass(frozen=True)
class RestoreRunRecord:
    """One dr_restore run as a whole (evidence/estate/dr_restore/...): the estate's wall time
    from the first restore's start to the last record, against the RTO."""

    key: str
    began_at: datetime
    wall_seconds: float | None
    rto_seconds: float
    within_rto: bool
    outcome: str
    problems: tuple[str, ...]
    targets: tuple[str, ...]


@dataclass(frozen=True)
class LockSample:
    """One sampled kept object's Object Lock against what its retention needs: prune may
    delete a backup from its window plus its tier's retention on, so the lock must reach that;
    an evidence record is needed for the evidence retention from when it was written."""

    key: str
    region: str
    retain_until: datetime | None  # None: not locked
    needed: datetime

    @property
    def covered(self) -> bool:
        return self.retain_until is not None and self.retain_until >= self.needed


@dataclass(frozen=True)
class FirstSeen:
    """The earliest evidence of a subject in the stores, before the period or in it."""

    subject: str
    at: datetime


@dataclass(frozen=True)
class DrillRecord:
    """One restore (evidence/restore_verification/... for a drill, evidence/dr_restore/... for
    a DR restore), with what it measured."""

    key: str
    subject: str
    recorded_at: datetime
    outcome: str
    problems: tuple[str, ...]
    tier: str | None
    region: str | None
    #: The restore's own steps, in seconds (download, hash, pg_restore or WAL replay).
    restore_seconds: float | None
    #: The drill's projection for the largest production target, against the RTO.
    projected_seconds: float | None
    projected_of: str | None
    #: Data loss measured: PITR, the newest restored heartbeat's distance from T; otherwise the
    #: restored backup's age when the drill restored it.
    rpo_seconds: float | None
    rpo_measure: str
    kind: str = "restore_verification"


@dataclass(frozen=True)
class WindowRecord:
    """The continuous tier's recovery window in one region as its prune left it
    (evidence/recovery_window/...): how far back it reached, and its holes."""

    key: str
    server: str
    region: str
    measured_at: datetime
    oldest: datetime | None
    newest: datetime | None
    holes: tuple[tuple[datetime, datetime], ...] = ()


@dataclass(frozen=True)
class FailoverRecord:
    """One failover (evidence/failover/...): who approved it, what it lost, what is left."""

    server: str
    key: str
    recorded_at: datetime  # when the server took writes again (else the preflight)
    planned: bool
    approved_by: str | None
    approval_to_writable_seconds: float | None
    loss_seconds: float | None
    lost_heartbeats: int | None
    timeline: int | None
    old_primary: str
    problems: tuple[str, ...]


Record = (
    BackupRecord
    | IntegrityRecord
    | PruneRecord
    | RefusalRecord
    | BreakGlassRecord
    | DrillRecord
    | RestoreRunRecord
    | FailoverRecord
    | WindowRecord
    | LockSample
    | FirstSeen
)


# ---- the report model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Backfilled:
    window: datetime
    how: str


@dataclass(frozen=True)
class Missed:
    window: datetime
    why: str


@dataclass(frozen=True)
class TierWindows:
    """Expected windows of one subject's tier against those backed up in every region."""

    subject: str
    tier: str
    schedule: str
    expected: tuple[datetime, ...]
    backed_up: tuple[datetime, ...]
    missed: tuple[Missed, ...]
    backfilled: tuple[Backfilled, ...]
    #: Backups of windows the schedule does not fire (a manual run), verified everywhere.
    unscheduled: int
    has_evidence: bool
    #: The day windows are counted from, and what says so ("policy", "first evidence");
    #: None: no date known, the whole period counts.
    since: date | None = None
    since_from: str | None = None


@dataclass(frozen=True)
class IntegrityFailure:
    window: datetime
    checked_at: datetime
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class IntegrityRow:
    subject: str
    tier: str
    region: str
    passed: int | None  # None: no record
    failed: int | None
    failures: tuple[IntegrityFailure, ...]


@dataclass(frozen=True)
class PlannedDeletion:
    planned_at: datetime
    subject: str
    reason: str


@dataclass(frozen=True)
class PruneRow:
    subject: str
    tier: str
    plans: int | None  # None: no record
    executed: int
    dry_runs: int
    breaker_trips: tuple[tuple[datetime, str], ...]
    kept: int
    deletions: tuple[PlannedDeletion, ...]  # of executed plans only, less what was refused
    refused: tuple[PlannedDeletion, ...] = ()


@dataclass(frozen=True)
class DrillRow:
    subject: str
    drill: DrillRecord | None  # None: no drill in the period
    rto: timedelta
    rpo: timedelta

    @property
    def within_rto(self) -> bool | None:
        if self.drill is None or self.drill.projected_seconds is None:
            return None
        return self.drill.projected_seconds <= self.rto.total_seconds()

    @property
    def within_rpo(self) -> bool | None:
        if self.drill is None or self.drill.rpo_seconds is None:
            return None
        return self.drill.rpo_seconds <= self.rpo.total_seconds()


@dataclass(frozen=True)
class RecoveryRow:
    """One continuous server's recovery window in one region over the period."""

    server: str
    region: str
    retention: timedelta
    records: tuple[WindowRecord, ...]

    @property
    def shortest(self) -> tuple[timedelta, datetime] | None:
        """The shortest reach back (now minus the oldest reachable second), and when."""
        reaches = [
            (r.measured_at - r.oldest, r.measured_at) for r in self.records if r.oldest is not None
        ]
        return min(reaches, default=None)

    @property
    def holes(self) -> list[tuple[datetime, datetime, datetime]]:
        """(measured at, hole start, hole end) for each hole inside the retention, deduplicated."""
        seen: dict[tuple[datetime, datetime], datetime] = {}
        for record in self.records:
            for start, end in record.holes:
                if end > record.measured_at - self.retention:
                    seen.setdefault((start, end), record.measured_at)
        return [(at, start, end) for (start, end), at in sorted(seen.items())]


@dataclass(frozen=True)
class Finding:
    control: str
    text: str


@dataclass(frozen=True)
class AuditReport:
    start: date
    end: date
    generated_at: datetime
    regions: tuple[str, ...]
    windows: tuple[TierWindows, ...]
    integrity: tuple[IntegrityRow, ...]
    prune: tuple[PruneRow, ...]
    drills: tuple[DrillRow, ...]
    exceptions: tuple[Finding, ...] = field(default=())
    recovery: tuple[RecoveryRow, ...] = field(default=())
    failovers: tuple[FailoverRecord, ...] = field(default=())
    refusals: tuple[RefusalRecord, ...] = field(default=())
    break_glass: tuple[BreakGlassRecord, ...] = field(default=())
    dr_restores: tuple[DrillRow, ...] = field(default=())
    restore_runs: tuple[RestoreRunRecord, ...] = field(default=())
    lock_samples: tuple[LockSample, ...] = field(default=())
    #: What a failover answers for: the RTO, and the RPO of the streaming servers' category.
    rto: timedelta | None = None
    failover_rpo: timedelta | None = None

    def markdown(self) -> str:
        return render_markdown(blocks(self))

    def html(self) -> str:
        return render_html(blocks(self), f"Backup audit {self.start} to {self.end}")


# ---- the join ----------------------------------------------------------------------------------


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


def expected_windows(
    schedule: str, start: datetime, end: datetime, due_by: datetime
) -> list[datetime]:
    """Every fire time of `schedule` in [start, end) that is no later than `due_by`."""
    fires = croniter(schedule, start - timedelta(seconds=1))
    found = []
    while (fire := fires.get_next(datetime)) < end and fire <= due_by:
        found.append(fire.astimezone(UTC))
    return found


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
        row = _tier_windows(
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


def _tier_windows(
    subject: str,
    tier: str,
    schedule: str,
    expected: list[datetime],
    regions: tuple[str, ...],
    backups: dict[tuple[str, str, datetime], dict[str, BackupRecord]],
    checks: dict[tuple[str, str, datetime], dict[str, list[IntegrityRecord]]],
    begin: datetime,
    stop: datetime,
    grace: timedelta,
) -> TierWindows:
    def evidence(window: datetime) -> Evidence:
        return Evidence(
            backups.get((subject, tier, window), {}), checks.get((subject, tier, window), {})
        )

    backed_up, missed, backfilled = [], [], []
    for window in expected:
        found = evidence(window)
        if found.verified_everywhere(regions):
            backed_up.append(window)
            if how := found.filled_late(window, grace):
                backfilled.append(Backfilled(window, how))
        else:
            missed.append(Missed(window, found.why_missed(regions)))
    scheduled = set(expected)
    seen = {w for (s, t, w) in (*backups, *checks) if s == subject and t == tier}
    unscheduled = sum(
        1
        for w in seen
        if begin <= w < stop and w not in scheduled and evidence(w).verified_everywhere(regions)
    )
    return TierWindows(
        subject,
        tier,
        schedule,
        tuple(expected),
        tuple(backed_up),
        tuple(missed),
        tuple(backfilled),
        unscheduled,
        has_evidence=bool(seen),
    )


@dataclass(frozen=True)
class Evidence:
    """What the records say about one window: its manifests and its kept checks, by region."""

    copies: dict[str, BackupRecord]
    checks: dict[str, list[IntegrityRecord]]

    @property
    def artifact(self) -> str | None:
        """The SHA-256 of the window's artifact: the newest manifest's; once the manifests are
        pruned, the newest check's (what the window last held)."""
        if self.copies:
            return max(self.copies.values(), key=lambda c: c.finished_at).sha256
        kept = [c for found in self.checks.values() for c in found]
        return max(kept, key=lambda c: c.checked_at).sha256 if kept else None

    def verified_in(self, region: str) -> bool:
        """The window's own artifact passed its check in `region`: the copy's verdict while
        its manifest is kept, else a kept record of a check of that same artifact."""
        artifact = self.artifact
        copy = self.copies.get(region)
        if copy is not None:
            return copy.verified and copy.sha256 == artifact
        return any(c.ok and c.sha256 == artifact for c in self.checks.get(region, []))

    def verified_everywhere(self, regions: Iterable[str]) -> bool:
        return all(self.verified_in(region) for region in regions)

    def filled_late(self, window: datetime, grace: timedelta) -> str | None:
        """How a backed-up window was filled late: by a backfill run, or long after its window
        (from the manifest; from the first passed check once the manifest is pruned)."""
        for copy in self.copies.values():
            if copy.run_id.startswith(BACKFILL_PREFIX):
                return f"backfill run {copy.run_id}"
        if self.copies:
            finished = min(c.finished_at for c in self.copies.values())
            if finished - window > grace:
                return f"taken {human(finished - window)} after its window"
            return None
        passed = [c.checked_at for kept in self.checks.values() for c in kept if c.ok]
        if passed and min(passed) - window > grace:
            return f"first verified {human(min(passed) - window)} after its window (since pruned)"
        return None

    def why_missed(self, regions: Iterable[str]) -> str:
        if not self.copies and not self.checks:
            return "no backup in any region"
        parts = []
        for region in regions:
            if self.verified_in(region):
                continue
            if any(not c.ok for c in self.checks.get(region, [])):
                parts.append(f"integrity check failed in {region}")
            elif region in self.copies:
                parts.append(f"unverified in {region}")
            else:
                parts.append(f"no copy in {region}")
        return "; ".join(parts)


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


def findings(report: AuditReport) -> Iterator[Finding]:
    """Every exception the report shows, each with the control it bears on."""
    for row in report.windows:
        name = f"{row.subject}/{row.tier}"
        if not row.has_evidence:
            yield Finding(BACKUP_CONTROL, f"{name}: {NO_EVIDENCE} of any backup in the period")
        elif row.missed:
            shown = ", ".join(_when(m.window) for m in row.missed[:5])
            more = f" and {len(row.missed) - 5} more" if len(row.missed) > 5 else ""
            yield Finding(
                BACKUP_CONTROL,
                f"{name}: {len(row.missed)} of {len(row.expected)} windows missed ({shown}{more})",
            )
        for late in row.backfilled:
            yield Finding(
                BACKUP_CONTROL,
                f"{name}: window {_when(late.window)} filled late: {late.how}",
            )
    for row in report.integrity:
        for failure in row.failures:
            yield Finding(
                BACKUP_CONTROL,
                f"{row.subject}/{row.tier}@{row.region}: integrity check of window "
                f"{_when(failure.window)} failed: {'; '.join(failure.reasons) or '?'}",
            )
    for row in report.prune:
        for at, why in row.breaker_trips:
            yield Finding(
                BACKUP_CONTROL,
                f"{row.subject}/{row.tier}: prune stopped by the circuit breaker at "
                f"{_when(at)}: {why}",
            )
    for row in report.prune:
        for refused in row.refused:
            yield Finding(
                DELETION_CONTROL,
                f"{row.subject}/{row.tier}: deletion of {refused.subject} refused by the store "
                f"(prune of {_when(refused.planned_at)}): {refused.reason}",
            )
    for refusal in report.refusals:
        if refusal.interrupted:
            yield Finding(
                LOGGING_CONTROL,
                f"{refusal.target}/{refusal.tier}: prune of {_when(refusal.planned_at)} stopped "
                f"before its end: {refusal.interrupted}",
            )
    for glass in report.break_glass:
        yield Finding(
            BREAK_GLASS_CONTROL,
            f"{glass.backup}@{glass.region}: {glass.outcome} through break glass on "
            f"{_when(glass.requested_at)} by {glass.operator}, approved by "
            f"{glass.approved_by or NO_EVIDENCE}: {glass.reason}",
        )
        if glass.outcome == "requested":
            yield Finding(
                LOGGING_CONTROL,
                f"{glass.backup}@{glass.region}: break glass of {_when(glass.requested_at)} "
                "has no recorded outcome",
            )
    for sample in report.lock_samples:
        if not sample.covered:
            held = (
                f"locked until {_when(sample.retain_until)}"
                if sample.retain_until is not None
                else "not locked"
            )
            yield Finding(
                LOCK_CONTROL,
                f"{sample.key}@{sample.region}: {held}; its retention needs {_when(sample.needed)}",
            )
    for row in report.recovery:
        name = f"{row.server}@{row.region}"
        shortest = row.shortest
        if not row.records:
            yield Finding(BACKUP_CONTROL, f"{name}: {NO_EVIDENCE} of the recovery window")
        elif shortest is not None and shortest[0] < row.retention:
            yield Finding(
                BACKUP_CONTROL,
                f"{name}: the recovery window reached back only {human(shortest[0])} at "
                f"{_when(shortest[1])}; the policy keeps {format_duration(row.retention)}",
            )
        for at, start, end in row.holes:
            yield Finding(
                BACKUP_CONTROL,
                f"{name}: hole in the recovery window, no recovery to {_when(start)} .. "
                f"{_when(end)} (seen {_when(at)})",
            )
    for failover in report.failovers:  # a disruption is always worth an auditor's eye
        over = [
            f"{what} over the {name} of {format_duration(limit)}"
            for what, name, value, limit in (
                ("approval to writable", "RTO", failover.approval_to_writable_seconds, report.rto),
                ("loss", "RPO", failover.loss_seconds, report.failover_rpo),
            )
            if _within(value, limit) is False
        ]
        yield Finding(
            CONTINUITY_CONTROL,
            f"{failover.server}: {'switchover' if failover.planned else 'failover'} on "
            f"{_when(failover.recorded_at)}, approved by {failover.approved_by or NO_EVIDENCE}, "
            f"loss {_seconds(failover.loss_seconds)}"
            + "".join(f"; {o}" for o in over)
            + (f"; left to do: {'; '.join(failover.problems)}" if failover.problems else ""),
        )
    for row in report.dr_restores:
        restored = row.drill
        assert restored is not None
        problems = [*restored.problems]
        if restored.outcome == "passed" and row.within_rto is False:
            problems.append("restore over the RTO")
        if row.within_rpo is False:
            problems.append(
                f"{restored.rpo_measure} {_seconds(restored.rpo_seconds)} over the RPO of "
                f"{format_duration(row.rpo)}"
            )
        if restored.outcome != "passed" or problems:
            yield Finding(
                CONTINUITY_CONTROL,
                f"{row.subject}: DR restore of {_when(restored.recorded_at)}: {restored.outcome}; "
                + ("; ".join(problems) or "no reason recorded"),
            )
    for run in report.restore_runs:
        if run.outcome != "passed" or not run.within_rto:
            yield Finding(
                CONTINUITY_CONTROL,
                f"DR restore run of {_when(run.began_at)} {run.outcome}: "
                + ("; ".join(run.problems) or "no reason recorded"),
            )
    for row in report.drills:
        drill = row.drill
        if drill is None:
            yield Finding(CONTINUITY_CONTROL, f"{row.subject}: {NO_EVIDENCE} of a restore drill")
            continue
        if drill.outcome != "passed":
            yield Finding(
                CONTINUITY_CONTROL,
                f"{row.subject}: drill of {_when(drill.recorded_at)} {drill.outcome}: "
                + ("; ".join(drill.problems) or "no reason recorded"),
            )
        if row.within_rto is False:
            yield Finding(CONTINUITY_CONTROL, f"{row.subject}: projected restore over the RTO")
        if row.within_rpo is False:
            yield Finding(
                CONTINUITY_CONTROL,
                f"{row.subject}: {drill.rpo_measure} {_seconds(drill.rpo_seconds)} over the "
                f"RPO of {format_duration(row.rpo)}",
            )


# ---- rendering: one list of blocks, two renderers ----------------------------------------------


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Block = Heading | Para | Table


def _when(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _seconds(value: float | None) -> str:
    if value is None:
        return NO_EVIDENCE
    if value == float("inf"):
        return "unbounded (no throughput measured)"
    return human(timedelta(seconds=value)) if value >= 1 else f"{value:.3f}s"


def _count(value: int | None) -> str:
    return NO_EVIDENCE if value is None else str(value)


def _within(seconds: float | None, limit: timedelta | None) -> bool | None:
    if seconds is None or limit is None:
        return None
    return seconds <= limit.total_seconds()


def _against(seconds: float | None, name: str, limit: timedelta | None) -> str:
    """` (RTO 4h: within)`: a measured time against its objective, when both are known."""
    if seconds is None or limit is None:
        return ""
    return f" ({name} {format_duration(limit)}: {_verdict(_within(seconds, limit))})"


def _verdict(ok: bool | None) -> str:
    return NO_EVIDENCE if ok is None else ("within" if ok else "**OVER**")


def blocks(report: AuditReport) -> list[Block]:
    """The report as headings, paragraphs and tables (what both renderers draw)."""
    out: list[Block] = [
        Heading(1, f"Backup and disaster-recovery audit: {report.start} to {report.end}"),
        Para(
            f"Generated {_when(report.generated_at)} from the evidence in both regions' stores "
            f"({', '.join(report.regions)}), never from Airflow's database. Where no record "
            f"exists the report says \u201c{NO_EVIDENCE}\u201d instead of a figure."
        ),
        Table(("ISO/IEC 27001:2022 control", "what this report shows for it"), CONTROLS),
        Heading(2, "Summary"),
        Table(("measure", "figure"), _summary(report)),
        Heading(2, "Exceptions"),
        Table(
            ("control", "exception"),
            tuple((f.control, f.text) for f in report.exceptions) or (("-", "none"),),
        ),
        Heading(2, "Backups: expected windows against windows backed up"),
        Para(
            f"Control: {BACKUP_CONTROL}. Expected: each fire time of the tier's schedule in the "
            "period (base backups for the continuous tier) that has had the compliance grace to "
            "complete, counted from the day the target entered the policy (its `since`, else "
            "its first evidence). Backed up: a passed integrity check of that window's own "
            "artifact (by SHA-256) in every region."
        ),
        Table(
            (
                "target",
                "tier",
                "schedule",
                "expected",
                "backed up",
                "missed",
                "filled late",
                "counted from",
            ),
            tuple(
                (
                    w.subject,
                    w.tier,
                    f"`{w.schedule}`",
                    str(len(w.expected)),
                    str(len(w.backed_up)) if w.has_evidence else NO_EVIDENCE,
                    str(len(w.missed)),
                    str(len(w.backfilled)) if w.has_evidence else NO_EVIDENCE,
                    f"{w.since} ({w.since_from})" if w.since else "the period's start",
                )
                for w in report.windows
            ),
        ),
    ]
    missed = [(w, m) for w in report.windows for m in w.missed]
    if missed:
        out += [
            Heading(3, "Missed windows"),
            Table(
                ("target", "tier", "window", "why"),
                tuple((w.subject, w.tier, _when(m.window), m.why) for w, m in missed),
            ),
        ]
    late = [(w, b) for w in report.windows for b in w.backfilled]
    if late:
        out += [
            Heading(3, "Windows filled late (backfilled)"),
            Table(
                ("target", "tier", "window", "how"),
                tuple((w.subject, w.tier, _when(b.window), b.how) for w, b in late),
            ),
        ]
    out += [
        Heading(2, "Integrity checks"),
        Para(
            f"Control: {BACKUP_CONTROL}. Every kept integrity check of the period's backups, per "
            "region (a backfilled window may be checked after the period): manifest, size, "
            "encryption key, SHA-256 re-hash and a restore listing."
        ),
        Table(
            ("target", "tier", "region", "passed", "failed"),
            tuple(
                (r.subject, r.tier, r.region, _count(r.passed), _count(r.failed))
                for r in report.integrity
            ),
        ),
    ]
    failed = [(r, f) for r in report.integrity for f in r.failures]
    if failed:
        out += [
            Heading(3, "Failed checks"),
            Table(
                ("target", "tier", "region", "window", "checked", "reason"),
                tuple(
                    (
                        r.subject,
                        r.tier,
                        r.region,
                        _when(f.window),
                        _when(f.checked_at),
                        "; ".join(f.reasons),
                    )
                    for r, f in failed
                ),
            ),
        ]
    out += [
        Heading(2, "Retention: prune decisions"),
        Para(
            f"Controls: {BACKUP_CONTROL}, {DELETION_CONTROL}. Every prune plan of the period; "
            "each copy gets a decision with its reason. Deletions are listed for the plans that "
            "were carried out; what the store refused to delete is listed apart, never as deleted."
        ),
        Table(
            (
                "target",
                "tier",
                "plans",
                "carried out",
                "dry runs",
                "breaker trips",
                "keep",
                "delete",
                "refused",
            ),
            tuple(
                (
                    p.subject,
                    p.tier,
                    _count(p.plans),
                    *(
                        (
                            str(p.executed),
                            str(p.dry_runs),
                            str(len(p.breaker_trips)),
                            str(p.kept),
                            str(len(p.deletions)),
                            str(len(p.refused)),
                        )
                        if p.plans is not None
                        else (NO_EVIDENCE,) * 6
                    ),
                )
                for p in report.prune
            ),
        ),
    ]
    deletions = [(p, d) for p in report.prune for d in p.deletions]
    if deletions:
        out += [
            Heading(3, "Deletions and their reasons"),
            Table(
                ("planned", "copy", "reason"),
                tuple((_when(d.planned_at), d.subject, d.reason) for _, d in deletions),
            ),
        ]
    refused = [d for p in report.prune for d in p.refused]
    out += [
        Heading(3, "Refused deletions"),
        Para(
            f"Control: {DELETION_CONTROL}. Deletions a prune planned and the store refused "
            "(Object Lock held the copy longer than the plan knew): kept, never retried; the "
            "first prune after the lock ends deletes them."
            + ("" if refused else " None in the period.")
        ),
    ]
    if refused:
        out.append(
            Table(
                ("planned", "copy", "why refused"),
                tuple((_when(d.planned_at), d.subject, d.reason) for d in refused),
            )
        )
    out += _break_glass_blocks(report) + _lock_blocks(report)
    if report.recovery:
        out += [
            Heading(2, "Recovery window: the continuous tier"),
            Para(
                f"Control: {BACKUP_CONTROL}. What each region could recover each server to, as "
                "measured from the store after every prune of the continuous tier: verified "
                "base backups plus WAL continuity across timelines. Shortest reach: the least "
                "time back the window reached in the period; holes inside the retention are "
                "listed as exceptions."
            ),
            Table(
                ("server", "region", "records", "shortest reach back", "holes"),
                tuple(
                    (
                        row.server,
                        row.region,
                        str(len(row.records)),
                        (
                            f"{human(row.shortest[0])} ({_when(row.shortest[1])})"
                            if row.shortest
                            else NO_EVIDENCE
                        ),
                        str(len(row.holes)),
                    )
                    for row in report.recovery
                ),
            ),
        ]
    out += [
        Heading(2, "Restore drills: RTO and RPO"),
        Para(
            f"Controls: {CONTINUITY_CONTROL}. The newest drill of the period per target and "
            "continuous server. RTO: the drill's measured restore rate applied to the largest "
            "production target. RPO: for point-in-time recovery, how far the newest restored "
            "heartbeat lies before the target second; otherwise the restored backup's age."
        ),
        Table(
            (
                "target",
                "drill",
                "outcome",
                "restore took",
                "projected restore",
                "RTO",
                "RPO measured",
                "RPO target",
            ),
            tuple(_drill_cells(row) for row in report.drills),
        ),
        Heading(2, "Failovers"),
        Para(
            f"Controls: {CONTINUITY_CONTROL}. Every dr_failover of the period: who approved "
            "it, how long from the approval until the new primary took writes (against the "
            "RTO), the loss measured before the approval (against the streaming servers' RPO), "
            "and what became of the old primary."
            + ("" if report.failovers else " None in the period.")
        ),
    ]
    if report.failovers:
        out.append(
            Table(
                (
                    "server",
                    "writable at",
                    "approved by",
                    "approval to writable",
                    "loss",
                    "timeline",
                    "old primary",
                    "left to do",
                ),
                tuple(
                    (
                        f.server + (" (planned)" if f.planned else ""),
                        _when(f.recorded_at),
                        f.approved_by or NO_EVIDENCE,
                        _seconds(f.approval_to_writable_seconds)
                        + _against(f.approval_to_writable_seconds, "RTO", report.rto),
                        _seconds(f.loss_seconds)
                        + (f", {f.lost_heartbeats} heartbeat(s)" if f.lost_heartbeats else "")
                        + _against(f.loss_seconds, "RPO", report.failover_rpo),
                        str(f.timeline or "-"),
                        f.old_primary,
                        "; ".join(f.problems) or "nothing",
                    )
                    for f in report.failovers
                ),
            )
        )
    return out + _dr_restore_blocks(report)


def _break_glass_blocks(report: AuditReport) -> list[Block]:
    out: list[Block] = [
        Heading(2, "Break-glass deletions"),
        Para(
            f"Controls: {BREAK_GLASS_CONTROL}. Every locked backup deleted through a region's "
            "break-glass connection (governance bypass), with its reason and who asked and "
            "approved (evidence/break-glass/)."
            + ("" if report.break_glass else " None in the period.")
        ),
    ]
    if report.break_glass:
        out.append(
            Table(
                ("requested", "backup", "region", "operator", "approved by", "reason", "outcome"),
                tuple(
                    (
                        _when(g.requested_at),
                        g.backup,
                        g.region,
                        g.operator,
                        g.approved_by or NO_EVIDENCE,
                        g.reason,
                        g.outcome,
                    )
                    for g in report.break_glass
                ),
            )
        )
    return out


def _lock_blocks(report: AuditReport) -> list[Block]:
    out: list[Block] = [
        Heading(2, "Lock coverage"),
        Para(
            f"Controls: {LOCK_CONTROL}. Beside the re-hash sample: a sample of the period's "
            "kept backups in each region that locks (manifest and artifact) and of the "
            "integrity records, each object's Object Lock retain-until against what its "
            "retention needs (a backup: its window plus the tier's retention, when prune may "
            "delete it; a record: its writing plus the evidence retention). Short ones are "
            "exceptions."
        ),
    ]
    regions = sorted({s.region for s in report.lock_samples})
    out.append(
        Table(
            ("region", "objects sampled", "lock reaches the need"),
            tuple(
                (
                    region,
                    str(sum(1 for s in report.lock_samples if s.region == region)),
                    str(sum(1 for s in report.lock_samples if s.region == region and s.covered)),
                )
                for region in regions
            )
            or ((NO_EVIDENCE, NO_EVIDENCE, NO_EVIDENCE),),
        )
    )
    return out


def _dr_restore_blocks(report: AuditReport) -> list[Block]:
    out: list[Block] = [
        Heading(2, "DR restores"),
        Para(
            f"Controls: {CONTINUITY_CONTROL}. Every dr_restore run of the period "
            "(evidence/estate/dr_restore/): the estate's wall time from the first restore's "
            "start to the last record, against the RTO; then each target it restored "
            "(evidence/dr_restore/): its restore time and the data loss measured, against "
            "the RPO."
            + ("" if report.restore_runs or report.dr_restores else " None in the period.")
        ),
    ]
    if report.restore_runs:
        out.append(
            Table(
                ("began", "targets", "wall time", "RTO", "outcome"),
                tuple(
                    (
                        _when(r.began_at),
                        ", ".join(r.targets) or "-",
                        _seconds(r.wall_seconds),
                        format_duration(timedelta(seconds=r.rto_seconds))
                        + f": {_verdict(r.within_rto if r.wall_seconds is not None else None)}",
                        r.outcome,
                    )
                    for r in report.restore_runs
                ),
            )
        )
    if report.dr_restores:
        out.append(
            Table(
                (
                    "target",
                    "restore",
                    "outcome",
                    "restore took",
                    "measured restore",
                    "RTO",
                    "RPO measured",
                    "RPO target",
                ),
                tuple(_drill_cells(row) for row in report.dr_restores),
            )
        )
    return out


def _summary(report: AuditReport) -> tuple[tuple[str, str], ...]:
    expected = sum(len(w.expected) for w in report.windows)
    backed_up = sum(len(w.backed_up) for w in report.windows)
    passed = [r.passed for r in report.integrity if r.passed is not None]
    failed = [r.failed for r in report.integrity if r.failed is not None]
    drilled = [d for d in report.drills if d.drill is not None]
    return (
        ("windows expected", str(expected)),
        (
            "windows backed up in every region",
            str(backed_up) if any(w.has_evidence for w in report.windows) else NO_EVIDENCE,
        ),
        ("windows missed", str(sum(len(w.missed) for w in report.windows))),
        (
            "integrity checks passed / failed",
            f"{sum(passed)} / {sum(failed)}" if passed else NO_EVIDENCE,
        ),
        (
            "copies deleted by prune",
            str(sum(len(p.deletions) for p in report.prune))
            if any(p.plans is not None for p in report.prune)
            else NO_EVIDENCE,
        ),
        (
            "deletions refused by the store",
            str(sum(len(p.refused) for p in report.prune)),
        ),
        ("break-glass deletions", str(len(report.break_glass))),
        ("DR restore runs", str(len(report.restore_runs))),
        (
            "sampled objects locked as long as needed",
            f"{sum(s.covered for s in report.lock_samples)} of {len(report.lock_samples)}"
            if report.lock_samples
            else NO_EVIDENCE,
        ),
        ("targets drilled", f"{len(drilled)} of {len(report.drills)}"),
        ("exceptions", str(len(report.exceptions))),
    )


def _drill_cells(row: DrillRow) -> tuple[str, ...]:
    drill = row.drill
    if drill is None:
        return (
            row.subject,
            NO_EVIDENCE,
            NO_EVIDENCE,
            NO_EVIDENCE,
            NO_EVIDENCE,
            format_duration(row.rto),
            NO_EVIDENCE,
            format_duration(row.rpo),
        )
    projected = _seconds(drill.projected_seconds)
    if drill.projected_of and drill.projected_seconds is not None:
        projected += f" ({drill.projected_of})"
    rpo = _seconds(drill.rpo_seconds)
    if drill.rpo_seconds is not None:
        rpo += f" ({drill.rpo_measure})"
    return (
        row.subject,
        f"{_when(drill.recorded_at)}, {drill.tier or '?'} from {drill.region or '?'}",
        drill.outcome,
        _seconds(drill.restore_seconds),
        projected,
        f"{format_duration(row.rto)}: {_verdict(row.within_rto)}",
        rpo,
        f"{format_duration(row.rpo)}: {_verdict(row.within_rpo)}",
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(page: Sequence[Block]) -> str:
    lines: list[str] = []
    for block in page:
        match block:
            case Heading():
                lines += ["#" * block.level + " " + block.text, ""]
            case Para():
                lines += [block.text, ""]
            case Table():
                lines.append("| " + " | ".join(block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                lines.append("")
    return "\n".join(lines)


def _html_text(text: str) -> str:
    """Escaped, with the Markdown the cells use (`code`, **bold**) drawn as HTML."""
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;margin:0 0 1.5rem}"
    "th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;vertical-align:top}"
    "th{background:#eee}code{font-size:.9em}"
)


def render_html(page: Sequence[Block], title: str) -> str:
    body: list[str] = []
    for block in page:
        match block:
            case Heading():
                body.append(f"<h{block.level}>{_html_text(block.text)}</h{block.level}>")
            case Para():
                body.append(f"<p>{_html_text(block.text)}</p>")
            case Table():
                head = "".join(f"<th>{_html_text(c)}</th>" for c in block.header)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_html_text(c)}</td>" for c in row) + "</tr>"
                    for row in block.rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
