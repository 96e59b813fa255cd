"""Object Lock without a store: the policy's limits, the date each key is locked until, and
prune planning around locks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from include.backup_dr.catalogue import Backup, BackupId, Copy, Debris, Verification
from include.backup_dr.immutability import LockRule
from include.backup_dr.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from include.backup_dr.retention import Action, hold_locked, plan_prune, recovery_holds

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
    held = hold_locked(planned, {f"{old.id}@{REGIONS[0]}": until}, NOW, 1.0)
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
    locks = {f"{b.id}@{region}": NOW + timedelta(days=1) for b in backups[:3] for region in REGIONS}
    held = hold_locked(planned, locks, NOW, 0.5)
    assert held.breaker is None  # 1 of 5 left to delete per region
    assert len(held.deletions) == 2


def test_locked_debris_is_kept_with_its_date_like_a_backup() -> None:
    """Locks apply on write: an upload whose manifest write failed is locked debris."""
    debris = Debris(REGIONS[0], "platform/db/daily/20261201T120000Z/data.pgdump", NOW - DAY)
    planned = plan_prune(
        [], [debris], {"daily": WINDOW}, NOW, grace=timedelta(hours=6), max_delete_fraction=1.0
    )
    (decision,) = planned.deletions
    until = NOW + WINDOW
    (held,) = hold_locked(planned, {decision.subject: until}, NOW, 1.0).decisions
    assert held.action is Action.KEEP and held.debris == debris
    assert f"never a backup; but locked until {until.isoformat()}" in held.reason


# --- the recovery window stays locked while prune keeps it -----------------------------------

DAY = timedelta(days=1)
WINDOW = timedelta(days=7)


@settings(max_examples=150, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.sampled_from(["ok", "ok", "ok", "failed", "none"]),  # base verified / failed / none
            st.integers(0, 3),  # days the run's label lies behind (a backfill)
            st.integers(0, 20),  # minutes the base took
        ),
        min_size=3,
        max_size=40,
    ),
    margin_hours=st.integers(1, 48),
)
# Runs whose label repeats a window already taken do not prune: 01-01's lock lapsed after eight
# days with no prune. The premise (prunes at most retention + margin apart) did not hold.
@example(
    runs=[
        ("ok", 0, 0),
        ("ok", 1, 0),
        ("failed", 0, 0),
        ("ok", 1, 0),
        ("failed", 0, 0),
        ("ok", 1, 0),
        ("ok", 2, 0),
        ("ok", 3, 0),
        ("ok", 0, 0),
    ],
    margin_hours=1,
)
def test_every_base_and_wal_segment_prune_keeps_stays_locked(runs, margin_hours) -> None:
    """Daily continuous runs over weeks, some failing, some backfilled: at every prune, each
    base backup and WAL segment that is kept is still under its lock from earlier runs; after
    the prune's extensions, each is locked past its hold. Prune runs only after a new verified
    base (the DAG's order); examples whose prunes lie more than `retention + margin` apart are
    out of scope (compliance pages long before)."""
    if runs[0][0] != "ok":
        return
    margin = timedelta(hours=margin_hours)
    rule = LockRule("GOVERNANCE", margin, 400 * DAY, {("platform", "continuous"): WINDOW})
    start = datetime(2026, 1, 1, 3, tzinfo=UTC)
    region = REGIONS[0]
    bases: dict[BackupId, Backup] = {}
    base_start: dict[BackupId, int] = {}  # the WAL segment (one an hour) each base starts at
    lock: dict[object, datetime] = {}  # a base's id or a WAL segment's hour -> retain-until
    wal: set[int] = set()
    last_prune: datetime | None = None
    for day, (kind, behind, minutes) in enumerate(runs):
        taken = start + day * DAY + timedelta(minutes=minutes)
        hour = int((taken - start) / timedelta(hours=1))
        for h in range(max(wal, default=-1) + 1, hour + 1):  # WAL archived since, locked
            wal.add(h)
            lock[h] = rule.wal_until(start + timedelta(hours=h), "platform")
        if kind == "none":
            continue
        bid = BackupId("platform", "db", "continuous", start + (day - behind) * DAY)
        if bid in bases:
            continue  # a window is taken once
        verdict = Verification.PASSED if kind == "ok" else Verification.FAILED
        bases[bid] = Backup(bid, {region: Copy(region, verdict, 1)}, taken)
        base_start[bid] = hour
        written = rule.until(bid.key("manifest.json"), taken)
        lock[bid] = written or taken
        if kind != "ok":
            continue  # the integrity check failed: no prune in this run
        now = taken + timedelta(minutes=30)
        if last_prune is not None and now - last_prune > WINDOW + margin:
            return  # no verified base for longer than the retention: compliance has paged
        last_prune = now
        plan = plan_prune(
            bases.values(),
            (),
            {"continuous": WINDOW},
            now,
            grace=DAY,
            max_delete_fraction=1.0,
            recovery_windows=frozenset({"continuous"}),
        )
        kept = {d.backup for d in plan.keeps}
        oldest = min(base_start[b] for b in kept)
        for b in kept - {bid}:
            assert lock[b] > now, f"day {day}: kept base {b.window:%m-%d} is unlocked"
        for h in wal:
            if h >= oldest and h < hour:
                assert lock[h] > now, f"day {day}: kept WAL of hour {h} is unlocked"
        holds = recovery_holds(bases.values(), WINDOW, now)
        for b in kept:
            hold = holds[(b, region)]
            lock[b] = max(lock[b], rule.recovery_until(hold.until))
            if hold.next_base is not None:
                for h in range(base_start[b], base_start[hold.next_base]):
                    if h in wal:
                        lock[h] = max(lock[h], rule.recovery_until(hold.until))
            assert lock[b] > now
        for decision in plan.deletions:
            if lock[decision.backup] <= now:
                del bases[decision.backup]
        wal -= {h for h in wal if h < min(base_start[b] for b in bases) and lock[h] <= now}
