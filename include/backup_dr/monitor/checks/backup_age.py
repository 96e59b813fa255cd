"""`backup_age`: the newest backup verified in each region, by its restore point, against the
tier's schedule period plus `compliance.grace`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta

from include.backup_dr.monitor.checks.inputs import BackupFacts, StoreFacts
from include.backup_dr.monitor.checks.result import CheckResult, Status, unknown
from include.backup_dr.policy import Policy, human
from include.backup_dr.subjects import backup_subjects


def backup_age_status(age: timedelta | None, period: timedelta, grace: timedelta) -> Status:
    """Red when there is no verified backup, or the newest is older than a period plus grace."""
    if age is None or age > period + grace:
        return Status.CRITICAL
    return Status.OK


def checks(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    grace = policy.compliance.grace
    for item in backup_subjects(policy):
        limit = f"{human(item.period)} + {human(grace)} grace"
        for region in policy.iter_regions():
            check_id = f"backup_age:{item.subject}/{item.tier}@{region.name}"
            found = facts.backups.get((item.subject, item.tier, region.name), BackupFacts())
            if found.error:
                yield replace(
                    unknown(check_id, "backup_age", item.subject, limit, found.error),
                    tier=item.tier,
                    region=region.name,
                )
                continue
            age = now - found.restore_point if found.restore_point else None
            if found.restore_point is None or found.window is None:
                detail = f"no verified {item.tier} backup in {region.name}"
            else:
                detail = (
                    f"window {found.window:%Y-%m-%d %H:%M}, taken "
                    f"{found.restore_point:%Y-%m-%d %H:%M:%S} UTC"
                )
            if found.newer_unverified:
                detail += f"; {found.newer_unverified} newer backup(s) not verified"
            yield CheckResult(
                check_id,
                "backup_age",
                item.subject,
                backup_age_status(age, item.period, grace),
                human(age) if age is not None else "none",
                limit,
                detail,
                age.total_seconds() if age is not None else None,
                tier=item.tier,
                region=region.name,
            )
