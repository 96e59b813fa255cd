"""Media backups: content stored once by SHA-256, and a snapshot that is just a listing.

As in restic or Kopia, a snapshot's artifact is a JSONL listing of the source bucket (key,
version id, ETag, size, SHA-256), and every object's bytes live once under
`<category>/.blobs/<aa>/<sha256>` in each region's backup bucket. An object whose key, ETag and
size match the target's newest snapshot whose check passed reuses its blob without a single
request, so a snapshot of an unchanged bucket costs one listing and one manifest. New content is copied server-side
from the source, re-encrypted with the region's key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import sqlite3
import tempfile
import threading
from collections import deque
from collections.abc import Container, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import boto3

from include.backup_dr.catalogue import (
    INTEGRITY_NAME,
    MANIFEST_NAME,
    Artifact,
    BackupId,
    Manifest,
    StoredObject,
)
from include.backup_dr.engines.base import (
    SWEEP_SAMPLE,
    LostListing,
    ReadCheck,
    SourceFacts,
    Sweep,
    locked_reason,
    still_locked,
)
from include.backup_dr.immutability import expiry, shared_hold
from include.backup_dr.integrity import Check
from include.backup_dr.policy import Policy, Target, load_policy
from include.backup_dr.store import ObjectStore, StoreError
from include.backup_dr.store.objects import retained_until, utc

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
#: Attempts to store an object of an unversioned bucket that keeps changing while it is copied.
COPY_ATTEMPTS = 3
#: A snapshot's source listing runs ahead of the snapshot by up to this many pages of PAGE_SIZE
#: objects (about 3 MB), so listing and indexing overlap.
PAGES_AHEAD = 8
PAGE_SIZE = 1000
#: Lines of the earlier listing read ahead: how far ahead an object listed out of order (after
#: deletions) may be found, so that lookups go on in order from there.
LOOKAHEAD = 64
#: Unchanged objects in a row sent on as one chunk of the listing (about 200 KB).
UNCHANGED_RUN = 1000


class SourceChangingError(RuntimeError):
    """An unversioned source object changed during every attempt to copy it."""


def blob_prefix(category: str) -> str:
    return f"{category}/{BLOB_DIR}/"


def blob_key(category: str, sha256: str) -> str:
    return f"{blob_prefix(category)}{sha256[:2]}/{sha256}"


def rehash_bucket(day: datetime) -> int:
    """The sample bucket an integrity check on `day` (UTC) re-hashes: day of year mod 365."""
    return day.astimezone(UTC).timetuple().tm_yday % SAMPLE_BUCKETS


def blob_bucket(sha256: str) -> int:
    """The sample bucket a blob belongs to, by its hash."""
    return int(sha256[:8], 16) % SAMPLE_BUCKETS


@dataclass(frozen=True)
class Entry:
    """One source object in a snapshot listing."""

    key: str
    version_id: str
    etag: str
    size: int
    sha256: str
    #: Object Lock: the blob is locked until this hold (epoch seconds) plus the margin in every
    #: region that locks (`include.backup_dr.immutability`); absent when no region locks.
    hold: int | None = None

    def line(self) -> bytes:
        fields = {name: value for name, value in asdict(self).items() if value is not None}
        return (json.dumps(fields, separators=(",", ":")) + "\n").encode()


def listing_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a JSONL listing, each with its newline, streamed across chunk boundaries
    (constant memory)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line + b"\n"
    if pending.strip():
        yield pending + b"\n"


def parse_listing(chunks: Iterable[bytes]) -> Iterator[Entry]:
    """Entries of a JSONL listing, streamed across chunk boundaries (constant memory)."""
    for line in listing_lines(chunks):
        yield Entry(**json.loads(line))


def plan_gc(
    referenced: Container[str],
    blobs: Iterable[tuple[str, datetime]],
    now: datetime,
    grace: timedelta,
) -> Iterator[tuple[str, bool, str]]:
    """(sha256, delete?, reason) for each blob (sha256, newest write) as it is listed: mark
    (referenced) and sweep (old enough). One blob at a time, so a listing streams through."""
    for sha, written in blobs:
        if sha in referenced:
            yield sha, False, "referenced by a kept snapshot"
        elif now - written <= grace:
            yield sha, False, "unreferenced but within grace: a snapshot may be writing"
        else:
            yield sha, True, "referenced by no kept snapshot, older than grace"


def needs_refresh(written: datetime, now: datetime, grace: timedelta) -> bool:
    """Whether a blob found in the store must get a fresh version before a snapshot refers to it.

    GC sweeps only blob versions older than `grace`. A blob refreshed once it is older than half
    the grace, by a snapshot that commits within half the grace, is never swept under it.
    """
    return written < now - grace / 2


@dataclass(frozen=True)
class BlobState:
    """What a store says about a blob: its size, when its newest version was written, and its
    full-object SHA-256 when the store keeps one (a listing does not; a HEAD may)."""

    size: int
    written: datetime
    sha256: str | None = None


def blob_action(
    found: BlobState | None, sha256: str, size: int, now: datetime, grace: timedelta
) -> str:
    """What to do with the blob of content `sha256` (`size` bytes) before referring to it:
    "copy" it, "refresh" it (see `needs_refresh`), or "keep" it as it is."""
    if found is None or found.size != size or found.sha256 not in (None, sha256):
        return "copy"  # missing or damaged: store it again (heals every snapshot referring to it)
    if needs_refresh(found.written, now, grace):
        return "refresh"
    return "keep"


def plan_copy(
    wanted: dict[str, int], present: dict[str, BlobState], now: datetime, grace: timedelta
) -> dict[str, str]:
    """`blob_action` for every blob a listing refers to, from one listing of the other region."""
    return {
        sha: blob_action(present.get(sha), sha, size, now, grace) for sha, size in wanted.items()
    }


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


class Known(NamedTuple):
    """An object of the earlier listing: what tells whether it changed, and its listing line."""

    etag: str
    size: int
    line: bytes
    #: The entry's hold (epoch seconds), if it has one.
    hold: int | None = None

    def entry(self) -> Entry:
        return Entry(**json.loads(self.line))


class ListingIndex:
    """An earlier listing, looked up by key from a temporary SQLite file: memory stays flat.

    S3 lists keys in byte order but some servers (seaweedfs) list in directory order, so a
    merge-join of two sorted listings is not safe; an on-disk index is, at any object count.
    """

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="listing-index-")
        self._db = sqlite3.connect(Path(self._scratch.name) / "index.db", check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
            "CREATE TABLE entry (key TEXT PRIMARY KEY, etag TEXT, size INTEGER, line BLOB,"
            " hold INTEGER) WITHOUT ROWID;"
        )
        rows = ((key, *known) for key, known in map(_known, lines))
        self._db.executemany("INSERT OR REPLACE INTO entry VALUES (?, ?, ?, ?, ?)", rows)

    def get(self, key: str) -> Known | None:
        query = "SELECT etag, size, line, hold FROM entry WHERE key = ?"
        row = self._db.execute(query, (key,)).fetchone()
        return None if row is None else Known(*row)

    def close(self) -> None:
        self._db.close()
        self._scratch.cleanup()


class EarlierListing:
    """A target's earlier listing, to look each object up in as the source is listed again.

    A source lists in the same order every time (byte order in S3, directory order in some
    servers), so the earlier line after the last one found is tried first: an unchanged bucket
    needs no index at all. A key listed out of that order (a new one, or the next after a
    deletion) is looked up in a `ListingIndex` of the whole earlier listing, built the first time
    one is needed. The listing is spooled to a local file first, so no download stays open.
    Each line is kept as it was, so an unchanged object's line is written again as is.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="earlier-listing-")
        self._path = Path(self._scratch.name) / "listing.jsonl"
        #: Objects in the earlier listing.
        self.total = 0
        with self._path.open("wb") as spool:
            for line in listing_lines(chunks):
                spool.write(line)
                self.total += 1
        self._file = self._path.open("rb")
        self._upcoming = map(_known, self._file)
        self._ahead = deque(islice(self._upcoming, LOOKAHEAD))
        self._index: ListingIndex | None = None
        self._found = 0

    def get(self, key: str) -> Known | None:
        """The earlier object at `key`. A listing names each key once, so what is never found
        was deleted since (see `unseen`)."""
        ahead = self._ahead
        if ahead and ahead[0][0] == key:  # in order: the common case, kept short
            known: Known | None = ahead.popleft()[1]
            following = next(self._upcoming, None)
            if following is not None:
                ahead.append(following)
        else:
            known = self._indexed(key)
        if known is not None:
            self._found += 1
        return known

    def _advance(self, count: int) -> Known:
        """Pass the next `count` earlier lines; the last one passed."""
        for _ in range(count):
            _, known = self._ahead.popleft()
        self._ahead.extend(islice(self._upcoming, count))
        return known

    def _indexed(self, key: str) -> Known | None:
        if self._index is None:
            with self._path.open("rb") as lines:
                self._index = ListingIndex(lines)
        known = self._index.get(key)
        if known is not None:  # back in order after a deletion? then go on from there
            ahead = next((n for n, (upcoming, _) in enumerate(self._ahead) if upcoming == key), -1)
            if ahead >= 0:
                self._advance(ahead + 1)
        return known

    def unseen(self) -> int:
        """Earlier objects not found since (each key looked up once): deleted from the source."""
        return self.total - self._found

    def close(self) -> None:
        self._file.close()
        if self._index is not None:
            self._index.close()
        self._scratch.cleanup()


