"""Media backups: content stored once by SHA-256, and a snapshot that is just a listing.

As in restic or Kopia, a snapshot's artifact is a JSONL listing of the source bucket (key,
version id, ETag, size, SHA-256), and every object's bytes live once under
`<category>/.blobs/<aa>/<sha256>` in each region's backup bucket. An object whose key, ETag and
size match the target's newest snapshot reuses its blob without a single request, so a snapshot
of an unchanged bucket costs one listing and one manifest. New content is copied server-side
from the source, re-encrypted with the region's key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from include.backup_dr.catalogue import MANIFEST_NAME, BackupId, Manifest
from include.backup_dr.engines.base import ReadCheck, SourceFacts
from include.backup_dr.integrity import Check
from include.backup_dr.policy import Policy, Target
from include.backup_dr.store import ObjectStore, utc

log = logging.getLogger(__name__)

BLOB_DIR = ".blobs"
#: Where `media_replicate` keeps each target's replica listing (see include/backup_dr/replication).
REPLICA_DIR = "replica"
#: The rolling re-hash splits blobs into this many buckets by their hash; each day's integrity
#: check re-hashes the bucket `day of year mod 365`, so every blob comes round once a year.
SAMPLE_BUCKETS = 365
#: Objects hashed and copied at once (each is a few requests; the work is mostly waiting).
COPY_WORKERS = 16
#: New objects in flight before the listing waits for the oldest: bounds memory, keeps order.
PIPELINE_DEPTH = 4 * COPY_WORKERS


def blob_prefix(category: str) -> str:
    return f"{category}/{BLOB_DIR}/"


def blob_key(category: str, sha256: str) -> str:
    return f"{blob_prefix(category)}{sha256[:2]}/{sha256}"


@dataclass(frozen=True)
class Entry:
    """One source object in a snapshot listing."""

    key: str
    version_id: str
    etag: str
    size: int
    sha256: str

    def line(self) -> bytes:
        return (json.dumps(asdict(self), separators=(",", ":")) + "\n").encode()


def parse_listing(chunks: Iterable[bytes]) -> Iterator[Entry]:
    """Entries of a JSONL listing, streamed across chunk boundaries (constant memory)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield Entry(**json.loads(line))
    if pending.strip():
        yield Entry(**json.loads(pending))


def plan_gc(
    referenced: set[str], blobs: dict[str, datetime], now: datetime, grace: timedelta
) -> list[tuple[str, bool, str]]:
    """(sha256, delete?, reason) for every blob: mark (referenced) and sweep (old enough)."""
    plan = []
    for sha, written in sorted(blobs.items()):
        if sha in referenced:
            plan.append((sha, False, "referenced by a kept snapshot"))
        elif now - written <= grace:
            plan.append((sha, False, "unreferenced but within grace: a snapshot may be writing"))
        else:
            plan.append((sha, True, "referenced by no kept snapshot, older than grace"))
    return plan


def needs_refresh(written: datetime, now: datetime, grace: timedelta) -> bool:
    """Whether a blob found in the store must get a fresh version before a snapshot refers to it.

    GC sweeps only blob versions older than `grace`. A blob refreshed once it is older than half
    the grace, by a snapshot that commits within half the grace, is never swept under it.
    """
    return written < now - grace / 2


