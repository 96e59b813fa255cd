"""The audit's exceptions: every finding the report shows, each tagged with the ISO/IEC
27001:2022 Annex A control it bears on (pure)."""

from __future__ import annotations

from collections.abc import Iterator

from include.backup_dr.audit.controls import (
    BACKUP_CONTROL,
    BREAK_GLASS_CONTROL,
    CONTINUITY_CONTROL,
    DELETION_CONTROL,
    LOCK_CONTROL,
    LOGGING_CONTROL,
)
from include.backup_dr.audit.render import NO_EVIDENCE, seconds, when, within
from include.backup_dr.audit.report import AuditReport
from include.backup_dr.audit.rows import Finding
from include.backup_dr.policy import format_duration, human


def findings(report: AuditReport) -> Iterator[Finding]:
    """Every exception the report shows, each with the control it bears on."""
    for row in report.windows:
        name = f"{row.subject}/{row.tier}"
        if not row.has_evidence:
            yield Finding(BACKUP_CONTROL, f"{name}: {NO_EVIDENCE} of any backup in the period")
        elif row.missed:
            shown = ", ".join(when(m.window) for m in row.missed[:5])
            more = f" and {len(row.missed) - 5} more" if len(row.missed) > 5 else ""
            yield Finding(
                BACKUP_CONTROL,
                f"{name}: {len(row.missed)} of {len(row.expected)} windows missed ({shown}{more})",
            )
        for late in row.backfilled:
            yield Finding(
                BACKUP_CONTROL,
                f"{name}: window {when(late.window)} filled late: {late.how}",
            )
    for row in report.integrity:
        for failure in row.failures:
            yield Finding(
                BACKUP_CONTROL,
                f"{row.subject}/{row.tier}@{row.region}: integrity check of window "
                f"{when(failure.window)} failed: {'; '.join(failure.reasons) or '?'}",
            )
    for row in report.prune:
        for at, why in row.breaker_trips:
            yield Finding(
                BACKUP_CONTROL,
                f"{row.subject}/{row.tier}: prune stopped by the circuit breaker at "
                f"{when(at)}: {why}",
            )
    for row in report.prune:
        for refused in row.refused:
            yield Finding(
                DELETION_CONTROL,
                f"{row.subject}/{row.tier}: deletion of {refused.subject} refused by the store "
                f"(prune of {when(refused.planned_at)}): {refused.reason}",
            )
    for refusal in report.refusals:
        if refusal.interrupted:
            yield Finding(
                LOGGING_CONTROL,
                f"{refusal.target}/{refusal.tier}: prune of {when(refusal.planned_at)} stopped "
                f"before its end: {refusal.interrupted}",
            )
    for glass in report.break_glass:
        yield Finding(
            BREAK_GLASS_CONTROL,
            f"{glass.backup}@{glass.region}: {glass.outcome} through break glass on "
            f"{when(glass.requested_at)} by {glass.operator}, approved by "
            f"{glass.approved_by or NO_EVIDENCE}: {glass.reason}",
        )
        if glass.outcome == "requested":
            yield Finding(
                LOGGING_CONTROL,
                f"{glass.backup}@{glass.region}: break glass of {when(glass.requested_at)} "
                "has no recorded outcome",
            )
    for sample in report.lock_samples:
        if not sample.covered:
            held = (
                f"locked until {when(sample.retain_until)}"
                if sample.retain_until is not None
                else "not locked"
            )
            yield Finding(
                LOCK_CONTROL,
                f"{sample.key}@{sample.region}: {held}; its retention needs {when(sample.needed)}",
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
                f"{when(shortest[1])}; the policy keeps {format_duration(row.retention)}",
            )
        for at, start, end in row.holes:
            yield Finding(
                BACKUP_CONTROL,
                f"{name}: hole in the recovery window, no recovery to {when(start)} .. "
                f"{when(end)} (seen {when(at)})",
            )
    for failover in report.failovers:  # a disruption is always worth an auditor's eye
        over = [
            f"{what} over the {name} of {format_duration(limit)}"
            for what, name, value, limit in (
                ("approval to writable", "RTO", failover.approval_to_writable_seconds, report.rto),
                ("loss", "RPO", failover.loss_seconds, report.failover_rpo),
            )
            if within(value, limit) is False
        ]
        yield Finding(
            CONTINUITY_CONTROL,
            f"{failover.server}: {'switchover' if failover.planned else 'failover'} on "
            f"{when(failover.recorded_at)}, approved by {failover.approved_by or NO_EVIDENCE}, "
            f"loss {seconds(failover.loss_seconds)}"
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
                f"{restored.rpo_measure} {seconds(restored.rpo_seconds)} over the RPO of "
                f"{format_duration(row.rpo)}"
            )
        if restored.outcome != "passed" or problems:
            yield Finding(
                CONTINUITY_CONTROL,
                f"{row.subject}: DR restore of {when(restored.recorded_at)}: {restored.outcome}; "
                + ("; ".join(problems) or "no reason recorded"),
            )
    for run in report.restore_runs:
        if run.outcome != "passed" or not run.within_rto:
            yield Finding(
                CONTINUITY_CONTROL,
                f"DR restore run of {when(run.began_at)} {run.outcome}: "
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
                f"{row.subject}: drill of {when(drill.recorded_at)} {drill.outcome}: "
                + ("; ".join(drill.problems) or "no reason recorded"),
            )
        if row.within_rto is False:
            yield Finding(CONTINUITY_CONTROL, f"{row.subject}: projected restore over the RTO")
        if row.within_rpo is False:
            yield Finding(
                CONTINUITY_CONTROL,
                f"{row.subject}: {drill.rpo_measure} {seconds(drill.rpo_seconds)} over the "
                f"RPO of {format_duration(row.rpo)}",
            )
