"""The compliance rules without I/O: each check's status from plain facts, the Nagios exit code,
and `evaluate` over a whole policy (every check green, then each kind of breach turns red)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.catalogue import Artifact, BackupId, Manifest, RegionListing
from include.backup_dr.engines.media import SAMPLE_BUCKETS, rehash_bucket
from include.backup_dr.monitor.checks.backup_age import backup_age_status
from include.backup_dr.monitor.checks.drill import drill_status
from include.backup_dr.monitor.checks.inputs import (
    BackupFacts,
    DrillFacts,
    MonitorFacts,
    RehashFacts,
    ReplicationFacts,
    StoreFacts,
    WindowFacts,
)
from include.backup_dr.monitor.checks.projected_rto import rto_status
from include.backup_dr.monitor.checks.recovery_window import recovery_window_status
from include.backup_dr.monitor.checks.rehash import Coverage, rehash_coverage, rehash_status
from include.backup_dr.monitor.checks.replication import replication_status
from include.backup_dr.monitor.checks.result import YEAR, CheckResult, Status, overall
from include.backup_dr.monitor.checks.server_config import server_config_status
from include.backup_dr.monitor.checks.streaming import archive_behind, monitor_status
from include.backup_dr.monitor.compliance import evaluate
from include.backup_dr.monitor.facts import read_facts
from include.backup_dr.monitor.output import nagios_exit, nagios_line, render_table
from include.backup_dr.policy import DEFAULT_POLICY_PATH, human, load_policy
from include.backup_dr.promotion import promoted_manifest
from include.backup_dr.subjects import backup_subjects, drill_subjects, media_targets

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)
POLICY = load_policy(DEFAULT_POLICY_PATH)
GRACE = POLICY.compliance.grace
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=800))


@pytest.mark.parametrize(
    ("age", "period", "grace", "expected"),
    [
        (None, 6 * H, 2 * H, Status.CRITICAL),  # no verified backup at all
        (timedelta(minutes=5), 6 * H, 2 * H, Status.OK),
        (6 * H, 6 * H, 2 * H, Status.OK),  # the next run is due, not late
        (8 * H, 6 * H, 2 * H, Status.OK),  # the last second of the grace
        (8 * H + timedelta(seconds=1), 6 * H, 2 * H, Status.CRITICAL),
        (7 * D + 3 * H, 7 * D, 2 * H, Status.CRITICAL),
        (timedelta(0), 31 * D, timedelta(0), Status.OK),
    ],
)
def test_backup_age_status(age, period, grace, expected: Status) -> None:
    assert backup_age_status(age, period, grace) is expected


@given(durations, durations, durations)
def test_backup_age_is_never_green_past_the_period_plus_grace(age, period, grace) -> None:
    status = backup_age_status(age, period, grace)
    assert (status is Status.OK) == (age <= period + grace)
    assert status in (Status.OK, Status.CRITICAL)


@pytest.mark.parametrize(
    ("lag", "since", "expected"),
    [
        (timedelta(0), 40 * timedelta(minutes=1), Status.OK),
        (timedelta(minutes=90), 30 * timedelta(minutes=1), Status.OK),
        (3 * H, 10 * timedelta(minutes=1), Status.CRITICAL),  # the last run found it behind
        (timedelta(0), 2 * H + timedelta(seconds=1), Status.CRITICAL),  # no run for too long
        (None, None, Status.CRITICAL),  # media_replicate never ran
    ],
)
def test_replication_status(lag, since, expected: Status) -> None:
    assert replication_status(lag, since, 2 * H) is expected


@given(durations, durations, durations)
def test_replication_is_never_green_beyond_the_rpo(lag, since, rpo) -> None:
    green = replication_status(lag, since, rpo) is Status.OK
    assert green == (lag <= rpo and since <= rpo)


@pytest.mark.parametrize(
    ("age", "breached", "expected"),
    [
        (timedelta(seconds=70), False, Status.OK),
        (timedelta(seconds=70), True, Status.CRITICAL),
        (timedelta(minutes=7), False, Status.CRITICAL),  # the monitor stopped: nobody watches
        (None, False, Status.CRITICAL),
    ],
)
def test_monitor_status(age, breached: bool, expected: Status) -> None:
    assert monitor_status(age, timedelta(minutes=6), breached) is expected


@pytest.mark.parametrize(
    ("age", "ready", "behind"),
    [
        (40.0, 0, False),
        (40.0, 3, False),  # segments wait, but the archiver is keeping up
        (500.0, 2, True),  # segments wait and nothing was archived for minutes: stuck
        (500.0, 0, False),  # an idle server closes no segment: nothing is at risk
        (500.0, None, True),  # backlog unreadable (no pg_monitor): the age alone decides
        (None, 0, True),  # never archived anything
    ],
)
def test_archive_behind(age, ready, behind: bool) -> None:
    assert archive_behind(age, ready, timedelta(minutes=2)) is behind


@pytest.mark.parametrize(
    ("recorded", "outcome", "now", "expected"),
    [
        (None, None, NOW, Status.CRITICAL),
        (NOW - 30 * D, "failed", NOW, Status.CRITICAL),
        (NOW - 30 * D, "passed", NOW, Status.OK),
        (NOW - 367 * D, "passed", NOW, Status.CRITICAL),
        # The yearly drill (15 January, 04:00) across a leap year: 366 days apart, and the new
        # drill still running an hour later, is on time.
        (
            datetime(2028, 1, 15, 4, 20, tzinfo=UTC),
            "passed",
            datetime(2029, 1, 15, 5, 0, tzinfo=UTC),
            Status.OK,
        ),
    ],
)
def test_drill_status(recorded, outcome, now, expected: Status) -> None:
    age = now - recorded if recorded else None
    assert drill_status(age, outcome, YEAR + GRACE) is expected


@pytest.mark.parametrize(
    ("projected", "expected"),
    [(3 * H, Status.OK), (4 * H, Status.OK), (5 * H, Status.CRITICAL), (None, Status.WARNING)],
)
def test_rto_status(projected, expected: Status) -> None:
    assert rto_status(projected, 4 * H) is expected


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([], 0),
        ([Status.OK, Status.OK], 0),
        ([Status.OK, Status.WARNING], 1),
        ([Status.WARNING, Status.UNKNOWN], 3),
        ([Status.UNKNOWN, Status.CRITICAL, Status.WARNING], 2),
    ],
)
def test_nagios_exit_is_the_worst_status(statuses: list[Status], code: int) -> None:
    checks = [
        CheckResult(f"c{i}", "k", "s", status, "", "", "") for i, status in enumerate(statuses)
    ]
    assert nagios_exit(checks) == code
    assert overall(statuses).value == code


@given(st.lists(st.sampled_from(list(Status)), max_size=20))
def test_one_critical_always_makes_the_whole_critical(statuses: list[Status]) -> None:
    assert (overall(statuses) is Status.CRITICAL) == (Status.CRITICAL in statuses)
    assert (overall(statuses) is Status.OK) == all(s is Status.OK for s in statuses)


# ---- rolling media re-hash -------------------------------------------------------------------


def _daily(first: datetime, last: datetime, skip: set[datetime] | frozenset = frozenset()):
    """Passed re-hashes once a day at first's time of day, from `first` to `last`."""
    passed: dict[int, datetime] = {}
    day = first
    while day <= last:
        if day not in skip:
            passed[rehash_bucket(day)] = day
        day += D
    return passed