#: Decodes one listing line. `raw_decode` skips what `json.loads` does first (sniff the bytes'
#: encoding, strip whitespace), half its cost: a snapshot of an unchanged bucket reads a line per
#: object, and the listing is ours (UTF-8, one object per line, no padding).
_LINE_DECODER = json.JSONDecoder()


def _known(line: bytes) -> tuple[str, Known]:
    fields = _LINE_DECODER.raw_decode(line.decode())[0]
    return fields["key"], Known(fields["etag"], fields["size"], line, fields.get("hold"))


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
        previous: EarlierListing,
        gc_grace: timedelta,
        *,
        listing: Iterable[StoredObject] | None = None,
        verify: bool = False,
        holds: tuple[datetime, datetime] | None = None,
        reused_from: BackupId | None = None,
    ) -> None:
        assert target.source is not None
        self.target = target
        self.source = source
        self.store = store
        self.previous = previous
        self.gc_grace = gc_grace
        #: The source's objects in its order (by default listed as the snapshot goes).
        self.listing = source.list_objects(target.source.prefix) if listing is None else listing
        #: HEAD the blob of every unchanged object before reusing its entry: set when a later
        #: snapshot than `previous` failed its check, so a blob may since have been lost or damaged.
        self.verify = verify
        #: The snapshot whose listing unchanged objects are reused from (recorded in the facts).
        self.reused_from = reused_from
        #: Object Lock (some region locks): (this snapshot's expiry, the hold it gives). An entry
        #: held short of the expiry has its blob's lock extended to the hold first.
        self._need, self._hold = (None, None) if holds is None else map(_epoch, holds)
        self.counts = {
            "objects": 0,
            "bytes": 0,
            "reused": 0,
            "copied": 0,
            "copied_bytes": 0,
            "refreshed": 0,
            "healed": 0,
            "extended": 0,
        }
        self._lock = threading.Lock()
        #: When the oldest content that `store` lacked was written to the source: how far behind
        #: `store` was when this snapshot began (None: nothing was missing).
        self.oldest_missing: datetime | None = None
        self.stream = _LinesReader(self._lines())

    def _lines(self) -> Iterator[bytes]:
        """The listing's lines in the source's order. A run of unchanged objects with nothing in
        flight before it goes out as one chunk: the common case costs a lookup per object."""
        pending: deque[Future[Entry | None] | Known] = deque()
        unchanged: list[bytes] = []
        counts = self.counts
        with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
            for obj in self.listing:
                known = self.previous.get(obj.key)
                if known is None or known.etag != obj.etag or known.size != obj.size:
                    pending.append(pool.submit(self._new_entry, obj.key))
                elif self.verify:
                    pending.append(pool.submit(self._checked_entry, known.entry()))
                elif self._short(known.hold):
                    pending.append(pool.submit(self._extended_entry, known.entry()))
                elif not pending:  # unchanged, nothing before it in flight: no request at all
                    unchanged.append(known.line)
                    counts["bytes"] += known.size
                    if len(unchanged) < UNCHANGED_RUN:
                        continue
                else:
                    pending.append(known)
                if unchanged:
                    yield self._emit_unchanged(unchanged)
                while len(pending) > PIPELINE_DEPTH or (pending and _ready(pending[0])):
                    yield self._emit(pending.popleft())
            if unchanged:
                yield self._emit_unchanged(unchanged)
            while pending:
                yield self._emit(pending.popleft())

    def _emit_unchanged(self, lines: list[bytes]) -> bytes:
        """The lines of a run of unchanged objects (their bytes already counted), run emptied."""
        self.counts["reused"] += len(lines)
        self.counts["objects"] += len(lines)
        chunk = b"".join(lines)
        lines.clear()
        return chunk

    def _emit(self, item: Future[Entry | None] | Known) -> bytes:
        if isinstance(item, Known):  # its line as the earlier listing has it
            self.counts["reused"] += 1
            self.counts["objects"] += 1
            self.counts["bytes"] += item.size
            return item.line
        entry = item.result()
        if entry is None:  # deleted between the listing and now, so not in the snapshot
            return b""
        if isinstance(entry, _Reused):
            self.counts["reused"] += 1
        self.counts["objects"] += 1
        self.counts["bytes"] += entry.size
        return entry.line()

    def _short(self, hold: int | None) -> bool:
        """Whether an entry held until `hold` is held short of this snapshot's expiry."""
        return self._need is not None and (hold is None or hold < self._need)

    def _held(self, known: Entry) -> Entry:
        """`known` as this snapshot lists it: its hold extended if it was short."""
        if not self._short(known.hold):
            return _Reused(**asdict(known))
        return _Reused(**{**asdict(known), "hold": self._hold})

    def _lock_until(self) -> datetime | None:
        """The retain-until date of what this snapshot stores or extends (None: not locked)."""
        if self.store.lock is None or self._hold is None:
            return None
        return self.store.lock.held_until(datetime.fromtimestamp(self._hold, UTC))

    def _extend(self, blob: str, locked: datetime | None = None) -> None:
        """Lock `blob` until this snapshot's hold plus the margin, unless `locked` already is."""
        until = self._lock_until()
        if until is None or (locked is not None and locked >= until):
            return
        self.store.extend_lock(blob, until)
        with self._lock:
            self.counts["extended"] += 1

    def _extended_entry(self, known: Entry) -> Entry:
        """`known`, its blob's lock first extended to this snapshot's hold (Kopia's rule: content
        a new snapshot reuses is locked as long as the newest snapshot needs it)."""
        self._extend(blob_key(self.target.category, known.sha256))
        return self._held(known)

    def _checked_entry(self, known: Entry) -> Entry | None:
        """`known` if its blob is whole in the store (refreshed if old, as `_store_blob` does;
        its lock extended if short); else the object is stored again."""
        blob = blob_key(self.target.category, known.sha256)
        head = self.store.head(blob, checksums=True)
        found = None if head is None else _state(head)
        action = blob_action(found, known.sha256, known.size, datetime.now(UTC), self.gc_grace)
        if action == "copy":
            return self._new_entry(known.key)
        if action == "refresh":
            self._refresh(blob, retained_until(head))
        elif self._short(known.hold):
            self._extend(blob, retained_until(head))
        return self._held(known)

    def _new_entry(self, key: str) -> Entry | None:
        """Hash new or changed content (S3's own checksum when it has one) and store it once."""
        for _ in range(COPY_ATTEMPTS):
            head = self.source.head(key, checksums=True)
            if head is None:
                return None
            version = head.get("VersionId") or "null"
            version_arg = None if version == "null" else version
            size = int(head["ContentLength"])
            sha = _full_sha256(head) or self._hash(key, version_arg)
            if self._store_blob(key, version_arg, size, sha, utc(head["LastModified"])):
                return Entry(key, version, head["ETag"].strip('"'), size, sha, self._hold)
        raise SourceChangingError(
            f"{self.source.where(key)} changed while being copied, {COPY_ATTEMPTS} times; the "
            "bucket has no versions to copy a fixed one from. Retry later, or enable versioning."
        )

    def _store_blob(
        self, key: str, version: str | None, size: int, sha: str, written: datetime
    ) -> bool:
        """Make the blob `sha` whole in the store; False if the copied bytes are not `sha`'s.

        A versioned source is copied by version id, so the bytes are the ones hashed. An
        unversioned one may change in between: the copy is checked against its name, and a
        wrong version is deleted before anything refers to it.
        """
        blob = blob_key(self.target.category, sha)
        existing = self.store.head(blob, checksums=True)
        found = None if existing is None else _state(existing)
        action = blob_action(found, sha, size, datetime.now(UTC), self.gc_grace)
        if action == "refresh":
            self._refresh(blob, retained_until(existing))
        elif action == "keep":
            self._extend(blob, retained_until(existing))
        if action != "copy":
            return True
        self.store.copy_from(
            self.source,
            key,
            size,
            dest_key=blob,
            version_id=version,
            lock_until=self._lock_until(),
        )
        if version is None and not self._holds(blob, sha):
            return False
        with self._lock:
            self.counts["copied"] += 1
            self.counts["copied_bytes"] += size
            if existing is not None:
                self.counts["healed"] += 1
                log.warning("Stored %s again: the copy there was missing or damaged.", blob)
            if self.oldest_missing is None or written < self.oldest_missing:
                self.oldest_missing = written
        return True

    def _refresh(self, blob: str, locked: datetime | None = None) -> None:
        """A fresh version of an old blob, so a GC that planned without this snapshot keeps it
        (see `needs_refresh`), locked as long as this snapshot's hold or the old one's lock."""
        until = self._lock_until()
        if until is not None and locked is not None:
            until = max(until, locked)
        self.store.touch(blob, lock_until=until)
        with self._lock:
            self.counts["refreshed"] += 1

    def _holds(self, blob: str, sha: str) -> bool:
        """Whether the blob's current bytes hash to `sha`; if not, that version is deleted."""
        head = self.store.head(blob, checksums=True)
        if head is None:
            return False
        version = head.get("VersionId")
        actual = _full_sha256(head)
        if actual is None:
            digest = hashlib.sha256()
            for chunk in self.store.iter_chunks(blob, version_id=version):
                digest.update(chunk)
            actual = digest.hexdigest()
        if actual == sha:
            return True
        log.warning("%s changed while being copied; copying it again.", blob)
        if version:
            self.store.delete_version(blob, version)
        return False

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
                "reused_from": (
                    None if self.reused_from is None else self.reused_from.key(MANIFEST_NAME)
                ),
            },
            tool_versions={"boto3": boto3.__version__},
        )