class _LinesReader:
    """A readable stream over an iterator of byte lines (the upload pulls; the listing follows)."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._buffer = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            line = next(self._lines, None)
            if line is None:
                break
            self._buffer += line
        if size < 0:
            size = len(self._buffer)
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk


def _full_sha256(head: dict[str, Any]) -> str | None:
    """The object's SHA-256 from S3's own checksum, when it is a full-object one."""
    value = head.get("ChecksumSHA256")
    if not value or "-" in value or head.get("ChecksumType") == "COMPOSITE":
        return None
    return base64.b64decode(value).hex()


class ListingIndex:
    """An earlier listing, looked up by key from a temporary SQLite file: memory stays flat.

    S3 lists keys in byte order but some servers (seaweedfs) list in directory order, so a
    merge-join of two sorted listings is not safe; an on-disk index is, at any object count.
    """

    def __init__(self, entries: Iterable[Entry]) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="listing-index-")
        self._db = sqlite3.connect(Path(self._scratch.name) / "index.db", check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
            "CREATE TABLE entry (key TEXT PRIMARY KEY, version_id TEXT, etag TEXT, size INTEGER,"
            " sha256 TEXT, seen INTEGER DEFAULT 0) WITHOUT ROWID;"
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO entry VALUES (?, ?, ?, ?, ?, 0)",
            ((e.key, e.version_id, e.etag, e.size, e.sha256) for e in entries),
        )

    def get(self, key: str) -> Entry | None:
        """The earlier entry for `key`, marking it seen (what is never seen was deleted)."""
        row = self._db.execute(
            "UPDATE entry SET seen = 1 WHERE key = ? RETURNING key, version_id, etag, size, sha256",
            (key,),
        ).fetchone()
        return None if row is None else Entry(*row)

    def unseen(self) -> int:
        return self._db.execute("SELECT count(*) FROM entry WHERE seen = 0").fetchone()[0]

    def close(self) -> None:
        self._db.close()
        self._scratch.cleanup()


class MediaSnapshot:
    """Lists the source, stores new content as blobs in `store`, and yields the listing as it goes.

    Unchanged objects (same key, ETag and size as in `previous`) cost nothing. New content is
    hashed and copied by a pool of workers, while the listing keeps the source's order.
    """

    def __init__(
        self,
        target: Target,
        source: ObjectStore,
        store: ObjectStore,
        previous: ListingIndex,
        gc_grace: timedelta,
    ) -> None:
        assert target.source is not None
        self.target = target
        self.source = source
        self.store = store
        self.previous = previous
        self.gc_grace = gc_grace
        self.counts = {
            "objects": 0,
            "bytes": 0,
            "reused": 0,
            "copied": 0,
            "copied_bytes": 0,
            "refreshed": 0,
        }
        self._lock = threading.Lock()
        #: When the oldest content that `store` lacked was written to the source: how far behind
        #: `store` was when this snapshot began (None: nothing was missing).
        self.oldest_missing: datetime | None = None
        self.stream = _LinesReader(self._lines())

    def _lines(self) -> Iterator[bytes]:
        assert self.target.source is not None
        pending: deque[Future[Entry | None] | Entry] = deque()
        with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
            for obj in self.source.list_objects(self.target.source.prefix):
                known = self.previous.get(obj.key)
                if known is not None and (known.etag, known.size) == (obj.etag, obj.size):
                    pending.append(known)  # unchanged: no request at all
                else:
                    pending.append(pool.submit(self._new_entry, obj.key))
                while len(pending) > PIPELINE_DEPTH or (pending and _ready(pending[0])):
                    yield from self._emit(pending.popleft())
            while pending:
                yield from self._emit(pending.popleft())

    def _emit(self, item: Future[Entry | None] | Entry) -> Iterator[bytes]:
        if isinstance(item, Entry):
            self.counts["reused"] += 1
            entry: Entry | None = item
        else:
            entry = item.result()
        if entry is not None:  # None: deleted between the listing and now, so not in the snapshot
            self.counts["objects"] += 1
            self.counts["bytes"] += entry.size
            yield entry.line()

    def _new_entry(self, key: str) -> Entry | None:
        """Hash new or changed content (S3's own checksum when it has one) and store it once."""
        head = self.source.head(key, checksums=True)
        if head is None:
            return None
        version = head.get("VersionId") or "null"
        version_arg = None if version == "null" else version
        size = int(head["ContentLength"])
        sha = _full_sha256(head) or self._hash(key, version_arg)
        blob = blob_key(self.target.category, sha)
        existing = self.store.head(blob)
        if existing is not None:
            self.refresh(blob, existing)
        else:
            self.store.copy_from(self.source, key, size, dest_key=blob, version_id=version_arg)
            written = utc(head["LastModified"])
            with self._lock:
                self.counts["copied"] += 1
                self.counts["copied_bytes"] += size
                if self.oldest_missing is None or written < self.oldest_missing:
                    self.oldest_missing = written
        return Entry(key, version, head["ETag"].strip('"'), size, sha)

    def refresh(self, blob: str, head: dict[str, Any]) -> None:
        """Give an old blob a fresh version before this snapshot refers to it.

        The blob may be one that no kept snapshot references, which a concurrent GC is about to
        sweep; GC deletes only versions older than its grace, so the fresh version survives.
        """
        if needs_refresh(utc(head["LastModified"]), datetime.now(UTC), self.gc_grace):
            self.store.touch(blob)
            with self._lock:
                self.counts["refreshed"] += 1

    def _hash(self, key: str, version: str | None) -> str:
        digest = hashlib.sha256()
        for chunk in self.source.iter_chunks(key, version_id=version):
            digest.update(chunk)
        return digest.hexdigest()

    def finish(self) -> None:
        """The listing ends when the source listing ends; errors surface through read()."""

    def facts(self) -> SourceFacts:
        assert self.target.source is not None
        return SourceFacts(
            source={
                "kind": "s3",
                "bucket": self.target.source.bucket,
                "prefix": self.target.source.prefix,
                **self.counts,
            },
            tool_versions={"boto3": boto3.__version__},
        )


def _ready(item: Future[Entry | None] | Entry) -> bool:
    return isinstance(item, Entry) or item.done()


def _listing(store: ObjectStore, manifest: Manifest) -> Iterator[Entry]:
    return parse_listing(store.iter_chunks(manifest.artifact.key))


def _blobs(store: ObjectStore, category: str) -> dict[str, tuple[int, datetime]]:
    return {
        obj.key.rsplit("/", 1)[-1]: (obj.size, obj.last_modified)
        for obj in store.list_objects(blob_prefix(category))
    }


class MediaEngine:
    """Engine: content-addressed media snapshots (listing artifact plus shared blobs)."""

    name = "media"
    extension = "jsonl"
    contents_keep_arriving = False

    @contextmanager
    def open_snapshot(
        self, policy: Policy, target: Target, primary: ObjectStore
    ) -> Iterator[MediaSnapshot]:
        assert target.source is not None
        source = ObjectStore.for_bucket(target.source.conn_id, target.source.bucket)
        previous = ListingIndex(self._previous(primary, target))
        try:
            yield MediaSnapshot(
                target, source, primary, previous, policy.prune.incomplete_upload_grace
            )
        finally:
            previous.close()

    def _previous(self, primary: ObjectStore, target: Target) -> Iterator[Entry]:
        """The target's newest committed snapshot in any tier (what need not be copied again)."""
        newest: Manifest | None = None
        for obj in primary.list_objects(f"{target.category}/{target.name}/"):
            parsed = BackupId.from_key(obj.key)
            if parsed is None or parsed[1] != MANIFEST_NAME:
                continue
            manifest = primary.manifest(parsed[0])
            if manifest and (newest is None or manifest.finished_at > newest.finished_at):
                newest = manifest
        return iter(()) if newest is None else _listing(primary, newest)

    def check_readable(self, chunks: Iterable[bytes]) -> ReadCheck:
        try:
            count = sum(1 for _ in parse_listing(chunks))
        except (ValueError, TypeError) as exc:
            return ReadCheck(False, f"the listing does not parse: {exc}")
        return ReadCheck(True, f"listing of {count} objects parses")

    def copy_contents(self, manifest: Manifest, source: ObjectStore, target: ObjectStore) -> str:
        """Copy the blobs the other region lacks (one listing there), before the listing itself."""
        category = manifest.backup.category
        wanted = {entry.sha256: entry.size for entry in _listing(source, manifest)}
        present = _blobs(target, category)
        missing = [(sha, size) for sha, size in wanted.items() if sha not in present]
        with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
            for done in [
                pool.submit(target.copy_from, source, blob_key(category, sha), size)
                for sha, size in missing
            ]:
                done.result()
        copied = sum(size for _, size in missing)
        return f"{len(missing)} of {len(wanted)} blobs copied ({copied} bytes)"

    def check_contents(self, store: ObjectStore, manifest: Manifest, now: datetime) -> list[Check]:
        category = manifest.backup.category
        entries = list(_listing(store, manifest))
        blobs = _blobs(store, category)
        missing = [e for e in entries if e.sha256 not in blobs]
        wrong = [e for e in entries if e.sha256 in blobs and blobs[e.sha256][0] != e.size]
        unique = sorted({e.sha256 for e in entries})
        checks = [
            Check(
                "blobs",
                not missing and not wrong,
                f"{len(entries)} objects reference {len(unique)} blobs; "
                f"{len(missing)} missing, {len(wrong)} with the wrong size"
                + (f" (e.g. {(missing or wrong)[0].key})" if missing or wrong else ""),
            )
        ]
        bucket = now.timetuple().tm_yday % SAMPLE_BUCKETS
        sample = [sha for sha in unique if int(sha[:8], 16) % SAMPLE_BUCKETS == bucket]
        bad = []
        for sha in sample:
            if sha not in blobs:
                continue
            digest = hashlib.sha256()
            for chunk in store.iter_chunks(blob_key(category, sha)):
                digest.update(chunk)
            if digest.hexdigest() != sha:
                bad.append(sha)
        checks.append(
            Check(
                "sample_rehash",
                not bad,
                f"re-hashed {len(sample)} of {len(unique)} blobs: those with int(sha256[:8]) mod "
                f"{SAMPLE_BUCKETS} = day-of-year mod {SAMPLE_BUCKETS} = {bucket}; a blob's turn "
                f"comes once every {SAMPLE_BUCKETS} days, so a daily check re-hashes every blob "
                f"at least once a year; {len(bad)} mismatched"
                + (f" (e.g. {bad[0]})" if bad else ""),
            )
        )
        return checks

    def collect_garbage(self, policy: Policy, store: ObjectStore) -> str:
        """Mark blobs referenced by any committed snapshot or replica listing; sweep the rest."""
        grace = policy.prune.incomplete_upload_grace
        now = datetime.now(UTC)
        swept = 0
        kept = 0
        for category, spec in policy.categories.items():
            if spec.engine != self.name:
                continue
            referenced: set[str] = set()
            for obj in store.list_objects(f"{category}/"):
                parsed = BackupId.from_key(obj.key)
                if parsed is None or parsed[1] != MANIFEST_NAME:
                    continue
                manifest = store.manifest(parsed[0])
                if manifest is not None:
                    referenced.update(e.sha256 for e in _listing(store, manifest))
            for obj in store.list_objects(f"{REPLICA_DIR}/{category}/"):
                if obj.key.endswith("/listing.jsonl"):  # the replica: the secondary's live copy
                    chunks = store.iter_chunks(obj.key)
                    referenced.update(e.sha256 for e in parse_listing(chunks))
            blobs = {sha: written for sha, (_, written) in _blobs(store, category).items()}
            for sha, delete, reason in plan_gc(referenced, blobs, now, grace):
                if delete:
                    log.info("GC %s in %s: %s", sha, store.region.name, reason)
                    # Only versions older than the grace: a snapshot may have just refreshed it.
                    store.delete_all_versions(blob_key(category, sha), written_before=now - grace)
                    swept += 1
                else:
                    kept += 1
        return f"garbage collection: {swept} unreferenced blobs deleted, {kept} kept"