WINDOW = YEAR + GRACE


def test_a_young_history_without_gaps_is_on_track() -> None:
    since = NOW - 40 * D
    passed = _daily(since, NOW - timedelta(hours=1))
    coverage = rehash_coverage(passed, since, NOW, WINDOW)
    assert not coverage.missed and not coverage.full_year
    assert len(coverage.covered) == 40
    assert rehash_status(coverage, has_evidence=True) is Status.OK


def test_a_missed_day_is_amber_until_a_year_of_history_then_red() -> None:
    since = NOW - 40 * D
    missed_day = since + 10 * D
    passed = _daily(since, NOW - timedelta(hours=1), {missed_day})
    coverage = rehash_coverage(passed, since, NOW, WINDOW)
    assert coverage.missed == {rehash_bucket(missed_day)}
    assert rehash_status(coverage, has_evidence=True) is Status.WARNING

    since = NOW - 400 * D
    missed_day = NOW - 100 * D
    passed = _daily(since, NOW - timedelta(hours=1), {missed_day})
    coverage = rehash_coverage(passed, since, NOW, WINDOW)
    assert coverage.full_year and len(coverage.covered) == SAMPLE_BUCKETS - 1
    assert rehash_status(coverage, has_evidence=True) is Status.CRITICAL


def test_todays_bucket_is_not_missed_before_todays_check() -> None:
    since = NOW.replace(hour=0, minute=45) - 5 * D
    passed = _daily(since, NOW.replace(hour=0, minute=45) - D)  # today's has not run yet
    coverage = rehash_coverage(passed, since, NOW.replace(hour=0, minute=30), WINDOW)
    assert not coverage.missed


