"""The WAL archive as stored: its files and timeline histories, their locks, and the recovery
window held.

barman-cloud-wal-archive writes WAL without a lock, so `lock_archive` (the continuous monitor's
`lock_wal`, every minute) locks what arrived since its last call; prune calls
`hold_recovery_window` to keep the base backups and WAL it keeps locked for as long. Both the
engine and point-in-time recovery read the archive through `archive_files` and
`read_histories`.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr import wal_segments
from include.backup_dr.catalogue import MANIFEST_NAME, BackupId, Manifest
from include.backup_dr.lease import Holder, critical_section
from include.backup_dr.policy import CONTINUOUS
from include.backup_dr.retention import RecoveryHold
from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)

#: Per region: the last archived WAL file `lock_archive` locked (so it lists only newer ones).
LOCKED_NAME = "locked.json"
#: How long `lock_wal` (a 50 s task, every minute) waits for another run's lease on the WAL.
LOCK_LEASE_WAIT = timedelta(seconds=15)
#: Its lease's TTL: shorter than that wait (not `BACKUP_LEASE_TTL_SECONDS`), since a waiter
#: watches a lease stand still for a TTL before taking it over: with a longer one, a run
#: killed while holding it would keep every later run from locking the server's WAL.
LOCK_LEASE_TTL = timedelta(seconds=10)


def archive_files(
    store: ObjectStore, server: str, segment_size: int
) -> list[wal_segments.ArchivedFile]:
    return [
        wal_segments.classify(obj.key, obj.size, segment_size)
        for obj in store.list_objects(wal_segments.archive_prefix(server))
    ]


def read_histories(
    store: ObjectStore, files: Iterable[wal_segments.ArchivedFile]
) -> dict[int, wal_segments.TimelineHistory]:
    """The archive's timeline history files, read (a few hundred bytes each, one per failover):
    they say where each timeline forked, which the listing alone cannot."""
    histories = {}
    for item in files:
        if item.kind == "history" and item.history_timeline is not None:
            data = b"".join(store.iter_chunks(item.key))
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            histories[item.history_timeline] = wal_segments.parse_history(
                item.history_timeline, data.decode(errors="replace")
            )
    return histories


def lock_archive(
    store: ObjectStore,
    server: str,
    category: str,
    *,
    budget: timedelta = timedelta(seconds=25),
    batch: int = 200,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Lock the WAL files archived in `store` since the last call, each until it was archived
    plus the continuous tier's retention plus the margin (`LockRule.wal_until`).

    barman-cloud-wal-archive (like most archive_commands) writes without a lock, so the
    continuous monitor calls this every minute: a segment is locked within about a minute of
    its arrival. Files `copy_contents` fills in are locked as they are written.

    Bounded and resumable: listing starts after the last file locked, progress is saved every
    `batch` files, and a call stops after `budget` (the next one goes on), so any archive size
    is worked through, a batch at most redone after a timeout. A file whose date is already
    past (an old history file; WAL that GC will remove) gets no lock: S3 refuses a past date.

    It holds the lease of the server's WAL in `store` (`wal_subject`): in the region it
    locks, so that one region out never stops the other's locking.
    """
    assert store.lock is not None, f"{store.region.name} locks nothing"
    holder = Holder.current("lock_wal")
    subject = wal_subject(category, server)
    with critical_section(store, subject, holder, max_wait=LOCK_LEASE_WAIT, ttl=LOCK_LEASE_TTL):
        return _lock_archive(store, server, category, budget, batch, now)


def wal_subject(category: str, server: str) -> str:
    """The lease subject of a server's WAL archive in one region (its `lock_wal` runs)."""
    return f"{category}/{server}/wal"


