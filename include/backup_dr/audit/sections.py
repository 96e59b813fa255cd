"""The audit report's parts as blocks, one builder per part, each from the rows it shows
(pure). `report.AuditReport` puts them in order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

from include.backup_dr.audit.controls import (
    BACKUP_CONTROL,
    BREAK_GLASS_CONTROL,
    CONTINUITY_CONTROL,
    CONTROLS,
    DELETION_CONTROL,
    LOCK_CONTROL,
)
from include.backup_dr.audit.records import (
    BreakGlassRecord,
    FailoverRecord,
    LockSample,
    RestoreRunRecord,
)
from include.backup_dr.audit.render import (
    NO_EVIDENCE,
    Block,
    Heading,
    Para,
    Table,
    against,
    count,
    listing,
    part,
    seconds,
    section,
    verdict,
    when,
)
from include.backup_dr.audit.rows import (
    DrillRow,
    Finding,
    IntegrityRow,
    PruneRow,
    RecoveryRow,
    TierWindows,
)
from include.backup_dr.policy import format_duration, human


def title(
    start: date,
    end: date,
    generated_at: datetime,
    regions: Sequence[str],
    summary: tuple[tuple[str, str], ...],
    exceptions: Sequence[Finding],
) -> list[Block]:
    return [
        Heading(1, f"Backup and disaster-recovery audit: {start} to {end}"),
        Para(
            f"Generated {when(generated_at)} from the evidence in both regions' stores "
            f"({', '.join(regions)}), never from Airflow's database. Where no record "
            f"exists the report says \u201c{NO_EVIDENCE}\u201d instead of a figure."
        ),
        Table(("ISO/IEC 27001:2022 control", "what this report shows for it"), CONTROLS),
        Heading(2, "Summary"),
        Table(("measure", "figure"), summary),
        Heading(2, "Exceptions"),
        Table(
            ("control", "exception"),
            tuple((f.control, f.text) for f in exceptions) or (("-", "none"),),
        ),
    ]


def backups(windows: Sequence[TierWindows]) -> list[Block]:
    return [
        *part(
            "Backups: expected windows against windows backed up",
            f"Control: {BACKUP_CONTROL}. Expected: each fire time of the tier's schedule in the "
            "period (base backups for the continuous tier) that has had the compliance grace to "
            "complete, counted from the day the target entered the policy (its `since`, else "
            "its first evidence). Backed up: a passed integrity check of that window's own "
            "artifact (by SHA-256) in every region. Restore points from: how many backed-up "
            "windows were promoted from another tier's verified backup and how many were the "
            "tier's own read of the source, as their manifests say; pruned: windows whose "
            "manifests prune has since deleted (their integrity records do not say).",
            (
                "target",
                "tier",
                "schedule",
                "expected",
                "backed up",
                "restore points from",
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
                    _origins(w),
                    str(len(w.missed)),
                    str(len(w.backfilled)) if w.has_evidence else NO_EVIDENCE,
                    f"{w.since} ({w.since_from})" if w.since else "the period's start",
                )
                for w in windows
            ),
        ),
        *listing(
            3,
            "Missed windows",
            ("target", "tier", "window", "why"),
            ((w.subject, w.tier, when(m.window), m.why) for w in windows for m in w.missed),
        ),
        *listing(
            3,
            "Windows filled late (backfilled)",
            ("target", "tier", "window", "how"),
            ((w.subject, w.tier, when(b.window), b.how) for w in windows for b in w.backfilled),
        ),
        *listing(
            3,
            "Where promoted tiers' restore points came from",
            ("target", "tier", "window", "restore point"),
            (
                (w.subject, w.tier, when(o.window), o.text)
                for w in windows
                if w.promoted or any(o.not_derived for o in w.origins)
                for o in w.origins
            ),
        ),
    ]


def _origins(row: TierWindows) -> str:
    """`3 promoted, 1 own read, 48 pruned`: where the backed-up windows' data came from."""
    if not row.has_evidence:
        return NO_EVIDENCE
    own = len(row.origins) - row.promoted
    pruned = len(row.backed_up) - len(row.origins)
    parts = [
        f"{row.promoted} promoted" if row.promoted else "",
        f"{own} own read{'' if own == 1 else 's'}" if own else "",
        f"{pruned} pruned" if pruned else "",
    ]
    return ", ".join(p for p in parts if p) or "-"


