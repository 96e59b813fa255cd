"""Backups written straight into a store, as a snapshot step leaves them (artifact, then
manifest): for benches and tests that need many backups, or exact listings, in seconds."""

from __future__ import annotations

import gzip
import hashlib
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr import wal_segments
from include.backup_dr.catalogue import INTEGRITY_NAME, MANIFEST_NAME, Artifact, BackupId, Manifest
from include.backup_dr.store import ObjectStore

#: The artifact each engine writes: its name and its content type.
ARTIFACTS = {
    "media": ("data.jsonl", "application/x-ndjson"),
    "pg_dump": ("data.pgdump", "application/octet-stream"),
    "wal": ("data.tar", "application/x-tar"),
}
#: The cluster the synthetic WAL and base backups below claim to come from.
SYSTEM_IDENTIFIER = 7_441_234_567_890_123_456


def commit_backup(
    store: ObjectStore,
    backup: BackupId,
    body: bytes,
    *,
    engine: str,
    source: dict[str, Any],
    tool_versions: dict[str, str] | None = None,
    encryption: dict[str, str] | None = None,
    finished_at: datetime | None = None,
) -> Manifest:
    """Write `body` as `backup`'s artifact (a media listing, a dump or a base backup), then its
    manifest; taken a minute after its window unless `finished_at` says otherwise (a backfill)."""
    name, content_type = ARTIFACTS[engine]
    artifact = Artifact(backup.key(name), len(body), hashlib.sha256(body).hexdigest())
    store.put_bytes(artifact.key, body, content_type)
    manifest = Manifest(
        backup=backup,
        region=store.region.name,
        artifact=artifact,
        engine=engine,
        started_at=(finished_at or backup.window + timedelta(minutes=1)) - timedelta(minutes=1),
        finished_at=finished_at or backup.window + timedelta(minutes=1),
        source=source,
        tool_versions=tool_versions or {},
        encryption=encryption or {},
    )
    store.put_json(backup.key(MANIFEST_NAME), manifest.to_json())
    return manifest


def commit_base_backup(
    store: ObjectStore,
    backup: BackupId,
    start: wal_segments.Segment,
    end: wal_segments.Segment,
    *,
    finished_at: datetime,
    verified: bool = True,
) -> Manifest:
    """A continuous-tier base backup (start and end WAL) taken at `finished_at`, with a
    passed (or failed) integrity record: what the WAL rules and prune read of one."""
    source = {
        "kind": "postgresql-cluster",
        "server": backup.target,
        "server_version": "16.2",
        "system_identifier": SYSTEM_IDENTIFIER,
        "timeline": start.timeline,
        "start_wal": start.name(),
        "end_wal": end.name(),
        "segment_size": wal_segments.DEFAULT_SEGMENT_SIZE,
        "archive_prefix": wal_segments.archive_prefix(backup.target),
    }
    body = f"base backup {backup}".encode()
    manifest = commit_backup(
        store, backup, body, engine="wal", source=source, finished_at=finished_at
    )
    store.put_json(
        backup.key(INTEGRITY_NAME),
        {
            "ok": verified,
            "checked_at": datetime.now(UTC).isoformat(),
            "artifact_sha256": manifest.artifact.sha256,
            "checks": [],
        },
    )
    return manifest


def wal_segment(segment: wal_segments.Segment, system_identifier: int = SYSTEM_IDENTIFIER) -> bytes:
    """A gzipped WAL segment whose first page header names `segment` (the rest is zeros): what
    the integrity check's header re-read accepts."""
    page = struct.pack(
        "<HHIQI",
        wal_segments.PAGE_MAGIC[16],
        wal_segments.XLP_LONG_HEADER,
        segment.timeline,
        segment.start_lsn(),
        0,
    )
    page += b"\x00" * 4 + struct.pack(
        "<QII", system_identifier, wal_segments.DEFAULT_SEGMENT_SIZE, 8192
    )
    raw = page + bytes(wal_segments.DEFAULT_SEGMENT_SIZE - len(page))
    return gzip.compress(raw, compresslevel=1)


def archive_segment(
    store: ObjectStore, server: str, segment: wal_segments.Segment, body: bytes
) -> str:
    """Put one archived segment where barman-cloud does; its key."""
    name = segment.name()
    key = f"{wal_segments.archive_prefix(server)}{name[:16]}/{name}.gz"
    store.put_bytes(key, body, "application/gzip")
    return key
