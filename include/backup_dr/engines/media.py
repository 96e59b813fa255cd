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
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from include.backup_dr.catalogue import MANIFEST_NAME, BackupId, Manifest
from include.backup_dr.engines.base import ReadCheck, SourceFacts
from include.backup_dr.integrity import Check
from include.backup_dr.policy import Policy, Target
from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)

BLOB_DIR = ".blobs"
#: The rolling re-hash splits blobs into this many buckets by their hash; each day's integrity
#: check re-hashes the bucket `day of year mod 365`, so every blob comes round once a year.
SAMPLE_BUCKETS = 365
#: Blobs copied to the other region at once (each copy is one or two small requests).
COPY_WORKERS = 8


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
    """Lists the source, copies new content into blobs, and yields the listing as it goes."""

    def __init__(
        self, target: Target, source: ObjectStore, primary: ObjectStore, previous: dict
    ) -> None:
        assert target.source is not None
        self.target = target
        self.source = source
        self.primary = primary
        self.previous = previous
        self.counts = {"objects": 0, "bytes": 0, "reused": 0, "copied": 0, "copied_bytes": 0}
        self.stream = _LinesReader(self._lines())

    def _lines(self) -> Iterator[bytes]:
        assert self.target.source is not None
        for obj in self.source.list_objects(self.target.source.prefix):
            self.counts["objects"] += 1
            self.counts["bytes"] += obj.size
            known = self.previous.get(obj.key)
            if known is not None and (known.etag, known.size) == (obj.etag, obj.size):
                self.counts["reused"] += 1  # unchanged: no request at all
                yield known.line()
            elif (entry := self._new_entry(obj.key, obj.size)) is not None:
                yield entry.line()

    def _new_entry(self, key: str, size: int) -> Entry | None:
        """Hash new or changed content (S3's own checksum when it has one) and store it once.

        None when the object was deleted between the listing and now: it is not in the snapshot.
        """
        head = self.source.head(key, checksums=True)
        if head is None:
            self.counts["objects"] -= 1
            self.counts["bytes"] -= size
            return None
        version = head.get("VersionId") or "null"
        version_arg = None if version == "null" else version
        sha = _full_sha256(head) or self._hash(key, version_arg)
        blob = blob_key(self.target.category, sha)
        if self.primary.head(blob) is None:
            self.primary.copy_from(self.source, key, size, dest_key=blob, version_id=version_arg)
            self.counts["copied"] += 1
            self.counts["copied_bytes"] += size
        return Entry(key, version, head["ETag"].strip('"'), size, sha)

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

    @contextmanager
    def open_snapshot(
        self, policy: Policy, target: Target, primary: ObjectStore
    ) -> Iterator[MediaSnapshot]:
        assert target.source is not None
        source = ObjectStore.for_source(target.source.conn_id, target.source.bucket)
        yield MediaSnapshot(target, source, primary, self._previous(primary, target))

    def _previous(self, primary: ObjectStore, target: Target) -> dict[str, Entry]:
        """The target's newest committed snapshot in any tier, by key (what need not be copied)."""
        manifests = [
            obj.key
            for obj in primary.list_objects(f"{target.category}/{target.name}/")
            if obj.key.endswith("/" + MANIFEST_NAME)
        ]
        newest: Manifest | None = None
        for key in manifests:
            parsed = BackupId.from_key(key)
            manifest = primary.manifest(parsed[0]) if parsed else None
            if manifest and (newest is None or manifest.finished_at > newest.finished_at):
                newest = manifest
        if newest is None:
            return {}
        return {entry.key: entry for entry in _listing(primary, newest)}

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
        """Mark blobs referenced by any committed snapshot of any media target; sweep the rest."""
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
            blobs = {sha: written for sha, (_, written) in _blobs(store, category).items()}
            for sha, delete, reason in plan_gc(referenced, blobs, now, grace):
                if delete:
                    log.info("GC %s in %s: %s", sha, store.region.name, reason)
                    store.delete_all_versions(blob_key(category, sha))
                    swept += 1
                else:
                    kept += 1
        return f"garbage collection: {swept} unreferenced blobs deleted, {kept} kept"
