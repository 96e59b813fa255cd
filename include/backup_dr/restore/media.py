"""Restoring a media snapshot into a bucket, and proving every restored object against it.

A snapshot's listing names each object's key and the SHA-256 of its content, and the content
lives once as a blob. A restore copies each blob under the key it had (server-side when the
destination is the same S3 service), optionally only the keys under a prefix; the check then
reads every restored object back and re-hashes it against the listing, as the policy's annual
integrity test asks.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from include.backup_dr.catalogue import Manifest
from include.backup_dr.engines.media import COPY_WORKERS, Entry, blob_key, parse_listing
from include.backup_dr.restore.errors import RestoreRefused
from include.backup_dr.restore.validation import ExpectationResult, ValidationResult
from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
#: Objects handed to the workers at once: keeps memory flat at any object count.
BATCH = 1000
SUITE = "media snapshot"


def _parallel(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """fn over items on a thread pool, in order, a batch at a time."""
    with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
        iterator = iter(items)
        while batch := list(itertools.islice(iterator, BATCH)):
            yield from pool.map(fn, batch)


def selected(store: ObjectStore, manifest: Manifest, key_prefix: str) -> Iterator[Entry]:
    """The snapshot's objects under `key_prefix`, streamed from its listing."""
    for entry in parse_listing(store.iter_chunks(manifest.artifact.key)):
        if entry.key.startswith(key_prefix):
            yield entry


def ensure_empty(dest: ObjectStore, dest_prefix: str, overwrite: bool) -> None:
    """Refuse to restore over existing objects unless told to (nothing is changed)."""
    existing = next(iter(dest.list_objects(dest_prefix)), None)
    if existing is not None and not overwrite:
        raise RestoreRefused(
            f"{dest.where(dest_prefix)} already holds objects (e.g. {existing.key}); "
            "set overwrite=true to restore over them"
        )


def restore_snapshot(
    store: ObjectStore,
    manifest: Manifest,
    dest: ObjectStore,
    *,
    key_prefix: str = "",
    dest_prefix: str = "",
) -> dict[str, Any]:
    """Copy every object of the snapshot under `key_prefix` to `dest_prefix + key` in `dest`."""
    category = manifest.backup.category
    started = time.monotonic()

    def copy(entry: Entry) -> int:
        dest.copy_from(
            store, blob_key(category, entry.sha256), entry.size, dest_key=dest_prefix + entry.key
        )
        return entry.size

    sizes = list(_parallel(copy, selected(store, manifest, key_prefix)))
    seconds = time.monotonic() - started
    if not sizes:
        raise RestoreRefused(
            f"{manifest.backup}: no object under {key_prefix!r} in the snapshot; nothing restored"
        )
    log.info(
        "Restored %d objects (%d bytes) of %s to %s in %.1f s",
        len(sizes),
        sum(sizes),
        manifest.backup,
        dest.where(dest_prefix),
        seconds,
    )
    return {
        "objects": len(sizes),
        "restored_bytes": sum(sizes),
        "timings": {"copy": round(seconds, 3)},
        "destination": dest.where(dest_prefix),
        "key_prefix": key_prefix,
    }


def verify_restored(
    store: ObjectStore,
    manifest: Manifest,
    dest: ObjectStore,
    *,
    key_prefix: str = "",
    dest_prefix: str = "",
) -> ValidationResult:
    """Read back every restored object and compare its size and SHA-256 with the snapshot."""
    started = time.monotonic()

    def check(entry: Entry) -> tuple[Entry, str]:
        """'' when the object is right, else what is wrong with it."""
        digest = hashlib.sha256()
        size = 0
        if dest.head(dest_prefix + entry.key) is None:
            return entry, "missing"
        for chunk in dest.iter_chunks(dest_prefix + entry.key):
            digest.update(chunk)
            size += len(chunk)
        if size != entry.size:
            return entry, f"{size} bytes, the snapshot says {entry.size}"
        if digest.hexdigest() != entry.sha256:
            return (
                entry,
                f"sha256 {digest.hexdigest()[:16]}..., the snapshot says {entry.sha256[:16]}...",
            )
        return entry, ""

    checked = 0
    total_bytes = 0
    missing: list[str] = []
    wrong: list[str] = []
    for entry, problem in _parallel(check, selected(store, manifest, key_prefix)):
        checked += 1
        total_bytes += entry.size
        if problem == "missing":
            missing.append(entry.key)
        elif problem:
            wrong.append(f"{entry.key}: {problem}")
    where = dest.where(dest_prefix)
    results = [
        ExpectationResult(
            SUITE,
            where,
            "every_object_of_the_snapshot_is_restored",
            {"key_prefix": key_prefix},
            not missing and checked > 0,
            f"{checked - len(missing)} of {checked} objects present"
            + (f"; missing e.g. {missing[:3]}" if missing else ""),
            "A restore must bring back every object the snapshot lists.",
        ),
        ExpectationResult(
            SUITE,
            where,
            "every_restored_object_matches_its_sha256",
            {"key_prefix": key_prefix},
            not wrong and checked > len(missing),
            f"{checked - len(missing) - len(wrong)} of {checked - len(missing)} objects "
            f"re-hashed ({total_bytes} bytes) match size and SHA-256"
            + (f"; mismatched e.g. {wrong[:3]}" if wrong else ""),
            "Every restored byte is proven against the hash taken when it was backed up.",
        ),
    ]
    return ValidationResult(results, time.monotonic() - started)
