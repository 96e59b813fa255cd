"""Backup identity, object layout and manifests; the catalogue is rebuilt from a store listing.

The store is the source of truth. A backup exists when its manifest exists: the manifest is
written last, so an upload that died leaves data without a manifest, which the catalogue reports
as debris instead of a backup. Airflow's metadata database is never consulted.

Layout, identical in both regions::

    <category>/<target>/<tier>/<window>/data.<ext>        the artifact (e.g. a pg_dump archive)
    <category>/<target>/<tier>/<window>/manifest.json     commit marker, written last
    <category>/<target>/<tier>/<window>/integrity.json    latest integrity evidence for this copy

Listings keep a cache of the manifests and integrity records they read outside this layout, in
`catalogue-cache/` (see store/listing.py); it is never part of a catalogue.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

MANIFEST_SCHEMA = "backup-dr/manifest/v1"
MANIFEST_NAME = "manifest.json"
INTEGRITY_NAME = "integrity.json"
DATA_STEM = "data."
WINDOW_FORMAT = "%Y%m%dT%H%M%SZ"
_WINDOW_LABEL = re.compile(r"[0-9]{8}T[0-9]{6}Z")


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while building a catalogue or a plan.

    Both allocate hundreds of thousands of small acyclic objects, and each allocation burst
    makes the collector walk every object the process holds (an Airflow worker holds
    hundreds of thousands): measured at 100,000 backups, that tripled the time of a
    catalogue build and doubled a plan's. Reference counting still frees everything; the
    collector resumes (if it was running) when the block ends, also on error.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def window_label(window: datetime) -> str:
    """The window (logical date) a backup fills, as it appears in keys: sortable, UTC."""
    return window.astimezone(UTC).strftime(WINDOW_FORMAT)


def backup_window(at: datetime) -> datetime:
    """The window a backup fills, as its keys name it: to the second. A run triggered by hand
    has a logical date with microseconds, and an id read back from a key has none: every id
    made from a date or a document goes through here, so the two are the same id."""
    return at.replace(microsecond=0)


def parse_window(label: str) -> datetime:
    """The inverse of `window_label`; a ValueError for any other text.

    Not strptime: catalogues parse a label per object, hundreds of thousands, and strptime is
    20 times slower (and accepts unpadded fields, which `window_label` never writes). The
    pattern admits only what `window_label` writes; fromisoformat then checks the ranges.
    """
    if _WINDOW_LABEL.fullmatch(label) is None:
        raise ValueError(f"{label!r} is not a window label ({WINDOW_FORMAT})")
    return datetime.fromisoformat(label)


class BackupId(NamedTuple):
    """Which backup: one target, one tier, one window. Same id in both regions.

    A NamedTuple: catalogues hash and compare hundreds of thousands of ids, which a tuple does
    in C and a dataclass in Python (ten times slower). Ordered by its fields, as before.
    """

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
    #: Set when the backup is another tier's, promoted (see promotion.py): which, and when.
    #: Times above are the source's: when the data was read from production.
    derived_from: dict[str, str] | None = None
    #: Why a tier that derives from another read the source instead.
    not_derived: str | None = None

    def tables(self) -> dict[str, dict[str, Any]]:
        """Per table: rows at backup time plus its keys; what a restore test checks."""
        return {
            table: {"rows": rows, **self.keys.get(table, {"primary_key": [], "foreign_keys": []})}
            for table, rows in self.row_counts.items()
        }

    def to_json(self) -> str:
        return json.dumps(self.to_document(), indent=2) + "\n"

    def to_document(self) -> dict[str, Any]:
        """The manifest as JSON data, sharing (not copying) its nested dicts."""
        return {
            "schema": MANIFEST_SCHEMA,
            "id": str(self.backup),
            "backup": {
                "category": self.backup.category,
                "target": self.backup.target,
                "tier": self.backup.tier,
                "window": self.backup.window.isoformat(),
            },
            "region": self.region,
            "artifact": {
                "key": self.artifact.key,
                "size": self.artifact.size,
                "sha256": self.artifact.sha256,
            },
            "engine": self.engine,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "source": self.source,
            "tool_versions": self.tool_versions,
            "encryption": self.encryption,
            "row_counts": self.row_counts,
            "keys": self.keys,
            "copied_from": self.copied_from,
            "run": self.run,
            "derived_from": self.derived_from,
            "not_derived": self.not_derived,
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.from_document(json.loads(text))

    @classmethod
    def from_document(cls, body: dict[str, Any]) -> Manifest:
        if body.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(f"not a {MANIFEST_SCHEMA} manifest (schema={body.get('schema')!r})")
        backup = body["backup"]
        return cls(
            backup=BackupId(
                backup["category"],
                backup["target"],
                backup["tier"],
                backup_window(datetime.fromisoformat(backup["window"])),
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
            derived_from=body.get("derived_from"),
            not_derived=body.get("not_derived"),
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


@dataclass(frozen=True, slots=True)
class StoredObject:
    """The listing facts the catalogue needs about one object (slots: listings hold 100,000s)."""

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
    integrity: dict[BackupId, dict[str, Any]]  # the verdict_of each copy's integrity record
    unfinished_uploads: list[Debris] = field(default_factory=list)


#: What a catalogue reads of an integrity record (see copy_from_listing).
VERDICT_FIELDS = ("ok", "checked_at", "artifact_sha256")


def verdict_of(record: Any) -> dict[str, Any]:
    """The fields of an integrity record that a catalogue reads. Listings keep only these: the
    whole records of 100,000 backups (their check details) would take gigabytes of memory."""
    if not isinstance(record, dict):
        return {}
    return {name: record[name] for name in VERDICT_FIELDS if name in record}


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
        with collector_paused():
            for backup_id, manifest in listing.manifests.items():
                copies.setdefault(backup_id, {})[listing.region] = copy_from_listing(
                    listing, backup_id
                )
                if manifest.copied_from is None or backup_id not in taken:
                    taken[backup_id] = manifest.finished_at
            for obj in listing.objects:
                if not obj.key.rpartition("/")[2].startswith(DATA_STEM):
                    continue  # before parsing the key: most objects are manifests and records
                parsed = BackupId.from_key(obj.key)
                if parsed is not None and parsed[0] not in listing.manifests:
                    debris.append(Debris(listing.region, obj.key, obj.last_modified))
            debris.extend(listing.unfinished_uploads)
    with collector_paused():
        backups = [Backup(bid, copies[bid], taken[bid]) for bid in sorted(copies)]
    return backups, debris
