"""What a region can recover: its verified base backups, how far their WAL reaches in that
region, and the checks that refuse any other time before anything is downloaded (pure rules,
plus ``recovery_range`` which lists the region)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.backup_dr.catalogue import BackupId, Manifest, Verification, build_catalogue
from include.backup_dr.policy import CONTINUOUS, Policy
from include.backup_dr.restore import RestoreRefused
from include.backup_dr.store import ObjectStore
from include.backup_dr.wal import (
    DEFAULT_SEGMENT_SIZE,
    ArchivedFile,
    Segment,
    archive_prefix,
    classify,
    continuity,
)


class TargetOutOfRange(RestoreRefused):
    """The requested recovery time is outside what the region can recover; nothing restored."""


@dataclass(frozen=True)
class BaseBackup:
    """One region's copy of a base backup and how far its WAL chain reaches in that region."""

    id: BackupId
    region: str
    verification: Verification
    manifest: Manifest
    #: LastModified of the newest archived segment reachable from the start without a gap.
    chain_end_at: datetime | None = None
    chain_end: str | None = None

    @property
    def finished_at(self) -> datetime:
        return self.manifest.finished_at

    @property
    def segment_size(self) -> int:
        return int(self.manifest.source.get("segment_size") or DEFAULT_SEGMENT_SIZE)

    @property
    def start_segment(self) -> Segment:
        return Segment.parse(self.manifest.source["start_wal"], self.segment_size)

    @property
    def end_segment(self) -> Segment:
        return Segment.parse(self.manifest.source["end_wal"], self.segment_size)

    @property
    def usable(self) -> bool:
        """Verified, and its WAL reaches at least the backup's end (it can become consistent)."""
        return (
            self.verification is Verification.PASSED
            and self.chain_end is not None
            and Segment.parse(self.chain_end, self.segment_size).number >= self.end_segment.number
        )


@dataclass(frozen=True)
class RecoveryRange:
    """The times one region can recover a server to: (oldest, newest], from its usable bases."""

    region: str
    server: str
    bases: tuple[BaseBackup, ...]
    oldest: datetime | None
    newest: datetime | None
    #: Newest archived full segment (any position): the monitor's end_segment is compared to it.
    newest_segment: str | None
    wal_ok: bool
    wal_detail: str

    def usable(self) -> list[BaseBackup]:
        return [b for b in self.bases if b.usable]

    def describe(self) -> str:
        if self.oldest is None or self.newest is None:
            return f"{self.region} can recover {self.server} to no time at all ({self.wal_detail})"
        return (
            f"{self.region} can recover {self.server} to any time after "
            f"{self.oldest.isoformat()} up to {self.newest.isoformat()}"
        )

    def problems(self) -> list[str]:
        """Why this region should not be the one a drill proves (empty: it is fine)."""
        found = []
        if self.bases:
            newest = max(self.bases, key=lambda b: b.id.window)
            if newest.verification is Verification.FAILED:
                found.append(
                    f"the newest base backup {newest.id} failed its integrity check in "
                    f"{self.region}"
                )
        if not self.wal_ok:
            found.append(f"the WAL archive in {self.region} is not continuous: {self.wal_detail}")
        if not self.usable():
            found.append(f"{self.region} has no verified base backup with its WAL")
        return found

    def to_document(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
            "newest_segment": self.newest_segment,
            "wal": self.wal_detail,
            "base_backups": [
                {
                    "id": str(b.id),
                    "finished_at": b.finished_at.isoformat(),
                    "verification": b.verification.value,
                    "wal_reaches": b.chain_end,
                }
                for b in self.bases
            ],
        }


def summarise_range(
    region: str,
    server: str,
    bases: Iterable[tuple[BackupId, Verification, Manifest]],
    archive: Iterable[tuple[ArchivedFile, datetime]],
) -> RecoveryRange:
    """The range from committed base backups and the archive listing (pure: no I/O).

    Oldest: the earliest usable base backup's end (its ``finished_at``). Newest: when the
    newest segment reachable without a gap from a usable base was archived (its LastModified):
    a commit after that cannot be in this region yet.
    """
    files = list(archive)
    archived: dict[int, datetime] = {}  # segment position -> newest LastModified
    names: dict[int, str] = {}
    for item, modified in files:
        if item.kind == "segment" and item.segment is not None:
            number = item.segment.number
            if number not in archived or modified > archived[number]:
                archived[number] = modified
                names[number] = item.key.rsplit("/", 1)[-1].split(".")[0]
    found = []
    for backup, verification, manifest in sorted(bases, key=lambda b: b[0].window):
        base = BaseBackup(backup, region, verification, manifest)
        end = base.start_segment.number
        if end not in archived:
            found.append(base)
            continue
        while end + 1 in archived:
            end += 1
        found.append(BaseBackup(backup, region, verification, manifest, archived[end], names[end]))
    usable = [b for b in found if b.usable]
    oldest = min((b.finished_at for b in usable), default=None)
    newest = max((b.chain_end_at for b in usable if b.chain_end_at), default=None)
    newest_segment = names[max(archived)] if archived else None
    if usable:
        first = max(usable, key=lambda b: b.finished_at).start_segment
        check = continuity((item for item, _ in files), first)
        wal_ok, wal_detail = check.ok, check.describe(usable[0].segment_size)
    elif found:
        wal_ok, wal_detail = False, "no verified base backup's WAL is archived up to its end"
    else:
        wal_ok, wal_detail = False, "no base backup of the continuous tier"
    return RecoveryRange(
        region, server, tuple(found), oldest, newest, newest_segment, wal_ok, wal_detail
    )


