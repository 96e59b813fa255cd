"""The engine interface: how a source becomes a backup artifact, and how to tell one is readable.

The DAG shape (snapshot -> copy -> check -> prune) knows nothing about sources. An engine does:
logical dumps (`pg_dump`), object storage (`media`) and base backups with their WAL (`wal`, the
continuous tier), behind the same interface.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.check import Check
from include.backup_dr.policy import Policy, Target
from include.backup_dr.store import ObjectStore, Readable

if TYPE_CHECKING:
    from include.backup_dr.catalogue import BackupId, Manifest


@dataclass
class SourceFacts:
    """What the engine learned about the source while snapshotting it (goes into the manifest)."""

    source: dict[str, Any]
    tool_versions: dict[str, str]
    row_counts: dict[str, int] = field(default_factory=dict)
    #: "schema.table" -> {"primary_key": [...], "foreign_keys": [...]}, for restore validation.
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)


class Snapshot(Protocol):
    """An open snapshot: a byte stream to upload, and facts that are final once it is drained."""

    stream: Readable

    def finish(self) -> None:
        """Called at end of stream; raises if the source did not end cleanly."""
        ...

    def facts(self) -> SourceFacts: ...


@dataclass(frozen=True)
class ReadCheck:
    """Whether the engine's own tool can read an artifact, and what it saw."""

    ok: bool
    detail: str


class LostListing(AirflowFailException):
    """What a kept backup refers to cannot be read whole (a snapshot's listing, a manifest):
    collecting garbage without it would sweep what it refers to, so nothing is collected.
    Not retried: on-call finds out why."""


#: Planned deletions named in a sweep's evidence (the counts cover all of them).
SWEEP_SAMPLE = 20


@dataclass
class Sweep:
    """A planned garbage collection of one kind of thing in one region: counted, not yet done."""

    what: str  # e.g. "media blobs", "WAL of server platform_primary"
    total: int
    doomed: int
    #: A few of the planned deletions, each {"key": ..., "reason": ...}, for the evidence.
    sample: list[dict[str, str]]
    #: Carries the plan out; returns how many object versions went.
    delete: Callable[[], int]
    #: Unreferenced but still under Object Lock, so kept (not in `doomed`); a few of them, each
    #: {"key": ..., "reason": "...; but locked until X (Object Lock)"}.
    locked: int = 0
    locked_sample: list[dict[str, str]] = field(default_factory=list)


#: How many lock reads a sweep makes at once.
LOCK_READERS = 16


def still_locked(store: ObjectStore, keys: Iterable[str], now: datetime) -> dict[str, datetime]:
    """Of `keys`, those whose current version `store` still locks at `now`, with the date: a
    sweep keeps them, rather than meet a refused delete. The current version holds the longest
    lock, as every new version and extension is locked at least as long as the one before."""
    if store.lock is None:
        return {}
    keys = list(keys)
    with ThreadPoolExecutor(max_workers=LOCK_READERS) as pool:
        found = zip(keys, pool.map(store.locked_until, keys), strict=True)
        return {key: until for key, until in found if until is not None and until > now}


def stop_tool(process: subprocess.Popen[bytes], *streams: IO[bytes]) -> None:
    """End a snapshot's tool (pg_dump, pg_basebackup) if it still runs, and close its pipes:
    a snapshot closed early must not leave the tool reading production."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in streams:
        stream.close()


def locked_reason(reason: str, until: datetime) -> str:
    return f"{reason}; but locked until {until.isoformat()} (Object Lock): kept until then"


class Engine(Protocol):
    name: str
    #: Artifact file extension, e.g. "pgdump".
    extension: str
    #: True when what the artifact refers to keeps arriving after it is committed (WAL): every
    #: copy run then re-syncs the contents, even when the artifact itself is already there.
    contents_keep_arriving: bool

    def open_snapshot(
        self, policy: Policy, target: Target, primary: ObjectStore, backup: BackupId
    ) -> AbstractContextManager[Snapshot]:
        """Start a consistent snapshot of `target`; the context cleans up whatever happens."""
        ...

    def check_readable(self, chunks: Iterable[bytes]) -> ReadCheck:
        """Feed an artifact's bytes to the engine's reader; must consume all of `chunks`."""
        ...

    def copy_contents(self, manifest: Manifest, source: ObjectStore, target: ObjectStore) -> str:
        """Copy what the artifact refers to (media blobs), before the artifact itself."""
        ...

    def check_contents(self, store: ObjectStore, manifest: Manifest, now: datetime) -> list[Check]:
        """Checks beyond the artifact's own bytes (every referenced blob, a re-hash sample)."""
        ...

    def plan_garbage(
        self, policy: Policy, store: ObjectStore, category: str, now: datetime
    ) -> AbstractContextManager[list[Sweep]]:
        """Plan the removal of what no kept backup of `category` in `store` refers to any more
        (nothing is deleted until a sweep's `delete` is called, after the circuit breaker).

        `now` is the wall clock when collection began, not a planning time: the grace period
        protects writes that are happening now.
        """
        ...