def test_no_integrity_record_is_no_evidence_not_a_figure() -> None:
    empty = Coverage(frozenset(), frozenset(), full_year=False)
    assert rehash_status(empty, has_evidence=False) is Status.WARNING


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=900),
    st.integers(min_value=0, max_value=23),
    st.integers(min_value=0, max_value=23 * 60),
    st.dates(min_value=datetime(2026, 1, 1).date(), max_value=datetime(2031, 12, 31).date()),
)
def test_a_check_every_day_is_always_green(days: int, hour: int, minutes: int, end) -> None:
    """Leap years included: a re-hash every day at the same hour never reads as late."""
    last = datetime(end.year, end.month, end.day, hour, tzinfo=UTC)
    since = last - (days - 1) * D
    now = last + timedelta(minutes=minutes)  # up to a day later, before the next check
    coverage = rehash_coverage(_daily(since, last), since, now, WINDOW)
    assert rehash_status(coverage, has_evidence=True) is Status.OK, (coverage.missed, days)


# ---- evaluate over the shipped policy --------------------------------------------------------


def green_facts(now: datetime = NOW) -> StoreFacts:
    """What the store shows when every promise of the shipped policy holds."""
    regions = [r.name for r in POLICY.iter_regions()]
    backups = {
        (s.subject, s.tier, region): BackupFacts(
            restore_point=now - timedelta(minutes=20),
            window=now - timedelta(minutes=30),
            restore_bytes=2_000_000_000,
        )
        for s in backup_subjects(POLICY)
        for region in regions
    }
    monitor = MonitorFacts(
        evidence="evidence/continuous_monitor/platform_primary/x.json",
        measured_at=now - timedelta(seconds=50),
        samples=50,
        p99_ms=3.0,
        max_ms=5.0,
        archive_age_seconds=40.0,
        ready_files=0,
        conditions={"lag": False, "archive_failing": False, "standby_gone": False},
        settings=SERVER_OK,
        sync_state="async",
    )
    drills = {
        name: DrillFacts(
            evidence=f"evidence/restore_verification/{name}/x",
            recorded_at=now - 30 * D,
            outcome="passed",
            tier="daily" if name != "platform_primary" else "continuous",
            region="eu-central-1",
            restored_bytes=1_000_000_000,
            seconds=600.0,  # 1.67 MB/s: 2 GB in 20 min
        )
        for name in drill_subjects(POLICY)
    }
    since = now - 500 * D
    rehash = {
        (name, region): RehashFacts(
            passed=_daily(since.replace(hour=0, minute=45), now),
            since=since,
            blobs_per_bucket={b: 3 for b in range(SAMPLE_BUCKETS)},
        )
        for name in media_targets(POLICY)
        for region in regions
    }
    return StoreFacts(
        backups=backups,
        monitors={"platform_primary": monitor},
        replications={
            "media_documents": ReplicationFacts(now - 30 * timedelta(minutes=1), 12.0, "state")
        },
        drills=drills,
        rehash=rehash,
        windows={
            ("platform_primary", region): WindowFacts(
                intervals=((now - 8 * D, now - timedelta(seconds=30)),), since=now - 60 * D
            )
            for region in regions
        },
    )


