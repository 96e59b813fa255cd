"""Manifest format and the catalogue built from store listings (manifest = commit marker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from include.backup_dr.catalogue import (
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    Artifact,
    BackupId,
    Manifest,
    RegionListing,
    StoredObject,
    Verification,
    backup_window,
    build_catalogue,
)
from include.backup_dr.stores import backup_ref, from_ref

WINDOW = datetime(2026, 11, 27, 0, 30, tzinfo=UTC)
BACKUP = BackupId("platform", "platform_core", "daily", WINDOW)


def manifest(region: str = "eu-west-1", sha: str = "ab" * 32) -> Manifest:
    return Manifest(
        backup=BACKUP,
        region=region,
        artifact=Artifact(BACKUP.key("data.pgdump"), 1234, sha),
        engine="pg_dump",
        started_at=WINDOW,
        finished_at=WINDOW.replace(minute=31),
        source={"database": "platform_core", "server_version": "16.2"},
        tool_versions={"pg_dump": "pg_dump (PostgreSQL) 16.2"},
        encryption={"algorithm": "aws:kms", "kms_key_id": "backup-primary-key"},
        row_counts={"public.tenants": 10},
        run={"dag_id": "platform_backup_daily", "run_id": "scheduled__x"},
    )


def test_layout_is_readable_and_round_trips() -> None:
    assert BACKUP.prefix == "platform/platform_core/daily/20261127T003000Z/"
    assert BackupId.from_key(BACKUP.key("manifest.json")) == (BACKUP, "manifest.json")
    assert BackupId.from_key("evidence/prune/x.json") is None
    assert BackupId.from_key("platform/a/daily/not-a-window/manifest.json") is None
    # Only what window_label writes is a window: zero-padded, UTC, in range.
    for label in ("2026112T003000Z", "20261127T003000", "20261327T003000Z", "20261127T003000+01"):
        assert BackupId.from_key(f"platform/a/daily/{label}/manifest.json") is None, label


def test_manifest_records_what_an_auditor_needs() -> None:
    body = json.loads(manifest().to_json())
    assert body["schema"] == MANIFEST_SCHEMA
    assert body["id"] == "platform_core/daily/20261127T003000Z"
    assert body["backup"] == {
        "category": "platform",
        "target": "platform_core",
        "tier": "daily",
        "window": "2026-11-27T00:30:00+00:00",
    }
    for field in (
        "started_at",
        "finished_at",
        "source",
        "tool_versions",
        "encryption",
        "row_counts",
    ):
        assert body[field], field
    assert body["artifact"] == {"key": BACKUP.key("data.pgdump"), "size": 1234, "sha256": "ab" * 32}
    assert Manifest.from_json(manifest().to_json()) == manifest()
    assert json.loads(manifest().to_json()) == manifest().to_document()


def test_catalogue_counts_only_manifested_backups_and_reports_debris() -> None:
    committed = manifest()
    died = BackupId("platform", "platform_core", "daily", WINDOW.replace(day=26))
    objects = [
        StoredObject(committed.artifact.key, 1234, WINDOW),
        StoredObject(BACKUP.key("manifest.json"), 500, WINDOW),
        StoredObject(died.key("data.pgdump"), 999, WINDOW),
    ]
    evidence = {
        "ok": True,
        "checked_at": WINDOW.isoformat(),
        "artifact_sha256": committed.artifact.sha256,
    }
    primary = RegionListing("eu-west-1", objects, {BACKUP: committed}, {BACKUP: evidence})
    secondary = RegionListing("eu-central-1", [], {BACKUP: manifest("eu-central-1")}, {})
    backups, debris = build_catalogue([primary, secondary])
    assert [b.id for b in backups] == [BACKUP]
    assert backups[0].copies["eu-west-1"].verification is Verification.PASSED
    assert backups[0].copies["eu-central-1"].verification is Verification.UNCHECKED
    assert [d.key for d in debris] == [died.key("data.pgdump")]


def test_evidence_about_an_earlier_artifact_does_not_count() -> None:
    stale = {"ok": True, "checked_at": WINDOW.isoformat(), "artifact_sha256": "00" * 32}
    listing = RegionListing("eu-west-1", [], {BACKUP: manifest()}, {BACKUP: stale})
    backups, _ = build_catalogue([listing])
    assert backups[0].copies["eu-west-1"].verification is Verification.UNCHECKED


def test_a_window_with_microseconds_is_the_id_its_keys_name() -> None:
    """A run triggered by hand has a logical date with microseconds; the backup's keys name the
    second. A manifest written so (before ids were made to the second) and a ref carrying it
    read back as the id of the backup's keys, so catalogues find one by the other."""
    by_hand = WINDOW.replace(microsecond=404957)
    document = manifest().to_document()
    document["backup"]["window"] = by_hand.isoformat()
    parsed = Manifest.from_document(document)
    key_id, _ = BackupId.from_key(BACKUP.key(MANIFEST_NAME))
    assert parsed.backup == key_id == BACKUP
    assert from_ref({**backup_ref(BACKUP), "window": by_hand.isoformat()}) == BACKUP
    assert backup_window(by_hand) == WINDOW
