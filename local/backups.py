"""Backups written straight into a store, as a snapshot step leaves them (artifact, then
manifest): for benches and tests that need many backups, or exact listings, in seconds."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from include.backup_dr.catalogue import MANIFEST_NAME, Artifact, BackupId, Manifest
from include.backup_dr.store import ObjectStore

#: The artifact each engine writes: its name and its content type.
ARTIFACTS = {
    "media": ("data.jsonl", "application/x-ndjson"),
    "pg_dump": ("data.pgdump", "application/octet-stream"),
}


def commit_backup(
    store: ObjectStore,
    backup: BackupId,
    body: bytes,
    *,
    engine: str,
    source: dict[str, Any],
    tool_versions: dict[str, str] | None = None,
    encryption: dict[str, str] | None = None,
) -> Manifest:
    """Write `body` as `backup`'s artifact (a media listing or a dump), then its manifest."""
    name, content_type = ARTIFACTS[engine]
    artifact = Artifact(backup.key(name), len(body), hashlib.sha256(body).hexdigest())
    store.put_bytes(artifact.key, body, content_type)
    manifest = Manifest(
        backup=backup,
        region=store.region.name,
        artifact=artifact,
        engine=engine,
        started_at=backup.window,
        finished_at=backup.window + timedelta(minutes=1),
        source=source,
        tool_versions=tool_versions or {},
        encryption=encryption or {},
    )
    store.put_json(backup.key(MANIFEST_NAME), manifest.to_json())
    return manifest
