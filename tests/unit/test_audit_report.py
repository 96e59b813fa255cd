"""The audit report's join (pure): windows expected against backed up, backfills, integrity,
prune reasons, drills against RTO and RPO, and "no evidence" wherever no record backs a figure."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.audit.controls import CONTROLS
from include.backup_dr.audit.join import build_report
from include.backup_dr.audit.reader import backup_record, prune_record
from include.backup_dr.audit.records import (
    BackupRecord,
    BreakGlassRecord,
    Deletion,
    DrillRecord,
    FailoverRecord,
    FirstSeen,
    IntegrityRecord,
    LockSample,
    PruneRecord,
    RefusalRecord,
    RestoreRunRecord,
    WindowRecord,
)
from include.backup_dr.audit.render import NO_EVIDENCE
from include.backup_dr.audit.rows import Origin
from include.backup_dr.audit.windows import expected_windows
from include.backup_dr.catalogue import Artifact, BackupId, Manifest
from include.backup_dr.policy import DEFAULT_POLICY_PATH, load_policy
from include.backup_dr.promotion import promoted_manifest

POLICY = load_policy(DEFAULT_POLICY_PATH)
PRIMARY, SECONDARY = "eu-west-1", "eu-central-1"
START, END = date(2026, 11, 1), date(2026, 11, 3)
NOW = datetime(2026, 11, 10, tzinfo=UTC)
#: platform_core/daily fires at 00:30: three windows in the period.
WINDOWS = [datetime(2026, 11, day, 0, 30, tzinfo=UTC) for day in (1, 2, 3)]
TARGET, TIER = "platform_core", "daily"


def copy(window: datetime, region: str, *, verified: bool = True, **changes) -> BackupRecord:
    fields = {
        "key": f"platform/{TARGET}/{TIER}/{window:%Y%m%dT%H%M%SZ}/manifest.json",
        "target": TARGET,
        "tier": TIER,
        "window": window,
        "region": region,
        "finished_at": window + timedelta(minutes=5),
        "run_id": f"scheduled__{window.isoformat()}",
        "verified": verified,
        "sha256": sha(window),
        "artifact_key": f"platform/{TARGET}/{TIER}/{window:%Y%m%dT%H%M%SZ}/data.pgdump",
        **changes,
    }
    return BackupRecord(**fields)


def sha(window: datetime) -> str:
    """The artifact each window's records are of, unless a test says otherwise."""
    return f"sha-{window:%Y%m%dT%H%M}"


def check(
    window: datetime,
    region: str,
    *,
    ok: bool = True,
    late: timedelta = timedelta(0),
    sha256: str | None = None,
):
    return IntegrityRecord(
        key=f"evidence/integrity/platform/{TARGET}/{window:%Y%m%dT%H%M%SZ}-{region}.json",
        target=TARGET,
        tier=TIER,
        window=window,
        region=region,
        checked_at=window + timedelta(minutes=10) + late,
        ok=ok,
        failures=() if ok else ("sha256: expected abc, found def",),
        sha256=sha256 or sha(window),
    )


def drill(subject: str, tier: str, **changes) -> DrillRecord:
    fields = {
        "key": f"evidence/restore_verification/{subject}/20261102T040000Z-1",
        "subject": subject,
        "recorded_at": datetime(2026, 11, 2, 4, tzinfo=UTC),
        "outcome": "passed",
        "problems": (),
        "tier": tier,
        "region": SECONDARY,
        "restore_seconds": 12.5,
        "projected_seconds": 40.0,
        "projected_of": subject,
        "rpo_seconds": 3600.0,
        "rpo_measure": "age of the restored backup",
        **changes,
    }
    return DrillRecord(**fields)


def tier_row(report, subject: str = TARGET, tier: str = TIER):
    return next(w for w in report.windows if (w.subject, w.tier) == (subject, tier))


#: Evidence of the target long before the period: every window of the period counts.
LONG_BEFORE = FirstSeen(TARGET, datetime(2025, 1, 1, tzinfo=UTC))


def report_of(records, now: datetime = NOW):
    return build_report(POLICY, [LONG_BEFORE, *records], START, END, now)