def integrity(rows: Sequence[IntegrityRow]) -> list[Block]:
    return [
        *part(
            "Integrity checks",
            f"Control: {BACKUP_CONTROL}. Every kept integrity check of the period's backups, per "
            "region (a backfilled window may be checked after the period): manifest, size, "
            "encryption key, SHA-256 re-hash and a restore listing.",
            ("target", "tier", "region", "passed", "failed"),
            tuple((r.subject, r.tier, r.region, count(r.passed), count(r.failed)) for r in rows),
        ),
        *listing(
            3,
            "Failed checks",
            ("target", "tier", "region", "window", "checked", "reason"),
            (
                (
                    r.subject,
                    r.tier,
                    r.region,
                    when(f.window),
                    when(f.checked_at),
                    "; ".join(f.reasons),
                )
                for r in rows
                for f in r.failures
            ),
        ),
    ]


def prune(rows: Sequence[PruneRow]) -> list[Block]:
    return [
        *part(
            "Retention: prune decisions",
            f"Controls: {BACKUP_CONTROL}, {DELETION_CONTROL}. Every prune plan of the period; "
            "each copy gets a decision with its reason. Deletions are listed for the plans that "
            "were carried out; what the store refused to delete is listed apart, never as deleted.",
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
                    count(p.plans),
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
                for p in rows
            ),
        ),
        *listing(
            3,
            "Deletions and their reasons",
            ("planned", "copy", "reason"),
            ((when(d.planned_at), d.subject, d.reason) for p in rows for d in p.deletions),
        ),
        *section(
            3,
            "Refused deletions",
            f"Control: {DELETION_CONTROL}. Deletions a prune planned and the store refused "
            "(Object Lock held the copy longer than the plan knew): kept, never retried; the "
            "first prune after the lock ends deletes them.",
            ("planned", "copy", "why refused"),
            ((when(d.planned_at), d.subject, d.reason) for p in rows for d in p.refused),
        ),
    ]


def break_glass(records: Sequence[BreakGlassRecord]) -> list[Block]:
    return section(
        2,
        "Break-glass deletions",
        f"Controls: {BREAK_GLASS_CONTROL}. Every locked backup deleted through a region's "
        "break-glass connection (governance bypass), with its reason and who asked and "
        "approved (evidence/break-glass/).",
        ("requested", "backup", "region", "operator", "approved by", "reason", "outcome"),
        (
            (
                when(g.requested_at),
                g.backup,
                g.region,
                g.operator,
                g.approved_by or NO_EVIDENCE,
                g.reason,
                g.outcome,
            )
            for g in records
        ),
    )


def locks(samples: Sequence[LockSample]) -> list[Block]:
    regions = sorted({s.region for s in samples})
    return part(
        "Lock coverage",
        f"Controls: {LOCK_CONTROL}. Beside the re-hash sample: a sample of the period's "
        "kept backups in each region that locks (manifest and artifact) and of the "
        "integrity records, each object's Object Lock retain-until against what its "
        "retention needs (a backup: its window plus the tier's retention, when prune may "
        "delete it; a record: its writing plus the evidence retention). Short ones are "
        "exceptions.",
        ("region", "objects sampled", "lock reaches the need"),
        tuple(
            (
                region,
                str(sum(1 for s in samples if s.region == region)),
                str(sum(1 for s in samples if s.region == region and s.covered)),
            )
            for region in regions
        )
        or ((NO_EVIDENCE, NO_EVIDENCE, NO_EVIDENCE),),
    )


