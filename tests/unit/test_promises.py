"""The policy report's pure side: what the configured tiers deliver against each promise, from
the Policy alone, and how measured checks are joined to a promise."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from include.backup_dr.monitor.checks.result import CheckResult, Status
from include.backup_dr.monitor.promises import (
    Band,
    Verdict,
    bands,
    measured,
    promises,
    render_report,
    spacing_at,
)
from include.backup_dr.policy import DEFAULT_POLICY_PATH, Policy, load_policy

D = timedelta(days=1)
H = timedelta(hours=1)
SHIPPED = load_policy(DEFAULT_POLICY_PATH)


def _policy(mutate) -> Policy:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    mutate(data)
    return Policy.model_validate(data)


def _row(policy: Policy, starts: str):
    [row] = [p for p in promises(policy) if p.promise.startswith(starts)]
    return row


PLATFORM = "Production platform databases"
MEDIA = "Documents and other media"


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (timedelta(0), (timedelta(seconds=1), "continuous")),
        (1 * D, (timedelta(seconds=1), "continuous")),
        (7 * D, (timedelta(seconds=1), "continuous")),
        (8 * D, (7 * D, "weekly")),
        (28 * D, (7 * D, "weekly")),
        (29 * D, (31 * D, "monthly")),
        (365 * D, (31 * D, "monthly")),
        (366 * D, None),
    ],
)
def test_spacing_of_restore_points_by_age(age: timedelta, expected) -> None:
    assert spacing_at(SHIPPED.categories["platform"].tiers, age) == expected


def test_bands_beyond_seven_days_of_the_shipped_platform_tiers() -> None:
    assert bands(SHIPPED.categories["platform"].tiers, 7 * D) == [
        Band(7 * D, 28 * D, 7 * D, "weekly"),
        Band(28 * D, 365 * D, 31 * D, "monthly"),
    ]


def test_the_shipped_tiers_cannot_keep_six_hours_for_data_older_than_seven_days() -> None:
    row = _row(SHIPPED, f"{PLATFORM}: RPO 6h for data older than 7d")
    assert row.verdict is Verdict.NOT_MET
    assert row.configured == (
        "restore points 7d apart between 7d and 28d old (weekly); 31d apart between 28d and "
        "365d old (monthly); none kept beyond 365d"
    )


@pytest.mark.parametrize(
    ("tiers", "verdict", "configured"),
    [
        # The 6h tier kept 28 days and the monthly one a year: still a month apart after 28 days.
        (
            {"6h": ("0 */6 * * *", "28d"), "monthly": ("0 2 1 * *", "365d")},
            Verdict.NOT_MET,
            "restore points 6h apart between 7d and 28d old (6h); 31d apart between 28d and "
            "365d old (monthly); none kept beyond 365d",
        ),
        # The 6h tier kept a year: the promise holds for a year.
        (
            {"6h": ("0 */6 * * *", "365d")},
            Verdict.MET,
            "restore points 6h apart between 7d and 365d old (6h); none kept beyond 365d",
        ),
        # Nothing kept beyond 7 days: no restore point at all.
        ({"6h": ("0 */6 * * *", "7d")}, Verdict.NOT_MET, "restore points none kept beyond 7d"),
    ],
)
def test_older_data_rpo_follows_the_tiers(tiers: dict, verdict: Verdict, configured: str) -> None:
    def mutate(data: dict) -> None:
        platform = data["categories"]["platform"]
        platform["tiers"] = {"continuous": platform["tiers"]["continuous"]} | {
            name: {"schedule": schedule, "retention": kept}
            for name, (schedule, kept) in tiers.items()
        }
        data["restore_verification"]["tier"] = "6h"

    row = _row(_policy(mutate), f"{PLATFORM}: RPO 6h for data older than 7d")
    assert (row.verdict, row.configured) == (verdict, configured)


def test_media_rpo_is_met_by_replication_and_not_by_the_backups_alone() -> None:
    row = _row(SHIPPED, f"{MEDIA}: RPO 2h")
    assert row.verdict is Verdict.MET
    assert "at most 1h plus one run's time behind" in row.configured
    assert "the backups alone: 6h (6h tier)" in row.configured

    def no_replication(data: dict) -> None:
        del data["categories"]["media"]["replication_schedule"]

    row = _row(_policy(no_replication), f"{MEDIA}: RPO 2h")
    assert row.verdict is Verdict.NOT_MET
    assert row.configured == "the 6h tier: backups at most 6h apart"


def test_replication_every_two_hours_cannot_keep_a_two_hour_rpo() -> None:
    def slow(data: dict) -> None:
        data["categories"]["media"]["replication_schedule"] = "5 */2 * * *"

    assert _row(_policy(slow), f"{MEDIA}: RPO 2h").verdict is Verdict.NOT_MET


@pytest.mark.parametrize(
    ("synchronous", "archive_timeout", "verdict"),
    [(False, "60s", Verdict.PARTLY), (True, "60s", Verdict.PARTLY), (True, "1s", Verdict.MET)],
)
def test_one_second_rpo_depends_on_the_standby_and_archive_timeout(
    synchronous: bool, archive_timeout: str, verdict: Verdict
) -> None:
    def mutate(data: dict) -> None:
        data["continuous"]["synchronous"] = synchronous
        data["continuous"]["archive_timeout"] = archive_timeout

    row = _row(_policy(mutate), f"{PLATFORM}: RPO 1s for data within the last 7d")
    assert row.verdict is verdict
    assert "archive_timeout" in row.configured


def test_a_tier_slower_than_its_name_is_not_met() -> None:
    def every_other_day(data: dict) -> None:
        tiers = data["categories"]["platform"]["tiers"]
        tiers["daily"]["schedule"] = "30 0 */2 * *"
        for derived in ("weekly", "monthly"):  # the daily no longer fires near every window
            del tiers[derived]["derive_from"], tiers[derived]["max_skew"]

    row = _row(_policy(every_other_day), f"{PLATFORM}: daily")
    assert row.verdict is Verdict.NOT_MET
    assert "at most 2d apart" in row.configured
    assert _row(SHIPPED, f"{PLATFORM}: daily").verdict is Verdict.MET


def test_each_tier_says_where_its_restore_points_come_from() -> None:
    for tier in ("weekly", "monthly"):
        configured = _row(SHIPPED, f"{PLATFORM}: {tier}").configured
        assert "promoted from daily" in configured and "within 2h of the window" in configured
        assert "else its own read of the source" in configured
    for own in (f"{PLATFORM}: daily", f"{PLATFORM}: every 6 hours", f"{MEDIA}: weekly"):
        configured = _row(SHIPPED, own).configured
        assert configured.endswith("its own read of the source") and "promoted" not in configured

    def weekly_reads_the_source(data: dict) -> None:
        weekly = data["categories"]["platform"]["tiers"]["weekly"]
        del weekly["derive_from"], weekly["max_skew"]

    row = _row(_policy(weekly_reads_the_source), f"{PLATFORM}: weekly")
    assert row.configured.endswith("its own read of the source")


def test_annual_testing_needs_a_yearly_drill_and_a_daily_media_check() -> None:
    annual = "All production databases and media are tested"
    assert _row(SHIPPED, annual).verdict is Verdict.MET

    def weekly_media_only(data: dict) -> None:
        tiers = data["categories"]["media"]["tiers"]
        data["categories"]["media"]["tiers"] = {"weekly": tiers["weekly"]}

    row = _row(_policy(weekly_media_only), annual)
    assert row.verdict is Verdict.NOT_MET
    assert "no media tier runs daily" in row.configured


def test_rto_and_uat_and_geo_rows() -> None:
    rto = _row(SHIPPED, "RTO 4h")
    assert rto.verdict is Verdict.MEASURED and "secondary region" in rto.configured
    uat = _row(SHIPPED, "We do not take any backups of UAT data")
    assert uat.verdict is Verdict.MET and "uat_core" in uat.configured
    geo = _row(SHIPPED, "Multiple copies")
    assert "eu-west-1" in geo.configured and "eu-central-1" in geo.configured


def _check(kind: str, status: Status, value: float, **where) -> CheckResult:
    return CheckResult(
        f"{kind}:{where.get('subject', 's')}/{where.get('tier')}@{where.get('region')}",
        kind,
        where.get("subject", "s"),
        status,
        f"{value:g}s",
        "limit",
        "",
        value,
        where.get("tier"),
        where.get("region"),
    )


def test_measured_joins_the_checks_of_a_promise_and_shows_the_worst() -> None:
    row = _row(SHIPPED, f"{PLATFORM}: every 6 hours")
    checks = [
        _check("backup_age", Status.OK, 10, subject="platform_core", tier="6h", region="a"),
        _check("backup_age", Status.OK, 30, subject="platform_billing", tier="6h", region="b"),
        _check("backup_age", Status.CRITICAL, 99999, subject="platform_core", tier="daily"),
        _check("backup_age", Status.CRITICAL, 99999, subject="media_documents", tier="6h"),
    ]
    assert measured(row, checks) == "OK (2/2 ok): 30s [backup_age:platform_billing/6h@b]"
    checks.append(
        _check("backup_age", Status.CRITICAL, 5, subject="platform_core", tier="6h", region="b")
    )
    assert measured(row, checks).startswith("CRITICAL (2/3 ok): 5s")
    assert measured(_row(SHIPPED, "We do not take"), checks) == "-"


def test_report_without_the_store_has_no_measured_column() -> None:
    text = render_report(promises(SHIPPED), None)
    header = text.splitlines()[0].split()
    assert header == ["PROMISE", "BY", "CONFIGURATION", "VERDICT"]
    assert "NOT MET" in text
    with_checks = render_report(promises(SHIPPED), [])
    assert with_checks.splitlines()[0].split()[-1] == "MEASURED"


def test_measured_headlines_the_first_kind_among_equally_good_checks() -> None:
    row = _row(SHIPPED, f"{PLATFORM}: RPO 1s for data within the last 7d")
    lag = _check("standby_lag", Status.OK, 0.02)
    archive = _check("wal_archive", Status.OK, 705)
    assert measured(row, [archive, lag]).startswith("OK (2/2 ok): 0.02s [standby_lag:")
    late = _check("wal_archive", Status.CRITICAL, 900)
    assert measured(row, [lag, late]).startswith("CRITICAL (1/2 ok): 900s [wal_archive:")


def test_a_server_config_mismatch_is_named_on_the_promises_it_breaks() -> None:
    bad = _check("server_config", Status.CRITICAL, 600)
    for words in (f"{PLATFORM}: RPO 1s for data within the last 7d", f"{PLATFORM}: every second"):
        assert measured(_row(SHIPPED, words), [bad]).startswith("CRITICAL (0/1 ok)"), words
