"""What a region can recover: its verified base backups, how far their WAL reaches in that
region, and the checks that refuse any other time before anything is downloaded (pure rules,
plus ``recovery_range`` which lists the region)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.backup_dr.catalogue import BackupId, Manifest, Verification, build_catalogue
from include.backup_dr.engines.wal import read_histories
from include.backup_dr.evidence import evidence_key
from include.backup_dr.policy import CONTINUOUS, Policy
from include.backup_dr.restore.errors import RestoreRefused
from include.backup_dr.store import ObjectStore
from include.backup_dr.wal_segments import (
    DEFAULT_SEGMENT_SIZE,
    ArchivedFile,
    Continuity,
    Segment,
    TimelineHistory,
    archive_prefix,
    classify,
    continuity,
)

#: Where each prune of the continuous tier records the window it left, per server and region.
WINDOW_EVIDENCE = "evidence/recovery_window"


def record_window(policy: Policy, store: ObjectStore, server: str, now: datetime) -> RecoveryRange:
    """Measure what `store`'s region can recover `server` to and keep it as evidence there (the
    audit report's recovery-window table); the range."""
    span = recovery_range(policy, store, server)
    key = evidence_key("recovery_window", f"{server}/{store.region.name}", now)
    document = {
        "schema": "backup-dr/recovery-window/v1",
        "server": server,
        "region": store.region.name,
        "measured_at": now.isoformat(),
        **span.to_document(),
    }
    store.put_json(key, document)
    return span


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
    #: The first segment missing after `chain_end` when the archive goes on past it (a gap).
    gap_at: str | None = None

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


Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class RecoveryRange:
    """The times one region can recover a server to: a set of intervals (a, b], one per run of
    usable base backups whose WAL joins up, with the holes between them named."""

    region: str
    server: str
    bases: tuple[BaseBackup, ...]
    oldest: datetime | None
    newest: datetime | None
    #: Newest archived full segment (any position): the monitor's end_segment is compared to it.
    newest_segment: str | None
    wal_ok: bool
    wal_detail: str
    intervals: tuple[Interval, ...] = ()

    def usable(self) -> list[BaseBackup]:
        return [b for b in self.bases if b.usable]

    @property
    def holes(self) -> list[Interval]:
        """(a, b]: times between two intervals that no base backup and WAL can reach."""
        return [(left[1], right[0]) for left, right in itertools.pairwise(self.intervals)]

    def covers(self, when: datetime) -> bool:
        return any(start < when <= end or when == start == end for start, end in self.intervals)

    def describe(self) -> str:
        if self.oldest is None or self.newest is None:
            return f"{self.region} can recover {self.server} to no time at all ({self.wal_detail})"
        holes = "".join(
            f"; NOT to {start.isoformat()} .. {end.isoformat()} (a hole: WAL missing)"
            for start, end in self.holes
        )
        return (
            f"{self.region} can recover {self.server} to any time after "
            f"{self.oldest.isoformat()} up to {self.newest.isoformat()}{holes}"
        )

    def problems(self) -> list[str]:
        """Why this region should not be the one a drill proves (empty: it is fine)."""
        found = []
        if self.bases:
            newest = max(self.bases, key=lambda b: b.finished_at)
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
            "intervals": [[a.isoformat(), b.isoformat()] for a, b in self.intervals],
            "holes": [[a.isoformat(), b.isoformat()] for a, b in self.holes],
            "newest_segment": self.newest_segment,
            "wal": self.wal_detail,
            "base_backups": [
                {
                    "id": str(b.id),
                    "finished_at": b.finished_at.isoformat(),
                    "verification": b.verification.value,
                    "wal_reaches": b.chain_end,
                    "gap_at": b.gap_at,
                }
                for b in self.bases
            ],
        }


