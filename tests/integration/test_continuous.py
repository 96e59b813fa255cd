"""The continuous tier against the real stack: base backups and the WAL archive in both regions,
and the faults that must not lose WAL (a region down, a damaged or missing segment)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from include.backup_dr import wal_segments
from include.backup_dr.backup import steps
from include.backup_dr.backup.errors import IntegrityError
from include.backup_dr.catalogue import INTEGRITY_NAME, BackupId
from include.backup_dr.drill import pitr as pitr_drill
from include.backup_dr.engines.wal import archive_files
from include.backup_dr.policy import load_policy
from include.backup_dr.store import StoreError
from include.backup_dr.stores import from_ref
from tests.integration.helpers import (
    RUN,
    SERVER,
    base_backup,
    primary_connection,
    switch_wal,
    wait_archived,
)
from tests.stack import mail_text, run_dag, wait_for_mail

pytestmark = pytest.mark.integration


def archiver() -> dict:
    with primary_connection() as conn:
        row = conn.execute(
            "SELECT archived_count, failed_count, last_archived_wal, last_failed_wal "
            "FROM pg_stat_archiver"
        ).fetchone()
        ready = conn.execute(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
        ).fetchone()[0]
    return {
        "archived": row[0],
        "failed": row[1],
        "last_archived": row[2],
        "last_failed": row[3],
        "ready": ready,
    }


def test_continuous_dag_backs_up_and_verifies_both_regions(stores) -> None:
    window = datetime.now(UTC).replace(microsecond=0)
    run = run_dag("platform_backup_continuous", window)
    assert run.state == "success"
    backup = BackupId("platform", SERVER, "continuous", window)
    for store in stores:
        manifest = store.manifest(backup)
        assert manifest is not None and manifest.engine == "wal"
        assert manifest.source["system_identifier"] > 0
        evidence = store.get_json(backup.key(INTEGRITY_NAME))
        assert evidence["ok"] is True, evidence
        checks = {c["name"]: c for c in evidence["checks"]}
        assert {"sha256", "readable", "wal_continuity", "wal_segments"} <= checks.keys()
        assert "no gap" in checks["wal_continuity"]["detail"]
        # The WAL the base backup needs (its end segment) is in this region's archive.
        names = {
            f.segment.name()
            for f in archive_files(store, SERVER, wal_segments.DEFAULT_SEGMENT_SIZE)
            if f.kind == "segment" and f.segment
        }
        assert manifest.source["end_wal"] in names


def monitor_once(stores, seconds: int = 2) -> dict:
    from include.backup_dr.monitor.continuous import measure

    run = {"dag_id": "platform_continuous_monitor"}
    return measure(load_policy(), stores, SERVER, seconds, run)


def test_secondary_region_down_retains_wal_pages_and_catches_up_without_gap(
    stores, smtp_sink
) -> None:
    from local import stack

    ref = base_backup(stores)
    monitor_once(stores)  # the alert state starts from a healthy run
    secondary = next(s for s in stack.services(["s3"]) if s.name == "s3-secondary")
    before = archiver()
    secondary.stop()
    try:
        held = [switch_wal() for _ in range(2)]
        deadline = time.monotonic() + 60
        while archiver()["failed"] <= before["failed"] and time.monotonic() < deadline:
            time.sleep(0.5)
        during = archiver()
        # Archiving fails, and PostgreSQL keeps the segments in pg_wal to retry them.
        assert during["failed"] > before["failed"]
        assert during["ready"] >= 1
        assert during["last_failed"] in held
        # The monitor pages on it. It cannot write its evidence to the region that is down,
        # so its task fails too, but the page was sent and recorded first.
        with pytest.raises(StoreError, match="eu-central-1"):
            monitor_once(stores)
        mails = wait_for_mail(smtp_sink)
        assert [m["Subject"] for m in mails] == [
            "[backup] platform_continuous_monitor: archive_failing on platform_primary"
        ]
    finally:
        stack.up_one(secondary)
    for name in held:
        wait_archived(stores.secondary, name, timeout=120)
        wait_archived(stores.primary, name)
    deadline = time.monotonic() + 60  # the backlog drains (new segments may keep arriving)
    while archiver()["ready"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert archiver()["ready"] == 0
    for old in smtp_sink.glob("*.eml"):
        old.unlink()
    assert not monitor_once(stores)["conditions"]["archive_failing"]
    resolved = wait_for_mail(smtp_sink)
    assert [m["Subject"] for m in resolved] == [
        "[backup] RESOLVED: platform_continuous_monitor: archive_failing on platform_primary"
    ]
    result = steps.check_integrity(load_policy(), stores, ref)
    assert result["verified_regions"] == ["eu-west-1", "eu-central-1"]
    backup = from_ref(ref)
    for store in stores:
        checks = {c["name"]: c for c in store.get_json(backup.key(INTEGRITY_NAME))["checks"]}
        assert checks["wal_continuity"]["ok"], checks["wal_continuity"]
        assert "no gap" in checks["wal_continuity"]["detail"]


def test_damaged_wal_segment_in_one_region_is_named_and_pages(stores, smtp_sink) -> None:
    window = datetime.now(UTC).replace(microsecond=0)
    assert run_dag("platform_backup_continuous", window).state == "success"
    damaged = switch_wal()
    wait_archived(stores.secondary, damaged)
    key = next(
        f.key
        for f in archive_files(stores.secondary, SERVER, wal_segments.DEFAULT_SEGMENT_SIZE)
        if f.kind == "segment" and f.segment and f.segment.name() == damaged
    )
    body = stores.secondary.open(key).read()
    stores.secondary.put_bytes(key, body[:-64] + bytes(64), "application/octet-stream")

    # The next run re-reads the new segment in each region; only the secondary's is damaged.
    later = datetime.now(UTC).replace(microsecond=0)
    assert run_dag("platform_backup_continuous", later).state == "failed"
    backup = BackupId("platform", SERVER, "continuous", later)
    primary = stores.primary.get_json(backup.key(INTEGRITY_NAME))
    secondary = stores.secondary.get_json(backup.key(INTEGRITY_NAME))
    assert primary["ok"] is True
    failed = {c["name"]: c["detail"] for c in secondary["checks"] if not c["ok"]}
    assert list(failed) == ["wal_segments"]
    assert damaged in failed["wal_segments"]
    mails = wait_for_mail(smtp_sink)
    text = "\n".join(m["Subject"] + "\n" + mail_text(m) for m in mails)
    assert "platform_backup_continuous" in text and damaged in text

    # The PITR drill prefers the secondary (the DR path) but uses the region whose WAL is whole.
    # Four heartbeats: the range ends at the newest segment's LastModified, in whole seconds,
    # so the last second or so of heartbeats before a quick archive may lie outside it.
    monitor_once(stores, 4)
    wait_archived(stores.primary, switch_wal())
    drilled = pitr_drill.drill(load_policy(), stores, SERVER, {}, RUN)
    assert drilled["outcome"] == "passed", drilled["problems"]
    assert drilled["backup"]["region"] == "eu-west-1"
    assert drilled["selection_reason"].startswith("eu-west-1 instead of eu-central-1")
    assert drilled["proof"]["ok"] is True


def test_missing_wal_segment_fails_the_check_and_the_next_copy_heals_it(stores) -> None:
    policy = load_policy()
    ref = base_backup(stores)
    gone = switch_wal()
    wait_archived(stores.secondary, gone)
    after = switch_wal()
    wait_archived(stores.secondary, after)
    key = next(
        f.key
        for f in archive_files(stores.secondary, SERVER, wal_segments.DEFAULT_SEGMENT_SIZE)
        if f.kind == "segment" and f.segment and f.segment.name() == gone
    )
    stores.secondary.delete_all_versions(key)

    with pytest.raises(IntegrityError, match=f"missing segment\\(s\\) {gone}"):
        steps.check_integrity(policy, stores, ref)
    # The next copy run re-syncs the WAL (and, as the secondary's check failed, the copy).
    steps.copy_to_secondary(policy, stores, ref)
    assert any(
        f.segment and f.segment.name() == gone
        for f in archive_files(stores.secondary, SERVER, wal_segments.DEFAULT_SEGMENT_SIZE)
    )
    assert steps.check_integrity(policy, stores, ref)["verified_regions"] == [
        "eu-west-1",
        "eu-central-1",
    ]
