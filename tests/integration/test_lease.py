"""Leases against the real S3 server: one holder at a time, expiry, retries, release."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from include.backup_dr.backup.gc import collect_garbage
from include.backup_dr.engines.wal import LOCK_LEASE_TTL, LOCKED_NAME, lock_archive
from include.backup_dr.immutability import LockRule
from include.backup_dr.lease import (
    Holder,
    Lease,
    LeaseBusyError,
    LeaseLostError,
    critical_section,
    lease_key,
    new_lease,
    witnessed,
)
from include.backup_dr.policy import load_policy
from include.backup_dr.store import ObjectStore
from include.backup_dr.wal_segments import archive_prefix

pytestmark = pytest.mark.integration
SUBJECT = "platform/platform_core/daily"
HOUR = timedelta(hours=1)
TTL_SECONDS = 1.5
#: A lease that lives 1.5 s unrenewed, and waiters that look again within 50 ms.
SHORT = {"ttl": timedelta(seconds=TTL_SECONDS), "max_wait": timedelta(0), "poll": (0.01, 0.05)}


def holder(run: str, tries: int = 1) -> Holder:
    return Holder("platform_backup_daily", run, "platform_primary.snapshot", 0, tries, "w1", 7)


def stored(store: ObjectStore) -> Lease:
    return Lease.from_document(store.get_json(lease_key(SUBJECT)))


def enter(
    store: ObjectStore,
    who: Holder,
    max_wait: timedelta = timedelta(minutes=2),
    ttl: timedelta = SHORT["ttl"],
):
    """The critical section as a step takes it (the short lease unless `ttl` says); waiters
    look again within 50 ms here."""
    return critical_section(store, SUBJECT, who, max_wait=max_wait, ttl=ttl, poll=SHORT["poll"])


def test_concurrent_acquirers_never_hold_it_together(stores) -> None:
    """Eight workers, each with its own S3 client, enter the same critical section 4 times."""
    inside: list[str] = []
    overlaps: list[list[str]] = []
    entered: list[str] = []
    guard = threading.Lock()
    start = threading.Barrier(8)

    def worker(number: int) -> None:
        store = ObjectStore.for_region(stores.primary.region)
        start.wait()
        for turn in range(4):
            me = holder(f"run_{number}_{turn}")
            with enter(store, me, ttl=timedelta(minutes=1)):  # 8 busy threads renew slowly
                with guard:
                    inside.append(me.run_id)
                    entered.append(me.run_id)
                    if len(inside) > 1:
                        overlaps.append(list(inside))
                threading.Event().wait(0.02)  # stay inside a little, as a real step does
                with guard:
                    inside.remove(me.run_id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    assert len(entered) == 32
    assert stored(stores.primary).released_at is not None
    versions = stores.primary.client.list_object_versions(
        Bucket=stores.primary.bucket, Prefix=lease_key(SUBJECT)
    )
    assert len(versions["Versions"]) == 1  # one object, not a version per tenure


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(stores, caplog) -> None:
    dead = new_lease(SUBJECT, holder("scheduled__dead"), datetime.now(UTC) - 2 * HOUR, SHORT["ttl"])
    stores.primary.put_json(lease_key(SUBJECT), dead.to_document())
    caplog.set_level(logging.INFO, logger="include.backup_dr.lease")
    me = holder("backfill__1")
    with enter(stores.primary, me, max_wait=timedelta(seconds=20)) as tenure:
        assert stored(stores.primary) == tenure.lease
        assert tenure.lease.holder == me
        # Live now: another run, even a retry of this task instance, waits its bound, then
        # gives up naming the holder.
        busy = (
            r"held by platform_backup_daily / backfill__1 / platform_primary\.snapshot\[0\] try 1"
        )
        for other in (holder("scheduled__2"), holder("backfill__1", tries=2)):
            with (
                pytest.raises(LeaseBusyError, match=busy),
                enter(stores.primary, other, max_wait=timedelta(seconds=0.2)),
            ):
                pytest.fail(f"{other} entered a critical section held by another task")
        assert stored(stores.primary).token == tenure.lease.token
    messages = caplog.text
    assert "Took over the lease" in messages and "scheduled__dead" in messages
    assert "Waiting for the lease on platform/platform_core/daily" in messages
    assert stored(stores.primary).released_at is not None


def test_a_live_holder_renews_its_lease_past_its_ttl(stores) -> None:
    """The heartbeat keeps a long step's lease alive, however short the lease is."""
    with critical_section(stores.primary, SUBJECT, holder("scheduled__long"), **SHORT) as tenure:
        first_expiry = tenure.lease.expires_at
        threading.Event().wait(3 * TTL_SECONDS)  # three lease lifetimes of real work
        with (
            pytest.raises(LeaseBusyError, match="scheduled__long"),
            enter(stores.primary, holder("backfill__1"), max_wait=timedelta(0)),
        ):
            pytest.fail("took the lease of a holder that is alive and renewing it")
        tenure.ensure_held()
        assert stored(stores.primary).expires_at > first_expiry + 2 * timedelta(seconds=TTL_SECONDS)