def recovery_range(policy: Policy, store: ObjectStore, server: str) -> RecoveryRange:
    """What `store`'s region can recover `server` to, from its catalogue and WAL listing."""
    category = policy.subject(server, CONTINUOUS).category
    listing = store.listing(f"{category}/{server}/{CONTINUOUS}/")
    backups, _ = build_catalogue([listing])
    region = store.region.name
    bases = [
        (b.id, b.copies[region].verification, listing.manifests[b.id])
        for b in backups
        if region in b.copies
    ]
    segment_size = next(
        (int(m.source.get("segment_size") or DEFAULT_SEGMENT_SIZE) for _, _, m in bases),
        DEFAULT_SEGMENT_SIZE,
    )
    archive = [
        (classify(obj.key, obj.size, segment_size), obj.last_modified)
        for obj in store.list_objects(archive_prefix(server))
    ]
    return summarise_range(region, server, bases, archive)


def parse_target_time(value: str | datetime | None) -> datetime | None:
    """An ISO 8601 time (naive means UTC), or None for "latest" (the end of the archive)."""
    if value is None or isinstance(value, datetime):
        target = value
    elif value.strip().lower() == "latest":
        return None
    else:
        try:
            target = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RestoreRefused(
                f"target_time {value!r} is neither an ISO 8601 time nor 'latest'"
            ) from None
    if target is not None and target.tzinfo is None:
        target = target.replace(tzinfo=UTC)
    return target


def check_target(
    span: RecoveryRange, target: datetime | None, now: datetime | None = None
) -> datetime | None:
    """Refuse a time the region cannot recover to, naming the range; return the target."""
    now = now or datetime.now(UTC)
    if span.oldest is None or span.newest is None:
        raise TargetOutOfRange(f"nothing can be recovered: {span.describe()}; nothing restored")
    if target is None:
        return None
    if target > now:
        why = f"{target.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})"
    elif target <= span.oldest:
        why = f"{target.isoformat()} is older than the recovery window"
    elif target > span.newest:
        why = f"{target.isoformat()} is after the newest archived WAL"
    else:
        return target
    raise TargetOutOfRange(f"{why}: {span.describe()}; nothing restored")


def choose_base(span: RecoveryRange, target: datetime | None) -> BaseBackup:
    """The newest usable base backup finished before `target` whose WAL reaches it."""
    candidates = [
        b
        for b in span.usable()
        if target is None
        or (b.finished_at < target and b.chain_end_at is not None and b.chain_end_at >= target)
    ]
    if not candidates:
        when = "the end of the archive" if target is None else target.isoformat()
        raise TargetOutOfRange(f"no base backup can reach {when}: {span.describe()}")
    return max(candidates, key=lambda b: b.finished_at)


def choose_region(
    preferred: RecoveryRange, other: RecoveryRange, why_preferred: str
) -> tuple[RecoveryRange, str]:
    """The preferred region unless its newest integrity evidence failed; then the other."""
    trouble = preferred.problems()
    if not trouble:
        return preferred, f"{preferred.region}: {why_preferred}; {preferred.describe()}"
    if not other.problems():
        return other, (
            f"{other.region} instead of {preferred.region} ({why_preferred}), because "
            + "; ".join(trouble)
            + f"; {other.describe()}"
        )
    return preferred, (
        f"{preferred.region} ({why_preferred}) although "
        + "; ".join(trouble)
        + f"; {other.region} is no better: "
        + "; ".join(other.problems())
    )


def _provenance(base: BaseBackup) -> dict[str, Any]:
    return {
        "base_backup": str(base.id),
        "taken_at": base.finished_at.isoformat(),
        "age_seconds": round((datetime.now(UTC) - base.finished_at).total_seconds()),
        "sha256": base.manifest.artifact.sha256,
        "start_wal": base.manifest.source.get("start_wal"),
        "end_wal": base.manifest.source.get("end_wal"),
    }