@pytest.mark.parametrize(
    ("records", "why"),
    [
        ([copy(WINDOWS[1], PRIMARY), copy(WINDOWS[1], SECONDARY)], None),
        # Pruned since: only the kept integrity records prove the window.
        ([check(WINDOWS[1], PRIMARY), check(WINDOWS[1], SECONDARY)], None),
        ([copy(WINDOWS[1], PRIMARY)], "no copy in eu-central-1"),
        (
            [copy(WINDOWS[1], PRIMARY), copy(WINDOWS[1], SECONDARY, verified=False)],
            "unverified in eu-central-1",
        ),
        (
            [check(WINDOWS[1], PRIMARY), check(WINDOWS[1], SECONDARY, ok=False)],
            "integrity check failed in eu-central-1",
        ),
        # A failed check followed by a passed one (the backup was taken again): backed up.
        (
            [
                check(WINDOWS[1], PRIMARY),
                check(WINDOWS[1], SECONDARY, ok=False),
                check(WINDOWS[1], SECONDARY, late=timedelta(hours=1)),
            ],
            None,
        ),
        ([], "no backup in any region"),
    ],
)
def test_a_window_is_backed_up_only_when_verified_in_every_region(records, why) -> None:
    row = tier_row(report_of(records))
    assert row.expected == tuple(WINDOWS)
    if why is None:
        assert WINDOWS[1] in row.backed_up
        assert WINDOWS[1] not in {m.window for m in row.missed}
    else:
        assert WINDOWS[1] not in row.backed_up
        assert {m.window: m.why for m in row.missed}[WINDOWS[1]] == why


@pytest.mark.parametrize(
    ("records", "how"),
    [
        ([copy(WINDOWS[0], r) for r in (PRIMARY, SECONDARY)], None),
        (
            [
                copy(WINDOWS[0], r, run_id="backfill__2026-11-05T10:00:00+00:00")
                for r in (PRIMARY, SECONDARY)
            ],
            "backfill run backfill__2026-11-05T10:00:00+00:00",
        ),
        (
            [
                copy(WINDOWS[0], r, finished_at=WINDOWS[0] + timedelta(days=3))
                for r in (PRIMARY, SECONDARY)
            ],
            "taken 3d after its window",
        ),
        (
            [check(WINDOWS[0], r, late=timedelta(days=2)) for r in (PRIMARY, SECONDARY)],
            "first verified 2d after its window (since pruned)",
        ),
    ],
)
def test_backfilled_windows_are_marked_with_how(records, how) -> None:
    row = tier_row(report_of(records))
    assert WINDOWS[0] in row.backed_up
    assert {b.window: b.how for b in row.backfilled}.get(WINDOWS[0]) == how


def test_windows_not_yet_due_are_not_expected() -> None:
    # 01:00 on the 3rd: that day's 00:30 window has not had the 2 h grace yet.
    row = tier_row(report_of([], now=datetime(2026, 11, 3, 1, tzinfo=UTC)))
    assert row.expected == tuple(WINDOWS[:2])
    assert expected_windows("30 0 * * *", WINDOWS[0], WINDOWS[2], WINDOWS[2]) == WINDOWS[:2]


def test_without_records_every_figure_says_no_evidence() -> None:
    report = report_of([])
    page = report.markdown()
    row = tier_row(report)
    assert not row.has_evidence and row.backed_up == ()
    assert (
        f"| {TARGET} | {TIER} | `30 0 * * *` | 3 | {NO_EVIDENCE} | {NO_EVIDENCE} | 3 | "
        f"{NO_EVIDENCE} |"
    ) in page
    assert f"| {TARGET} | {TIER} | {PRIMARY} | {NO_EVIDENCE} | {NO_EVIDENCE} |" in page
    assert f"| {TARGET} | {TIER} | {NO_EVIDENCE} |" in page  # prune plans
    drill_line = next(line for line in page.splitlines() if line.startswith(f"| {TARGET} | no"))
    assert drill_line == (
        f"| {TARGET} | {NO_EVIDENCE} | {NO_EVIDENCE} | {NO_EVIDENCE} | {NO_EVIDENCE} | 4h | "
        f"{NO_EVIDENCE} | 6h |"
    )
    assert f"{TARGET}: {NO_EVIDENCE} of a restore drill" in page