#: pg_settings of a primary that keeps the shipped policy (archive_timeout in seconds).
SERVER_OK = {
    "archive_mode": "on",
    "archive_timeout": "60",
    "wal_level": "replica",
    "synchronous_standby_names": "",
    "synchronous_commit": "on",
}
ASYNC = POLICY.continuous
SYNC = ASYNC.model_copy(update={"synchronous": True})
SYNC_OK = {**SERVER_OK, "synchronous_standby_names": "'*'"}


@pytest.mark.parametrize(
    ("settings", "found", "sync_state", "status", "problem"),
    [
        (ASYNC, SERVER_OK, "async", Status.OK, None),
        (ASYNC, {**SERVER_OK, "archive_mode": "always"}, None, Status.OK, None),
        (ASYNC, {**SERVER_OK, "wal_level": "logical"}, "async", Status.OK, None),
        (ASYNC, {**SERVER_OK, "archive_mode": "off"}, "async", Status.CRITICAL, "archive_mode"),
        (ASYNC, {**SERVER_OK, "wal_level": "minimal"}, "async", Status.CRITICAL, "wal_level"),
        (
            ASYNC,
            {**SERVER_OK, "archive_timeout": "600"},
            "async",
            Status.CRITICAL,
            "loses up to 10m",
        ),
        (ASYNC, {**SERVER_OK, "archive_timeout": "0"}, "async", Status.CRITICAL, "0 (off)"),
        # Shorter than the policy: the promise holds, the policy's figure is not what runs.
        (ASYNC, {**SERVER_OK, "archive_timeout": "30"}, "async", Status.WARNING, "shorter"),
        (
            ASYNC,
            {k: v for k, v in SERVER_OK.items() if k != "wal_level"},
            "async",
            Status.UNKNOWN,
            "not read",
        ),
        (SYNC, SYNC_OK, "sync", Status.OK, None),
        (SYNC, SYNC_OK, "quorum", Status.OK, None),
        (SYNC, SERVER_OK, "async", Status.CRITICAL, "synchronous_standby_names is empty"),
        (SYNC, SYNC_OK, "async", Status.CRITICAL, "sync_state is async"),
        (SYNC, SYNC_OK, None, Status.CRITICAL, "no standby is streaming"),
        (SYNC, {**SYNC_OK, "synchronous_commit": "local"}, "sync", Status.CRITICAL, "local"),
    ],
)
def test_server_config_against_the_policy(settings, found, sync_state, status, problem) -> None:
    verdict, problems = server_config_status(settings, found, sync_state)
    assert verdict is status, problems
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_server_config_names_every_mismatch_and_the_promise_it_breaks() -> None:
    found = {**SERVER_OK, "archive_mode": "off", "archive_timeout": "120"}
    verdict, problems = server_config_status(SYNC, found, "async")
    assert verdict is Status.CRITICAL and len(problems) == 4, problems
    assert any("point-in-time recovery" in p for p in problems)
    assert any("losing primary and standby together" in p for p in problems)
    assert any("losing the primary can lose commits" in p for p in problems)


def test_server_config_is_unknown_without_settings_and_red_when_stale() -> None:
    facts = green_facts()
    old = dataclasses.replace(facts.monitors["platform_primary"], settings=None)
    check = _by_id(_with(facts, monitors={"platform_primary": old}))[
        "server_config:platform_primary"
    ]
    assert check.status is Status.UNKNOWN and "no server settings" in check.detail
    check = _by_id(facts)["server_config:platform_primary"]
    assert check.measured == "archive_mode=on, archive_timeout=1m, wal_level=replica"
    assert check.limit == "archive_mode on, archive_timeout 1m, wal_level replica or logical"


def _by_id(facts: StoreFacts, now: datetime = NOW) -> dict[str, CheckResult]:
    return {c.id: c for c in evaluate(POLICY, facts, now)}


