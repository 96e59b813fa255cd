"""Pure rules of media blobs: what garbage collection sweeps, and what a snapshot or a copy to
the other region does with each blob (copy, refresh, keep), from plain values."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from include.backup_dr.engines.media.listing import Entry


def plan_gc(
    referenced: Container[str],
    blobs: Iterable[tuple[str, datetime]],
    now: datetime,
    grace: timedelta,
) -> Iterator[tuple[str, bool, str]]:
    """(sha256, delete?, reason) for each blob (sha256, newest write) as it is listed: mark
    (referenced) and sweep (old enough). One blob at a time, so a listing streams through."""
    for sha, written in blobs:
        if sha in referenced:
            yield sha, False, "referenced by a kept snapshot"
        elif now - written <= grace:
            yield sha, False, "unreferenced but within grace: a snapshot may be writing"
        else:
            yield sha, True, "referenced by no kept snapshot, older than grace"


def needs_refresh(written: datetime, now: datetime, grace: timedelta) -> bool:
    """Whether a blob found in the store must get a fresh version before a snapshot refers to it.

    GC sweeps only blob versions older than `grace`. A blob refreshed once it is older than half
    the grace, by a snapshot that commits within half the grace, is never swept under it.
    """
    return written < now - grace / 2


@dataclass(frozen=True)
class BlobState:
    """What a store says about a blob: its size, when its newest version was written, and its
    full-object SHA-256 when the store keeps one (a listing does not; a HEAD may)."""

    size: int
    written: datetime
    sha256: str | None = None


def blob_action(
    found: BlobState | None, sha256: str, size: int, now: datetime, grace: timedelta
) -> str:
    """What to do with the blob of content `sha256` (`size` bytes) before referring to it:
    "copy" it, "refresh" it (see `needs_refresh`), or "keep" it as it is."""
    if found is None or found.size != size or found.sha256 not in (None, sha256):
        return "copy"  # missing or damaged: store it again (heals every snapshot referring to it)
    if needs_refresh(found.written, now, grace):
        return "refresh"
    return "keep"


def plan_copy(
    wanted: dict[str, int], present: dict[str, BlobState], now: datetime, grace: timedelta
) -> dict[str, str]:
    """`blob_action` for every blob a listing refers to, from one listing of the other region."""
    return {
        sha: blob_action(present.get(sha), sha, size, now, grace) for sha, size in wanted.items()
    }


def longest_holds(entries: Iterable[Entry]) -> dict[str, int]:
    """sha256 -> the longest hold any entry gives its blob (entries without one: none)."""
    holds: dict[str, int] = {}
    for entry in entries:
        if entry.hold is not None:
            holds[entry.sha256] = max(entry.hold, holds.get(entry.sha256, 0))
    return holds