def test_integrity_counts_each_region_and_lists_failures_with_reasons() -> None:
    records = [check(w, PRIMARY) for w in WINDOWS] + [
        check(WINDOWS[0], SECONDARY),
        check(WINDOWS[1], SECONDARY, ok=False),
    ]
    rows = {
        r.region: r for r in report_of(records).integrity if r.subject == TARGET and r.tier == TIER
    }
    assert (rows[PRIMARY].passed, rows[PRIMARY].failed) == (3, 0)
    assert (rows[SECONDARY].passed, rows[SECONDARY].failed) == (1, 1)
    [failure] = rows[SECONDARY].failures
    assert failure.window == WINDOWS[1]
    assert failure.reasons == ("sha256: expected abc, found def",)
    page = report_of(records).markdown()
    assert "integrity check of window 2026-11-02 00:30 UTC failed: sha256: expected abc" in page


def plan(at: datetime, **changes) -> PruneRecord:
    fields = {
        "key": f"evidence/prune/platform/{TARGET}/{TIER}/{at:%Y%m%dT%H%M%SZ}-1.json",
        "target": TARGET,
        "tier": TIER,
        "planned_at": at,
        "executed": True,
        "dry_run": False,
        "breaker": None,
        "kept": 7,
        "deletions": (
            Deletion(
                "platform_core/daily/20261024T003000Z@eu-west-1",
                "expired: 8d 0h old, retention 7d",
            ),
        ),
        **changes,
    }
    return PruneRecord(**fields)


def test_prune_lists_deletions_of_executed_plans_with_their_reasons() -> None:
    records = [
        plan(WINDOWS[0] + timedelta(minutes=20)),
        plan(WINDOWS[1] + timedelta(minutes=20), executed=False, dry_run=True),
        plan(WINDOWS[2] + timedelta(minutes=20), executed=False, breaker="6 of 7 copies"),
    ]
    report = report_of(records)
    row = next(p for p in report.prune if (p.subject, p.tier) == (TARGET, TIER))
    assert (row.plans, row.executed, row.dry_runs, row.kept) == (3, 1, 1, 21)
    assert [d.reason for d in row.deletions] == ["expired: 8d 0h old, retention 7d"]
    page = report.markdown()
    assert (
        "| 2026-11-01 00:50 UTC | platform_core/daily/20261024T003000Z@eu-west-1 | "
        "expired: 8d 0h old, retention 7d |"
    ) in page
    assert "prune stopped by the circuit breaker at 2026-11-03 00:50 UTC: 6 of 7 copies" in page


@pytest.mark.parametrize(
    ("subject", "tier", "changes", "rto", "rpo", "exception"),
    [
        ("platform_core", "daily", {}, True, True, None),  # 1 h old dump: within the 6 h RPO
        ("platform_core", "daily", {"rpo_seconds": 7 * 3600.0}, True, False, "over the RPO of 6h"),
        ("platform_core", "daily", {"projected_seconds": 5 * 3600.0}, False, True, "over the RTO"),
        # PITR: the newest restored heartbeat 0.4 s before T, against the 1 s RPO.
        ("platform_primary", "continuous", {"rpo_seconds": 0.4}, True, True, None),
        ("platform_primary", "continuous", {"rpo_seconds": 1.5}, True, False, "RPO of 1s"),
        ("media_documents", "daily", {"rpo_seconds": 3 * 3600.0}, True, False, "RPO of 2h"),
        (
            "platform_core",
            "daily",
            {"outcome": "failed", "problems": ("validation failed",)},
            True,
            True,
            "failed: validation failed",
        ),
        (
            "platform_core",
            "daily",
            {"projected_seconds": None, "rpo_seconds": None},
            None,
            None,
            None,
        ),
    ],
)
def test_drills_are_judged_against_the_rto_and_the_rpo_of_their_path(
    subject, tier, changes, rto, rpo, exception
) -> None:
    report = report_of([drill(subject, tier, **changes)])
    row = next(d for d in report.drills if d.subject == subject)
    assert (row.within_rto, row.within_rpo) == (rto, rpo)
    mine = [f.text for f in report.exceptions if f.text.startswith(f"{subject}:")]
    if exception is None:
        assert mine == []
    else:
        assert any(exception in text for text in mine), mine
        assert all(
            f.control == "A.5.29, A.5.30"
            for f in report.exceptions
            if f.text.startswith(f"{subject}:")
        )


