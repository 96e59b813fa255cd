"""The engine interface: how a source becomes a backup artifact, and how to tell one is readable.

The DAG shape (snapshot -> copy -> check -> prune) knows nothing about sources. An engine does:
logical pg_dump today; RDS snapshots and base backups with WAL later, behind the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.policy import Policy, Target
from include.backup_dr.store import ObjectStore, Readable

if TYPE_CHECKING:
    from include.backup_dr.catalogue import Manifest
    from include.backup_dr.integrity import Check


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


class Engine(Protocol):
    name: str
    #: Artifact file extension, e.g. "pgdump".
    extension: str
    #: True when what the artifact refers to keeps arriving after it is committed (WAL): every
    #: copy run then re-syncs the contents, even when the artifact itself is already there.
    contents_keep_arriving: bool

    def open_snapshot(
        self, policy: Policy, target: Target, primary: ObjectStore
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
