"""The continuous tier's engine: base backups plus the WAL archive (point-in-time recovery).

WAL leaves each server continuously through its ``archive_command`` (barman-cloud-wal-archive,
one call per region, SSE-KMS). This engine does the scheduled part, in the same four steps as
every other tier:

- snapshot: ``pg_basebackup -Ft -D - -X none`` streamed into the primary region (no local copy;
  the replication protocol works from any worker, unlike tools that read PGDATA). The backup is
  committed only once the WAL segment holding its end point is in the archive, so every
  committed base backup can be made consistent;
- copy_contents: every WAL file the secondary lacks, from the base backup's start on;
- check_contents: the WAL chain is whole from this base backup's own start to the newest
  segment, position by position on the timeline that owns it (history files), and every
  segment not re-read before decompresses and carries the header its name promises
  (timeline, position, cluster);
- plan_garbage (the `backup_collect_garbage` DAG, once a day): WAL older than the oldest kept
  base backup's start goes.

archive.py reads the archive and holds its locks (each new file, and the recovery window prune
keeps); snapshot.py streams a base backup into the store; tar.py reads a tar as it passes;
engine.py is the engine the DAGs drive.
"""

from include.backup_dr.engines.wal.archive import (
    LOCK_LEASE_TTL,
    LOCKED_NAME,
    archive_files,
    hold_recovery_window,
    lock_archive,
    read_histories,
)
from include.backup_dr.engines.wal.engine import WalEngine
from include.backup_dr.engines.wal.snapshot import BaseBackupSnapshot
from include.backup_dr.engines.wal.tar import TarMember

__all__ = [
    "LOCKED_NAME",
    "LOCK_LEASE_TTL",
    "BaseBackupSnapshot",
    "TarMember",
    "WalEngine",
    "archive_files",
    "hold_recovery_window",
    "lock_archive",
    "read_histories",
]
