"""Tenure guards: checks every write or delete of this process passes before it is sent.

A step that holds a lease (lease.py) must not write once its tenure may have ended; these
guards hook every S3 client a store opens, so no write escapes, whichever store, client or
thread makes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: The S3 calls that write or delete: each waits for the tenure guards (`guarded`) to pass.
_MUTATIONS = frozenset(
    {
        "PutObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "DeleteObject",
        "DeleteObjects",
        "PutObjectRetention",
        "PutObjectLegalHold",
    }
)


class _TenureGuards:
    """Checks that every write or delete of this process passes first, whichever store,
    client or thread makes it (media copy workers, s3transfer's threads): the tenures of the
    critical sections the running step is in (lease.py). A task runs in a process of its
    own, so every write of the process is its step's. A check raises to stop the write.

    A lease's own writes (take, renew, release) are checked by their S3 conditions instead:
    they run `unguarded`, on their thread only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: list[Callable[[], None]] = []
        self._exempt = threading.local()

    @contextmanager
    def guarded(self, check: Callable[[], None]) -> Iterator[None]:
        with self._lock:
            self._checks.append(check)
        try:
            yield
        finally:
            with self._lock:
                self._checks.remove(check)

    @contextmanager
    def unguarded(self) -> Iterator[None]:
        self._exempt.on = True
        try:
            yield
        finally:
            self._exempt.on = False

    def before_call(self, model: Any, **_: Any) -> None:
        """botocore's `before-call` event: run every check before a write is sent."""
        if model.name not in _MUTATIONS or getattr(self._exempt, "on", False):
            return
        with self._lock:
            checks = list(self._checks)
        for check in checks:
            check()


_GUARDS = _TenureGuards()
#: `with guarded(check):` every write or delete of this process runs `check` first.
guarded = _GUARDS.guarded
#: `with unguarded():` this thread's writes skip the checks (a lease's own writes only).
unguarded = _GUARDS.unguarded


def watch(client: Any) -> None:
    """Run the guards before every write or delete `client` sends."""
    client.meta.events.register("before-call.s3", _GUARDS.before_call)
