"""The one RTO projection (include/backup_dr/restore/record.py) and dr_restore's request."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.dr.request import DrRequest
from include.backup_dr.policy import DEFAULT_POLICY_PATH, load_policy
from include.backup_dr.restore.errors import RestoreRefused
from include.backup_dr.restore.record import (
    RestoreJob,
    measured_restore,
    plan_estate,
    projected_seconds,
    workers_needed,
)

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
