"""The restore evidence record and the one RTO projection (include/backup_dr/restore/record.py),
the backup ref a record names, and dr_restore's request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.catalogue import BackupId, backup_window
from include.backup_dr.dr.request import DrRequest
from include.backup_dr.policy import DEFAULT_POLICY_PATH, load_policy
from include.backup_dr.restore.errors import RestoreRefused, SwapFailed
from include.backup_dr.restore.record import (
    RestoreJob,
    describe_failure,
    failure_ref,
    measured_rate,
    measured_restore,
    plan_estate,
    projected_seconds,
    render_markdown,
    restore_rate,
    rto_projection,
    workers_needed,
)
from include.backup_dr.restore.select import Selection
from include.backup_dr.stores import backup_ref, from_ref

POLICY = load_policy(DEFAULT_POLICY_PATH)

jobs_strategy = st.lists(
    st.builds(
        RestoreJob,
        name=st.uuids().map(str),
        priority=st.integers(1, 5),
        pool=st.sampled_from(["sandbox", "platform", "media"]),
        seconds=st.floats(1, 10_000),
    ),
    max_size=30,
)


@given(jobs_strategy, st.integers(1, 6), st.integers(1, 6))
def test_estate_plan_respects_pools_concurrency_and_priority(jobs, concurrency, width) -> None:
    plan = plan_estate(jobs, {"sandbox": width, "platform": width}, concurrency)
    assert sorted(s.job.name for s in plan.scheduled) == sorted(j.name for j in jobs)
    moments = sorted({s.start for s in plan.scheduled})
    for at in moments:
        running = [s for s in plan.scheduled if s.start <= at < s.end]
        assert len(running) <= concurrency
        for pool, slots in (("sandbox", width), ("platform", width), ("media", 1)):
            assert sum(1 for s in running if s.job.pool == pool) <= slots
    # Never slower than one after another, never faster than the longest job or a full house.
    serial = sum(j.seconds for j in jobs)
    assert plan.wall_seconds <= serial + 1e-6
    assert plan.wall_seconds >= max((j.seconds for j in jobs), default=0.0) - 1e-6
    assert plan.wall_seconds >= serial / concurrency - 1e-6
    # Within a pool, a higher priority never starts after a lower one.
    for first in plan.scheduled:
        for second in plan.scheduled:
            if first.job.pool == second.job.pool and first.job.priority < second.job.priority:
                assert first.start <= second.start


def test_serial_plan_is_the_sum_and_a_wide_one_the_longest() -> None:
    jobs = [RestoreJob(f"db{i}", i, "sandbox", 100.0 * i) for i in range(1, 5)]
    assert plan_estate(jobs, {"sandbox": 1}, 4).wall_seconds == 1000.0
    assert plan_estate(jobs, {"sandbox": 4}, 4).wall_seconds == 400.0
    # Concurrency 2: db1+db2 start; db3 at 100, db4 at 200 -> ends 600.
    assert plan_estate(jobs, {"sandbox": 4}, 2).wall_seconds == 600.0


def test_workers_needed_for_200_databases_of_100_gb() -> None:
    rate = 50e6  # bytes a second per restore
    jobs = [RestoreJob(f"db{i}", 1, "dest", projected_seconds(100e9, rate)) for i in range(200)]
    width = workers_needed(jobs, timedelta(hours=4))
    assert width is not None
    assert plan_estate(jobs, {"dest": width}, width).wall_seconds <= 4 * 3600
    assert plan_estate(jobs, {"dest": width - 1}, width - 1).wall_seconds > 4 * 3600
    slow = [RestoreJob("huge", 1, "dest", 5 * 3600.0)]
    assert workers_needed(slow, timedelta(hours=4)) is None  # no width helps one 5 h restore


def test_measured_restore_uses_the_unit_the_store_sizes_in() -> None:
    dump = {
        "backup": {"tier": "daily"},
        "steps": {"archive_bytes": 100, "restored_bytes": 900, "timings": {"a": 1.5, "b": 0.5}},
    }
    assert measured_restore(dump, media=False) == (100, 2.0)
    assert measured_restore(dump, media=True) == (900, 2.0)
    cluster = {**dump, "backup": {"tier": "continuous"}}
    assert measured_restore(cluster, media=False) == (900, 2.0)
    assert measured_restore({"steps": None}, media=False) == (None, None)
    assert projected_seconds(100, None) == float("inf")


def test_dr_request_parses_once_and_refuses_in_words() -> None:
    request = DrRequest.from_params(
        POLICY, {"targets": ["platform_billing", "platform_core"], "connection": None}
    )
    assert request.targets == ("platform_core", "platform_billing")  # priority order
    assert request.connection == POLICY.recovery().destinations[0].conn_id
    assert DrRequest.from_document(request.to_document()) == request
    for params, words in (
        ({"targets": []}, "at least one target"),
        ({"targets": ["nope"]}, "not a target"),
        ({"targets": ["uat_core"]}, "not a production target"),
        ({"targets": ["platform_core"], "connection": "pg_elsewhere"}, "not a restore destination"),
        (
            {"targets": ["platform_core", "platform_billing"], "backup": "2026-01-01T00:00:00"},
            "one target only",
        ),
        ({"targets": ["media_documents"], "target_time": "latest"}, "databases only"),
        ({"targets": ["media_documents"]}, "needs the param 'bucket'"),
    ):
        with pytest.raises(RestoreRefused, match=words):
            DrRequest.from_params(POLICY, params)


rates = st.floats(0, 1e10, allow_nan=False)
sizes = st.integers(0, 10**14)


@given(sizes, sizes, st.floats(1e-3, 1e10))
def test_a_projection_never_shrinks_as_the_data_grows(small, large, rate) -> None:
    small, large = sorted((small, large))
    assert projected_seconds(small, rate) <= projected_seconds(large, rate)


@given(rates, sizes, st.integers(1, 10**7))
def test_within_the_rto_exactly_when_the_projection_fits(rate, size, rto_seconds) -> None:
    rto = timedelta(seconds=rto_seconds)
    document = rto_projection(rate, "platform_core", size, "newest backups in eu", rto)
    projected = projected_seconds(size, rate)
    assert document["within_rto"] is (projected <= rto_seconds)
    assert document["rto_seconds"] == rto_seconds
    assert document["largest_production_bytes"] == size
    if rate == 0:  # nothing measured: never within, whatever the size
        assert document["within_rto"] is False
        assert document["projected_restore_seconds"] == float("inf")


def test_the_rate_is_the_bytes_over_the_seconds_a_record_measured() -> None:
    dump = {
        "backup": {"tier": "daily"},
        "steps": {"archive_bytes": 100, "restored_bytes": 900, "timings": {"a": 1.5, "b": 0.5}},
    }
    assert measured_rate(dump, media=False) == 50.0
    assert measured_rate(dump, media=True) == 450.0
    assert measured_rate({"steps": None}, media=False) is None
    assert restore_rate(100, 0) is None
    assert restore_rate(0, 2.0) is None


#: A backup's window is to the second, as its keys name it (catalogue.backup_window).
windows = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(backup_window)
names = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=20)


@given(
    st.builds(BackupId, names, names, st.sampled_from(["daily", "weekly", "continuous"]), windows)
)
def test_a_backup_ref_reads_back_as_the_same_backup(backup) -> None:
    ref = backup_ref(backup)
    assert from_ref(ref) == backup
    selection = Selection(backup, "eu-west", "newest verified")
    assert selection.to_ref() == {**ref, "region": "eu-west", "reason": "newest verified"}
    assert Selection.from_ref({**selection.to_ref(), "sandbox": "drill_x"}) == selection


def _record(outcome: str, problems: list[str]) -> dict:
    target = POLICY.target("platform_core")
    ref = failure_ref(target, "daily", "eu-west", "2026-12-01T00:00:00+00:00", "sandbox_db")
    return {
        "target": target.name,
        "backup": {k: ref[k] for k in ("category", "target", "tier", "window", "region")},
        "selection_reason": ref["reason"],
        "restored_into": ref["destination"],
        "recorded_at": "2026-12-06T12:00:00+00:00",
        "run": {"run_id": "manual__1"},
        "steps": {"timings": {"download + SHA-256 check": 1.5, "pg_restore": 3.0}},
        "projection": rto_projection(
            2e6, target.name, 10**9, "newest backup manifests in eu-west", timedelta(hours=4)
        ),
        "validation": {"seconds": 2.0, "results": []},
        "outcome": outcome,
        "problems": problems,
    }


def test_the_restore_record_reads_as_a_page_an_auditor_can_follow() -> None:
    page = render_markdown(_record("passed", []))
    assert page.startswith("# Restore test of platform_core: PASSED")
    assert "| pg_restore | 3.0 |" in page
    assert "Projected (dr_restore: measured) restore: 500.0 s against an RTO of 14400.0 s" in page
    assert "no backup could be restored" in page  # why this backup: none was chosen
    failed = render_markdown(_record("failed", ["RestoreFailed: boom"]))
    assert failed.rstrip().endswith("FAILED: RestoreFailed: boom")


def test_a_failure_says_whether_the_destination_was_touched() -> None:
    assert describe_failure(RestoreRefused("no backup")) == (
        "RestoreRefused: no backup; the destination was not touched"
    )
    swap = SwapFailed("core is renamed aside as core_old")
    assert describe_failure(swap) == "SwapFailed: core is renamed aside as core_old"
