"""A region's catalogue listing, and its cache: each manifest and integrity record under a prefix
with the ETag it had.

A catalogue needs every manifest and integrity record under a prefix: one GET each, which for
100,000 backups is 200,000 GETs. The LIST that finds them already returns each object's ETag and
size, so one cache object per prefix keeps (key, ETag, size, document) for each; a listing GETs
only the objects whose ETag or size differs from the cached entry (new or rewritten ones), and
rewrites the cache when anything changed. Integrity records are cached as their verdict only
(`catalogue.verdict_of`), all that a catalogue reads of them.

Correctness never rests on the cache:
- an entry is used only when the fresh LIST shows the very ETag and size that the document
  was read with (the GET's own, so a write between the LIST and the GET cannot pair new bytes
  with an old ETag); an object the LIST lacks is not in the catalogue, whatever the cache says;
- a missing, unreadable or foreign cache means reading everything, as without a cache (a
  cache that breaks part way serves the entries before the break, each checked as above);
- two writers racing on the cache object: the last one wins, and whatever it holds is again
  checked entry by entry against the next LIST;
- the cache lives under `catalogue-cache/`, outside the backup layout, so no catalogue, prune,
  garbage collection or test of a backup prefix ever sees it as a backup or as debris.

Format: gzip of JSON lines; a header line, then one `[key, etag, size, document]` per line.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from include.backup_dr.catalogue import (
    INTEGRITY_NAME,
    MANIFEST_NAME,
    BackupId,
    Debris,
    Manifest,
    RegionListing,
    StoredObject,
    collector_paused,
    verdict_of,
)
from include.backup_dr.policy import Region
from include.backup_dr.store.client import StoreError, translated

log = logging.getLogger(__name__)

CACHE_DIR = "catalogue-cache"
CACHE_SCHEMA = "backup-dr/catalogue-cache/v1"
#: gzip level 1: measured on the bench's manifests, 1.6x faster to write than the default level
#: 6 for 1.3x the bytes (both shrink the JSON over 15x).
_COMPRESSION = 1
#: Parallel GETs for the manifests and integrity records a listing finds new or changed.
LISTING_READERS = 16
_RECORD_SUFFIXES = (f"/{MANIFEST_NAME}", f"/{INTEGRITY_NAME}")
#: Manifest fields that seldom change from one backup of a target to the next (the table keys
#: are most of a manifest): consecutive equal values become one object, which at 100,000
#: backups keeps hundreds of megabytes out of a listing.
_SHARED_FIELDS = ("source", "tool_versions", "encryption", "keys")


class CacheUnreadableError(ValueError):
    """The cache object is not a catalogue cache of this prefix (corrupt, foreign or old)."""


@dataclass(frozen=True)
class CachedDocument:
    """A manifest or integrity record as read, with the ETag and size its GET returned."""

    key: str
    etag: str
    size: int
    document: Any

    def matches(self, obj: StoredObject) -> bool:
        """True when the LIST shows the object exactly as it was when this document was read."""
        return bool(obj.etag) and (obj.key, obj.etag, obj.size) == (self.key, self.etag, self.size)


def cache_key(prefix: str) -> str:
    """Where the cache of a listing prefix lives: outside every backup prefix."""
    return f"{CACHE_DIR}/{prefix}catalogue.jsonl.gz"


def encode(prefix: str, documents: Iterable[CachedDocument]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=_COMPRESSION, mtime=0) as out:
        out.write(json.dumps({"schema": CACHE_SCHEMA, "prefix": prefix}).encode() + b"\n")
        for entry in documents:
            line = [entry.key, entry.etag, entry.size, entry.document]
            out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    return buffer.getvalue()


def decode(prefix: str, data: bytes) -> Iterator[CachedDocument]:
    """The cached documents one by one (not all at once: memory), after checking the header;
    CacheUnreadableError at the first malformed part. Read the bytes with their S3 checksum
    checked, so that a line that parses is a line that was written."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as lines:
            header = json.loads(next(lines, b"null"))
            if header != {"schema": CACHE_SCHEMA, "prefix": prefix}:
                raise CacheUnreadableError(
                    f"the header is {header!r}, not {CACHE_SCHEMA} of {prefix}"
                )
            for line in lines:
                key, etag, size, document = json.loads(line)
                if not (isinstance(key, str) and isinstance(etag, str) and type(size) is int):
                    raise CacheUnreadableError(f"malformed entry {line[:200]!r}")
                yield CachedDocument(key, etag, size, document)
    except CacheUnreadableError:
        raise
    except (OSError, EOFError, ValueError, TypeError) as exc:  # gzip, JSON, unpacking
        raise CacheUnreadableError(str(exc)) from exc


class Listable(Protocol):
    """What a listing needs of a region's store (an `ObjectStore`)."""

    region: Region
    bucket: str
    client: Any

    def where(self, key: str) -> str: ...

    def list_objects(self, prefix: str) -> Iterator[StoredObject]: ...

    def unfinished_uploads(self, prefix: str) -> list[Debris]: ...

    def put_bytes(self, key: str, body: bytes, content_type: str) -> None: ...

    def delete_all_versions(self, prefix: str, *, keep_latest: bool) -> int: ...