class _Reused(Entry):
    """An entry reused from the previous listing after its blob was checked (counted as reused)."""


class _ListedAhead:
    """A listing read by a thread of its own, up to PAGES_AHEAD pages ahead of its reader, so
    the server lists while the reader works. Order is kept, memory bounded, and the thread's
    error is raised to the reader."""

    def __init__(self, objects: Iterator[StoredObject]) -> None:
        self._pages: queue.Queue[list[StoredObject] | BaseException | None]
        self._pages = queue.Queue(PAGES_AHEAD)
        self._gone = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(objects,), daemon=True)
        self._thread.start()

    def _read(self, objects: Iterator[StoredObject]) -> None:
        try:
            while page := list(islice(objects, PAGE_SIZE)):
                if not self._put(page):
                    return
            self._put(None)
        except BaseException as exc:  # the reader's to raise
            self._put(exc)

    def _put(self, item: list[StoredObject] | BaseException | None) -> bool:
        """Hand `item` to the reader; False if the reader has gone."""
        while not self._gone.is_set():
            try:
                self._pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[StoredObject]:
        while (page := self._pages.get()) is not None:
            if isinstance(page, BaseException):
                raise page
            yield from page

    def __enter__(self) -> _ListedAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._gone.set()
        self._thread.join()


def _held_there(manifest: Manifest, source: ObjectStore, target: ObjectStore) -> dict[str, int]:
    """sha256 -> hold in the listing that `manifest`'s snapshot reused, if that snapshot's copy
    in `target` is complete (its manifest there, written last, vouches for the same listing):
    its copy then locked every blob it lists at least that long in `target`. Empty otherwise,
    so every blob's lock there is extended."""
    reused = manifest.source.get("reused_from")
    parsed = None if reused is None else BackupId.from_key(reused)
    if parsed is None:
        return {}
    earlier, there = source.manifest(parsed[0]), target.manifest(parsed[0])
    if earlier is None or there is None or there.artifact.sha256 != earlier.artifact.sha256:
        return {}
    return _longest_holds(_listing(source, earlier))


