"""Garbage collection of media blobs: mark what every committed snapshot and replica listing
refers to, and plan to sweep the rest once older than the grace, in a scratch SQLite file."""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from include.backup_dr.catalogue import MANIFEST_NAME, Artifact, BackupId, Manifest
from include.backup_dr.engines.base import (
    SWEEP_SAMPLE,
    LostListing,
    Sweep,
    locked_reason,
    still_locked,
)
from include.backup_dr.engines.media.layout import REPLICA_DIR, blob_key, blob_prefix
from include.backup_dr.engines.media.listing import parse_listing
from include.backup_dr.engines.media.plan import plan_gc
from include.backup_dr.policy import Policy
from include.backup_dr.store import ObjectStore, StoreError


@contextmanager
def plan_sweep(
    policy: Policy, store: ObjectStore, category: str, now: datetime
) -> Iterator[list[Sweep]]:
    """Mark the blobs every committed snapshot and replica listing refers to; plan to sweep
    the rest once older than the grace. Marks and plan live in a temporary SQLite file and
    every listing streams through, so memory stays flat at any number of blobs."""
    grace = policy.prune.incomplete_upload_grace
    blobs = blob_prefix(category)
    with _scratch_db("gc-") as db:
        marked, doomed = _StoredSet(db, "marked"), _StoredSet(db, "doomed")
        db.execute("CREATE TABLE blob (sha256 TEXT PRIMARY KEY, written REAL) WITHOUT ROWID")
        for obj in store.list_objects(f"{category}/"):  # one listing: blobs and snapshots
            if obj.key.startswith(blobs):
                sha, written = obj.key.rsplit("/", 1)[-1], obj.last_modified.timestamp()
                db.execute("INSERT OR REPLACE INTO blob VALUES (?, ?)", (sha, written))
                continue
            parsed = BackupId.from_key(obj.key)
            if parsed is not None and parsed[1] == MANIFEST_NAME:
                _mark_snapshot(store, parsed[0], marked)
        for obj in store.list_objects(f"{REPLICA_DIR}/{category}/"):
            if obj.key.endswith("/listing.jsonl"):  # the replica: the secondary's live copy
                _mark_replica(store, obj.key, marked)
        listed = (
            (sha, datetime.fromtimestamp(written, UTC))
            for sha, written in db.execute("SELECT sha256, written FROM blob")
        )
        total = 0
        reasons: dict[str, str] = {}
        for sha, delete, reason in plan_gc(marked, listed, now, grace):
            total += 1
            if delete:
                doomed.add(blob_key(category, sha))
                if len(reasons) < SWEEP_SAMPLE:
                    reasons[blob_key(category, sha)] = reason
        locks = still_locked(store, doomed, now)
        for key in locks:
            doomed.discard(key)
        sample = [{"key": k, "reason": r} for k, r in reasons.items() if k not in locks]
        held = [
            {"key": key, "reason": locked_reason("referenced by no kept snapshot", until)}
            for key, until in islice(locks.items(), SWEEP_SAMPLE)
        ]

        def delete() -> int:
            # Only versions older than the grace: a snapshot may have just refreshed a blob.
            return store.delete_all_versions(blobs, written_before=now - grace, keys=doomed)

        yield [Sweep("media blobs", total, len(doomed), sample, delete, len(locks), held)]


@contextmanager
def _scratch_db(prefix: str) -> Iterator[sqlite3.Connection]:
    """A SQLite database in a temporary file, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        db = sqlite3.connect(Path(scratch) / "scratch.db")
        try:
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            yield db
        finally:
            db.close()


class _StoredSet:
    """A set of strings kept in a table of a scratch database, not in memory."""

    def __init__(self, db: sqlite3.Connection, table: str) -> None:
        self._db = db
        self._table = table
        db.execute(f"CREATE TABLE {table} (value TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, value: str) -> None:
        self._db.execute(f"INSERT OR IGNORE INTO {self._table} VALUES (?)", (value,))

    def update(self, values: Iterable[str]) -> None:
        self._db.executemany(
            f"INSERT OR IGNORE INTO {self._table} VALUES (?)", ((v,) for v in values)
        )

    def discard(self, value: str) -> None:
        self._db.execute(f"DELETE FROM {self._table} WHERE value = ?", (value,))

    def __iter__(self) -> Iterator[str]:
        """Every value, read out first: the set may change while they are used."""
        rows = self._db.execute(f"SELECT value FROM {self._table}").fetchall()
        return iter([value for (value,) in rows])

    def __contains__(self, value: object) -> bool:
        query = f"SELECT 1 FROM {self._table} WHERE value = ?"
        return self._db.execute(query, (value,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._db.execute(f"SELECT count(*) FROM {self._table}").fetchone()[0])


def _mark_listing(
    store: ObjectStore, key: str, expected: Artifact | None, marked: _StoredSet
) -> str | None:
    """Mark every blob the listing at `key` refers to. None when it was read whole (and is the
    artifact its manifest vouches for, if `expected`); otherwise what was wrong with it."""
    digest = hashlib.sha256()
    size = 0

    def hashed(chunks: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            yield chunk

    try:
        marked.update(entry.sha256 for entry in parse_listing(hashed(store.iter_chunks(key))))
    except StoreError as exc:
        return f"cannot be read ({exc})"
    except (ValueError, TypeError) as exc:
        return f"does not parse ({exc})"
    if expected is not None and (size, digest.hexdigest()) != (expected.size, expected.sha256):
        return (
            f"is not the listing its manifest vouches for ({size} bytes, sha256 "
            f"{digest.hexdigest()}; the manifest says {expected.size} bytes, {expected.sha256})"
        )
    return None


def _mark_snapshot(store: ObjectStore, backup: BackupId, marked: _StoredSet) -> None:
    """Mark the blobs of a committed snapshot, all of them, or stop collection."""
    manifest = _read_manifest(store, backup)
    attempts = 2
    while manifest is not None:
        fault = _mark_listing(store, manifest.artifact.key, manifest.artifact, marked)
        if fault is None:
            return
        attempts -= 1
        current = _read_manifest(store, backup)
        if current is not None and (current.artifact == manifest.artifact or not attempts):
            raise LostListing(
                f"garbage collection stopped, nothing deleted: the listing of snapshot "
                f"{backup} ({store.where(manifest.artifact.key)}) {fault}. Every blob it "
                "refers to would look unreferenced; restore the listing, or prune the snapshot."
            )
        manifest = current  # pruned (None) or re-taken while it was read: mark what is there now


def _read_manifest(store: ObjectStore, backup: BackupId) -> Manifest | None:
    try:
        return store.manifest(backup)
    except (ValueError, TypeError, KeyError) as exc:
        raise LostListing(
            f"garbage collection stopped, nothing deleted: the manifest of snapshot {backup} "
            f"({store.where(backup.key(MANIFEST_NAME))}) does not parse ({exc}), so which "
            "blobs it keeps is unknown."
        ) from exc


def _mark_replica(store: ObjectStore, key: str, marked: _StoredSet) -> None:
    """Mark the blobs of a replica listing (read again once: it is replaced every hour)."""
    fault = _mark_listing(store, key, None, marked)
    if fault is not None:  # replaced while it was read, perhaps: once more
        fault = _mark_listing(store, key, None, marked)
    if fault is not None:
        raise LostListing(
            f"garbage collection stopped, nothing deleted: the replica listing "
            f"{store.where(key)} {fault}. Every blob it refers to would look unreferenced."
        )
