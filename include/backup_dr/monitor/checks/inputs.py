"""What the checks read, as plain values: `monitor/facts.py` reads them from the stores and
the continuous monitor's evidence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from include.backup_dr.restore.record import restore_rate


@dataclass(frozen=True)
class BackupFacts:
    """One subject's tier in one region: its newest verified backup (None: there is none)."""

    restore_point: datetime | None = None  # the verified backup's manifest start
    window: datetime | None = None
    #: Bytes a restore of it moves, in the unit the drill measures (dump / listed / base bytes).
    restore_bytes: int | None = None
    #: Backups newer than the newest verified one whose check did not pass (or did not run).
    newer_unverified: int = 0
    error: str | None = None  # the region could not be read


@dataclass(frozen=True)
class MonitorFacts:
    """The continuous monitor's newest evidence for one server."""

    evidence: str | None = None
    measured_at: datetime | None = None
    samples: int = 0
    p99_ms: float | None = None
    max_ms: float | None = None
    archive_age_seconds: float | None = None
    #: Closed WAL segments waiting to be archived (None: the monitor could not read the backlog).
    ready_files: int | None = None
    conditions: Mapping[str, bool] = field(default_factory=dict)
    #: The primary's SERVER_SETTINGS as pg_settings gives them (None: an older record).
    settings: Mapping[str, str] | None = None
    #: The standby's pg_stat_replication.sync_state (None: no standby was streaming).
    sync_state: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class WindowFacts:
    """What one region can recover one continuous server to, read from the store."""

    #: (a, b] spans reachable from a verified base backup through whole WAL, oldest first.
    intervals: tuple[tuple[datetime, datetime], ...] = ()
    #: When the tier's first prune ran here (its history starts); None: it has not yet.
    since: datetime | None = None
    #: The first segment missing after each usable base's reach, where the archive goes on.
    gaps: tuple[str, ...] = ()
    detail: str = ""
    error: str | None = None


@dataclass(frozen=True)
class ReplicationFacts:
    """media_replicate's state for one target, as its last run left it in the secondary."""

    began_at: datetime | None = None
    lag_seconds: float | None = None
    evidence: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class DrillFacts:
    """The newest restore drill record of one target or server (database, media or PITR)."""

    evidence: str | None = None
    recorded_at: datetime | None = None
    outcome: str | None = None
    problems: tuple[str, ...] = ()
    tier: str | None = None
    region: str | None = None
    #: What the drill restored (bytes, in the unit of BackupFacts.restore_bytes) and how long.
    restored_bytes: int | None = None
    seconds: float | None = None
    error: str | None = None

    @property
    def rate(self) -> float | None:
        """Bytes restored per second, measured by the drill."""
        return restore_rate(self.restored_bytes, self.seconds)


@dataclass(frozen=True)
class RehashFacts:
    """One media target's rolling re-hash in one region, from its kept integrity records."""

    #: Per sample bucket, when its re-hash last passed.
    passed: Mapping[int, datetime] = field(default_factory=dict)
    #: The first integrity record of this target in this region: the history starts there.
    since: datetime | None = None
    #: Blobs per bucket in the target's newest verified snapshot (None: could not be read).
    blobs_per_bucket: Mapping[int, int] | None = None
    error: str | None = None


@dataclass(frozen=True)
class StoreFacts:
    """Everything the checks read, keyed as the checks name their subjects."""

    backups: Mapping[tuple[str, str, str], BackupFacts]  # (subject, tier, region)
    monitors: Mapping[str, MonitorFacts]  # server
    replications: Mapping[str, ReplicationFacts]  # media target
    drills: Mapping[str, DrillFacts]  # target or server
    rehash: Mapping[tuple[str, str], RehashFacts]  # (media target, region)
    windows: Mapping[tuple[str, str], WindowFacts] = field(default_factory=dict)  # server, region
