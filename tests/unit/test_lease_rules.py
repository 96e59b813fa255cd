"""The lease rules: when a lease is free, how a renewal moves it, how long a waiter sleeps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.lease import Holder, Lease, is_free, lease_key, poll_delay, renewed

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def holder(run: str = "scheduled__1", task: str = "g.snapshot", index: int = 0, tries: int = 1):
    return Holder("platform_backup_daily", run, task, index, tries, "worker-1", 4242)


def lease(by: Holder, taken: datetime = NOW, hold_for: timedelta = HOUR, released=None) -> Lease:
    return Lease("platform/core/daily", by, "t0k3n", taken, taken + hold_for, released)


holders = st.builds(
    Holder,
    dag_id=st.sampled_from(["platform_backup_daily", "media_replicate"]),
    run_id=st.sampled_from(["scheduled__1", "backfill__1", "backfill__2"]),
    task_id=st.sampled_from(["g.snapshot", "g.prune", "replica.replicate"]),
    map_index=st.integers(-1, 2),
    try_number=st.integers(1, 4),
    hostname=st.sampled_from(["worker-1", "worker-2"]),
    pid=st.integers(1, 99999),
)
instants = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)
spans = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(hours=4))
leases = st.builds(
    lease,
    by=holders,
    taken=instants,
    hold_for=spans,
    released=st.none() | instants,
)


def test_table_of_when_a_lease_is_free() -> None:
    live = lease(holder("scheduled__1"))
    assert is_free(None, NOW), "never taken"
    assert not is_free(live, NOW + HOUR / 2), "another run's live lease"
    assert is_free(live, NOW + HOUR), "expired: its holder stopped renewing it"
    assert is_free(lease(holder(), released=NOW), NOW), "released"
    # A retry of the same task instance gets no pass: the try before may still be running
    # (a zombie to the scheduler, alive to the store) and renewing its lease.
    assert not is_free(lease(holder(tries=1)), NOW + HOUR / 2)


@given(leases, instants, spans)
def test_once_free_a_lease_stays_free(current: Lease, now: datetime, later: timedelta) -> None:
    if is_free(current, now):
        assert is_free(current, now + later)


@given(leases, instants, spans)
def test_a_renewal_keeps_the_tenure_and_never_shortens_it(
    current: Lease, now: datetime, ttl: timedelta
) -> None:
    fresh = renewed(current, now, ttl)
    assert (fresh.subject, fresh.holder, fresh.token, fresh.acquired_at) == (
        current.subject,
        current.holder,
        current.token,
        current.acquired_at,
    )
    assert fresh.expires_at >= current.expires_at
    assert fresh.expires_at >= now + ttl


@given(leases, instants)
def test_a_lease_is_live_until_it_expires_unless_released(current: Lease, now: datetime) -> None:
    live = current.released_at is None and now < current.expires_at
    assert is_free(current, now) is not live


@given(leases)
def test_the_document_round_trips(current: Lease) -> None:
    assert Lease.from_document(current.to_document()) == current


@given(st.integers(0, 10_000), st.integers(0, 2**32))
def test_poll_delays_are_positive_jittered_and_capped(attempt: int, seed: int) -> None:
    delay = poll_delay(attempt, random.Random(seed), 1.0, 30.0)
    ceiling = 30.0 if attempt >= 5 else min(30.0, 2.0**attempt)
    assert ceiling / 2 <= delay <= ceiling


def test_the_key_names_the_subject() -> None:
    assert (
        lease_key("media/media_documents/replicate") == "locks/media/media_documents/replicate.json"
    )