def test_every_check_is_green_when_every_promise_holds() -> None:
    checks = evaluate(POLICY, green_facts(), NOW)
    assert {c.status for c in checks} == {Status.OK}, render_table(
        [c for c in checks if c.status is not Status.OK]
    )
    kinds = {c.kind for c in checks}
    assert kinds == {
        "backup_age",
        "standby_lag",
        "wal_archive",
        "recovery_window",
        "replication_lag",
        "restore_drill",
        "projected_rto",
        "rehash_coverage",
        "server_config",
    }
    # 3 production targets x 4 tiers x 2 regions, plus the server's base backups in 2 regions.
    assert sum(c.kind == "backup_age" for c in checks) == 3 * 4 * 2 + 2
    assert len({c.id for c in checks}) == len(checks)
    assert nagios_exit(checks) == 0
    assert nagios_line(checks).startswith("BACKUP_DR OK - 0 critical")


def _with(facts: StoreFacts, **changes) -> StoreFacts:
    return dataclasses.replace(facts, **changes)


def _breach(name: str):
    facts = green_facts()
    region = "eu-central-1"
    if name == "stale_tier":
        key = ("platform_core", "6h", region)
        old = BackupFacts(restore_point=NOW - 9 * H, window=NOW - 9 * H, restore_bytes=1)
        return _with(
            facts, backups={**facts.backups, key: old}
        ), f"backup_age:platform_core/6h@{region}"
    if name == "no_verified_copy":
        key = ("platform_billing", "monthly", region)
        fresh_but_unchecked = BackupFacts(newer_unverified=1)
        return (
            _with(facts, backups={**facts.backups, key: fresh_but_unchecked}),
            f"backup_age:platform_billing/monthly@{region}",
        )
    if name == "standby_gone":
        gone = dataclasses.replace(
            facts.monitors["platform_primary"], conditions={"standby_gone": True}
        )
        return _with(facts, monitors={"platform_primary": gone}), "standby_lag:platform_primary"
    if name == "monitor_stopped":
        stale = dataclasses.replace(
            facts.monitors["platform_primary"], measured_at=NOW - 20 * timedelta(minutes=1)
        )
        return _with(facts, monitors={"platform_primary": stale}), "standby_lag:platform_primary"
    if name == "archive_behind":
        behind = dataclasses.replace(
            facts.monitors["platform_primary"], archive_age_seconds=500.0, ready_files=4
        )
        return _with(facts, monitors={"platform_primary": behind}), "wal_archive:platform_primary"
    if name == "archive_timeout_longer":
        longer = dataclasses.replace(
            facts.monitors["platform_primary"], settings={**SERVER_OK, "archive_timeout": "600"}
        )
        return _with(facts, monitors={"platform_primary": longer}), "server_config:platform_primary"
    if name == "window_shrunk":
        key = ("platform_primary", region)
        shrunk = WindowFacts(intervals=((NOW - 6 * D, NOW),), since=NOW - 60 * D)
        return (
            _with(facts, windows={**facts.windows, key: shrunk}),
            f"recovery_window:platform_primary@{region}",
        )
    if name == "window_hole":
        key = ("platform_primary", region)
        holed = WindowFacts(
            intervals=((NOW - 8 * D, NOW - 3 * D), (NOW - 2 * D, NOW)),
            since=NOW - 60 * D,
            gaps=("000000010000000000000042",),
        )
        return (
            _with(facts, windows={**facts.windows, key: holed}),
            f"recovery_window:platform_primary@{region}",
        )
    if name == "window_stale":
        key = ("platform_primary", region)
        stale = WindowFacts(
            intervals=((NOW - 8 * D, NOW - 5 * timedelta(minutes=1)),), since=NOW - 60 * D
        )
        return (
            _with(facts, windows={**facts.windows, key: stale}),
            f"recovery_window:platform_primary@{region}",
        )
    if name == "replication_stopped":
        old = ReplicationFacts(NOW - 3 * H, 5.0, "state")
        return _with(
            facts, replications={"media_documents": old}
        ), "replication_lag:media_documents"
    if name == "drill_failed":
        failed = dataclasses.replace(facts.drills["platform_core"], outcome="failed")
        return _with(facts, drills={**facts.drills, "platform_core": failed}), (
            "restore_drill:platform_core"
        )
    if name == "drill_overdue":
        old = dataclasses.replace(facts.drills["media_documents"], recorded_at=NOW - 400 * D)
        return _with(facts, drills={**facts.drills, "media_documents": old}), (
            "restore_drill:media_documents"
        )
    if name == "slow_restore":
        slow = dataclasses.replace(facts.drills["platform_billing"], seconds=8 * 3600.0)
        return _with(facts, drills={**facts.drills, "platform_billing": slow}), (
            "projected_rto:platform_billing"
        )
    if name == "region_unreadable":
        key = ("platform_core", "daily", region)
        return (
            _with(facts, backups={**facts.backups, key: BackupFacts(error="StoreError: down")}),
            f"backup_age:platform_core/daily@{region}",
        )
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("breach", "status"),
    [
        ("stale_tier", Status.CRITICAL),
        ("no_verified_copy", Status.CRITICAL),
        ("standby_gone", Status.CRITICAL),
        ("monitor_stopped", Status.CRITICAL),
        ("archive_behind", Status.CRITICAL),
        ("archive_timeout_longer", Status.CRITICAL),
        ("window_shrunk", Status.CRITICAL),
        ("window_hole", Status.CRITICAL),
        ("window_stale", Status.CRITICAL),
        ("replication_stopped", Status.CRITICAL),
        ("drill_failed", Status.CRITICAL),
        ("drill_overdue", Status.CRITICAL),
        ("slow_restore", Status.CRITICAL),
        ("region_unreadable", Status.UNKNOWN),
    ],
)
def test_each_breach_turns_exactly_its_check_red(breach: str, status: Status) -> None:
    facts, check_id = _breach(breach)
    checks = _by_id(facts)
    assert checks[check_id].status is status, checks[check_id]
    assert checks[check_id].measured.startswith("monitor stale: ") == (breach == "monitor_stopped")
    others = {i: c.status for i, c in checks.items() if i != check_id and c.status is not Status.OK}
    if breach == "slow_restore":  # its restore time also pushes the sum over the RTO
        assert others == {"projected_rto:all targets": Status.CRITICAL}
    elif breach == "monitor_stopped":  # nobody watches the archive or the settings either
        assert others == {
            "wal_archive:platform_primary": Status.CRITICAL,
            "server_config:platform_primary": Status.CRITICAL,
        }
    else:
        assert others == {}