def test_a_live_holder_whose_clock_is_behind_keeps_its_lease(stores) -> None:
    """The holder's clock is two minutes behind the waiter's, so every expiry it writes is
    already past by the waiter's clock. It renews all the same: the waiter must not take over."""

    def behind() -> datetime:
        return datetime.now(UTC) - timedelta(seconds=120)

    slow = holder("scheduled__slow_clock")
    with critical_section(stores.primary, SUBJECT, slow, clock=behind, **SHORT) as tenure:
        with (
            pytest.raises(LeaseBusyError, match="scheduled__slow_clock"),
            enter(stores.primary, holder("backfill__1"), max_wait=timedelta(seconds=4)),
        ):
            pytest.fail("took over a live, renewing lease because the holder's clock is behind")
        tenure.ensure_held()
        assert stored(stores.primary).holder == slow


def test_a_holder_that_stops_renewing_is_taken_over_after_one_ttl_unchanged(stores, caplog) -> None:
    """Its clock an hour ahead, a holder wrote an expiry far in the future, then stopped
    renewing: it died, or its region went away so that it could neither renew nor release.
    The waiter trusts no expiry: once the lease's ETag has stood still for one TTL by the
    waiter's own clock, it takes over (not after the step's timeout)."""
    caplog.set_level(logging.INFO, logger="include.backup_dr.lease")
    stopped = holder("scheduled__stopped")
    ahead = new_lease(SUBJECT, stopped, datetime.now(UTC) + HOUR, SHORT["ttl"])
    stores.primary.put_json(lease_key(SUBJECT), ahead.to_document())
    started = time.monotonic()
    with enter(stores.primary, holder("scheduled__next"), max_wait=timedelta(seconds=20)) as t:
        waited = time.monotonic() - started
        assert stored(stores.primary).token == t.lease.token
    assert waited >= TTL_SECONDS, "took over before the lease stood still for one TTL"
    assert "Took over the lease" in caplog.text and "scheduled__stopped" in caplog.text


def test_a_holder_that_lost_its_lease_stops_before_deleting_and_fails(stores, caplog) -> None:
    """Taken over behind its back (its renewals could not reach the store in time): the holder
    learns at its next renewal, refuses to go on, and its step fails to be retried."""
    caplog.set_level(logging.INFO, logger="include.backup_dr.lease")
    section = critical_section(stores.primary, SUBJECT, holder("scheduled__a"), **SHORT)
    with pytest.raises(LeaseLostError, match="another task took it over"), section as tenure:
        usurper = new_lease(SUBJECT, holder("backfill__b"), datetime.now(UTC), HOUR)
        stores.primary.put_json(lease_key(SUBJECT), usurper.to_document())
        tenure.renew()
        with pytest.raises(LeaseLostError):
            tenure.ensure_held()  # what prune calls before each deletion
    assert stored(stores.primary).holder.run_id == "backfill__b", "the new holder's lease stays"
    assert "the lease was lost: another task took it over" in caplog.text


def test_every_write_and_delete_checks_the_tenure_first(stores) -> None:
    """Once the lease is lost, no write or delete of this process reaches either region,
    whichever store makes it: snapshot, copy, evidence, lock extension and prune alike stop
    before touching anything, without calling `ensure_held` themselves."""
    kept = "platform/platform_core/daily/kept.bin"
    stores.secondary.put_bytes(kept, b"committed before", "application/octet-stream")
    section = critical_section(stores.primary, SUBJECT, holder("scheduled__a"), **SHORT)
    with pytest.raises(LeaseLostError), section as tenure:
        stores.primary.put_json("evidence/written-while-held.json", {"ok": True})
        usurper = new_lease(SUBJECT, holder("backfill__b"), datetime.now(UTC), HOUR)
        stores.primary.put_json(lease_key(SUBJECT), usurper.to_document())
        tenure.renew()  # learns it lost the lease
        writes = {
            "put": lambda: stores.primary.put_json("evidence/after-loss.json", {}),
            "copy": lambda: stores.primary.copy_from(stores.secondary, kept, 16),
            "delete": lambda: stores.secondary.delete_all_versions(kept),
            "write from a worker thread": lambda: _in_a_thread(
                lambda: stores.secondary.put_json("evidence/from-a-thread.json", {})
            ),
        }
        for name, write in writes.items():
            with pytest.raises(LeaseLostError, match="lost the lease"):
                write()
                pytest.fail(f"{name} went ahead after the lease was lost")
    assert stores.primary.head("evidence/written-while-held.json") is not None
    assert stores.primary.head("evidence/after-loss.json") is None
    assert stores.primary.head(kept) is None, "copied after the lease was lost"
    assert stores.secondary.head(kept) is not None, "deleted after the lease was lost"
    assert stores.secondary.head("evidence/from-a-thread.json") is None