def test_drills_outside_the_period_are_not_counted() -> None:
    old = drill("platform_core", "daily", recorded_at=datetime(2026, 1, 15, 4, tzinfo=UTC))
    assert next(d for d in report_of([old]).drills if d.subject == "platform_core").drill is None


def test_html_escapes_what_records_say() -> None:
    records = [check(WINDOWS[0], PRIMARY), check(WINDOWS[0], SECONDARY, ok=False)]
    bad = IntegrityRecord(**{**records[1].__dict__, "failures": ("size: <script>x</script>",)})
    page = report_of([records[0], bad]).html()
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert page.startswith("<!doctype html>") and "<table>" in page


# ---- the property: every expected window is backed up or missed, never both --------------------

STATES = st.sampled_from(["none", "verified", "unverified", "kept_ok", "kept_failed"])


def _records(window: datetime, region: str, state: str) -> list:
    return {
        "none": [],
        "verified": [copy(window, region)],
        "unverified": [copy(window, region, verified=False)],
        "kept_ok": [check(window, region)],
        "kept_failed": [check(window, region, ok=False)],
    }[state]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(STATES, STATES), min_size=3, max_size=3))
def test_every_expected_window_is_backed_up_or_missed_never_both(states) -> None:
    records = [
        r
        for window, (primary, secondary) in zip(WINDOWS, states, strict=True)
        for r in _records(window, PRIMARY, primary) + _records(window, SECONDARY, secondary)
    ]
    report = report_of(records)
    row = tier_row(report)
    missed = {m.window for m in row.missed}
    assert set(row.backed_up) | missed == set(row.expected)
    assert not set(row.backed_up) & missed
    good = {"verified", "kept_ok"}
    assert set(row.backed_up) == {
        w for w, (p, s) in zip(WINDOWS, states, strict=True) if p in good and s in good
    }
    # No figure without a record: a tier without records says so instead of counting.
    page = report.markdown()
    if records:
        assert row.has_evidence
        assert f"| {TARGET} | {TIER} | `30 0 * * *` | 3 | {len(row.backed_up)} |" in page
    else:
        assert f"| {TARGET} | {TIER} | `30 0 * * *` | 3 | {NO_EVIDENCE} |" in page
    checked = [r for r in records if isinstance(r, IntegrityRecord)]
    for integrity in (r for r in report.integrity if (r.subject, r.tier) == (TARGET, TIER)):
        mine = [c for c in checked if c.region == integrity.region]
        assert (integrity.passed is None) == (not mine)


def window_record(at: datetime, region: str, back: timedelta, holes=()) -> WindowRecord:
    return WindowRecord(
        key=f"evidence/recovery_window/platform_primary/{region}/{at:%Y%m%dT%H%M%SZ}-x.json",
        server="platform_primary",
        region=region,
        measured_at=at,
        oldest=at - back,
        newest=at,
        holes=holes,
    )


def test_the_recovery_window_is_reported_with_its_shortest_reach_and_holes() -> None:
    day = timedelta(days=1)
    at = [datetime(2026, 11, d, 3, 10, tzinfo=UTC) for d in (1, 2, 3)]
    hole = (at[1] - 2 * day, at[1] - 2 * day + timedelta(minutes=7))
    records = [
        window_record(at[0], PRIMARY, 7 * day + timedelta(hours=20)),
        window_record(at[1], PRIMARY, 7 * day + timedelta(hours=21), holes=(hole,)),
        window_record(at[2], PRIMARY, 6 * day),  # the window shrank
        window_record(at[2] + 30 * day, PRIMARY, 1 * day),  # after the period: not counted
    ]
    report = build_report(POLICY, records, START, END, NOW)
    rows = {row.region: row for row in report.recovery}
    assert len(rows[PRIMARY].records) == 3 and rows[SECONDARY].records == ()
    assert rows[PRIMARY].shortest == (6 * day, at[2])
    assert rows[PRIMARY].holes == [(at[1], *hole)]
    found = [f.text for f in report.exceptions]
    assert any("reached back only 6d" in t for t in found), found
    assert any("hole in the recovery window" in t for t in found), found
    assert f"platform_primary@{SECONDARY}: {NO_EVIDENCE} of the recovery window" in found
    page = report.markdown()
    assert "## Recovery window: the continuous tier" in page and "6d" in page


