"""Which checks a policy asks for: the tiers that must stay fresh, what the drill must prove,
the media targets re-hashed by sample."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from include.backup_dr.policy import CONTINUOUS, Policy, cron_period


@dataclass(frozen=True)
class BackupSubject:
    """A tier of one target (or, for the continuous tier, one server) that must stay fresh."""

    category: str
    subject: str
    tier: str
    period: timedelta


def backup_subjects(policy: Policy) -> list[BackupSubject]:
    """Every production target's scheduled tiers, then each continuous server's base backups."""
    subjects = []
    for target in sorted(policy.targets, key=lambda t: (t.priority, t.name)):
        if not target.is_production:
            continue
        for tier_name, tier in policy.categories[target.category].scheduled_tiers().items():
            subjects.append(BackupSubject(target.category, target.name, tier_name, tier.period()))
    if policy.continuous is not None:
        period = cron_period(policy.continuous.base_backup_schedule)
        for server in policy.continuous_servers():
            subjects.append(
                BackupSubject(policy.continuous.category, server.name, CONTINUOUS, period)
            )
    return subjects


def drill_subjects(policy: Policy) -> list[str]:
    """What the restore drill must prove: each production target, and each continuous server
    (point-in-time recovery)."""
    targets = sorted(
        (t for t in policy.targets if t.is_production), key=lambda t: (t.priority, t.name)
    )
    return [t.name for t in targets] + [s.name for s in policy.continuous_servers()]


def media_targets(policy: Policy) -> list[str]:
    """Production targets of media categories (content-addressed blobs, re-hashed by sample)."""
    return [
        t.name
        for t in policy.targets
        if t.is_production and policy.categories[t.category].engine == "media"
    ]
