"""Leases in the object store: a critical section per subject that holds whatever runs the tasks.

Why: Airflow 3 runs a backfill under its own `max_active_runs`, beside the DAG's scheduled runs,
so two runs of one DAG can work on the same target and tier at once (a prune while another run
re-takes a window; two replication runs copying the same blobs). A lease object in the store
serialises them across runs, backfills, executors and deployments, with no pool to create.

How: `locks/<subject>.json` says who holds the subject. Taking it is one conditional PUT:
`If-None-Match: *` where no lease was ever written, else `If-Match: <the ETag just read>` to
replace a free lease. S3 applies a conditional PUT atomically: of concurrent writers exactly one
succeeds and the others get 412 (or 409 from AWS under contention), read again and wait.
Releasing is a conditional PUT too (`If-Match` the ETag we wrote), marking the lease released,
so a holder never frees a lease that is no longer its own.

No clock is compared with another machine's: a holder renews its lease every `ttl / 6` (a
heartbeat thread), and every renewal gives the lease object a new ETag. A waiter takes over an
unreleased lease only once its ETag has stood still for a full `ttl` (the larger of the
holder's, recorded in the lease, and its own), timed on the waiter's monotonic clock from the
first read that showed that ETag. The holder, on its own monotonic clock, counts its tenure as
lost once `ttl` minus one renewal interval has passed since it sent its last successful
renewal: that renewal reached the store before the waiter could read it, so the holder stops
before any waiter may take over. `expires_at` in the lease is for humans only.

`ttl` is a minute by default; `BACKUP_LEASE_TTL_SECONDS` sets it (every process that runs
tasks must agree only on an upper bound: waiters wait the larger of the two). A holder that dies
frees the subject one `ttl` after its last renewal, not after the step's timeout.

Tenure is checked before every write: while a section runs, every S3 write or delete of the
process (any store, any thread) first calls `Tenure.ensure_held()` (`store.guarded`), which
raises `LeaseLostError` once the lease is lost (renewals failed for too long, or another task
took it over), so the step stops before touching anything and is retried. Leaving the section
raises it too.

A waiter logs who holds the subject and since when, polls with jitter, and after `max_wait`
raises `LeaseBusyError` (retried by Airflow) naming the holder.

`BACKUP_LEASE_WITNESS=<prefix>` (the fault suite sets it) makes each tenure leave markers beside
the lease, as evidence that does not rest on the lease's own bookkeeping: `<prefix>/entries/`
gets one object per tenure, `<prefix>/inside/<subject>/<token>` exists while it is inside, and
an entrant that finds another's marker there writes `<prefix>/overlaps/<token>.json`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr.store import ObjectStore, StoreError, guarded, unguarded

log = logging.getLogger(__name__)

LEASE_SCHEMA = "backup-dr/lease/v1"
LOCK_DIR = "locks"
#: How long a lease lives without a renewal, unless `TTL_ENV` says otherwise.
TTL = timedelta(minutes=1)
TTL_ENV = "BACKUP_LEASE_TTL_SECONDS"
WITNESS_ENV = "BACKUP_LEASE_WITNESS"
#: Renewals per `ttl`: four may fail in a row (a store blip) before the holder stops.
RENEWALS_PER_TTL = 6
#: First and longest pause between two looks at a busy lease, in seconds.
POLL_FIRST = 1.0
POLL_CAP = 15.0


class LeaseBusyError(RuntimeError):
    """Another task held the subject for longer than this one may wait. Retryable."""


class LeaseLostError(RuntimeError):
    """This task no longer holds its lease (not renewed in time, or taken over). Retryable."""


@dataclass(frozen=True)
class Holder:
    """The task instance (and the process running it) that holds or wants a lease."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    hostname: str
    pid: int

    @classmethod
    def of(cls, ti: Any) -> Holder:
        """The running Airflow task instance `ti`, in this process."""
        return cls(
            ti.dag_id,
            ti.run_id,
            ti.task_id,
            ti.map_index,
            ti.try_number,
            socket.gethostname(),
            os.getpid(),
        )

    @classmethod
    def current(cls, what: str) -> Holder:
        """The running Airflow task instance, or outside a task (the CLI, a test) this
        process doing `what`."""
        from airflow.sdk import get_current_context

        try:
            return cls.of(get_current_context()["ti"])
        except RuntimeError:  # no task context in this process
            return cls("-", "-", what, -1, 1, socket.gethostname(), os.getpid())

    def __str__(self) -> str:
        index = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return (
            f"{self.dag_id} / {self.run_id} / {self.task_id}{index} try {self.try_number} "
            f"(host {self.hostname}, pid {self.pid})"
        )


