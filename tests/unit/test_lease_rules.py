"""The lease rules: when a lease is free (by the waiter's own clock only), how a renewal moves
it, when its holder stops, how long a waiter sleeps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.lease import (
    RENEWALS_PER_TTL,
    Holder,
    Lease,
    Sighting,
    configured_ttl,
    held_until,
    is_free,
    lease_key,
    poll_delay,
    renewed,
    sighted,
    takeover_wait,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
TTL = timedelta(minutes=1)


def holder(run: str = "scheduled__1", task: str = "g.snapshot", index: int = 0, tries: int = 1):
    return Holder("platform_backup_daily", run, task, index, tries, "worker-1", 4242)


def lease(by: Holder, taken: datetime = NOW, hold_for: timedelta = HOUR, released=None) -> Lease:
    return Lease("platform/core/daily", by, "t0k3n", taken, taken + hold_for, released, TTL)


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
#: Readings of the waiter's monotonic clock, in seconds.
ticks = st.floats(min_value=0, max_value=1e6, allow_nan=False)


def test_table_of_when_a_lease_is_free() -> None:
    live = lease(holder("scheduled__1"))
    seen = Sighting("etag-1", 100.0)
    assert is_free(None, None, 100.0, TTL), "never taken"
    assert not is_free(live, seen, 100.0, TTL), "another run's lease, just read"
    assert not is_free(live, seen, 159.9, TTL), "its ETag stood still for less than a TTL"
    assert is_free(live, seen, 160.0, TTL), "not renewed for a TTL: its holder stopped"
    assert is_free(lease(holder(), released=NOW), seen, 100.0, TTL), "released"
    # A retry of the same task instance gets no pass: the try before may still be running
    # (a zombie to the scheduler, alive to the store) and renewing its lease.
    assert not is_free(lease(holder(tries=1)), seen, 130.0, TTL)


def test_the_holders_clock_is_never_compared_with_the_waiters() -> None:
    """A holder whose clock is two minutes behind writes an expiry already past by the
    waiter's clock (`hold_for` of -120 s); a holder an hour ahead, one far in the future.
    Neither decides: only how long the ETag stood still does."""
    behind = lease(holder(), taken=NOW - timedelta(minutes=3), hold_for=TTL)
    ahead = lease(holder(), taken=NOW + HOUR, hold_for=TTL)
    seen = Sighting("etag-1", 0.0)
    for stamped in (behind, ahead):
        assert not is_free(stamped, seen, 1.0, TTL)
        assert is_free(stamped, seen, 60.0, TTL)


def test_a_renewal_restarts_the_waiters_count() -> None:
    first = sighted(None, "etag-1", 10.0)
    assert sighted(first, "etag-1", 50.0) == first, "the same ETag: the count goes on"
    again = sighted(first, "etag-2", 50.0)
    assert again == Sighting("etag-2", 50.0), "renewed: counted from this read"
    assert not is_free(lease(holder()), again, 75.0, TTL)


def test_a_waiter_waits_the_longer_of_the_two_ttls() -> None:
    short = lease(holder())
    assert takeover_wait(short, timedelta(seconds=5)) == TTL
    assert takeover_wait(short, timedelta(minutes=5)) == timedelta(minutes=5)


@given(leases, st.text(min_size=1, max_size=8), ticks, ticks, st.integers(1, 3600))
def test_the_holder_stops_before_any_waiter_may_take_over(
    current: Lease, etag: str, sent: float, delay: float, ttl_seconds: int
) -> None:
    """The holder sent its last renewal at `sent`; a waiter can first read that ETag no sooner
    (`sent + delay`). By its deadline the holder stops, and the waiter is not yet free to go."""
    ttl = timedelta(seconds=ttl_seconds)
    current = Lease(
        current.subject, current.holder, current.token, NOW, NOW + ttl, ttl=ttl
    )  # unreleased
    seen = sighted(None, etag, sent + delay)
    deadline = held_until(sent, ttl)
    assert deadline < sent + ttl_seconds
    assert not is_free(current, seen, deadline, ttl)
    assert deadline - sent >= ttl_seconds * (1 - 1 / RENEWALS_PER_TTL) - 1e-6


@given(leases, instants, spans)
def test_a_renewal_keeps_the_tenure_and_never_shortens_it(
    current: Lease, now: datetime, ttl: timedelta
) -> None:
    fresh = renewed(current, now, ttl)
    assert (fresh.subject, fresh.holder, fresh.token, fresh.acquired_at, fresh.ttl) == (
        current.subject,
        current.holder,
        current.token,
        current.acquired_at,
        current.ttl,
    )
    assert fresh.expires_at >= current.expires_at
    assert fresh.expires_at >= now + ttl


@given(leases)
def test_the_document_round_trips(current: Lease) -> None:
    assert Lease.from_document(current.to_document()) == current


def test_the_ttl_comes_from_the_environment() -> None:
    assert configured_ttl({}) == TTL
    assert configured_ttl({"BACKUP_LEASE_TTL_SECONDS": "2.5"}) == timedelta(seconds=2.5)
    with pytest.raises(ValueError, match="positive"):
        configured_ttl({"BACKUP_LEASE_TTL_SECONDS": "0"})


@given(st.integers(0, 10_000), st.integers(0, 2**32))
def test_poll_delays_are_positive_jittered_and_capped(attempt: int, seed: int) -> None:
    delay = poll_delay(attempt, random.Random(seed), 1.0, 30.0)
    ceiling = 30.0 if attempt >= 5 else min(30.0, 2.0**attempt)
    assert ceiling / 2 <= delay <= ceiling


def test_the_key_names_the_subject() -> None:
    assert (
        lease_key("media/media_documents/replicate") == "locks/media/media_documents/replicate.json"
    )