# ---- a window is backed up only by its own artifact's verdict --------------------------------


@pytest.mark.parametrize(
    ("records", "why"),
    [
        # The copy failed its check; a pass of an earlier artifact of the window proves nothing.
        (
            [
                check(WINDOWS[1], SECONDARY, sha256="sha-earlier"),
                copy(WINDOWS[1], PRIMARY),
                copy(WINDOWS[1], SECONDARY, verified=False),
            ],
            "unverified in eu-central-1",
        ),
        # The copy to the secondary failed: no manifest there, only an earlier artifact's pass.
        (
            [check(WINDOWS[1], SECONDARY, sha256="sha-earlier"), copy(WINDOWS[1], PRIMARY)],
            "no copy in eu-central-1",
        ),
        # Pruned since: the window's last artifact failed in the secondary.
        (
            [
                check(WINDOWS[1], PRIMARY),
                check(WINDOWS[1], SECONDARY, sha256="sha-earlier"),
                check(WINDOWS[1], SECONDARY, ok=False, late=timedelta(hours=1)),
            ],
            "integrity check failed in eu-central-1",
        ),
    ],
)
def test_a_pass_of_another_artifact_never_backs_a_window_up(records, why) -> None:
    row = tier_row(report_of(records))
    assert WINDOWS[1] not in row.backed_up
    assert [(m.window, m.why) for m in row.missed if m.window == WINDOWS[1]] == [(WINDOWS[1], why)]


# ---- refusals, break glass, DR restores, lock coverage: every exception with its control ------

REFUSED = "platform_core/daily/20261024T003000Z@eu-west-1"
LOCK_REASON = "the store refused to delete 3 versions ... the bucket's Object Lock holds them"


def refusal(at: datetime, **changes) -> RefusalRecord:
    fields = {
        "key": f"evidence/prune/platform/{TARGET}/{TIER}/{at:%Y%m%dT%H%M%SZ}-1-refused.json",
        "target": TARGET,
        "tier": TIER,
        "planned_at": at,
        "refused": (Deletion(REFUSED, LOCK_REASON),),
        "interrupted": None,
        **changes,
    }
    return RefusalRecord(**fields)


def test_the_reader_tells_refusals_from_plans_including_old_records() -> None:
    at = WINDOWS[0] + timedelta(minutes=20)
    executed = {
        "schema": "backup-dr/prune/v1",
        "target": TARGET,
        "tier": TIER,
        "planned_at": at.isoformat(),
        "dry_run": False,
        "circuit_breaker": None,
        "executed": True,
        "decisions": [{"subject": REFUSED, "action": "delete", "reason": "expired"}],
    }
    key = f"evidence/prune/platform/{TARGET}/{TIER}/20261101T005000Z-1"
    assert isinstance(prune_record(key + ".json", executed), PruneRecord)
    new = {
        "schema": "backup-dr/prune-refusals/v1",
        "target": TARGET,
        "tier": TIER,
        "plan": key + ".json",
        "planned_at": at.isoformat(),
        "executed": False,
        "interrupted": "LeaseLostError: taken over",
        "refused": [{"subject": REFUSED, "region": PRIMARY, "reason": LOCK_REASON}],
    }
    # Before refusals had their own shape: the plan again, with the refusals added.
    legacy = {**executed, "refused": [{"subject": REFUSED, "reason": LOCK_REASON}]}
    for doc in (new, legacy):
        found = prune_record(key + "-refused.json", doc)
        assert isinstance(found, RefusalRecord)
        assert found.refused == (Deletion(REFUSED, LOCK_REASON),)
    assert prune_record(key + "-refused.json", new).interrupted == "LeaseLostError: taken over"


