"""Where media backups live in a region's bucket: blobs by SHA-256, replica listings, and the
daily re-hash sample a blob belongs to."""

from __future__ import annotations

from datetime import UTC, datetime

BLOB_DIR = ".blobs"
#: Where `media_replicate` keeps each target's replica listing (backup/replication.py).
REPLICA_DIR = "replica"
#: The rolling re-hash splits blobs into this many buckets by their hash; each day's integrity
#: check re-hashes the bucket `day of year mod 365`, so every blob comes round once a year.
SAMPLE_BUCKETS = 365


def replica_prefix(category: str, target: str) -> str:
    """Where one media target's replica listing and replication state live in the secondary."""
    return f"{REPLICA_DIR}/{category}/{target}/"


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
