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

from include.backup_dr.catalogue import INTEGRITY_NAME, MANIFEST_NAME, BackupId, Manifest
from include.backup_dr.engines.base import ReadCheck, SourceFacts
from include.backup_dr.integrity import Check
from include.backup_dr.policy import Policy, Target, load_policy
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
#: Attempts to store an object of an unversioned bucket that keeps changing while it is copied.
COPY_ATTEMPTS = 3


class SourceChangingError(RuntimeError):
    """An unversioned source object changed during every attempt to copy it."""


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
        *,
        verify: bool = False,
    ) -> None:
        assert target.source is not None
        self.target = target
        self.source = source
        self.store = store
        self.previous = previous
        self.gc_grace = gc_grace
        #: HEAD the blob of every unchanged object before reusing its entry: set when a later
        #: snapshot than `previous` failed its check, so a blob may since have been lost or damaged.
        self.verify = verify
        self.counts = {
            "objects": 0,
            "bytes": 0,
            "reused": 0,
            "copied": 0,
            "copied_bytes": 0,
            "refreshed": 0,
            "healed": 0,
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
                    if self.verify:
                        pending.append(pool.submit(self._checked_entry, known))
                    else:
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
            if isinstance(entry, _Reused):
                self.counts["reused"] += 1
        if entry is not None:  # None: deleted between the listing and now, so not in the snapshot
            self.counts["objects"] += 1
            self.counts["bytes"] += entry.size
            yield entry.line()

    def _checked_entry(self, known: Entry) -> Entry | None:
        """`known` if its blob is whole in the store; else the object is stored again."""
        head = self.store.head(blob_key(self.target.category, known.sha256), checksums=True)
        found = None if head is None else _state(head)
        now = datetime.now(UTC)
        if blob_action(found, known.sha256, known.size, now, self.gc_grace) != "copy":
            return _Reused(*asdict(known).values())
        return self._new_entry(known.key)

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
                return Entry(key, version, head["ETag"].strip('"'), size, sha)
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
            self.store.touch(blob)
            with self._lock:
                self.counts["refreshed"] += 1
        if action != "copy":
            return True
        self.store.copy_from(self.source, key, size, dest_key=blob, version_id=version)
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
            },
            tool_versions={"boto3": boto3.__version__},
        )


class _Reused(Entry):
    """An entry reused from the previous listing after its blob was checked (counted as reused)."""


def _state(head: dict[str, Any]) -> BlobState:
    return BlobState(int(head["ContentLength"]), utc(head["LastModified"]), _full_sha256(head))


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
        trusted, verify = self._previous(primary, target)
        previous = ListingIndex(iter(()) if trusted is None else _listing(primary, trusted))
        try:
            yield MediaSnapshot(
                target,
                source,
                primary,
                previous,
                policy.prune.incomplete_upload_grace,
                verify=verify,
            )
        finally:
            previous.close()

    def _previous(self, primary: ObjectStore, target: Target) -> tuple[Manifest | None, bool]:
        """The target's newest snapshot in any tier whose check passed (what need not be copied
        again), and whether a later one failed its check (its blobs must be checked on reuse).

        A listing whose check failed, or that was never checked, may refer to a blob that is lost
        or damaged: reusing its entries would carry the fault into every later snapshot.
        """
        trusted: Manifest | None = None
        failed: list[datetime] = []
        for obj in primary.list_objects(f"{target.category}/{target.name}/"):
            parsed = BackupId.from_key(obj.key)
            if parsed is None or parsed[1] != MANIFEST_NAME:
                continue
            manifest = primary.manifest(parsed[0])
            if manifest is None:
                continue
            verdict = primary.get_json(parsed[0].key(INTEGRITY_NAME))
            if verdict is None or verdict.get("artifact_sha256") != manifest.artifact.sha256:
                continue  # not checked yet (or checked before a re-take): not evidence either way
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
        refresh the old ones it holds, as a snapshot does, before the listing itself."""
        if gc_grace is None:  # the engine interface carries no policy: the one in force
            gc_grace = load_policy().prune.incomplete_upload_grace
        category = manifest.backup.category
        wanted = {entry.sha256: entry.size for entry in _listing(source, manifest)}
        present = {
            sha: BlobState(size, written)
            for sha, (size, written) in _blobs(target, category).items()
        }
        plan = plan_copy(wanted, present, datetime.now(UTC), gc_grace)
        missing = [(sha, size) for sha, size in wanted.items() if plan[sha] == "copy"]
        damaged = sum(1 for sha, _ in missing if sha in present)
        stale = [sha for sha in wanted if plan[sha] == "refresh"]
        with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
            for done in [
                pool.submit(target.copy_from, source, blob_key(category, sha), size)
                for sha, size in missing
            ] + [pool.submit(target.touch, blob_key(category, sha)) for sha in stale]:
                done.result()
        copied = sum(size for _, size in missing)
        return (
            f"{len(missing)} of {len(wanted)} blobs copied ({copied} bytes; {damaged} of them "
            f"were there damaged), {len(stale)} refreshed"
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