@dataclass(frozen=True)
class Lease:
    """One tenure of a subject, as stored in its lease object. The instants are the holder's
    wall clock, for humans: no decision compares them with another clock."""

    subject: str
    holder: Holder
    token: str
    acquired_at: datetime
    expires_at: datetime
    released_at: datetime | None = None
    #: How long its holder may go without a renewal before it stops (its promise to waiters).
    ttl: timedelta = TTL

    def to_document(self) -> dict[str, Any]:
        return {
            "schema": LEASE_SCHEMA,
            "subject": self.subject,
            "holder": dataclasses.asdict(self.holder),
            "token": self.token,
            "acquired_at": self.acquired_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "ttl_seconds": self.ttl.total_seconds(),
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Lease:
        if document.get("schema") != LEASE_SCHEMA:
            raise ValueError(f"not a {LEASE_SCHEMA} document (schema={document.get('schema')!r})")
        released = document.get("released_at")
        return cls(
            subject=document["subject"],
            holder=Holder(**document["holder"]),
            token=document["token"],
            acquired_at=datetime.fromisoformat(document["acquired_at"]),
            expires_at=datetime.fromisoformat(document["expires_at"]),
            released_at=datetime.fromisoformat(released) if released else None,
            ttl=timedelta(seconds=document.get("ttl_seconds", TTL.total_seconds())),
        )


@dataclass(frozen=True)
class Sighting:
    """A waiter's view of a lease object: its ETag, and when (the waiter's monotonic clock,
    in seconds) the waiter first read that ETag."""

    etag: str
    since: float


# --- the rules (pure) -----------------------------------------------------------------------


def lease_key(subject: str) -> str:
    return f"{LOCK_DIR}/{subject}.json"


def configured_ttl(environ: dict[str, str] | None = None) -> timedelta:
    """The lease TTL: `BACKUP_LEASE_TTL_SECONDS` if set, else a minute."""
    value = (os.environ if environ is None else environ).get(TTL_ENV)
    if not value:
        return TTL
    ttl = timedelta(seconds=float(value))
    if ttl <= timedelta(0):
        raise ValueError(f"{TTL_ENV} must be positive, not {value!r}")
    return ttl


def new_lease(subject: str, holder: Holder, now: datetime, ttl: timedelta) -> Lease:
    return Lease(subject, holder, uuid.uuid4().hex, now, now + ttl, ttl=ttl)


def renewed(lease: Lease, now: datetime, ttl: timedelta) -> Lease:
    """The same tenure, alive `ttl` from `now` as far as a human reading it can tell."""
    return dataclasses.replace(lease, expires_at=max(lease.expires_at, now + ttl))


def sighted(previous: Sighting | None, etag: str, now: float) -> Sighting:
    """What a waiter knows after reading `etag` at `now`: the same sighting while the ETag
    stands still, a new one from `now` when it changed (the holder renewed)."""
    if previous is not None and previous.etag == etag:
        return previous
    return Sighting(etag, now)


def takeover_wait(lease: Lease, ttl: timedelta) -> timedelta:
    """How long a lease's ETag must stand still before a waiter with `ttl` takes it over:
    the larger of the holder's TTL and the waiter's, so neither must know the other's."""
    return max(lease.ttl, ttl)


def is_free(lease: Lease | None, sighting: Sighting | None, now: float, ttl: timedelta) -> bool:
    """Nobody holds it: never taken, released, or not renewed (its ETag unchanged) for
    `takeover_wait` on the waiter's monotonic clock (`now`, `sighting.since`). The holder's
    `expires_at` is not consulted: it is another machine's clock."""
    if lease is None or lease.released_at is not None:
        return True
    assert sighting is not None, "a stored lease is always read with its ETag"
    return now - sighting.since >= takeover_wait(lease, ttl).total_seconds()


def held_until(sent: float, ttl: timedelta) -> float:
    """The holder's own deadline (monotonic seconds) after a successful write it sent at
    `sent`: one renewal interval short of `ttl`, a margin for a write already on its way."""
    return sent + ttl.total_seconds() * (1 - 1 / RENEWALS_PER_TTL)


def poll_delay(attempt: int, rng: random.Random, first: float, cap: float) -> float:
    """Seconds to wait before the next look: doubling from `first` up to `cap`, jittered over
    the upper half so waiters that started together do not poll together."""
    ceiling = min(cap, first * 2 ** min(attempt, 32))
    return rng.uniform(ceiling / 2, ceiling)


def describe(lease: Lease) -> str:
    return f"held by {lease.holder} since {lease.acquired_at.isoformat()}"


# --- the I/O ----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


class Tenure:
    """A lease this process holds, kept alive by a heartbeat thread while the section runs."""

    def __init__(
        self,
        store: ObjectStore,
        lease: Lease,
        etag: str,
        sent: float,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
    ) -> None:
        self.store = store
        self.key = lease_key(lease.subject)
        self.lease = lease
        self.etag = etag
        self.ttl = lease.ttl
        self.clock = clock
        self.monotonic = monotonic
        #: When this holder stops counting the lease as its own (its monotonic clock).
        self.deadline = held_until(sent, self.ttl)
        #: When the write that took the lease had returned: the tenure surely began by then.
        #: (`lease.acquired_at` is stamped before that write, so it may precede the release
        #: of the holder before.)
        self.entered_at = clock()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._state = threading.Lock()  # lost, lease, etag, deadline
        self._renewing = threading.Lock()  # one renewal at a time
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease {lease.subject}", daemon=True
        )

    def _check(self) -> str | None:
        """Why the lease is no longer ours, or None; marks it lost at its deadline."""
        with self._state:
            if self.lost is None and self.monotonic() >= self.deadline:
                self.lost = (
                    f"not renewed within {self.ttl.total_seconds():g} s by this holder's clock"
                )
            return self.lost

    def ensure_held(self) -> None:
        """Raise LeaseLostError if another task may now be in this critical section: every
        write or delete of this process calls it first while the section runs."""
        if lost := self._check():
            raise LeaseLostError(
                f"lost the lease on {self.lease.subject} ({lost}); stopped before going on, "
                "so that two tasks never work on it at once. Airflow retries this task."
            )

    def renew(self) -> None:
        """Give the lease a new ETag (and a later `expires_at`), if it is still ours."""
        with self._renewing:
            if self._check() is not None:
                return
            fresh = renewed(self.lease, self.clock(), self.ttl)
            sent = self.monotonic()
            try:
                with unguarded():  # checked by its If-Match instead
                    etag = self.store.put_json_if(self.key, fresh.to_document(), etag=self.etag)
            except StoreError as exc:
                log.warning(
                    "Could not renew the lease on %s (%s); renewal goes on until %.0f s "
                    "after the last renewal.",
                    self.lease.subject,
                    exc,
                    self.ttl.total_seconds() * (1 - 1 / RENEWALS_PER_TTL),
                )
                return
            with self._state:
                if etag is None:
                    self.lost = "another task took it over"
                    log.error("The lease on %s was taken over by another task.", fresh.subject)
                elif self.lost is None:
                    self.lease, self.etag = fresh, etag
                    self.deadline = held_until(sent, self.ttl)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / RENEWALS_PER_TTL):
            self.renew()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def critical_section(
    store: ObjectStore,
    subject: str,
    holder: Holder,
    *,
    max_wait: timedelta,
    ttl: timedelta | None = None,
    poll: tuple[float, float] = (POLL_FIRST, POLL_CAP),
    clock: Callable[[], datetime] = _now,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Tenure]:
    """Hold `subject`'s lease (in `store`) while the block runs; wait for it first if needed.

    `ttl` defaults to `configured_ttl()`. Every write or delete of this process checks the
    tenure first while the block runs. Raises LeaseBusyError when another holder keeps it
    beyond `max_wait`, and LeaseLostError when the lease is lost (at the first write after,
    and when the block ends). The lease is released when the block ends, however it ends,
    unless another task has taken it over meanwhile.
    """
    ttl = ttl or configured_ttl()
    lease, etag, sent = _acquire(
        store, subject, holder, ttl, max_wait, poll, clock, monotonic, sleep
    )
    tenure = Tenure(store, lease, etag, sent, clock, monotonic)
    tenure.start()
    try:
        with guarded(tenure.ensure_held), witnessed(store, lease):
            yield tenure
    finally:
        tenure.stop()
        _release(tenure)
    tenure.ensure_held()