def test_a_refused_deletion_is_listed_as_refused_never_as_deleted() -> None:
    at = WINDOWS[0] + timedelta(minutes=20)
    report = report_of([plan(at), refusal(at)])
    row = next(p for p in report.prune if (p.subject, p.tier) == (TARGET, TIER))
    assert row.deletions == () and [r.subject for r in row.refused] == [REFUSED]
    page = report.markdown()
    assert "### Refused deletions" in page
    assert f"| 2026-11-01 00:50 UTC | {REFUSED} | {LOCK_REASON} |" in page
    assert "| copies deleted by prune | 0 |" in page
    assert f"| A.8.10 | {TARGET}/{TIER}: deletion of {REFUSED} refused" in page


def test_break_glass_deletions_are_listed_with_reason_and_approver() -> None:
    glass = BreakGlassRecord(
        key="evidence/break-glass/20261102T120000Z-1.json",
        requested_at=datetime(2026, 11, 2, 12, tzinfo=UTC),
        backup="platform_core/daily/20261101T003000Z",
        region=PRIMARY,
        operator="sre-on-call",
        approved_by="ciso",
        reason="restore test data leaked into backups",
        outcome="deleted",
    )
    page = report_of([glass]).markdown()
    assert "## Break-glass deletions" in page
    assert (
        "| 2026-11-02 12:00 UTC | platform_core/daily/20261101T003000Z | eu-west-1 | "
        "sre-on-call | ciso | restore test data leaked into backups | deleted |"
    ) in page
    assert "| A.8.2, A.8.13 | platform_core/daily/20261101T003000Z@eu-west-1: deleted" in page


def test_dr_restores_and_their_runs_are_judged_against_the_rto_and_rpo() -> None:
    restored = drill(
        TARGET,
        TIER,
        kind="dr_restore",
        key=f"evidence/dr_restore/{TARGET}/20261102T050000Z-1",
        recorded_at=datetime(2026, 11, 2, 5, tzinfo=UTC),
        rpo_seconds=7 * 3600.0,
    )
    run = RestoreRunRecord(
        key="evidence/estate/dr_restore/20261102T040000Z-manual.json",
        began_at=datetime(2026, 11, 2, 4, tzinfo=UTC),
        wall_seconds=5 * 3600.0,
        rto_seconds=4 * 3600.0,
        within_rto=False,
        outcome="failed",
        problems=("the estate took 5h, over the RTO of 4h",),
        targets=(TARGET,),
    )
    report = report_of([restored, run])
    assert [r.drill for r in report.dr_restores] == [restored]
    assert report.drills[0].drill is None  # a DR restore is not a drill
    page = report.markdown()
    assert "## DR restores" in page
    assert "| 2026-11-02 04:00 UTC | platform_core | 5h | 4h: **OVER** | failed |" in page
    assert f"| A.5.29, A.5.30 | {TARGET}: DR restore of 2026-11-02 05:00 UTC: " in page
    assert "| A.5.29, A.5.30 | DR restore run of 2026-11-02 04:00 UTC failed: the estate" in page


def test_lock_coverage_flags_a_sampled_object_whose_lock_ends_before_its_need() -> None:
    need = WINDOWS[0] + timedelta(days=7)
    short = LockSample(
        f"platform/{TARGET}/{TIER}/x/data.pgdump", PRIMARY, need - timedelta(1), need
    )
    samples = [
        LockSample(f"platform/{TARGET}/{TIER}/x/manifest.json", PRIMARY, need, need),
        short,
        LockSample(f"platform/{TARGET}/{TIER}/x/data.pgdump", SECONDARY, None, need),
    ]
    report = report_of(samples)
    page = report.markdown()
    assert "## Lock coverage" in page
    assert f"| {PRIMARY} | 2 | 1 |" in page and f"| {SECONDARY} | 1 | 0 |" in page
    assert f"| A.8.13, A.5.33 | {short.key}@{PRIMARY}: locked until 2026-11-07 00:30 UTC" in page
    assert f"{short.key}@{SECONDARY}: not locked" in page