def recovery(rows: Sequence[RecoveryRow]) -> list[Block]:
    """The continuous tier's part; none without continuous servers."""
    if not rows:
        return []
    return part(
        "Recovery window: the continuous tier",
        f"Control: {BACKUP_CONTROL}. What each region could recover each server to, as "
        "measured from the store after every prune of the continuous tier: verified "
        "base backups plus WAL continuity across timelines. Shortest reach: the least "
        "time back the window reached in the period; holes inside the retention are "
        "listed as exceptions.",
        ("server", "region", "records", "shortest reach back", "holes"),
        tuple(
            (
                row.server,
                row.region,
                str(len(row.records)),
                (
                    f"{human(row.shortest[0])} ({when(row.shortest[1])})"
                    if row.shortest
                    else NO_EVIDENCE
                ),
                str(len(row.holes)),
            )
            for row in rows
        ),
    )


def drills(rows: Sequence[DrillRow]) -> list[Block]:
    return part(
        "Restore drills: RTO and RPO",
        f"Controls: {CONTINUITY_CONTROL}. The newest drill of the period per target and "
        "continuous server. RTO: the drill's measured restore rate applied to the largest "
        "production target. RPO: for point-in-time recovery, how far the newest restored "
        "heartbeat lies before the target second; otherwise the restored backup's age.",
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
        tuple(_drill_cells(row) for row in rows),
    )


def failovers(
    records: Sequence[FailoverRecord], rto: timedelta | None, rpo: timedelta | None
) -> list[Block]:
    return section(
        2,
        "Failovers",
        f"Controls: {CONTINUITY_CONTROL}. Every dr_failover of the period: who approved "
        "it, how long from the approval until the new primary took writes (against the "
        "RTO), the loss measured before the approval (against the streaming servers' RPO), "
        "and what became of the old primary.",
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
        (
            (
                f.server + (" (planned)" if f.planned else ""),
                when(f.recorded_at),
                f.approved_by or NO_EVIDENCE,
                seconds(f.approval_to_writable_seconds)
                + against(f.approval_to_writable_seconds, "RTO", rto),
                seconds(f.loss_seconds)
                + (f", {f.lost_heartbeats} heartbeat(s)" if f.lost_heartbeats else "")
                + against(f.loss_seconds, "RPO", rpo),
                str(f.timeline or "-"),
                f.old_primary,
                "; ".join(f.problems) or "nothing",
            )
            for f in records
        ),
    )


def dr_restores(runs: Sequence[RestoreRunRecord], restores: Sequence[DrillRow]) -> list[Block]:
    out: list[Block] = [
        Heading(2, "DR restores"),
        Para(
            f"Controls: {CONTINUITY_CONTROL}. Every dr_restore run of the period "
            "(evidence/estate/dr_restore/): the estate's wall time from the first restore's "
            "start to the last record, against the RTO; then each target it restored "
            "(evidence/dr_restore/): its restore time and the data loss measured, against "
            "the RPO." + ("" if runs or restores else " None in the period.")
        ),
    ]
    if runs:
        out.append(
            Table(
                ("began", "targets", "wall time", "RTO", "outcome"),
                tuple(
                    (
                        when(r.began_at),
                        ", ".join(r.targets) or "-",
                        seconds(r.wall_seconds),
                        format_duration(timedelta(seconds=r.rto_seconds))
                        + f": {verdict(r.within_rto if r.wall_seconds is not None else None)}",
                        r.outcome,
                    )
                    for r in runs
                ),
            )
        )
    if restores:
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
                tuple(_drill_cells(row) for row in restores),
            )
        )
    return out


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
    projected = seconds(drill.projected_seconds)
    if drill.projected_of and drill.projected_seconds is not None:
        projected += f" ({drill.projected_of})"
    rpo = seconds(drill.rpo_seconds)
    if drill.rpo_seconds is not None:
        rpo += f" ({drill.rpo_measure})"
    return (
        row.subject,
        f"{when(drill.recorded_at)}, {drill.tier or '?'} from {drill.region or '?'}",
        drill.outcome,
        seconds(drill.restore_seconds),
        projected,
        f"{format_duration(row.rto)}: {verdict(row.within_rto)}",
        rpo,
        f"{format_duration(row.rpo)}: {verdict(row.within_rpo)}",
    )