def _in_a_thread(call: Callable[[], object]) -> None:
    """Run `call` in a worker thread (as media copies and multipart parts run); re-raise."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(call).result()


def _went_ahead_while_held(
    store: ObjectStore, subject: str, step: Callable[[], object], caplog, done: Callable[[], bool]
) -> bool:
    """Run `step` in a thread while another task holds `subject` (in `store`); True if it did
    its work (`done`) before the holder left. Then the holder leaves and the step finishes."""
    caplog.set_level(logging.INFO, logger="include.backup_dr.lease")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except BaseException as exc:  # the test's to report
            errors.append(exc)

    other = Holder("platform_backup_continuous", "scheduled__x", "snapshot", 0, 1, "w2", 8)
    worker = threading.Thread(target=run)
    with critical_section(store, subject, other, max_wait=timedelta(0), poll=SHORT["poll"]):
        worker.start()
        deadline = time.monotonic() + 60
        while f"Waiting for the lease on {subject}:" not in caplog.text and worker.is_alive():
            assert time.monotonic() < deadline, "the step neither waited nor finished"
            time.sleep(0.05)
        went_ahead = done()
    worker.join(timeout=120)
    assert not worker.is_alive() and errors == [], errors
    assert done(), "the step did not do its work once the lease was free"
    return went_ahead


def test_garbage_collection_takes_the_lease_of_the_tier_it_sweeps(stores, caplog) -> None:
    """WAL goes by the continuous tier's base backups: while a step of that tier holds it (a
    base backup being copied or checked), garbage collection waits and deletes nothing."""
    policy = load_policy()
    (server, *_) = policy.continuous_servers()
    subject = f"platform/{server.name}/continuous"

    def recorded() -> bool:
        return any(True for _ in stores.primary.list_objects("evidence/gc/platform/"))

    step = partial(collect_garbage, policy, stores, "platform")
    assert not _went_ahead_while_held(stores.primary, subject, step, caplog, recorded)


def test_lock_wal_takes_the_lease_of_the_servers_wal(stores, caplog) -> None:
    """Two runs of `lock_wal` (a manual run beside the minute's one, another deployment) never
    work through one region's WAL of a server at once."""
    policy = load_policy()
    (server, *_) = policy.continuous_servers()
    week = timedelta(days=7)
    rule = LockRule("GOVERNANCE", timedelta(days=1), week, {("platform", "continuous"): week})
    store = ObjectStore(stores.primary.region, stores.primary.client, None, rule)
    store.put_bytes(archive_prefix(server.name) + "000000010000000000000001", b"w", "x/y")
    marker = f"wal/{server.name}/{LOCKED_NAME}"
    # A month ahead: every file is past its retention, so only the progress marker is written.
    later = datetime.now(UTC) + 30 * 24 * HOUR
    step = partial(lock_archive, store, server.name, "platform", now=later)
    subject = f"platform/{server.name}/wal"
    went_ahead = _went_ahead_while_held(
        store, subject, step, caplog, lambda: bool(store.head(marker))
    )
    assert not went_ahead


def test_the_witness_sees_two_holders_inside_at_once(stores, monkeypatch) -> None:
    """The control for the fault suite's witness (BACKUP_LEASE_WITNESS): alone, a tenure leaves
    one entry and no overlap; a second holder let in beside it (its lease forged, as a broken
    lease would) is caught by the markers in the store."""
    monkeypatch.setenv("BACKUP_LEASE_WITNESS", "witness")
    primary = stores.primary

    def keys(prefix: str) -> list[str]:
        return [o.key for o in primary.list_objects(prefix)]

    with enter(primary, holder("scheduled__alone")):
        assert len(keys(f"witness/inside/{SUBJECT}/")) == 1
    assert (keys("witness/overlaps/"), keys("witness/inside/")) == ([], [])
    with enter(primary, holder("scheduled__a")):
        forged = new_lease(SUBJECT, holder("backfill__b"), datetime.now(UTC), HOUR)
        with witnessed(primary, forged):
            pass
    [overlap] = keys("witness/overlaps/")
    assert primary.get_json(overlap)["holder"].startswith("platform_backup_daily / backfill__b")
    assert len(keys(f"witness/entries/{SUBJECT}/")) == 3


def test_lock_wal_takes_over_the_lease_of_a_run_that_died(stores) -> None:
    """`lock_wal` may wait only seconds (a 50 s task every minute), and a waiter must watch a
    lease stand still for its TTL: so its lease's TTL is shorter than its wait, or a run killed
    while holding it would stop every later run from locking the server's WAL."""
    policy = load_policy()
    (server, *_) = policy.continuous_servers()
    week = timedelta(days=7)
    rule = LockRule("GOVERNANCE", timedelta(days=1), week, {("platform", "continuous"): week})
    store = ObjectStore(stores.primary.region, stores.primary.client, None, rule)
    killed = Holder("platform_continuous_monitor", "scheduled__1", "lock_wal", -1, 1, "w1", 9)
    subject = f"platform/{server.name}/wal"
    dead = new_lease(subject, killed, datetime.now(UTC), LOCK_LEASE_TTL)
    store.put_json(lease_key(subject), dead.to_document())
    lock_archive(store, server.name, "platform")
    assert Lease.from_document(store.get_json(lease_key(subject))).released_at is not None
