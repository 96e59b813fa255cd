"""Leases in the object store: a critical section per subject that holds whatever runs the tasks.

Why: Airflow 3 runs a backfill under its own `max_active_runs`, beside the DAG's scheduled runs,
so two runs of one DAG can work on the same target and tier at once (a prune while another run
re-takes a window; two replication runs copying the same blobs). A lease object in the store
serialises them across runs, backfills, executors and deployments, with no pool to create.

How: `locks/<subject>.json` says who holds the subject and until when. Taking it is one
conditional PUT: `If-None-Match: *` where no lease was ever written, else `If-Match: <the ETag
just read>` to replace a free lease (released or expired). S3 applies a conditional PUT
atomically: of concurrent writers exactly one succeeds and the others get 412 (or 409 from AWS
under contention), read again and wait. Releasing is a conditional PUT too (`If-Match` the ETag
we wrote), marking the lease released, so a holder never frees a lease that is no longer its own.

Liveness: a lease is short (`ttl`, a minute by default) and a heartbeat thread in the holder
renews it every `ttl / 6` with the same conditional PUT. So a holder that dies in any way (its
worker killed, its region or KMS gone so that it cannot release) frees the subject within `ttl`,
not after the step's timeout. A holder that cannot renew before its lease expires, or finds it
taken over, has lost it: `Tenure.ensure_held()` raises `LeaseLostError` before anything
destructive, and leaving the section raises it too, so the step fails and is retried.

A waiter logs who holds the subject and since when, polls with jitter, and after `max_wait`
raises `LeaseBusyError` (retried by Airflow) naming the holder.
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

from include.backup_dr.store import ObjectStore, StoreError

log = logging.getLogger(__name__)

LEASE_SCHEMA = "backup-dr/lease/v1"
LOCK_DIR = "locks"
#: How long a lease lives without a renewal: how long a dead holder keeps a subject busy.
TTL = timedelta(minutes=1)
#: Renewals per `ttl`: five may fail in a row (a store blip) before the lease is lost.
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

    def __str__(self) -> str:
        index = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return (
            f"{self.dag_id} / {self.run_id} / {self.task_id}{index} try {self.try_number} "
            f"(host {self.hostname}, pid {self.pid})"
        )


@dataclass(frozen=True)
class Lease:
    """One tenure of a subject, as stored in its lease object."""

    subject: str
    holder: Holder
    token: str
    acquired_at: datetime
    expires_at: datetime
    released_at: datetime | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "schema": LEASE_SCHEMA,
            "subject": self.subject,
            "holder": dataclasses.asdict(self.holder),
            "token": self.token,
            "acquired_at": self.acquired_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "released_at": self.released_at.isoformat() if self.released_at else None,
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
        )


# --- the rules (pure) -----------------------------------------------------------------------


def lease_key(subject: str) -> str:
    return f"{LOCK_DIR}/{subject}.json"


def new_lease(subject: str, holder: Holder, now: datetime, ttl: timedelta) -> Lease:
    return Lease(subject, holder, uuid.uuid4().hex, now, now + ttl)


def renewed(lease: Lease, now: datetime, ttl: timedelta) -> Lease:
    """The same tenure, alive `ttl` from `now`; never shorter than it was."""
    return dataclasses.replace(lease, expires_at=max(lease.expires_at, now + ttl))


def is_free(lease: Lease | None, now: datetime) -> bool:
    """Nobody holds it: never taken, released, or expired (its holder stopped renewing it)."""
    return lease is None or lease.released_at is not None or now >= lease.expires_at


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
        ttl: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.key = lease_key(lease.subject)
        self.lease = lease
        self.etag = etag
        self.ttl = ttl
        self.clock = clock
        #: When the write that took the lease had returned: the tenure surely began by then.
        #: (`lease.acquired_at` is stamped before that write, so it may precede the release
        #: of the holder before.)
        self.entered_at = clock()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease {lease.subject}", daemon=True
        )

    def ensure_held(self) -> None:
        """Raise LeaseLostError if another task may now be in this critical section: call it
        before anything that deletes or overwrites."""
        with self._guard:
            lost, expired = self.lost, self.clock() >= self.lease.expires_at
        if lost or expired:
            raise LeaseLostError(
                f"lost the lease on {self.lease.subject} ({lost or 'it expired unrenewed'}); "
                "stopped before going on, so that two tasks never work on it at once. "
                "Airflow retries this task."
            )

    def renew(self) -> None:
        """Push the expiry `ttl` ahead, if the lease is still ours and still live."""
        with self._guard:
            now = self.clock()
            if self.lost is not None:
                return
            if now >= self.lease.expires_at:
                self.lost = f"not renewed before it expired at {self.lease.expires_at.isoformat()}"
                return
            fresh = renewed(self.lease, now, self.ttl)
            try:
                etag = self.store.put_json_if(self.key, fresh.to_document(), etag=self.etag)
            except StoreError as exc:
                log.warning(
                    "Could not renew the lease on %s (%s); it lives until %s, renewal goes on.",
                    self.lease.subject,
                    exc,
                    self.lease.expires_at.isoformat(),
                )
                return
            if etag is None:
                self.lost = "another task took it over"
                log.error("The lease on %s was taken over by another task.", self.lease.subject)
                return
            self.lease, self.etag = fresh, etag

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
    ttl: timedelta = TTL,
    poll: tuple[float, float] = (POLL_FIRST, POLL_CAP),
    clock: Callable[[], datetime] = _now,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Tenure]:
    """Hold `subject`'s lease (in `store`) while the block runs; wait for it first if needed.

    Raises LeaseBusyError when another holder keeps it beyond `max_wait`, and LeaseLostError
    when the block ends after the lease was lost. The lease is released when the block ends,
    however it ends, unless another task has taken it over meanwhile.
    """
    lease, etag = _acquire(store, subject, holder, ttl, max_wait, poll, clock, sleep)
    tenure = Tenure(store, lease, etag, ttl, clock)
    tenure.start()
    try:
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
    sleep: Callable[[float], None],
) -> tuple[Lease, str]:
    key = lease_key(subject)
    started = clock()
    rng = random.SystemRandom()
    attempt = 0
    while True:
        now = clock()
        found = store.get_json_tagged(key)
        current = None if found is None else Lease.from_document(found[0])
        if is_free(current, now):
            mine = new_lease(subject, holder, now, ttl)
            etag = store.put_json_if(
                key, mine.to_document(), etag=None if found is None else found[1]
            )
            if etag is None:  # another task took it between our read and our write
                continue
            if current is not None and current.released_at is None:
                log.warning(
                    "Took over the expired lease on %s (%s, expired %s): that task died or "
                    "lost its store without releasing it.",
                    subject,
                    describe(current),
                    current.expires_at.isoformat(),
                )
            log.info(
                "Acquired the lease on %s (%s in %s) at %s; renewed every %d s while held.",
                subject,
                key,
                store.region.name,
                mine.acquired_at.isoformat(),
                ttl.total_seconds() / RENEWALS_PER_TTL,
            )
            return mine, etag
        assert current is not None
        waited = now - started
        if waited >= max_wait:
            raise LeaseBusyError(
                f"{subject} is busy: {describe(current)} (lease {store.where(key)}, renewed "
                f"until {current.expires_at.isoformat()}); waited {waited}, the most this step "
                "may. Airflow retries this task; if that task is stuck, stop it and this one "
                "goes on within a minute."
            )
        log.info(
            "Waiting for the lease on %s: %s; renewed until %s. Another run of this target is "
            "in the same critical section; this step starts when it is done (waited %d s of "
            "at most %d s).",
            subject,
            describe(current),
            current.expires_at.isoformat(),
            waited.total_seconds(),
            max_wait.total_seconds(),
        )
        remaining = (max_wait - waited).total_seconds()
        sleep(min(poll_delay(attempt, rng, *poll), remaining))
        attempt += 1


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
    if tenure.lost is not None:
        log.warning(
            "Left the critical section %s; the lease was lost: %s.", tenure_line, tenure.lost
        )
        return
    try:
        if store.put_json_if(key, done.to_document(), etag=tenure.etag) is None:
            tenure.lost = "another task took it over"
            log.warning(
                "Left the critical section %s; the lease was no longer this task's (another "
                "task took it over), so it is left as that task holds it.",
                tenure_line,
            )
            return
        # The bucket is versioned: keep the current lease object, not one version per renewal.
        store.delete_all_versions(key, keep_latest=True, keys={key})
    except StoreError as exc:  # the work is done; the lease frees itself at its expiry
        log.warning(
            "Left the critical section %s; could not release the lease (%s); it frees itself "
            "at %s.",
            tenure_line,
            exc,
            lease.expires_at.isoformat(),
        )
        return
    log.info("Released the lease %s.", tenure_line)
