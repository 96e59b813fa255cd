"""Media backups: content stored once by SHA-256, and a snapshot that is just a listing.

As in restic or Kopia, a snapshot's artifact is a JSONL listing of the source bucket (key,
version id, ETag, size, SHA-256), and every object's bytes live once under
`<category>/.blobs/<aa>/<sha256>` in each region's backup bucket. An object whose key, ETag and
size match the target's newest snapshot whose check passed reuses its blob without a single
request, so a snapshot of an unchanged bucket costs one listing and one manifest. New content is copied server-side
from the source, re-encrypted with the region's key.

layout.py says where blobs and replica listings live; listing.py reads and writes a snapshot's
listing; plan.py holds the pure rules (copy, refresh, keep, sweep); snapshot.py takes a
snapshot; engine.py is the engine the DAGs drive; sweep.py plans garbage collection.
"""

from include.backup_dr.engines.media.engine import MediaEngine
from include.backup_dr.engines.media.layout import (
    SAMPLE_BUCKETS,
    blob_bucket,
    blob_key,
    blob_prefix,
    rehash_bucket,
    replica_prefix,
)
from include.backup_dr.engines.media.listing import EarlierListing, Entry, parse_listing
from include.backup_dr.engines.media.snapshot import COPY_WORKERS, MediaSnapshot

__all__ = [
    "COPY_WORKERS",
    "SAMPLE_BUCKETS",
    "EarlierListing",
    "Entry",
    "MediaEngine",
    "MediaSnapshot",
    "blob_bucket",
    "blob_key",
    "blob_prefix",
    "parse_listing",
    "rehash_bucket",
    "replica_prefix",
]
