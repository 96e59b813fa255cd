"""Fourteen simulated days of daily backups, pruned as they go, against the real stores."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.backup import steps
from include.backup_dr.backup.errors import CircuitBreakerTripped
from include.backup_dr.backup.steps import (
    check_integrity,
    copy_to_secondary,
    prune,
    take_snapshot,
)
from include.backup_dr.catalogue import BackupId, build_catalogue
from include.backup_dr.stores import backup_ref

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)


def test_fourteen_days_keep_exactly_the_policy(stores, policy_file) -> None:
    policy = policy_file()
    retention = policy.categories["platform"].tiers["daily"].retention
    assert retention == timedelta(days=7)
    target, tier = "platform_billing", "daily"
    windows = [START + timedelta(days=day) for day in range(14)]
    for day, window in enumerate(windows):
        ref = take_snapshot(policy, stores, target, tier, window, {"simulated_day": str(day)})
        copy_to_secondary(policy, stores, ref)
        check_integrity(policy, stores, ref)
        if day == 7:  # the first deletion: prune deletes only what S3 stamped (to the second)
            time.sleep(2)  # a whole second before its listing, and a day takes ~0.3 s here
        result = prune(policy, stores, target, tier, now=window + timedelta(minutes=10))
        assert result["deleted"] == (2 if day >= 7 else 0), (day, result)

        backups, debris = build_catalogue(
            store.listing(f"platform/{target}/{tier}/") for store in stores
        )
        expected = windows[max(0, day - 6) : day + 1]
        assert [b.id.window for b in backups] == expected, day
        assert all(set(b.copies) == {"eu-west-1", "eu-central-1"} for b in backups)
        assert debris == []

    # Deleted means gone: no versions or delete markers are left behind either.
    gone = BackupId("platform", target, tier, windows[0])
    for store in stores:
        versions = store.client.list_object_versions(Bucket=store.bucket, Prefix=gone.prefix)
        assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    assert backup_ref(gone)["window"] == windows[0].isoformat()

    # A clock that jumps two months would expire all but the newest: the breaker stops it.
    jumped = windows[-1] + timedelta(days=60)
    with pytest.raises(CircuitBreakerTripped, match="6 of 7 copies"):
        prune(policy, stores, target, tier, now=jumped)
    dry = prune(
        policy, stores, target, tier, now=jumped, dry_run=True, override_circuit_breaker=True
    )
    assert (dry["planned_deletions"], dry["deleted"]) == (12, 0)
    backups, _ = build_catalogue(store.listing(f"platform/{target}/{tier}/") for store in stores)
    assert len(backups) == 7
    records = [
        stores.secondary.get_json(o.key)
        for o in stores.secondary.list_objects(f"evidence/prune/platform/{target}/{tier}/")
    ]
    at_jump = sorted(
        (r["dry_run"], r["executed"], bool(r["circuit_breaker"]))
        for r in records
        if r["planned_at"] == jumped.isoformat()
    )
    assert at_jump == [(False, False, True), (True, False, True)]


def test_prune_spares_what_is_written_after_it_listed(stores, policy_file, monkeypatch) -> None:
    """A run re-takes windows while prune deletes their old objects: two runs in one critical
    section, which the lease prevents, and which prune must survive on its own. What prune did
    not see when it planned is not its to delete."""
    policy = policy_file()
    target, tier = "platform_billing", "daily"
    today = datetime.now(UTC).replace(hour=0, minute=30, second=0, microsecond=0)
    expired, kept = today - timedelta(days=10), today - timedelta(days=1)
    # A dump whose snapshot died before its manifest: debris once older than the grace period.
    orphan = BackupId("platform", target, tier, today - timedelta(days=11)).key("data.pgdump")
    stores.primary.put_bytes(orphan, b"half a dump", "application/octet-stream")
    for window in (expired, kept):
        ref = take_snapshot(policy, stores, target, tier, window, {"run_id": "earlier"})
        check_integrity(policy, stores, copy_to_secondary(policy, stores, ref))
    time.sleep(2)  # S3 stamps versions to the second: what came before is now seen as before
    expired_dump = BackupId("platform", target, tier, expired).key("data.pgdump")
    retaken: list[str] = []
    delete = steps._delete

    def retake_meanwhile(*args):
        """Between prune's listing and its deletes, another run writes both windows again."""
        if not retaken:
            for key in (orphan, expired_dump):
                stores.primary.put_bytes(key, b"a dump taken just now", "application/octet-stream")
                retaken.append(key)
        return delete(*args)

    monkeypatch.setattr(steps, "_delete", retake_meanwhile)
    later = datetime.now(UTC) + timedelta(hours=7)  # the orphan is past the 6 h grace
    result = prune(policy, stores, target, tier, now=later)
    assert result["deleted"] == 3  # the expired backup in both regions, and the orphan
    for key in retaken:
        body = stores.primary.client.get_object(Bucket=stores.primary.bucket, Key=key)["Body"]
        assert body.read() == b"a dump taken just now", f"{key}: deleted what was written after"
        versions = stores.primary.client.list_object_versions(
            Bucket=stores.primary.bucket, Prefix=key
        )
        assert len(versions["Versions"]) == 1, f"{key}: the old version should have gone"
