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
* ``drills``: the restore_verification drill (``drill``): recover, prove, validate, evidence;
* ``recovery``: restore chosen databases at T for disaster recovery (``recover_targets``).
"""

from include.backup_dr.pitr.drills import (
    drill,
    drill_servers,
    has_base_backup,
    merge_validations,
    projection,
)
from include.backup_dr.pitr.heartbeat import HeartbeatSample, eligible_samples
from include.backup_dr.pitr.recovery import recover_targets
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
    "drill",
    "drill_servers",
    "eligible_samples",
    "has_base_backup",
    "merge_validations",
    "parse_target_time",
    "projection",
    "recover",
    "recover_targets",
    "recovery_range",
    "summarise_range",
]