def region_listing(store: Listable, prefix: str) -> RegionListing:
    """Everything the catalogue needs from this region under `prefix` (manifests parsed).

    One LIST; each manifest and integrity record then comes from the catalogue cache when
    the LIST shows it unchanged since it was cached, else from a GET (in parallel), and the
    cache is rewritten when anything changed (see the top of this module).
    """
    with collector_paused():
        objects = list(store.list_objects(prefix))
        wanted: dict[str, tuple[BackupId, str, StoredObject]] = {}
        for obj in objects:
            if obj.key.endswith(_RECORD_SUFFIXES) and (parsed := BackupId.from_key(obj.key)):
                wanted[obj.key] = (*parsed, obj)
        found = _Found()
        unused = 0  # cache entries of deleted, rewritten or unreadable objects
        for entry in _cached_documents(store, prefix):
            listed = wanted.get(entry.key)
            if listed is None or not found.add_cached(*listed, entry):
                unused += 1
    stale = [key for key in wanted if key not in found.versions]
    # The collector runs here: each GET leaves a little cyclic garbage behind.
    with ThreadPoolExecutor(max_workers=LISTING_READERS) as pool:
        for entry in pool.map(partial(_read_document, store), stale):
            if entry is not None:  # else deleted since the LIST
                backup, name, _ = wanted[entry.key]
                found.add_read(backup, name, entry)
    if stale or unused:  # new, changed or deleted records since the cache was written
        _write_catalogue_cache(store, prefix, found.documents())
    return RegionListing(
        store.region.name,
        objects,
        found.manifests,
        found.integrity,
        store.unfinished_uploads(prefix),
    )


def _read_document(store: Listable, key: str) -> CachedDocument | None:
    """A JSON document with the ETag and size of the very bytes read; None if it is gone."""
    with translated(f"reading {store.where(key)}", missing_ok=True):
        response = store.client.get_object(Bucket=store.bucket, Key=key)
        with response["Body"] as body:
            document = json.loads(body.read())
        etag = str(response.get("ETag", "")).strip('"')
        return CachedDocument(key, etag, int(response["ContentLength"]), document)
    return None


def _cached_documents(store: Listable, prefix: str) -> Iterator[CachedDocument]:
    """The catalogue cache of `prefix`, entry by entry: none when there is no cache, and
    none after a part that cannot be read (a warning says why)."""
    key = cache_key(prefix)
    data = None
    try:
        with translated(f"reading {store.where(key)}", missing_ok=True):
            response = store.client.get_object(Bucket=store.bucket, Key=key, ChecksumMode="ENABLED")
            with response["Body"] as body:
                data = body.read()  # the SHA-256 is checked once the body is read whole
        if data is not None:
            yield from decode(prefix, data)
    except (StoreError, CacheUnreadableError) as exc:
        log.warning("Not using (the rest of) the catalogue cache %s: %s", store.where(key), exc)


def _write_catalogue_cache(
    store: Listable, prefix: str, documents: Iterator[CachedDocument]
) -> None:
    """Replace the cache of `prefix`. A failure costs the next listing time, never data."""
    key = cache_key(prefix)
    try:
        store.put_bytes(key, encode(prefix, documents), "application/gzip")
        # The bucket is versioned: keep the current cache, not one per listing forever.
        store.delete_all_versions(key, keep_latest=True)
    except StoreError as exc:
        log.warning("Could not write the catalogue cache %s: %s", store.where(key), exc)


class _Found:
    """The manifests and integrity records a listing has, each with the ETag and size it was
    read at (what the catalogue cache stores)."""

    def __init__(self) -> None:
        self.manifests: dict[BackupId, Manifest] = {}
        self.integrity: dict[BackupId, dict[str, Any]] = {}
        self.versions: dict[str, tuple[BackupId, str, str, int]] = {}
        self._previous: dict[str, Any] = {}  # the last manifest's value of each _SHARED_FIELDS

    def _manifest(self, document: dict[str, Any]) -> Manifest:
        """Parse a manifest, sharing each of _SHARED_FIELDS with the previous manifest's when
        equal (nothing changes a manifest's fields; they are read-only)."""
        for name in _SHARED_FIELDS:
            value = document.get(name)
            if value is not None and value == self._previous.get(name):
                document[name] = self._previous[name]
            else:
                self._previous[name] = value
        return Manifest.from_document(document)

    def add_read(self, backup: BackupId, name: str, entry: CachedDocument) -> None:
        """A document just read; a manifest that does not parse fails the listing, as it must."""
        if name == MANIFEST_NAME:
            self.manifests[backup] = self._manifest(entry.document)
        else:
            self.integrity[backup] = verdict_of(entry.document)
        self.versions[entry.key] = (backup, name, entry.etag, entry.size)

    def add_cached(
        self, backup: BackupId, name: str, listed: StoredObject, entry: CachedDocument
    ) -> bool:
        """A cached document, unless the LIST shows its object changed since, or it is not
        what its key holds (then False: it is read again)."""
        if not entry.matches(listed):
            return False
        if name == MANIFEST_NAME:
            try:
                manifest = self._manifest(entry.document)
            except (ValueError, KeyError, TypeError, AttributeError):
                return False
            if manifest.backup != backup:
                return False
            self.manifests[backup] = manifest
        elif isinstance(entry.document, dict):
            self.integrity[backup] = verdict_of(entry.document)
        else:
            return False
        self.versions[entry.key] = (backup, name, entry.etag, entry.size)
        return True

    def documents(self) -> Iterator[CachedDocument]:
        for key, (backup, name, etag, size) in self.versions.items():
            if name == MANIFEST_NAME:
                yield CachedDocument(key, etag, size, self.manifests[backup].to_document())
            else:
                yield CachedDocument(key, etag, size, self.integrity[backup])
