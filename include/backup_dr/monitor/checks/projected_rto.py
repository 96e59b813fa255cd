"""`projected_rto`: the drill's measured restore rate applied to the newest backup's size, per
target and for the whole estate as dr_restore runs it, against the RTO."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from include.backup_dr.monitor.checks.inputs import BackupFacts, DrillFacts, StoreFacts
from include.backup_dr.monitor.checks.result import CheckResult, Status
from include.backup_dr.policy import Policy, format_duration, human
from include.backup_dr.restore.record import (
    RestoreJob,
    plan_estate,
    projected_seconds,
    within_rto,
)
from include.backup_dr.subjects import drill_subjects


def rto_status(projected: timedelta | None, rto: timedelta) -> Status:
    """Red over the RTO; amber when no drill measured a restore rate to project from."""
    if projected is None:
        return Status.WARNING
    return Status.OK if within_rto(projected.total_seconds(), rto) else Status.CRITICAL


def checks(policy: Policy, facts: StoreFacts) -> Iterable[CheckResult]:
    """The drill's measured rate (bytes restored / seconds of all its steps) applied to the
    newest verified backup of the same tier and region now: restores grow with the data. The
    whole estate is planned as dr_restore runs it: in parallel, highest priority first, within
    the configured concurrency and the default destination's pool."""
    rto = policy.objectives.rto
    limit = f"RTO {format_duration(rto)}"
    servers = {s.name for s in policy.continuous_servers()}
    recovery = policy.recovery()
    destination = recovery.destinations[0]
    jobs, unprojected = [], []
    for subject in drill_subjects(policy):
        projected, detail = _project(facts, subject)
        if subject not in servers:  # dr_restore's units; a server is the PITR alternative
            if projected is None:
                unprojected.append(subject)
            else:
                target = policy.target(subject)
                pool = "media" if target.server is None else destination.pool
                jobs.append(RestoreJob(subject, target.priority, pool, projected.total_seconds()))
        yield CheckResult(
            f"projected_rto:{subject}",
            "projected_rto",
            subject,
            rto_status(projected, rto),
            human(projected) if projected is not None else "no evidence",
            limit,
            detail,
            projected.total_seconds() if projected is not None else None,
        )
    targets = [s for s in drill_subjects(policy) if s not in servers]
    estate = plan_estate(jobs, {destination.pool: destination.slots}, recovery.concurrency)
    total = timedelta(seconds=estate.wall_seconds)
    status = rto_status(total, rto)
    if unprojected and status is Status.OK:
        status = Status.WARNING
    yield CheckResult(
        "projected_rto:all targets",
        "projected_rto",
        "all targets",
        status,
        "no evidence"
        if len(unprojected) == len(targets)
        else human(total) + (" + unknown" if unprojected else ""),
        limit,
        f"dr_restore restores {len(targets)} target(s) in parallel, highest priority first: "
        f"{recovery.concurrency} at once, {destination.slots} into {destination.conn_id} "
        f"(pool {destination.pool}); one after another it would take "
        f"{human(timedelta(seconds=estate.serial_seconds))}"
        + (f"; no drill rate for {', '.join(unprojected)}" if unprojected else ""),
        total.total_seconds(),
    )


def _project(facts: StoreFacts, subject: str) -> tuple[timedelta | None, str]:
    drill = facts.drills.get(subject, DrillFacts())
    rate = drill.rate
    if drill.recorded_at is None or rate is None or drill.tier is None or drill.region is None:
        return None, "no drill has measured a restore rate"
    newest = facts.backups.get((subject, drill.tier, drill.region), BackupFacts())
    size = newest.restore_bytes if newest.restore_bytes is not None else drill.restored_bytes
    assert size is not None
    sized = "its newest verified backup" if newest.restore_bytes is not None else "the drill"
    return timedelta(seconds=projected_seconds(size, rate)), (
        f"{size / 1e6:,.1f} MB ({sized}, {drill.tier} in {drill.region}) at "
        f"{rate / 1e6:,.2f} MB/s, the rate the drill of {drill.recorded_at:%Y-%m-%d} measured"
    )
