"""The prune planner: table tests of each rule's reason, and properties that must always hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.catalogue import Backup, BackupId, Copy, Debris, Verification
from include.backup_dr.retention import Action, PrunePlan, plan_prune

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
REGIONS = ("eu-west-1", "eu-central-1")
RETENTION = {"6h": timedelta(days=1), "daily": timedelta(days=7)}
GRACE = timedelta(hours=6)


def backup(
    age: timedelta, tier: str = "daily", target: str = "db", **states: Verification
) -> Backup:
    window = NOW - age
    copies = {
        region: Copy(region, states.get(region.replace("-", "_"), Verification.PASSED), 100)
        for region in REGIONS
    }
    return Backup(BackupId("platform", target, tier, window), copies, window)


def plan(backups, debris=(), now=NOW, fraction=1.0) -> PrunePlan:
    return plan_prune(backups, debris, RETENTION, now, grace=GRACE, max_delete_fraction=fraction)


def decision_for(result: PrunePlan, b: Backup, region: str = REGIONS[0]):
    return next(d for d in result.decisions if d.backup == b.id and d.region == region)


def test_table_of_rules_and_reasons() -> None:
    newest = backup(timedelta(days=1))
    fresh = backup(timedelta(days=2))
    old = backup(timedelta(days=9))
    older = backup(timedelta(days=10))
    result = plan([newest, fresh, old, older])
    assert decision_for(result, fresh).action is Action.KEEP
    assert "within retention: window age 2d 0h <= 1w" in decision_for(result, fresh).reason
    assert decision_for(result, old).action is Action.DELETE
    assert "expired: window age 9d 0h > 1w" in decision_for(result, old).reason
    assert "newer verified copy" in decision_for(result, old).reason


def test_newest_verified_is_kept_however_old() -> None:
    only = backup(timedelta(days=30))
    result = plan([only])
    assert all(d.action is Action.KEEP for d in result.decisions)
    assert "newest verified backup of tier daily in eu-west-1" in decision_for(result, only).reason


def test_newest_verified_is_per_region() -> None:
    # The newest backup failed its check in eu-central-1, so the older one stays there.
    newer = backup(timedelta(days=8), eu_central_1=Verification.FAILED)
    older = backup(timedelta(days=9))
    result = plan([newer, older])
    assert decision_for(result, older, "eu-central-1").action is Action.KEEP
    assert decision_for(result, older, "eu-west-1").action is Action.DELETE
    assert decision_for(result, newer, "eu-west-1").action is Action.KEEP


def test_nothing_deleted_where_nothing_was_ever_verified() -> None:
    unchecked = [backup(timedelta(days=d), eu_west_1=Verification.UNCHECKED) for d in (8, 9)]
    result = plan(unchecked)
    kept = [d for d in result.decisions if d.region == "eu-west-1"]
    assert all(d.action is Action.KEEP for d in kept)
    assert "has passed an integrity check yet" in kept[0].reason


def test_copy_kept_while_its_twin_is_kept_unverified() -> None:
    # Nothing in eu-central-1 ever passed, so everything stays there; then the expired
    # eu-west-1 copy of the same backup must stay too.
    expired = backup(timedelta(days=9), eu_central_1=Verification.FAILED)
    newer = backup(timedelta(days=1), eu_central_1=Verification.FAILED)
    result = plan([expired, newer])
    guarded = decision_for(result, expired, "eu-west-1")
    assert guarded.action is Action.KEEP
    assert "the copy in eu-central-1 is kept and failed" in guarded.reason


def test_debris_waits_for_the_grace_period() -> None:
    young = Debris(
        "eu-west-1", "platform/db/daily/20261127T000000Z/data.pgdump", NOW - timedelta(hours=1)
    )
    stale = Debris(
        "eu-west-1",
        "platform/db/daily/20261126T000000Z/data.pgdump",
        NOW - timedelta(hours=7),
        "up-1",
    )
    result = plan([], [young, stale])
    by_key = {d.debris.key: d for d in result.decisions if d.debris}
    assert by_key[young.key].action is Action.KEEP
    assert "may still be in progress" in by_key[young.key].reason
    assert by_key[stale.key].action is Action.DELETE
    assert "unfinished multipart upload, 7h old > grace 6h" in by_key[stale.key].reason


def test_circuit_breaker_trips_on_deleting_all_but_one() -> None:
    backups = [backup(timedelta(days=d)) for d in range(1, 6)]
    jumped = NOW + timedelta(days=30)  # a clock that jumped a month
    result = plan(backups, now=jumped, fraction=0.5)
    assert result.breaker is not None
    assert "db/daily@eu-west-1: 4 of 5 copies" in result.breaker
    assert plan(backups, fraction=0.5).breaker is None


# --- properties -------------------------------------------------------------------------------

states = st.sampled_from(list(Verification))
ages = st.integers(min_value=-2 * 24, max_value=40 * 24).map(lambda h: timedelta(hours=h))


@st.composite
def catalogues(draw) -> tuple[list[Backup], list[Debris]]:
    backups: dict[BackupId, Backup] = {}
    for _ in range(draw(st.integers(0, 25))):
        tier = draw(st.sampled_from(sorted(RETENTION)))
        target = draw(st.sampled_from(["a", "b"]))
        window = NOW - draw(ages)
        regions = draw(st.sampled_from([REGIONS, REGIONS[:1], REGIONS[1:]]))
        copies = {r: Copy(r, draw(states), 1) for r in regions}
        bid = BackupId("platform", target, tier, window)
        backups[bid] = Backup(bid, copies, window)
    debris = [
        Debris(draw(st.sampled_from(REGIONS)), f"k{i}", NOW - draw(ages))
        for i in range(draw(st.integers(0, 4)))
    ]
    return list(backups.values()), debris


def _newest_verified(backups: list[Backup]) -> set[tuple[BackupId, str]]:
    best: dict[tuple[str, str, str], BackupId] = {}
    for b in backups:
        for region, copy in b.copies.items():
            key = (b.id.target, b.id.tier, region)
            if copy.verification is Verification.PASSED and (
                key not in best or b.id.window > best[key].window
            ):
                best[key] = b.id
    return {(bid, key[2]) for key, bid in best.items()}


@settings(max_examples=300, deadline=None)
@given(catalogues())
def test_never_deletes_within_retention(catalogue) -> None:
    backups, debris = catalogue
    for d in plan(backups, debris).deletions:
        if d.backup is not None:
            assert NOW - d.backup.window > RETENTION[d.backup.tier]


@settings(max_examples=300, deadline=None)
@given(catalogues())
def test_never_deletes_the_newest_verified_copy(catalogue) -> None:
    backups, debris = catalogue
    protected = _newest_verified(backups)
    for d in plan(backups, debris).deletions:
        assert (d.backup, d.region) not in protected


@settings(max_examples=300, deadline=None)
@given(catalogues())
def test_every_copy_and_debris_gets_exactly_one_reasoned_decision(catalogue) -> None:
    backups, debris = catalogue
    result = plan(backups, debris)
    subjects = [d.subject for d in result.decisions]
    assert len(subjects) == len(set(subjects)) == sum(len(b.copies) for b in backups) + len(debris)
    assert all(d.reason.strip() for d in result.decisions)


@settings(max_examples=300, deadline=None)
@given(catalogues())
def test_is_idempotent(catalogue) -> None:
    backups, debris = catalogue
    first = plan(backups, debris)
    gone = {(d.backup, d.region) for d in first.deletions if d.backup} | {
        (d.debris.key, d.region) for d in first.deletions if d.debris
    }
    survivors = []
    for b in backups:
        copies = {r: c for r, c in b.copies.items() if (b.id, r) not in gone}
        if copies:
            survivors.append(Backup(b.id, copies, b.taken_at))
    left = [x for x in debris if (x.key, x.region) not in gone]
    second = plan(survivors, left)
    assert second.deletions == []
    assert plan(backups, debris).decisions == first.decisions


@settings(max_examples=300, deadline=None)
@given(catalogues())
def test_never_deletes_a_copy_while_its_twin_stays_unverified(catalogue) -> None:
    backups, debris = catalogue
    result = plan(backups, debris)
    actions = {(d.backup, d.region): d.action for d in result.decisions if d.backup}
    for b in backups:
        for region in b.copies:
            if actions[(b.id, region)] is not Action.DELETE:
                continue
            for other, copy in b.copies.items():
                if other != region and actions[(b.id, other)] is Action.KEEP:
                    assert copy.verification is Verification.PASSED


@pytest.mark.parametrize("count", [100_000])
def test_plans_many_backups(count: int) -> None:
    many = [backup(timedelta(hours=h), tier="6h", target=f"t{h % 50}") for h in range(count)]
    assert len(plan(many).decisions) == 2 * count


# ---- recovery windows (the continuous tier: base backups that WAL replays from) --------------

CONTINUOUS_RETENTION = {"continuous": timedelta(days=7)}


def plan_window(backups, now=NOW) -> PrunePlan:
    return plan_prune(
        backups,
        (),
        CONTINUOUS_RETENTION,
        now,
        grace=GRACE,
        max_delete_fraction=1.0,
        recovery_windows=frozenset({"continuous"}),
    )


def test_base_backup_that_the_oldest_recovery_point_needs_is_kept() -> None:
    # Daily base backups, 7-day window: the oldest point (7 days ago) replays from the base
    # taken 7.5 days ago. Deleting it would shrink the window to 6.5 days.
    bases = [backup(timedelta(days=age + 0.5), tier="continuous") for age in range(10)]
    result = plan_window(bases)
    anchor = bases[7]  # 7.5 days old: the newest base older than the window
    assert decision_for(result, anchor).action is Action.KEEP
    assert "oldest point of the 1w recovery window replays from it" in (
        decision_for(result, anchor).reason
    )
    assert decision_for(result, bases[8]).action is Action.DELETE
    assert decision_for(result, bases[9]).action is Action.DELETE


@settings(max_examples=200, deadline=None)
@given(
    ages=st.lists(st.floats(min_value=0, max_value=30), min_size=1, max_size=25),
    failed=st.sets(st.integers(min_value=0, max_value=24)),
)
def test_recovery_window_is_never_shortened(ages: list[float], failed: set[int]) -> None:
    """Whatever the history, after the prune every second of the last 7 days that was
    recoverable from a verified base backup still is, in each region."""
    bases = [
        backup(
            timedelta(days=age),
            tier="continuous",
            eu_west_1=Verification.FAILED if i in failed else Verification.PASSED,
        )
        for i, age in enumerate(ages)
    ]
    result = plan_window(bases)
    window_start = NOW - CONTINUOUS_RETENTION["continuous"]
    for region in REGIONS:
        verified = [
            b.id.window for b in bases if b.copies[region].verification is Verification.PASSED
        ]
        kept = {
            d.backup.window
            for d in result.decisions
            if d.region == region and d.action is Action.KEEP and d.backup is not None
        }
        kept_verified = [w for w in verified if w in kept]
        before = [w for w in verified if w <= window_start]
        if before:  # the window's start was recoverable, so it still must be
            assert any(w <= window_start for w in kept_verified), (region, ages, failed)
        oldest_before = min(verified, default=None)
        if oldest_before is not None:
            oldest_after = min(kept_verified)
            assert oldest_after <= max(oldest_before, window_start)


def base_taken(taken_age: float, label_age: float, **states: Verification) -> Backup:
    """A base backup labelled with one window but taken at another time (a backfilled run)."""
    copies = {
        region: Copy(region, states.get(region.replace("-", "_"), Verification.PASSED), 100)
        for region in REGIONS
    }
    window = NOW - timedelta(days=label_age)
    return Backup(
        BackupId("platform", "db", "continuous", window), copies, NOW - timedelta(days=taken_age)
    )


def test_a_backfilled_base_backup_does_not_displace_the_real_anchor() -> None:
    # Daily bases; the real anchor was taken 7.5 days ago. A backfill an hour ago re-took the
    # window of 7.2 days ago: fresh data under an old label. The window still needs the anchor.
    bases = [base_taken(age + 0.5, age + 0.5) for age in range(9)]
    backfilled = base_taken(1 / 24, 7.2)
    result = plan_window([*bases, backfilled])
    anchor = bases[7]
    assert decision_for(result, anchor).action is Action.KEEP
    assert "recovery window replays from it" in decision_for(result, anchor).reason
    assert "taken 7d 12h ago" in decision_for(result, anchor).reason


@settings(max_examples=200, deadline=None)
@given(
    ages=st.lists(
        st.tuples(st.floats(min_value=0, max_value=30), st.floats(min_value=0, max_value=10)),
        min_size=1,
        max_size=25,
    ),
    failed=st.sets(st.integers(min_value=0, max_value=24)),
)
def test_recovery_window_holds_by_when_bases_were_taken_not_their_labels(
    ages: list[tuple[float, float]], failed: set[int]
) -> None:
    """Labels may be older than the data (backfills): every second of the last 7 days that a
    verified base backup could reach, by the time it was really taken, still can be."""
    bases = [
        base_taken(
            taken,
            taken + backfill,
            eu_west_1=Verification.FAILED if i in failed else Verification.PASSED,
        )
        for i, (taken, backfill) in enumerate(ages)
    ]
    if len({b.id for b in bases}) < len(bases):
        return  # two runs of one window: the store keeps one manifest per window
    result = plan_window(bases)
    window_start = NOW - CONTINUOUS_RETENTION["continuous"]
    for region in REGIONS:
        verified = [b for b in bases if b.copies[region].verification is Verification.PASSED]
        kept = {
            d.backup
            for d in result.decisions
            if d.region == region and d.action is Action.KEEP and d.backup is not None
        }
        kept_taken = [b.taken_at for b in verified if b.id in kept]
        if any(b.taken_at <= window_start for b in verified):
            assert any(t <= window_start for t in kept_taken), (region, ages, failed)
        if verified:
            oldest_before = min(b.taken_at for b in verified)
            assert min(kept_taken) <= max(oldest_before, window_start)
