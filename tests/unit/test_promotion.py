"""Which backup a derived tier promotes, when it waits for one, and why it reads the source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.catalogue import Artifact, BackupId, Manifest, Verification
from include.backup_dr.promotion import (
    Candidate,
    plan_promotion,
    promoted_label,
    promoted_manifest,
    source_windows,
)

REGIONS = ("eu-west-1", "eu-central-1")
WEEKLY = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)  # a Sunday, 01:00
DAILY = datetime(2026, 12, 6, 0, 30, tzinfo=UTC)
SKEW = timedelta(hours=2)
PASSED, FAILED, UNCHECKED = Verification.PASSED, Verification.FAILED, Verification.UNCHECKED


def daily(window: datetime, *verdicts: Verification, late: timedelta = timedelta(0)) -> Candidate:
    return Candidate(
        BackupId("platform", "platform_core", "daily", window),
        window + timedelta(seconds=5) + late,
        dict(zip(REGIONS, verdicts, strict=False)),
    )


def plan(candidates, now, due=(DAILY,)):
    return plan_promotion(WEEKLY, "daily", SKEW, candidates, list(due), REGIONS, now)


def test_the_daily_verified_in_both_regions_is_promoted_and_the_reason_names_it() -> None:
    chosen = plan([daily(DAILY, PASSED, PASSED)], WEEKLY)
    assert chosen.source is not None and chosen.wait_until is None
    assert chosen.reason.startswith("promoted from daily 20261206T003000Z: verified in")
    assert "its data read 29m55s before the window (max_skew 2h)" in chosen.reason


def test_a_daily_that_failed_its_check_in_one_region_is_never_promoted_nor_waited_for() -> None:
    chosen = plan([daily(DAILY, PASSED, FAILED)], WEEKLY)
    assert chosen.source is None and chosen.wait_until is None
    assert chosen.reason == (
        "read the source: daily 20261206T003000Z failed its integrity check in eu-central-1 "
        "(never promoted: only verified)"
    )


def test_a_due_daily_without_a_verdict_is_waited_for_until_the_window_plus_the_skew() -> None:
    for candidates in ([], [daily(DAILY, PASSED, UNCHECKED)], [daily(DAILY, PASSED)]):
        chosen = plan(candidates, WEEKLY + timedelta(minutes=10))
        assert chosen.source is None and chosen.wait_until == WEEKLY + SKEW
        assert chosen.reason.startswith("waiting for daily 20261206T003000Z to be verified")
    late = plan([daily(DAILY, PASSED, UNCHECKED)], WEEKLY + SKEW)
    assert late.wait_until is None and late.source is None
    assert "daily 20261206T003000Z is not verified in eu-central-1" in late.reason


def test_a_daily_read_long_after_its_window_is_too_far_from_the_weekly_window() -> None:
    """A backfilled daily holds the data of the day it ran, not of its window."""
    backfilled = daily(DAILY, PASSED, PASSED, late=timedelta(days=2))
    chosen = plan([backfilled], WEEKLY + timedelta(days=2, hours=1))
    assert chosen.source is None
    assert chosen.reason == (
        "read the source: no daily backup's data was read within 2h of the window "
        "(never promoted: only verified)"
    )


def test_the_newest_of_several_verified_dailies_is_promoted() -> None:
    earlier = daily(DAILY - timedelta(hours=1), PASSED, PASSED)
    newest = daily(DAILY, PASSED, PASSED)
    assert plan([newest, earlier], WEEKLY).source == newest


def test_source_windows_are_the_fire_times_within_the_skew_either_side() -> None:
    assert source_windows("30 0 * * *", WEEKLY, SKEW) == [DAILY]
    assert source_windows("0 */6 * * *", WEEKLY, timedelta(hours=6)) == [
        datetime(2026, 12, 6, 0, 0, tzinfo=UTC),
        datetime(2026, 12, 6, 6, 0, tzinfo=UTC),
    ]


verdicts = st.sampled_from([PASSED, FAILED, UNCHECKED, None])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-300, 300), verdicts, verdicts, st.integers(0, 3000)),
        max_size=6,
    ),
    st.integers(0, 600),
)
def test_only_a_backup_verified_everywhere_and_near_the_window_is_ever_promoted(
    backups, minutes_after
) -> None:
    """Whatever the source tier holds: what is promoted passed its check in every region and
    its data was read within the skew; a wait ends by the window + skew; a dump says why."""
    candidates = [
        Candidate(
            BackupId("platform", "platform_core", "daily", WEEKLY + timedelta(minutes=offset)),
            WEEKLY + timedelta(minutes=offset + late),
            {r: v for r, v in zip(REGIONS, (first, second), strict=True) if v is not None},
        )
        for offset, first, second, late in backups
    ]
    now = WEEKLY + timedelta(minutes=minutes_after)
    due = [w for w in source_windows("30 * * * *", WEEKLY, SKEW) if w <= now]
    chosen = plan(candidates, now, due)
    if chosen.source is not None:
        assert all(chosen.source.verification.get(r) is PASSED for r in REGIONS)
        assert abs(chosen.source.taken_at - WEEKLY) <= SKEW
    elif chosen.wait_until is not None:
        assert chosen.wait_until == WEEKLY + SKEW and now < chosen.wait_until
    else:
        assert chosen.reason.startswith("read the source: ")


def test_the_promoted_manifest_keeps_the_data_facts_and_names_its_source() -> None:
    source_id = BackupId("platform", "platform_core", "daily", DAILY)
    weekly = BackupId("platform", "platform_core", "weekly", WEEKLY)
    globals_key = source_id.key("globals.json")
    source = Manifest(
        backup=source_id,
        region="eu-west-1",
        artifact=Artifact(source_id.key("data.pgdump"), 1234, "ab" * 32),
        engine="pg_dump",
        started_at=DAILY,
        finished_at=DAILY + timedelta(minutes=3),
        source={"database": "platform_core", "globals": {"key": globals_key, "size": 9}},
        tool_versions={"pg_dump": "16"},
        encryption={"algorithm": "aws:kms", "kms_key_id": "k"},
        row_counts={"public.t": 3},
        run={"run_id": "daily"},
    )
    promoted = promoted_manifest(
        source,
        weekly,
        moved={
            source_id.key("data.pgdump"): weekly.key("data.pgdump"),
            globals_key: weekly.key("globals.json"),
        },
        region="eu-west-1",
        encryption={"algorithm": "aws:kms", "kms_key_id": "k"},
        run={"run_id": "weekly"},
        promoted_at=WEEKLY,
        mode="server-side copy",
    )
    assert promoted.backup == weekly and promoted.run == {"run_id": "weekly"}
    assert promoted.artifact == Artifact(weekly.key("data.pgdump"), 1234, "ab" * 32)
    assert promoted.source["globals"] == {"key": weekly.key("globals.json"), "size": 9}
    assert source.source["globals"]["key"] == globals_key  # the source's manifest is untouched
    assert (promoted.started_at, promoted.finished_at, promoted.row_counts) == (
        source.started_at,
        source.finished_at,
        source.row_counts,
    )
    assert promoted.derived_from["backup"] == str(source_id)
    assert promoted_label(promoted.derived_from) == "promoted from daily 20261206T003000Z"
    assert Manifest.from_json(promoted.to_json()) == promoted
    assert promoted_label(source.derived_from) is None