def test_every_exception_names_a_documented_control() -> None:
    at = WINDOWS[0] + timedelta(minutes=20)
    report = report_of([refusal(at, interrupted="StoreError: down"), check(WINDOWS[0], PRIMARY)])
    documented = {code for code, _ in CONTROLS}
    assert report.exceptions
    for finding in report.exceptions:
        assert set(finding.control.split(", ")) <= documented, finding


# ---- counted from when the target entered the policy ----------------------------------------


def _policy_since(tmp_path, since: str):
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    next(t for t in data["targets"] if t["name"] == TARGET)["since"] = since
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_policy(path)


def test_windows_are_counted_from_the_policy_since_date(tmp_path) -> None:
    policy = _policy_since(tmp_path, "2026-11-02")
    report = build_report(policy, [], START, END, NOW)
    row = tier_row(report)
    assert row.expected == tuple(WINDOWS[1:]) and row.since == date(2026, 11, 2)
    assert "| 2026-11-02 (policy) |" in report.markdown()


def test_windows_are_counted_from_the_first_evidence_by_default() -> None:
    first = [FirstSeen(TARGET, WINDOWS[2] + timedelta(minutes=5)), check(WINDOWS[2], PRIMARY)]
    report = build_report(POLICY, first, START, END, NOW)
    row = tier_row(report)
    assert row.expected == (WINDOWS[2],) and row.since == date(2026, 11, 3)
    assert "| 2026-11-03 (first evidence) |" in report.markdown()
    # Without any evidence, the whole period counts (no evidence is itself the finding).
    assert tier_row(build_report(POLICY, [], START, END, NOW)).expected == tuple(WINDOWS)


def test_a_failover_shows_its_measured_rto_and_rpo_against_the_objectives() -> None:
    event = FailoverRecord(
        server="platform_primary",
        key="evidence/failover/platform_primary/20261102T030000Z-run.json",
        recorded_at=datetime(2026, 11, 2, 3, tzinfo=UTC),
        planned=False,
        approved_by="oncall",
        approval_to_writable_seconds=90.0,
        loss_seconds=2.5,
        lost_heartbeats=3,
        timeline=2,
        old_primary="pg_platform: fenced",
        problems=(),
    )
    report = report_of([event])
    page = report.markdown()
    assert "| 1m30s (RTO 4h: within) | 2s, 3 heartbeat(s) (RPO 1s: **OVER**) |" in page
    (finding,) = [f for f in report.exceptions if "failover on" in f.text]
    assert finding.control == "A.5.29, A.5.30" and "loss over the RPO of 1s" in finding.text


# ---- where each tier's restore points come from --------------------------------------------

#: 2026-11-01 is a Sunday and the 1st: the weekly window at 01:00, the monthly at 02:00.
WEEKLY, MONTHLY = datetime(2026, 11, 1, 1, tzinfo=UTC), datetime(2026, 11, 1, 2, tzinfo=UTC)


def dump(tier: str, window: datetime, **changes) -> Manifest:
    """A backup that read the source itself, as `take_snapshot` writes its manifest."""
    backup = BackupId("platform", TARGET, tier, window)
    fields = {
        "backup": backup,
        "region": PRIMARY,
        "artifact": Artifact(backup.key("data.pgdump"), 1234, f"sha-{tier}-{window:%d%H%M}"),
        "engine": "pg_dump",
        "started_at": window + timedelta(seconds=5),
        "finished_at": window + timedelta(minutes=3),
        "source": {"database": TARGET},
        "tool_versions": {"pg_dump": "16"},
        "encryption": {"algorithm": "aws:kms", "kms_key_id": "k"},
        "run": {"run_id": f"scheduled__{window.isoformat()}"},
        **changes,
    }
    return Manifest(**fields)


def promoted(tier: str, window: datetime, source: Manifest) -> Manifest:
    derived = BackupId("platform", TARGET, tier, window)
    return promoted_manifest(
        source,
        derived,
        moved={source.artifact.key: derived.key("data.pgdump")},
        region=PRIMARY,
        encryption={"algorithm": "aws:kms", "kms_key_id": "k"},
        run={"run_id": f"scheduled__{window.isoformat()}"},
        promoted_at=window + timedelta(seconds=30),
        mode="server-side copy",
    )


