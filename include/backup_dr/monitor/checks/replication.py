"""`replication_lag`: the lag media_replicate measured at its last run, and how far behind the
secondary can be now, against the RPO."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from include.backup_dr.monitor.checks.inputs import ReplicationFacts, StoreFacts
from include.backup_dr.monitor.checks.result import CheckResult, Status, unknown
from include.backup_dr.policy import Policy, format_duration, human
from include.backup_dr.subjects import media_targets


def replication_status(
    measured_lag: timedelta | None, since_run_began: timedelta | None, rpo: timedelta
) -> Status:
    """Red when the last run found the secondary beyond the RPO, or no run began within it (so
    the secondary may be missing changes older than the RPO now)."""
    if measured_lag is None or since_run_began is None:
        return Status.CRITICAL
    if measured_lag > rpo or since_run_began > rpo:
        return Status.CRITICAL
    return Status.OK


def checks(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    for name in media_targets(policy):
        category = policy.categories[policy.target(name).category]
        if category.replication_schedule is None:
            continue
        rpo = category.rpo
        check_id, limit = f"replication_lag:{name}", f"RPO {format_duration(rpo)}"
        found = facts.replications.get(name, ReplicationFacts())
        if found.error:
            yield unknown(check_id, "replication_lag", name, limit, found.error)
            continue
        if found.began_at is None or found.lag_seconds is None:
            yield CheckResult(
                check_id,
                "replication_lag",
                name,
                Status.CRITICAL,
                "never replicated",
                limit,
                "media_replicate has left no state in the secondary region",
            )
            continue
        lag = timedelta(seconds=found.lag_seconds)
        behind = max(now - found.began_at, lag)
        yield CheckResult(
            check_id,
            "replication_lag",
            name,
            replication_status(lag, now - found.began_at, rpo),
            f"{human(lag)} at the last run; now at most {human(behind)}",
            limit,
            f"last run began {found.began_at:%Y-%m-%d %H:%M:%S} UTC: {found.evidence}",
            behind.total_seconds(),
        )