def test_projected_rto_plans_the_estate_as_dr_restore_runs_it() -> None:
    facts = green_facts()
    # Each target alone: 2 GB at 1 GB / 3,000 s = 6,000 s (1h40m), within 4 h; three of them
    # one after another: 5 h, over it; in parallel (the policy's 4 at once, 3 into the
    # sandbox): 1h40m.
    drills = {
        name: dataclasses.replace(drill, seconds=3000.0) for name, drill in facts.drills.items()
    }
    checks = _by_id(_with(facts, drills=drills))
    assert checks["projected_rto:platform_core"].status is Status.OK
    assert checks["projected_rto:platform_core"].value == pytest.approx(6000)
    total = checks["projected_rto:all targets"]
    assert total.status is Status.OK and total.value == pytest.approx(6000)
    assert "3 target(s) in parallel" in total.detail and "it would take 5h" in total.detail
    serial = POLICY.model_copy(update={"disaster_recovery": None})  # one restore at a time
    one_by_one = {c.id: c for c in evaluate(serial, _with(facts, drills=drills), NOW)}
    total = one_by_one["projected_rto:all targets"]
    assert total.status is Status.CRITICAL and total.value == pytest.approx(18000)


def test_projection_uses_the_newest_backup_size_not_the_drilled_one() -> None:
    facts = green_facts()
    grown = {
        key: dataclasses.replace(f, restore_bytes=30_000_000_000)
        if key[0] == "platform_core"
        else f
        for key, f in facts.backups.items()
    }
    check = _by_id(_with(facts, backups=grown))["projected_rto:platform_core"]
    assert check.value == pytest.approx(30_000_000_000 / (1_000_000_000 / 600))
    assert check.status is Status.CRITICAL  # 30 GB at 1.67 MB/s: 18,000 s, 5 h