def summarise_range(
    region: str,
    server: str,
    bases: Iterable[tuple[BackupId, Verification, Manifest]],
    archive: Iterable[tuple[ArchivedFile, datetime]],
    histories: Mapping[int, TimelineHistory] | None = None,
) -> RecoveryRange:
    """The range from committed base backups and the archive listing (pure: no I/O).

    Each base backup is followed from its own start along its timeline path (`wal.continuity`),
    so a gap before it never spoils it. It covers (its end, when the last segment it reaches
    without a gap was archived]: a commit after that cannot be in this region yet. The range is
    the union of what the usable bases cover; what lies between is a hole.
    """
    files = list(archive)
    items = [item for item, _ in files]
    modified = {item.key: when for item, when in files}
    key_of = {item.segment: item.key for item in items if item.kind == "segment"}
    found: list[BaseBackup] = []
    chains: dict[BackupId, Continuity] = {}
    for backup, verification, manifest in sorted(bases, key=lambda b: b[2].finished_at):
        base = BaseBackup(backup, region, verification, manifest)
        size = base.segment_size
        chain = continuity(items, base.start_segment, histories, size)
        chains[backup] = chain
        if chain.reach is None:
            found.append(base)
            continue
        gap = chain.missing[0].name(size) if chain.missing else None
        end_at = modified[key_of[chain.reach]]
        found.append(
            dataclasses.replace(
                base, chain_end_at=end_at, chain_end=chain.reach.name(size), gap_at=gap
            )
        )
    usable = [b for b in found if b.usable]
    # A base whose WAL so far ends before its manifest was written (its end segment is archived
    # before the snapshot commits) still recovers to the end of that WAL: a point, not nothing.
    intervals = _union(
        (min(b.finished_at, b.chain_end_at), b.chain_end_at) for b in usable if b.chain_end_at
    )
    segments = [item for item in items if item.kind == "segment" and item.segment]
    newest_segment = (
        max(segments, key=lambda i: i.segment).key.rsplit("/", 1)[-1].split(".")[0]  # type: ignore[arg-type,return-value]
        if segments
        else None
    )
    if usable:
        newest_base = max(usable, key=lambda b: b.finished_at)
        check = chains[newest_base.id]
        holes = max(len(intervals) - 1, 0)
        wal_ok = check.ok and holes == 0
        wal_detail = check.describe(newest_base.segment_size) + (
            f"; {holes} hole(s) between the base backups' reaches" if holes else ""
        )
    elif found:
        wal_ok, wal_detail = False, "no verified base backup's WAL is archived up to its end"
    else:
        wal_ok, wal_detail = False, "no base backup of the continuous tier"
    return RecoveryRange(
        region,
        server,
        tuple(found),
        intervals[0][0] if intervals else None,
        intervals[-1][1] if intervals else None,
        newest_segment,
        wal_ok,
        wal_detail,
        tuple(intervals),
    )


def _union(spans: Iterable[Interval]) -> list[Interval]:
    """Merge (a, b] intervals that overlap or touch (a point, a == b, is kept)."""
    merged: list[Interval] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


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
    histories = read_histories(store, (item for item, _ in archive))
    return summarise_range(region, server, bases, archive, histories)


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
    """Refuse a time the region cannot recover to, naming the range; return the target.

    "latest" (None) is refused when replay from the newest base backup would stop at a gap
    with more WAL archived after it: that is not the end of the archive, and stopping there
    silently would pass off an older state as the newest. The newest reachable second is named,
    so on-call can ask for it explicitly and accept the loss.
    """
    now = now or datetime.now(UTC)
    if span.oldest is None or span.newest is None:
        raise TargetOutOfRange(f"nothing can be recovered: {span.describe()}; nothing restored")
    if target is None:
        newest = max(span.usable(), key=lambda b: b.finished_at)
        if newest.gap_at is not None:
            raise TargetOutOfRange(
                f"'latest' would stop at a gap: segment {newest.gap_at} is missing after "
                f"{newest.chain_end}, and later WAL is archived. The newest reachable second "
                f"is {span.newest.isoformat()}; ask for it as target_time to accept losing what "
                f"follows. {span.describe()}; nothing restored"
            )
        return None
    if target > now:
        why = f"{target.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})"
    elif target <= span.oldest:
        why = f"{target.isoformat()} is older than the recovery window"
    elif target > span.newest:
        why = f"{target.isoformat()} is after the newest archived WAL"
    elif not span.covers(target):
        why = f"{target.isoformat()} falls in a hole of the recovery window"
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
