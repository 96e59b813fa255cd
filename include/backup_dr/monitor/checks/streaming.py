"""`standby_lag` and `wal_archive`: the continuous monitor's newest evidence (lag p99 over the
RPO for the alert run length, the standby gone; archiving failing, or the last archived WAL
older than twice archive_timeout while segments wait), which must itself be recent."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from include.backup_dr.monitor.checks.inputs import MonitorFacts, StoreFacts
from include.backup_dr.monitor.checks.result import CheckResult, Status, unknown
from include.backup_dr.policy import Policy, cron_period, format_duration, human


def monitor_status(evidence_age: timedelta | None, limit: timedelta, breached: bool) -> Status:
    """Red when the monitor found a breach, or has left no evidence within `limit`."""
    if evidence_age is None or evidence_age > limit or breached:
        return Status.CRITICAL
    return Status.OK


def archive_behind(
    archive_age_seconds: float | None, ready_files: int | None, limit: timedelta
) -> bool:
    """The WAL archive is behind: nothing was ever archived, or the last archive is older than
    `limit` while closed segments wait (an idle server closes none: nothing is at risk). Without
    the backlog (`ready_files` needs pg_monitor), the age alone decides."""
    if archive_age_seconds is None:
        return True
    late = timedelta(seconds=archive_age_seconds) > limit
    return late and (ready_files is None or ready_files > 0)


def checks(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    settings = policy.continuous
    if settings is None:
        return
    rpo = policy.categories[settings.category].rpo
    runs = settings.monitor.lag_alert_samples
    stale_after = cron_period(settings.monitor.schedule) + policy.compliance.monitor_grace
    archive_limit = 2 * settings.archive_timeout
    for server in policy.continuous_servers():
        found = facts.monitors.get(server.name, MonitorFacts())
        lag_id, wal_id = f"standby_lag:{server.name}", f"wal_archive:{server.name}"
        lag_limit = f"RPO {format_duration(rpo)} ({runs} samples in a row)"
        wal_limit = f"2 x archive_timeout = {human(archive_limit)}"
        if found.error:
            yield unknown(lag_id, "standby_lag", server.name, lag_limit, found.error)
            yield unknown(wal_id, "wal_archive", server.name, wal_limit, found.error)
            continue
        age = now - found.measured_at if found.measured_at else None
        if age is None:
            seen = "no continuous monitor evidence in the last day"
        else:
            seen = f"measured {human(age)} ago (stale after {human(stale_after)}): {found.evidence}"
        # A stale record's figures are history: say so first, where the figure would be.
        stale = "" if age is not None and age <= stale_after else "monitor stale: "
        conditions = found.conditions
        lag_breach = bool(conditions.get("lag") or conditions.get("standby_gone"))
        lag_detail = (
            "; ".join(name for name in ("lag", "standby_gone") if conditions.get(name)) or "ok"
        )
        yield CheckResult(
            lag_id,
            "standby_lag",
            server.name,
            monitor_status(age, stale_after, lag_breach),
            stale
            + (
                f"p99 {found.p99_ms:g} ms, max {found.max_ms:g} ms ({found.samples} samples)"
                if found.p99_ms is not None and found.max_ms is not None
                else "not measured"
            ),
            lag_limit,
            f"conditions: {lag_detail}; {seen}",
            found.p99_ms / 1000 if found.p99_ms is not None else None,
        )
        archive_age = found.archive_age_seconds
        behind = archive_behind(archive_age, found.ready_files, archive_limit)
        notes = [
            "archiving is failing" if conditions.get("archive_failing") else "",
            f"{found.ready_files} segment(s) waiting" if found.ready_files else "",
            "idle: nothing waits to be archived" if found.ready_files == 0 and not behind else "",
        ]
        yield CheckResult(
            wal_id,
            "wal_archive",
            server.name,
            monitor_status(age, stale_after, behind or bool(conditions.get("archive_failing"))),
            stale
            + ("never archived" if archive_age is None else f"{archive_age:.0f}s since the last"),
            wal_limit,
            "; ".join([n for n in notes if n] + [seen]),
            archive_age,
        )
