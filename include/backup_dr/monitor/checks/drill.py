"""`restore_drill`: the newest drill of each target and continuous server passed, within a year."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from include.backup_dr.monitor.checks.inputs import DrillFacts, StoreFacts
from include.backup_dr.monitor.checks.result import YEAR, CheckResult, Status, unknown
from include.backup_dr.policy import Policy, human
from include.backup_dr.subjects import drill_subjects


def drill_status(age: timedelta | None, outcome: str | None, max_age: timedelta) -> Status:
    """Red without a drill, after a failed one, or when the newest is older than `max_age`."""
    if age is None or outcome != "passed" or age > max_age:
        return Status.CRITICAL
    return Status.OK


def checks(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    max_age = YEAR + policy.compliance.grace
    limit = f"passed, within {human(YEAR)}"
    for subject in drill_subjects(policy):
        check_id = f"restore_drill:{subject}"
        found = facts.drills.get(subject, DrillFacts())
        if found.error:
            yield unknown(check_id, "restore_drill", subject, limit, found.error)
            continue
        if found.recorded_at is None:
            yield CheckResult(
                check_id,
                "restore_drill",
                subject,
                Status.CRITICAL,
                "never",
                limit,
                "no restore_verification evidence in either region",
            )
            continue
        age = now - found.recorded_at
        detail = f"{found.tier} backup from {found.region}: {found.evidence}"
        if found.problems:
            detail += "; problems: " + "; ".join(found.problems)
        yield CheckResult(
            check_id,
            "restore_drill",
            subject,
            drill_status(age, found.outcome, max_age),
            f"{found.outcome} {found.recorded_at:%Y-%m-%d} ({human(age)} ago)",
            limit,
            detail,
            age.total_seconds(),
        )
