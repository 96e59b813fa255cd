"""Point-in-time recovery (PITR) of a whole PostgreSQL cluster from one region's backups.

The continuous tier keeps, per database server, base backups (``pg_basebackup -Ft -X none``:
a tar of the data directory, no WAL) and the WAL archive that barman-cloud writes to each
region. Together they recover the cluster to any second of the retention. In flow order:

* ``window``: which times a region can recover to (``recovery_range``), from its *verified*
  base backups and the archive; any other time is refused, with the range in the message,
  before anything is downloaded;
* ``heartbeat``: the proof of 1-second granularity: T is half a second after a heartbeat the
  monitor recorded; after recovery that heartbeat is there and none written after T is;
* ``server``: the cluster recovered into a throwaway server (``recover``): private scratch
  directory, Unix socket only, never archiving; always stopped and deleted afterwards;

Its users: the yearly drill (``include.backup_dr.drill.pitr``) and disaster recovery at a point in
time (``include.backup_dr.dr.pitr``).
"""

from include.backup_dr.pitr.heartbeat import HeartbeatSample, eligible_samples
from include.backup_dr.pitr.server import (
    RECOVERY_ENDED,
    RecoveredServer,
    RecoveryFailed,
    recover,
)
from include.backup_dr.pitr.window import (
    BaseBackup,
    RecoveryRange,
    TargetOutOfRange,
    check_target,
    choose_base,
    choose_region,
    parse_target_time,
    recovery_range,
    summarise_range,
)

__all__ = [
    "RECOVERY_ENDED",
    "BaseBackup",
    "HeartbeatSample",
    "RecoveredServer",
    "RecoveryFailed",
    "RecoveryRange",
    "TargetOutOfRange",
    "check_target",
    "choose_base",
    "choose_region",
    "eligible_samples",
    "parse_target_time",
    "recover",
    "recovery_range",
    "summarise_range",
]
