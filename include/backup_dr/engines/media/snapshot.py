"""A media snapshot: list the source, store new content once as blobs, and yield the listing
as it goes (unchanged objects cost no request)."""

from __future__ import annotations

import base64
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from include.backup_dr.catalogue import MANIFEST_NAME, BackupId, StoredObject
from include.backup_dr.engines.base import SourceFacts
from include.backup_dr.engines.media.layout import blob_key
from include.backup_dr.engines.media.listing import EarlierListing, Entry, Known
from include.backup_dr.engines.media.plan import BlobState, blob_action
from include.backup_dr.policy import Target
from include.backup_dr.store import ObjectStore
from include.backup_dr.store.objects import retained_until, utc

log = logging.getLogger(__name__)

#: Objects hashed and copied at once (each is a few requests; the work is mostly waiting).
COPY_WORKERS = 16
#: New objects in flight before the listing waits for the oldest: bounds memory, keeps order.
PIPELINE_DEPTH = 4 * COPY_WORKERS
#: Attempts to store an object of an unversioned bucket that keeps changing while it is copied.
COPY_ATTEMPTS = 3
#: Unchanged objects in a row sent on as one chunk of the listing (about 200 KB).
UNCHANGED_RUN = 1000


class SourceChangingError(RuntimeError):
    """An unversioned source object changed during every attempt to copy it."""


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
            sha = _full_sha256(head) or self.source.sha256(key, version_arg)
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
        if (_full_sha256(head) or self.store.sha256(blob, version)) == sha:
            return True
        log.warning("%s changed while being copied; copying it again.", blob)
        if version:
            self.store.delete_version(blob, version)
        return False

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


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


def _state(head: dict[str, Any]) -> BlobState:
    return BlobState(int(head["ContentLength"]), utc(head["LastModified"]), _full_sha256(head))


def _ready(item: Future[Entry | None] | Known) -> bool:
    return isinstance(item, Known) or item.done()