def everywhere(manifest: Manifest, *, verified: bool = True) -> list[BackupRecord]:
    """The manifest's record in both regions (the secondary's copy keeps `derived_from`)."""
    return [backup_record(manifest, region, verified=verified) for region in (PRIMARY, SECONDARY)]


FELL_BACK = (
    "read the source: daily 20261101T003000Z failed its integrity check in eu-central-1 "
    "(never promoted: only verified)"
)


def test_the_audit_shows_which_backup_each_promoted_window_came_from() -> None:
    daily = dump("daily", WINDOWS[0])
    weekly = promoted("weekly", WEEKLY, daily)
    monthly = dump("monthly", MONTHLY, not_derived=FELL_BACK)
    records = [*everywhere(daily), *everywhere(weekly), *everywhere(monthly)]
    report = report_of(records)

    row = tier_row(report, tier="weekly")
    assert row.backed_up == (WEEKLY,)  # counted like any other backup
    assert row.origins == (Origin(WEEKLY, "promoted from daily 20261101T003000Z"),)
    assert tier_row(report, tier="monthly").origins == (Origin(MONTHLY, None, FELL_BACK),)
    assert tier_row(report).origins == (Origin(WINDOWS[0], None),)

    page = report.markdown()
    assert "| platform_core | weekly | `0 1 * * 0` | 1 | 1 | 1 promoted | 0 |" in page
    assert "| platform_core | monthly | `0 2 1 * *` | 1 | 1 | 1 own read | 0 |" in page
    assert "### Where promoted tiers' restore points came from" in page
    assert (
        "| platform_core | weekly | 2026-11-01 01:00 UTC | promoted from daily 20261101T003000Z |"
    ) in page
    assert f"| platform_core | monthly | 2026-11-01 02:00 UTC | {FELL_BACK} |" in page
    # A tier that reads the source by design is counted, not listed window by window.
    assert "| platform_core | daily | 2026-11-01 00:30 UTC | its own read" not in page


def test_a_promoted_window_whose_manifests_are_pruned_is_counted_as_pruned() -> None:
    """Checks kept from before they carried the origin do not say where the data came from."""
    weekly = promoted("weekly", WEEKLY, dump("daily", WINDOWS[0]))
    checks = [
        dataclasses.replace(check(WEEKLY, region), tier="weekly", sha256=weekly.artifact.sha256)
        for region in (PRIMARY, SECONDARY)
    ]
    report = report_of(checks)
    row = tier_row(report, tier="weekly")
    assert row.backed_up == (WEEKLY,) and row.origins == ()
    assert "| platform_core | weekly | `0 1 * * 0` | 1 | 1 | 1 pruned | 0 |" in report.markdown()


def test_a_pruned_promoted_window_keeps_its_origin_in_its_kept_checks() -> None:
    daily = dump("daily", WINDOWS[0])
    weekly = promoted("weekly", WEEKLY, daily)
    checks = [
        dataclasses.replace(
            check(WEEKLY, region),
            tier="weekly",
            sha256=weekly.artifact.sha256,
            promoted_from=f"promoted from daily {WINDOWS[0]:%Y%m%dT%H%M%SZ}",
            says_origin=True,
        )
        for region in (PRIMARY, SECONDARY)
    ]
    report = report_of(checks)
    row = tier_row(report, tier="weekly")
    assert row.backed_up == (WEEKLY,) and row.promoted == 1
    assert "| platform_core | weekly | `0 1 * * 0` | 1 | 1 | 1 promoted | 0 |" in report.markdown()


def test_a_promoted_backup_unverified_in_one_region_is_missed_like_any_other() -> None:
    weekly = promoted("weekly", WEEKLY, dump("daily", WINDOWS[0]))
    records = [
        backup_record(weekly, PRIMARY, verified=True),
        backup_record(weekly, SECONDARY, verified=False),
    ]
    row = tier_row(report_of(records), tier="weekly")
    assert row.backed_up == () and row.origins == ()
    assert [m.why for m in row.missed] == ["unverified in eu-central-1"]