def test_rehash_share_counts_blobs_of_covered_buckets() -> None:
    facts = green_facts()
    since = NOW - 10 * D
    young = RehashFacts(
        passed=_daily(since, NOW - H),
        since=since,
        blobs_per_bucket={rehash_bucket(since): 10, (rehash_bucket(since) + 200) % 365: 30},
    )
    key = ("media_documents", "eu-west-1")
    check = _by_id(_with(facts, rehash={**facts.rehash, key: young}))[
        "rehash_coverage:media_documents@eu-west-1"
    ]
    assert check.status is Status.OK  # on track: nothing late yet
    assert check.value == pytest.approx(10 / 40)
    assert check.measured == "25.0% of 40 blobs"
    assert "full coverage from" in check.detail


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=12, seconds=30), "12m30s"),
        (6 * H, "6h"),
        (7 * H + timedelta(minutes=5), "7h05m"),
        (2 * D + 3 * H, "2d3h"),
        (YEAR, "366d"),
    ],
)
def test_human_durations(value: timedelta, text: str) -> None:
    assert human(value) == text


def test_table_and_nagios_line() -> None:
    facts, _ = _breach("stale_tier")
    checks = evaluate(POLICY, facts, NOW)
    table = render_table(checks).splitlines()
    assert table[0].split() == ["STATUS", "CHECK", "MEASURED", "LIMIT", "DETAIL"]
    assert len(table) == len(checks) + 1
    line = nagios_line(checks)
    assert "\n" not in line
    assert line.startswith("BACKUP_DR CRITICAL - 1 critical, 0 unknown, 0 warning")
    assert "backup_age:platform_core/6h@eu-central-1 (9h, limit 6h + 2h grace)" in line
    assert line.endswith(f"| ok={len(checks) - 1} warning=0 critical=1 unknown=0")


def test_recovery_window_names_what_breaks_it() -> None:
    retention, fresh = 7 * D, timedelta(minutes=2)
    whole = WindowFacts(intervals=((NOW - 8 * D, NOW - timedelta(seconds=20)),), since=NOW - 9 * D)
    assert recovery_window_status(whole, NOW, retention, fresh) == (Status.OK, [])
    # A young tier cannot reach back 7 days yet; that is not a shrunk window.
    young = WindowFacts(intervals=((NOW - 2 * D, NOW),), since=NOW - 2 * D)
    assert recovery_window_status(young, NOW, retention, fresh)[0] is Status.OK
    shrunk = dataclasses.replace(young, since=NOW - 9 * D)
    status, why = recovery_window_status(shrunk, NOW, retention, fresh)
    assert status is Status.CRITICAL and "the window has shrunk" in why[0]
    # A hole older than the window no longer matters; one inside it does, and is named.
    old_hole = WindowFacts(
        intervals=((NOW - 20 * D, NOW - 10 * D), (NOW - 8 * D, NOW)), since=NOW - 30 * D
    )
    assert recovery_window_status(old_hole, NOW, retention, fresh)[0] is Status.OK
    new_hole = WindowFacts(
        intervals=((NOW - 8 * D, NOW - 3 * D), (NOW - 3 * D + H, NOW)), since=NOW - 30 * D
    )
    status, why = recovery_window_status(new_hole, NOW, retention, fresh)
    assert status is Status.CRITICAL
    assert why == [
        f"hole: no recovery to {NOW - 3 * D:%Y-%m-%d %H:%M:%S} .. {NOW - 3 * D + H:%Y-%m-%d %H:%M:%S}"
    ]
    nothing = WindowFacts(since=NOW - 30 * D)
    assert recovery_window_status(nothing, NOW, retention, fresh)[0] is Status.CRITICAL


# ---- a promoted backup, read from the store as the compliance DAG reads it ------------------

SUNDAY_DAILY = datetime(2026, 11, 22, 0, 30, tzinfo=UTC)
SUNDAY_WEEKLY = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


