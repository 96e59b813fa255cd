"""Object Lock without a store: the policy's limits, the date each key is locked until, and
prune planning around locks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.catalogue import Backup, BackupId, Copy, Verification
from include.backup_dr.immutability import LockRule
from include.backup_dr.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from include.backup_dr.retention import Action, hold_locked, plan_prune

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
REGIONS = ("eu-west-1", "eu-central-1")


def _policy(tmp_path: Path, **lock: object):
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["regions"]["primary"]["object_lock"] = {"mode": "governance", **lock}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_policy(path)


@pytest.mark.parametrize(
    ("lock", "message"),
    [
        ({"margin": "340d"}, "the policy promises deleted data is gone within its policy length"),
        ({"evidence_retention": "90d"}, "shorter than the year the annual audit report reads"),
        ({"mode": "compliance", "bypass_conn_id": "x"}, "cannot be bypassed by anyone"),
        ({"mode": "sometimes"}, "governance"),
    ],
    ids=["margin-beyond-promise", "evidence-too-short", "compliance-bypass", "bad-mode"],
)
def test_a_lock_the_policy_cannot_keep_is_refused_by_name(tmp_path, lock, message) -> None:
    with pytest.raises(PolicyError) as caught:
        _policy(tmp_path, **lock)
    assert "regions.primary.object_lock" in str(caught.value)
    assert message in str(caught.value)


def test_each_key_is_locked_until_what_the_policy_says(tmp_path) -> None:
    policy = _policy(tmp_path, margin="2d", bypass_conn_id="s3_primary_break_glass")
    rule = LockRule.for_region(policy, policy.regions.primary)
    assert rule is not None and LockRule.for_region(policy, policy.regions.secondary) is None
    window = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    daily = BackupId("platform", "platform_core", "daily", window)
    monthly = BackupId("media", "media_documents", "monthly", window)
    table = {
        daily.key("data.dump"): window + timedelta(days=7 + 2),
        daily.key("manifest.json"): window + timedelta(days=7 + 2),
        daily.key("integrity.json"): window + timedelta(days=7 + 2),
        monthly.key("data.jsonl"): window + timedelta(days=365 + 2),
        "evidence/prune/platform/platform_core/daily/x.json": NOW + timedelta(days=400),
        "leases/platform/platform_core/daily.json": None,
        "state/compliance/state.json": None,
        "catalogue-cache/platform/platform_core/daily/catalogue.jsonl.gz": None,
        "media/.blobs/ab/" + "ab" * 32: None,
        "replica/media/media_documents/listing.jsonl": None,
    }
    for key, until in table.items():
        assert rule.until(key, NOW) == until, key
        arguments = rule.write_arguments(key, NOW)
        assert arguments == (
            {}
            if until is None
            else {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": until}
        )


def _backup(age: timedelta) -> Backup:
    window = NOW - age
    copies = {region: Copy(region, Verification.PASSED, 100) for region in REGIONS}
    return Backup(BackupId("platform", "db", "daily", window), copies, window)


@given(st.integers(-3600, 3600))
def test_an_expired_backup_is_deleted_exactly_when_its_lock_has_ended(offset) -> None:
    """Locked: kept, and the reason says until when; lock over (or none): deleted as planned."""
    old, new = _backup(timedelta(days=9)), _backup(timedelta(days=1))
    planned = plan_prune(
        [old, new],
        [],
        {"daily": timedelta(days=7)},
        NOW,
        grace=timedelta(hours=6),
        max_delete_fraction=1.0,
    )
    assert {d.action for d in planned.decisions if d.backup == old.id} == {Action.DELETE}
    until = NOW + timedelta(seconds=offset)
    held = hold_locked(planned, {(old.id, REGIONS[0]): until}, NOW, 1.0)
    (primary,) = [d for d in held.decisions if d.backup == old.id and d.region == REGIONS[0]]
    (secondary,) = [d for d in held.decisions if d.backup == old.id and d.region == REGIONS[1]]
    if until > NOW:
        assert primary.action is Action.KEEP
        assert f"locked until {until.isoformat()}" in primary.reason
        assert "expired" in primary.reason  # the planner's own reason stays, the lock is added
    else:
        assert primary.action is Action.DELETE
    assert secondary.action is Action.DELETE  # its lock was not given: that region is unlocked
    assert all(d.action is Action.KEEP for d in held.decisions if d.backup == new.id)


def test_the_circuit_breaker_is_judged_on_what_the_locks_leave_to_delete() -> None:
    backups = [_backup(timedelta(days=8 + n)) for n in range(4)] + [_backup(timedelta(days=1))]
    planned = plan_prune(
        backups,
        [],
        {"daily": timedelta(days=7)},
        NOW,
        grace=timedelta(hours=6),
        max_delete_fraction=0.5,
    )
    assert planned.breaker is not None  # 4 of 5 copies per region
    locks = {(b.id, region): NOW + timedelta(days=1) for b in backups[:3] for region in REGIONS}
    held = hold_locked(planned, locks, NOW, 0.5)
    assert held.breaker is None  # 1 of 5 left to delete per region
    assert len(held.deletions) == 2
