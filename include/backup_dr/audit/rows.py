"""The audit report's rows: what the join makes of the records for each part of the report
(windows, integrity checks, prune decisions, drills, the recovery window) and its exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from include.backup_dr.audit.records import DrillRecord, WindowRecord


@dataclass(frozen=True)
class Backfilled:
    window: datetime
    how: str


@dataclass(frozen=True)
class Missed:
    window: datetime
    why: str


#: How the report names a backup that read the source itself (as `promotion` does).
OWN_READ = "its own read of the source"


@dataclass(frozen=True)
class Origin:
    """Where one backed-up window's restore point came from, as its kept manifest says."""

    window: datetime
    promoted_from: str | None  # "promoted from daily 20261206T003000Z"; None: its own read
    not_derived: str | None = None  # why a tier that derives read the source instead

    @property
    def text(self) -> str:
        return self.promoted_from or self.not_derived or OWN_READ


@dataclass(frozen=True)
class TierWindows:
    """Expected windows of one subject's tier against those backed up in every region."""

    subject: str
    tier: str
    schedule: str
    expected: tuple[datetime, ...]
    backed_up: tuple[datetime, ...]
    missed: tuple[Missed, ...]
    backfilled: tuple[Backfilled, ...]
    #: Backups of windows the schedule does not fire (a manual run), verified everywhere.
    unscheduled: int
    has_evidence: bool
    #: The day windows are counted from, and what says so ("policy", "first evidence");
    #: None: no date known, the whole period counts.
    since: date | None = None
    since_from: str | None = None
    #: Where each backed-up window's restore point came from, for the windows whose manifest
    #: is kept (a pruned window's integrity records do not say).
    origins: tuple[Origin, ...] = ()

    @property
    def promoted(self) -> int:
        return sum(1 for o in self.origins if o.promoted_from)


@dataclass(frozen=True)
class IntegrityFailure:
    window: datetime
    checked_at: datetime
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class IntegrityRow:
    subject: str
    tier: str
    region: str
    passed: int | None  # None: no record
    failed: int | None
    failures: tuple[IntegrityFailure, ...]


@dataclass(frozen=True)
class PlannedDeletion:
    planned_at: datetime
    subject: str
    reason: str


@dataclass(frozen=True)
class PruneRow:
    subject: str
    tier: str
    plans: int | None  # None: no record
    executed: int
    dry_runs: int
    breaker_trips: tuple[tuple[datetime, str], ...]
    kept: int
    deletions: tuple[PlannedDeletion, ...]  # of executed plans only, less what was refused
    refused: tuple[PlannedDeletion, ...] = ()


@dataclass(frozen=True)
class DrillRow:
    subject: str
    drill: DrillRecord | None  # None: no drill in the period
    rto: timedelta
    rpo: timedelta

    @property
    def within_rto(self) -> bool | None:
        if self.drill is None or self.drill.projected_seconds is None:
            return None
        return self.drill.projected_seconds <= self.rto.total_seconds()

    @property
    def within_rpo(self) -> bool | None:
        if self.drill is None or self.drill.rpo_seconds is None:
            return None
        return self.drill.rpo_seconds <= self.rpo.total_seconds()


@dataclass(frozen=True)
class RecoveryRow:
    """One continuous server's recovery window in one region over the period."""

    server: str
    region: str
    retention: timedelta
    records: tuple[WindowRecord, ...]

    @property
    def shortest(self) -> tuple[timedelta, datetime] | None:
        """The shortest reach back (now minus the oldest reachable second), and when."""
        reaches = [
            (r.measured_at - r.oldest, r.measured_at) for r in self.records if r.oldest is not None
        ]
        return min(reaches, default=None)

    @property
    def holes(self) -> list[tuple[datetime, datetime, datetime]]:
        """(measured at, hole start, hole end) for each hole inside the retention, deduplicated."""
        seen: dict[tuple[datetime, datetime], datetime] = {}
        for record in self.records:
            for start, end in record.holes:
                if end > record.measured_at - self.retention:
                    seen.setdefault((start, end), record.measured_at)
        return [(at, start, end) for (start, end), at in sorted(seen.items())]


@dataclass(frozen=True)
class Finding:
    control: str
    text: str