class _Region:
    """A region's store holding the given manifests, each checked with `ok`, and no evidence."""

    lock = None

    def __init__(self, name: str, manifests: list[Manifest], ok: bool = True) -> None:
        self.region = SimpleNamespace(name=name)
        self.manifests = {m.backup: dataclasses.replace(m, region=name) for m in manifests}
        self.ok = ok

    def listing(self, prefix: str) -> RegionListing:
        mine = {b: m for b, m in self.manifests.items() if b.prefix.startswith(prefix)}
        checked = (SUNDAY_WEEKLY + H).isoformat()
        return RegionListing(
            self.region.name,
            [],
            mine,
            {
                b: {"ok": self.ok, "checked_at": checked, "artifact_sha256": m.artifact.sha256}
                for b, m in mine.items()
            },
        )

    def list_objects(self, prefix: str):
        return iter(())

    def get_json(self, key: str) -> None:
        return None


def _sunday_daily() -> Manifest:
    backup = BackupId("platform", "platform_core", "daily", SUNDAY_DAILY)
    return Manifest(
        backup=backup,
        region="eu-west-1",
        artifact=Artifact(backup.key("data.pgdump"), 1234, "ab" * 32),
        engine="pg_dump",
        started_at=SUNDAY_DAILY + timedelta(seconds=5),
        finished_at=SUNDAY_DAILY + timedelta(minutes=3),
        source={"database": "platform_core"},
        tool_versions={"pg_dump": "16"},
        encryption={"algorithm": "aws:kms", "kms_key_id": "k"},
        run={"run_id": "scheduled__daily"},
    )


def _weekly(*, promoted: bool) -> Manifest:
    """The Sunday's weekly: promoted from the daily 20 minutes after its window (it waited for
    the daily's verdict), or the tier's own dump of the very same data."""
    daily = _sunday_daily()
    weekly = BackupId("platform", "platform_core", "weekly", SUNDAY_WEEKLY)
    if not promoted:
        return dataclasses.replace(
            daily, backup=weekly, artifact=Artifact(weekly.key("data.pgdump"), 1234, "cd" * 32)
        )
    return promoted_manifest(
        daily,
        weekly,
        moved={daily.artifact.key: weekly.key("data.pgdump")},
        region="eu-west-1",
        encryption={"algorithm": "aws:kms", "kms_key_id": "k"},
        run={"run_id": "scheduled__weekly"},
        promoted_at=SUNDAY_WEEKLY + timedelta(minutes=20),
        mode="server-side copy",
    )


def _weekly_age(now: datetime, *, promoted: bool, ok: bool = True) -> dict[str, CheckResult]:
    manifests = [_sunday_daily(), _weekly(promoted=promoted)]
    stores = [_Region(r.name, manifests, ok) for r in POLICY.iter_regions()]
    facts, _ = read_facts(POLICY, stores, now, {})
    return {
        region.name: _by_id(facts, now)[f"backup_age:platform_core/weekly@{region.name}"]
        for region in POLICY.iter_regions()
    }


@pytest.mark.parametrize(
    ("since_read", "status"),
    [
        (7 * D + 2 * H, Status.OK),  # the last second of a week plus the grace
        # Past it by the data's age, though the promotion (20 min later) is not yet.
        (7 * D + 2 * H + timedelta(seconds=1), Status.CRITICAL),
    ],
)
def test_a_promoted_backup_counts_like_any_other_by_the_age_of_its_data(
    since_read: timedelta, status: Status
) -> None:
    read_at = SUNDAY_DAILY + timedelta(seconds=5)  # when the daily read production
    now = read_at + since_read
    promoted = _weekly_age(now, promoted=True)
    assert promoted == _weekly_age(now, promoted=False)  # exactly as its own dump would
    for check in promoted.values():
        assert check.status is status
        assert check.value == since_read.total_seconds()
        assert f"taken {read_at:%Y-%m-%d %H:%M:%S} UTC" in check.detail


def test_a_promoted_backup_that_failed_its_check_is_no_restore_point() -> None:
    for check in _weekly_age(SUNDAY_WEEKLY + H, promoted=True, ok=False).values():
        assert check.status is Status.CRITICAL and check.measured == "none"
        assert "1 newer backup(s) not verified" in check.detail
