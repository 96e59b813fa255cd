"""The catalogue cache: each manifest and integrity record under a prefix, with the ETag it had.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from include.backup_dr.catalogue import StoredObject

CACHE_DIR = "catalogue-cache"
CACHE_SCHEMA = "backup-dr/catalogue-cache/v1"
#: gzip level 1: measured on the bench's manifests, 1.6x faster to write than the default level
#: 6 for 1.3x the bytes (both shrink the JSON over 15x).
_COMPRESSION = 1


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
