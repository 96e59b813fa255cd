"""Object Lock: the date each committed object is locked until, from the policy alone.

A backup's objects (artifact, manifest, integrity record) are locked until its window plus its
tier's retention plus the region's margin, and an evidence record until it was written plus the
evidence retention. Prune deletes a backup from window + retention on, so it never plans to
delete what the lock still holds for longer than the margin, and no lock outlives what the
policy allows (`Policy._locks_within_promise`). Objects that are rewritten or replaced as they
are used (leases, the catalogue cache, monitor state, replica listings) are never locked.

Content shared by many snapshots (media blobs) is locked until a *hold* date plus the margin.
A snapshot needs each blob it lists held until its own expiry (window + retention); when a
blob's hold falls short, the snapshot extends it to that expiry plus `SHARED_EXTENSION`, the way
Kopia extends the locks of content a new snapshot reuses. The step means a blob that every
daily snapshot reuses is extended once a month, not on every snapshot. Each listing entry
records its blob's hold, so an unchanged snapshot learns it without a request.

A WAL segment is locked until it was archived plus the continuous tier's retention plus the
margin: the recovery window can reach back to it that long.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from include.backup_dr.catalogue import BackupId
from include.backup_dr.policy import CONTINUOUS, SHARED_EXTENSION, Policy, Region

EVIDENCE_PREFIX = "evidence/"


def expiry(policy: Policy, backup: BackupId) -> datetime:
    """When prune may first delete `backup`: its window plus its tier's retention."""
    return backup.window + policy.categories[backup.category].tiers[backup.tier].retention


def shared_hold(policy: Policy, backup: BackupId) -> datetime:
    """The hold a snapshot gives the shared content it stores or extends (see module docstring)."""
    return expiry(policy, backup) + SHARED_EXTENSION


@dataclass(frozen=True)
class LockRule:
    """One region's Object Lock, as the policy sets it."""

    #: S3's spelling: GOVERNANCE or COMPLIANCE.
    mode: str
    margin: timedelta
    evidence_retention: timedelta
    #: (category, tier) -> the tier's retention.
    retention: Mapping[tuple[str, str], timedelta]

    @classmethod
    def for_region(cls, policy: Policy, region: Region) -> LockRule | None:
        lock = region.object_lock
        if lock is None:
            return None
        return cls(
            mode=lock.mode.upper(),
            margin=lock.margin,
            evidence_retention=lock.evidence_retention,
            retention={
                (name, tier_name): tier.retention
                for name, category in policy.categories.items()
                for tier_name, tier in category.tiers.items()
            },
        )

    def backup_until(self, backup: BackupId) -> datetime | None:
        """When the objects of `backup` may be deleted: window + retention + margin."""
        retention = self.retention.get((backup.category, backup.tier))
        return None if retention is None else backup.window + retention + self.margin

    def held_until(self, hold: datetime) -> datetime:
        """The retain-until date of shared content held until `hold` (see module docstring)."""
        return hold + self.margin

    def wal_until(self, archived: datetime, category: str) -> datetime:
        """The retain-until date of a WAL segment archived at `archived` for `category`."""
        return archived + self.retention[(category, "continuous")] + self.margin

    def until(self, key: str, now: datetime) -> datetime | None:
        """The retain-until date a write of `key` at `now` gets; None: not locked.

        A base backup of the continuous tier is judged by when it was taken, not by its window
        label (`retention.plan_prune`), so it is locked from the write: a backfilled run's
        fresh base under an old label is kept, and locked, as long as any other."""
        if key.startswith(EVIDENCE_PREFIX):
            return now + self.evidence_retention
        parsed = BackupId.from_key(key)
        if parsed is None:
            return None
        backup = parsed[0]
        if backup.tier == CONTINUOUS:
            backup = backup._replace(window=max(backup.window, now))
        return self.backup_until(backup)

    def recovery_until(self, hold_until: datetime) -> datetime:
        """The retain-until date of a base backup and its WAL that prune keeps until
        `hold_until` (`retention.RecoveryHold`)."""
        return hold_until + self.margin

    def write_arguments(
        self, key: str, now: datetime, until: datetime | None = None
    ) -> dict[str, Any]:
        """The PutObject / CopyObject / CreateMultipartUpload arguments that lock `key`: until
        `until` if given (shared content, WAL), else as `until(key, now)` says."""
        until = until or self.until(key, now)
        if until is None or until <= now:  # past (an old window backfilled): nothing to hold
            return {}
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": until}
