"""The evidence records the audit reads: one per evidence document, only the fields the report
reads. `reader.py` makes them from the stores; `join.py` joins them into the report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


@dataclass(frozen=True)
class BackupRecord:
    """A committed manifest in one region, with the verdict of the check stored beside it."""

    key: str
    target: str
    tier: str
    window: datetime
    region: str
    finished_at: datetime
    run_id: str
    verified: bool
    #: The artifact the manifest vouches for, and where it is.
    sha256: str
    artifact_key: str
    #: Where its data came from: the backup it was promoted from, as the log names it
    #: ("promoted from daily 20261206T003000Z"); None: its own read of the source.
    promoted_from: str | None = None
    #: Why a tier that derives from another read the source instead (the manifest's).
    not_derived: str | None = None


@dataclass(frozen=True)
class IntegrityRecord:
    """A kept integrity check of one region's copy (evidence/integrity/...)."""

    key: str
    target: str
    tier: str
    window: datetime
    region: str
    checked_at: datetime
    ok: bool
    failures: tuple[str, ...] = ()
    #: The artifact the check re-hashed (None in records older than that field).
    sha256: str | None = None
    #: Where the artifact's data came from, as its manifest said (see BackupRecord); only
    #: when `says_origin` (records older than these fields do not say).
    promoted_from: str | None = None
    not_derived: str | None = None
    says_origin: bool = False


class Deletion(NamedTuple):
    subject: str
    reason: str


@dataclass(frozen=True)
class PruneRecord:
    """One prune plan (evidence/prune/...): how many copies it kept, and each deletion's reason."""

    key: str
    target: str
    tier: str
    planned_at: datetime
    executed: bool
    dry_run: bool
    breaker: str | None
    kept: int
    deletions: tuple[Deletion, ...]


@dataclass(frozen=True)
class RefusalRecord:
    """Deletions a prune planned and the store refused (evidence/prune/...-refused.json):
    kept under Object Lock longer than the plan knew. Never a deletion."""

    key: str
    target: str
    tier: str
    planned_at: datetime
    refused: tuple[Deletion, ...]
    #: The error that stopped the prune after these refusals; None when it ran to the end.
    interrupted: str | None


@dataclass(frozen=True)
class BreakGlassRecord:
    """A locked backup deleted through the break-glass connection (evidence/break-glass/...)."""

    key: str
    requested_at: datetime
    backup: str
    region: str
    operator: str
    approved_by: str | None
    reason: str
    outcome: str


@dataclass(frozen=True)
class RestoreRunRecord:
    """One dr_restore run as a whole (evidence/estate/dr_restore/...): the estate's wall time
    from the first restore's start to the last record, against the RTO."""

    key: str
    began_at: datetime
    wall_seconds: float | None
    rto_seconds: float
    within_rto: bool
    outcome: str
    problems: tuple[str, ...]
    targets: tuple[str, ...]


@dataclass(frozen=True)
class LockSample:
    """One sampled kept object's Object Lock against what its retention needs: prune may
    delete a backup from its window plus its tier's retention on, so the lock must reach that;
    an evidence record is needed for the evidence retention from when it was written."""

    key: str
    region: str
    retain_until: datetime | None  # None: not locked
    needed: datetime

    @property
    def covered(self) -> bool:
        return self.retain_until is not None and self.retain_until >= self.needed


@dataclass(frozen=True)
class FirstSeen:
    """The earliest evidence of a subject in the stores, before the period or in it."""

    subject: str
    at: datetime


@dataclass(frozen=True)
class DrillRecord:
    """One restore (evidence/restore_verification/... for a drill, evidence/dr_restore/... for
    a DR restore), with what it measured."""

    key: str
    subject: str
    recorded_at: datetime
    outcome: str
    problems: tuple[str, ...]
    tier: str | None
    region: str | None
    #: The restore's own steps, in seconds (download, hash, pg_restore or WAL replay).
    restore_seconds: float | None
    #: The drill's projection for the largest production target, against the RTO.
    projected_seconds: float | None
    projected_of: str | None
    #: Data loss measured: PITR, the newest restored heartbeat's distance from T; otherwise the
    #: restored backup's age when the drill restored it.
    rpo_seconds: float | None
    rpo_measure: str
    kind: str = "restore_verification"


@dataclass(frozen=True)
class WindowRecord:
    """The continuous tier's recovery window in one region as its prune left it
    (evidence/recovery_window/...): how far back it reached, and its holes."""

    key: str
    server: str
    region: str
    measured_at: datetime
    oldest: datetime | None
    newest: datetime | None
    holes: tuple[tuple[datetime, datetime], ...] = ()


@dataclass(frozen=True)
class FailoverRecord:
    """One failover (evidence/failover/...): who approved it, what it lost, what is left."""

    server: str
    key: str
    recorded_at: datetime  # when the server took writes again (else the preflight)
    planned: bool
    approved_by: str | None
    approval_to_writable_seconds: float | None
    loss_seconds: float | None
    lost_heartbeats: int | None
    timeline: int | None
    old_primary: str
    problems: tuple[str, ...]


Record = (
    BackupRecord
    | IntegrityRecord
    | PruneRecord
    | RefusalRecord
    | BreakGlassRecord
    | DrillRecord
    | RestoreRunRecord
    | FailoverRecord
    | WindowRecord
    | LockSample
    | FirstSeen
)