def _lock_archive(
    store: ObjectStore,
    server: str,
    category: str,
    budget: timedelta,
    batch: int,
    now: datetime | None,
) -> dict[str, Any]:
    assert store.lock is not None
    now = now or datetime.now(UTC)
    marker = f"{wal_segments.ARCHIVE_PREFIX}/{server}/{LOCKED_NAME}"
    after = (store.get_json(marker) or {}).get("last")
    deadline = time.monotonic() + budget.total_seconds()
    locked = past = 0
    first = last = None
    more = False
    for obj in store.list_objects(wal_segments.archive_prefix(server), start_after=after):
        if time.monotonic() > deadline:
            more = True
            break
        until = store.lock.wal_until(obj.last_modified, category)
        if until > now:
            store.extend_lock(obj.key, until)
            locked += 1
        else:
            past += 1
        first, last = first or obj.key, obj.key
        if (locked + past) % batch == 0:
            store.put_json(marker, {"last": last, "at": datetime.now(UTC).isoformat()})
    if last is not None:
        store.put_json(marker, {"last": last, "at": datetime.now(UTC).isoformat()})
        log.info(
            "%s: locked %d WAL files up to %s (%d past their retention, not locked)%s",
            store.region.name,
            locked,
            last,
            past,
            "; more remain for the next run" if more else "",
        )
    return {
        "region": store.region.name,
        "server": server,
        "locked": locked,
        "past_retention": past,
        "more": more,
        "first": first,
        "last": last or after,
    }


#: Per region: the WAL ranges `hold_recovery_window` has locked, and until when.
HELD_NAME = "held.json"


def hold_recovery_window(
    store: ObjectStore, server: str, holds: Iterable[RecoveryHold], now: datetime
) -> dict[str, Any]:
    """Lock what prune keeps of the recovery window for as long as it keeps it.

    Each kept base backup is locked until its hold plus the margin (`RecoveryHold`), and so is
    the WAL from its start to the next verified base's start: GC keeps that WAL exactly as long.
    Locks are only ever extended. Each WAL range is extended once per hold (remembered in
    ``wal/<server>/held.json``), so a prune costs a listing only when a new base has arrived.
    """
    assert store.lock is not None, f"{store.region.name} locks nothing"
    marker = f"{wal_segments.ARCHIVE_PREFIX}/{server}/{HELD_NAME}"
    held: dict[str, str] = {
        span: until
        for span, until in ((store.get_json(marker) or {}).get("ranges") or {}).items()
        if datetime.fromisoformat(until) > now
    }
    bases = wal_ranges = segments = 0
    files: list[wal_segments.ArchivedFile] | None = None
    for hold in holds:
        until = store.lock.recovery_until(hold.until)
        manifest = store.manifest(hold.backup)
        if manifest is None:
            continue
        current = store.locked_until(hold.backup.key(MANIFEST_NAME))
        if current is None or current < until:
            for obj in store.list_objects(hold.backup.prefix):
                store.extend_lock(obj.key, until)
            bases += 1
        following = store.manifest(hold.next_base) if hold.next_base else None
        if following is None:
            continue  # the newest base: its WAL is locked as it arrives, and held by the next
        size = int(manifest.source["segment_size"])
        first = wal_segments.Segment.parse(manifest.source["start_wal"], size).number
        last = wal_segments.Segment.parse(following.source["start_wal"], size).number
        span = f"{first:X}-{last:X}"
        if span in held and datetime.fromisoformat(held[span]) >= until:
            continue
        files = files if files is not None else archive_files(store, server, size)
        for item in files:
            if item.segment is not None and first <= item.segment.number < last:
                store.extend_lock(item.key, until)
                segments += 1
        held[span] = until.isoformat()
        wal_ranges += 1
    if bases or wal_ranges:
        store.put_json(marker, {"ranges": held, "at": now.isoformat()})
    return {
        "region": store.region.name,
        "bases": bases,
        "wal_ranges": wal_ranges,
        "wal_files": segments,
    }


def base_manifests(store: ObjectStore, category: str, server: str) -> list[Manifest]:
    manifests = []
    for obj in store.list_objects(f"{category}/{server}/{CONTINUOUS}/"):
        parsed = BackupId.from_key(obj.key)
        if parsed is not None and parsed[1] == MANIFEST_NAME:
            manifest = store.manifest(parsed[0])
            if manifest is not None:
                manifests.append(manifest)
    return manifests


def oldest_base_start(
    store: ObjectStore, category: str, server: str, segment_size: int
) -> wal_segments.Segment | None:
    """The start segment of the oldest base backup committed in this region."""
    starts = [
        wal_segments.Segment.parse(m.source["start_wal"], segment_size)
        for m in base_manifests(store, category, server)
    ]
    return min(starts) if starts else None
