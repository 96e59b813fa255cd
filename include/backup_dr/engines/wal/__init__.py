"""The continuous tier: base backups plus the WAL archive (engine.py, for now the whole of it)."""

from include.backup_dr.engines.wal.engine import (
    LOCK_LEASE_TTL,
    LOCKED_NAME,
    BaseBackupSnapshot,
    TarMember,
    WalEngine,
    archive_files,
    hold_recovery_window,
    lock_archive,
    read_histories,
)

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