def _longest_holds(entries: Iterable[Entry]) -> dict[str, int]:
    """sha256 -> the longest hold any entry gives its blob (entries without one: none)."""
    holds: dict[str, int] = {}
    for entry in entries:
        if entry.hold is not None:
            holds[entry.sha256] = max(entry.hold, holds.get(entry.sha256, 0))
    return holds


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


def _state(head: dict[str, Any]) -> BlobState:
    return BlobState(int(head["ContentLength"]), utc(head["LastModified"]), _full_sha256(head))


def _ready(item: Future[Entry | None] | Known) -> bool:
    return isinstance(item, Known) or item.done()


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
        self, policy: Policy, target: Target, primary: ObjectStore, backup: BackupId
    ) -> Iterator[MediaSnapshot]:
        assert target.source is not None
        locking = bool(policy.locked_regions())
        source = ObjectStore.for_bucket(target.source.conn_id, target.source.bucket)
        # The source is listed from now on, while the earlier listing is found and read.
        with _ListedAhead(source.list_objects(target.source.prefix)) as listing:
            trusted, verify = self._previous(primary, target)
            earlier = () if trusted is None else primary.iter_chunks(trusted.artifact.key)
            previous = EarlierListing(earlier)
            try:
                yield MediaSnapshot(
                    target,
                    source,
                    primary,
                    previous,
                    policy.prune.incomplete_upload_grace,
                    listing=listing,
                    verify=verify,
                    holds=(expiry(policy, backup), shared_hold(policy, backup))
                    if locking
                    else None,
                    reused_from=None if trusted is None else trusted.backup,
                )
            finally:
                previous.close()

    def _previous(self, primary: ObjectStore, target: Target) -> tuple[Manifest | None, bool]:
        """The target's newest snapshot in any tier whose check passed (what need not be copied
        again), and whether a later one failed its check (its blobs must be checked on reuse).

        A listing whose check failed, or that was never checked, may refer to a blob that is lost
        or damaged: reusing its entries would carry the fault into every later snapshot.
        """
        backups = [
            parsed[0]
            for obj in primary.list_objects(f"{target.category}/{target.name}/")
            if (parsed := BackupId.from_key(obj.key)) is not None and parsed[1] == MANIFEST_NAME
        ]

        def read(backup: BackupId) -> tuple[Manifest | None, dict[str, Any] | None]:
            manifest = primary.manifest(backup)
            if manifest is None:
                return None, None
            return manifest, primary.get_json(backup.key(INTEGRITY_NAME))

        trusted: Manifest | None = None
        failed: list[datetime] = []
        # Two reads per retained snapshot, of every tier: in parallel, not one after another.
        with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
            for manifest, verdict in pool.map(read, backups):
                if manifest is None or verdict is None:
                    continue
                if verdict.get("artifact_sha256") != manifest.artifact.sha256:
                    continue  # checked before a re-take (or not yet): not evidence either way
                if not verdict.get("ok"):
                    failed.append(manifest.finished_at)
                elif trusted is None or manifest.finished_at > trusted.finished_at:
                    trusted = manifest
        verify = any(trusted is None or when > trusted.finished_at for when in failed)
        return trusted, verify

    def check_readable(self, chunks: Iterable[bytes]) -> ReadCheck:
        try:
            count = sum(1 for _ in parse_listing(chunks))
        except (ValueError, TypeError) as exc:
            return ReadCheck(False, f"the listing does not parse: {exc}")
        return ReadCheck(True, f"listing of {count} objects parses")

    def copy_contents(
        self,
        manifest: Manifest,
        source: ObjectStore,
        target: ObjectStore,
        *,
        gc_grace: timedelta | None = None,
    ) -> str:
        """Copy the blobs the other region lacks or holds damaged (one listing there), and
        refresh the old ones it holds, as a snapshot does, before the listing itself. Where the
        other region locks, each blob is locked there until its entry's hold plus the margin:
        copies and refreshes are written so, and a blob held longer than in the listing the
        snapshot reused (`_held_there`) has its lock extended, as the snapshot did here."""
        if gc_grace is None:  # the engine interface carries no policy: the one in force
            gc_grace = load_policy().prune.incomplete_upload_grace
        category = manifest.backup.category
        entries = list(_listing(source, manifest))
        wanted = {entry.sha256: entry.size for entry in entries}
        holds = _longest_holds(entries)
        present = {
            sha: BlobState(size, written)
            for sha, (size, written) in _blobs(target, category).items()
        }
        plan = plan_copy(wanted, present, datetime.now(UTC), gc_grace)
        missing = [(sha, size) for sha, size in wanted.items() if plan[sha] == "copy"]
        damaged = sum(1 for sha, _ in missing if sha in present)
        stale = [sha for sha in wanted if plan[sha] == "refresh"]
        short = []
        if target.lock is not None and holds:
            earlier = _held_there(manifest, source, target)
            short = [s for s, h in holds.items() if plan[s] == "keep" and earlier.get(s, 0) < h]

        def until(sha: str) -> datetime | None:
            hold = holds.get(sha)
            if target.lock is None or hold is None:
                return None
            return target.lock.held_until(datetime.fromtimestamp(hold, UTC))

        with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
            for done in (
                [
                    pool.submit(
                        target.copy_from,
                        source,
                        blob_key(category, sha),
                        size,
                        lock_until=until(sha),
                    )
                    for sha, size in missing
                ]
                + [
                    pool.submit(target.touch, blob_key(category, sha), lock_until=until(sha))
                    for sha in stale
                ]
                + [
                    pool.submit(target.extend_lock, blob_key(category, sha), until(sha))
                    for sha in short
                ]
            ):
                done.result()
        copied = sum(size for _, size in missing)
        return (
            f"{len(missing)} of {len(wanted)} blobs copied ({copied} bytes; {damaged} of them "
            f"were there damaged), {len(stale)} refreshed, {len(short)} locks extended"
        )

    def check_contents(self, store: ObjectStore, manifest: Manifest, now: datetime) -> list[Check]:
        category = manifest.backup.category
        try:
            entries = list(_listing(store, manifest))
        except (ValueError, TypeError) as exc:  # the artifact checks say why; say it here too
            return [
                Check("blobs", False, f"the listing does not parse, so no blob is known: {exc}")
            ]
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
        bucket = rehash_bucket(now)
        sample = [sha for sha in unique if blob_bucket(sha) == bucket]
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

    @contextmanager
    def plan_garbage(
        self, policy: Policy, store: ObjectStore, category: str, now: datetime
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
