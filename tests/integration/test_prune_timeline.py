"""Fourteen simulated days of daily backups, pruned as they go, against the real stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.catalogue import BackupId, build_catalogue
from include.backup_dr.pipeline import (
    CircuitBreakerTripped,
    backup_ref,
    check_integrity,
    copy_to_secondary,
    prune,
    take_snapshot,
)

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
