"""Backup identity, object layout and manifests; the catalogue is rebuilt from a store listing.

The store is the source of truth. A backup exists when its manifest exists: the manifest is
written last, so an upload that died leaves data without a manifest, which the catalogue reports
as debris instead of a backup. Airflow's metadata database is never consulted.

Layout, identical in both regions::

    <category>/<target>/<tier>/<window>/data.<ext>        the artifact (e.g. a pg_dump archive)
    <category>/<target>/<tier>/<window>/manifest.json     commit marker, written last
    <category>/<target>/<tier>/<window>/integrity.json    latest integrity evidence for this copy
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

MANIFEST_SCHEMA = "backup-dr/manifest/v1"
MANIFEST_NAME = "manifest.json"
INTEGRITY_NAME = "integrity.json"
DATA_STEM = "data."
WINDOW_FORMAT = "%Y%m%dT%H%M%SZ"


def window_label(window: datetime) -> str:
    """The window (logical date) a backup fills, as it appears in keys: sortable, UTC."""
    return window.astimezone(UTC).strftime(WINDOW_FORMAT)


def parse_window(label: str) -> datetime:
    return datetime.strptime(label, WINDOW_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True, order=True)
class BackupId:
    """Which backup: one target, one tier, one window. Same id in both regions."""

    category: str
    target: str
    tier: str
    window: datetime

    @property
    def prefix(self) -> str:
        return f"{self.category}/{self.target}/{self.tier}/{window_label(self.window)}/"

    def key(self, name: str) -> str:
        return self.prefix + name

    def __str__(self) -> str:
        return f"{self.target}/{self.tier}/{window_label(self.window)}"

    @classmethod
    def from_key(cls, key: str) -> tuple[BackupId, str] | None:
        """Split an object key into (backup id, object name); None for keys outside the layout."""
        parts = key.split("/")
        if len(parts) != 5:
            return None
        category, target, tier, label, name = parts
        try:
            window = parse_window(label)
        except ValueError:
            return None
        return cls(category, target, tier, window), name


@dataclass(frozen=True)
class Artifact:
    """The stored bytes of a backup, as the manifest vouches for them."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a backup is and where it came from; an auditor can read it without this code."""

    backup: BackupId
    region: str
    artifact: Artifact
    engine: str
    started_at: datetime
    finished_at: datetime
    source: dict[str, Any]
    tool_versions: dict[str, str]
    encryption: dict[str, str]
    row_counts: dict[str, int] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    copied_from: dict[str, str] | None = None
    run: dict[str, str] = field(default_factory=dict)

    def tables(self) -> dict[str, dict[str, Any]]:
        """Per table: rows at backup time plus its keys; what a restore test checks."""
        return {
            table: {"rows": rows, **self.keys.get(table, {"primary_key": [], "foreign_keys": []})}
            for table, rows in self.row_counts.items()
        }

    def to_json(self) -> str:
        body = asdict(self)
        body["backup"] = {
            "category": self.backup.category,
            "target": self.backup.target,
            "tier": self.backup.tier,
            "window": self.backup.window.isoformat(),
        }
        body["started_at"] = self.started_at.isoformat()
        body["finished_at"] = self.finished_at.isoformat()
        body = {"schema": MANIFEST_SCHEMA, "id": str(self.backup), **body}
        return json.dumps(body, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        body = json.loads(text)
        if body.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(f"not a {MANIFEST_SCHEMA} manifest (schema={body.get('schema')!r})")
        backup = body["backup"]
        return cls(
            backup=BackupId(
                backup["category"],
                backup["target"],
                backup["tier"],
                datetime.fromisoformat(backup["window"]),
            ),
            region=body["region"],
            artifact=Artifact(**body["artifact"]),
            engine=body["engine"],
            started_at=datetime.fromisoformat(body["started_at"]),
            finished_at=datetime.fromisoformat(body["finished_at"]),
            source=body["source"],
            tool_versions=body["tool_versions"],
            encryption=body["encryption"],
            row_counts=body.get("row_counts", {}),
            keys=body.get("keys", {}),
            copied_from=body.get("copied_from"),
            run=body.get("run", {}),
        )


class Verification(StrEnum):
    """The latest integrity verdict on one region's copy."""

    PASSED = "passed"
    FAILED = "failed"
    UNCHECKED = "unchecked"


@dataclass(frozen=True)
class Copy:
    """One region's copy of a backup, as found in that region's store."""

    region: str
    verification: Verification
    size: int
    checked_at: datetime | None = None


@dataclass(frozen=True)
class Backup:
    """A committed backup and its copies per region (a region may lack a copy)."""

    id: BackupId
    copies: dict[str, Copy]
    taken_at: datetime


@dataclass(frozen=True)
class Debris:
    """Bytes in a store that no manifest vouches for: a died upload, or a part of one."""

    region: str
    key: str
    last_modified: datetime
    upload_id: str | None = None  # set for an unfinished multipart upload


@dataclass(frozen=True)
class StoredObject:
    """The listing facts the catalogue needs about one object."""

    key: str
    size: int
    last_modified: datetime
    etag: str = ""


@dataclass
class RegionListing:
    """Everything found under the backup layout in one region (the catalogue's raw input)."""

    region: str
    objects: list[StoredObject]
    manifests: dict[BackupId, Manifest]
    integrity: dict[BackupId, dict[str, Any]]
    unfinished_uploads: list[Debris] = field(default_factory=list)


def copy_from_listing(listing: RegionListing, backup: BackupId) -> Copy:
    evidence = listing.integrity.get(backup)
    manifest = listing.manifests[backup]
    if evidence is None or evidence.get("artifact_sha256") != manifest.artifact.sha256:
        # No check yet, or the check was of an earlier artifact in this window.
        return Copy(listing.region, Verification.UNCHECKED, manifest.artifact.size)
    verdict = Verification.PASSED if evidence.get("ok") else Verification.FAILED
    checked_at = datetime.fromisoformat(evidence["checked_at"])
    return Copy(listing.region, verdict, manifest.artifact.size, checked_at)


def build_catalogue(listings: Iterable[RegionListing]) -> tuple[list[Backup], list[Debris]]:
    """Merge per-region listings into backups (by id) and debris (objects with no manifest)."""
    copies: dict[BackupId, dict[str, Copy]] = {}
    taken: dict[BackupId, datetime] = {}
    debris: list[Debris] = []
    for listing in listings:
        for backup_id, manifest in listing.manifests.items():
            copies.setdefault(backup_id, {})[listing.region] = copy_from_listing(listing, backup_id)
            if manifest.copied_from is None or backup_id not in taken:
                taken[backup_id] = manifest.finished_at
        for obj in listing.objects:
            parsed = BackupId.from_key(obj.key)
            if parsed is None:
                continue
            backup_id, name = parsed
            if name.startswith(DATA_STEM) and backup_id not in listing.manifests:
                debris.append(Debris(listing.region, obj.key, obj.last_modified))
        debris.extend(listing.unfinished_uploads)
    backups = [Backup(bid, copies[bid], taken[bid]) for bid in sorted(copies)]
    return backups, debris