def _acquire(
    store: ObjectStore,
    subject: str,
    holder: Holder,
    ttl: timedelta,
    max_wait: timedelta,
    poll: tuple[float, float],
    clock: Callable[[], datetime],
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[Lease, str, float]:
    """Take the lease; returns it, its ETag and when (monotonic) the taking write was sent."""
    key = lease_key(subject)
    started = monotonic()
    rng = random.SystemRandom()
    attempt = 0
    sighting: Sighting | None = None
    while True:
        found = store.get_json_tagged(key)
        now = monotonic()  # after the read: the ETag it returned was written before now
        current = None if found is None else Lease.from_document(found[0])
        sighting = None if found is None else sighted(sighting, found[1], now)
        if is_free(current, sighting, now, ttl):
            mine = new_lease(subject, holder, clock(), ttl)
            sent = monotonic()
            with unguarded():  # checked by its condition instead
                etag = store.put_json_if(
                    key, mine.to_document(), etag=None if found is None else found[1]
                )
            if etag is None:  # another task took it between our read and our write
                sighting = None
                continue
            if current is not None and current.released_at is None:
                assert sighting is not None
                log.warning(
                    "Took over the lease on %s (%s): not renewed for %.1f s by this task's "
                    "clock (its TTL %g s); that task died, stopped or lost its store without "
                    "releasing it.",
                    subject,
                    describe(current),
                    now - sighting.since,
                    current.ttl.total_seconds(),
                )
            log.info(
                "Acquired the lease on %s (%s in %s) at %s; renewed every %.1f s while held.",
                subject,
                key,
                store.region.name,
                mine.acquired_at.isoformat(),
                ttl.total_seconds() / RENEWALS_PER_TTL,
            )
            return mine, etag, sent
        assert current is not None and sighting is not None
        waited = now - started
        if waited >= max_wait.total_seconds():
            raise LeaseBusyError(
                f"{subject} is busy: {describe(current)} (lease {store.where(key)}, last "
                f"renewed {now - sighting.since:.0f} s ago or less); waited {waited:.0f} s, "
                "the most this step may. Airflow retries this task; if that task is stuck, "
                f"stop it and this one goes on {takeover_wait(current, ttl)} after its last "
                "renewal."
            )
        log.info(
            "Waiting for the lease on %s: %s (its expiry says %s). Another run of this target "
            "is in the same critical section; this step starts when it is done (waited %d s "
            "of at most %d s).",
            subject,
            describe(current),
            current.expires_at.isoformat(),
            waited,
            max_wait.total_seconds(),
        )
        due = sighting.since + takeover_wait(current, ttl).total_seconds() - now
        remaining = max_wait.total_seconds() - waited
        sleep(max(0.0, min(poll_delay(attempt, rng, *poll), remaining, due)))
        attempt += 1


@contextmanager
def witnessed(store: ObjectStore, lease: Lease) -> Iterator[None]:
    """Markers of who is inside, where `WITNESS_ENV` names a prefix (see the module doc).
    A holder that lost its lease cannot remove its marker (its writes are stopped): the next
    entrant finds it and records an overlap, as it should."""
    prefix = os.environ.get(WITNESS_ENV)
    if not prefix:
        yield
        return
    inside = f"{prefix}/inside/{lease.subject}/"
    mine = {"subject": lease.subject, "holder": str(lease.holder), "token": lease.token}
    store.put_json(f"{prefix}/entries/{lease.subject}/{lease.token}.json", mine)
    store.put_json(inside + lease.token, mine)  # first in, then look: one of two sees the other
    others = [o.key for o in store.list_objects(inside) if o.key != inside + lease.token]
    if others:
        store.put_json(f"{prefix}/overlaps/{lease.token}.json", {**mine, "found": others})
    try:
        yield
    finally:
        try:
            store.delete_all_versions(inside + lease.token, keys={inside + lease.token})
        except (LeaseLostError, StoreError) as exc:
            log.warning("Left the witness marker %s in place: %s", inside + lease.token, exc)


def _release(tenure: Tenure) -> None:
    """Mark the lease released if it is still ours. Whatever happens, one line records the
    tenure (`on <subject>: held from <start> to <end>`): the evidence of who held it when."""
    lease, store, key = tenure.lease, tenure.store, tenure.key
    # Stamped before the releasing write: the next holder's tenure begins after this instant.
    done = dataclasses.replace(lease, released_at=tenure.clock())
    assert done.released_at is not None
    span = f"{(done.released_at - tenure.entered_at).total_seconds():.1f} s"
    tenure_line = (
        f"on {lease.subject}: held from {tenure.entered_at.isoformat()} to "
        f"{done.released_at.isoformat()} ({span})"
    )
    if (lost := tenure._check()) is not None:
        log.warning("Left the critical section %s; the lease was lost: %s.", tenure_line, lost)
        return
    try:
        with unguarded():  # checked by its If-Match instead
            if store.put_json_if(key, done.to_document(), etag=tenure.etag) is None:
                tenure.lost = "another task took it over"
                log.warning(
                    "Left the critical section %s; the lease was no longer this task's "
                    "(another task took it over), so it is left as that task holds it.",
                    tenure_line,
                )
                return
            # The bucket is versioned: keep the current lease object, not one version per
            # renewal.
            store.delete_all_versions(key, keep_latest=True, keys={key})
    except StoreError as exc:  # the work is done; the lease frees itself one TTL later
        log.warning(
            "Left the critical section %s; could not release the lease (%s); it frees itself "
            "%g s after its last renewal.",
            tenure_line,
            exc,
            lease.ttl.total_seconds(),
        )
        return
    log.info("Released the lease %s.", tenure_line)
