"""Download a backup artifact and prove its bytes (size and SHA-256 against the manifest)
before anything uses them: a tampered or rotten backup is never restored."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from include.backup_dr import pg_globals
from include.backup_dr.catalogue import Manifest
from include.backup_dr.restore.errors import RestoreRefused, TamperedBackup
from include.backup_dr.store import READ_CHUNK, ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    seconds: float


def fetch(store: ObjectStore, manifest: Manifest, dest: Path) -> None:
    """Download the artifact with parallel ranged GETs, after checking its size; unverified:
    callers prove the bytes with `prove_bytes` before anything uses them."""
    expected = manifest.artifact
    head = store.head(expected.key)
    if head is None:
        raise RestoreRefused(f"{manifest.backup}: {store.where(expected.key)} does not exist")
    if int(head["ContentLength"]) != expected.size:
        raise TamperedBackup(
            f"{manifest.backup} in {store.region.name}: the object has {head['ContentLength']} "
            f"bytes, the manifest says {expected.size}; not restored"
        )
    store.download(expected.key, dest, expected.size)


def prove_bytes(manifest: Manifest, region: str, digest: str, size: int) -> None:
    """Refuse bytes whose size or SHA-256 differ from what the manifest vouches for."""
    expected = manifest.artifact
    if size != expected.size or digest != expected.sha256:
        raise TamperedBackup(
            f"{manifest.backup} in {region}: downloaded {size} bytes with sha256 "
            f"{digest[:16]}..., the manifest says {expected.size} bytes with sha256 "
            f"{expected.sha256[:16]}...; not restored"
        )


def download_verified(store: ObjectStore, manifest: Manifest, dest: Path) -> Download:
    """Download the artifact, then re-hash it; refuse it unless size and SHA-256 match.

    The hash reads the file back from the page cache. Nothing reaches pg_restore before the
    bytes are proven.
    """
    started = time.monotonic()
    fetch(store, manifest, dest)
    digest = hashlib.sha256()
    size = 0
    with dest.open("rb") as archive:
        for chunk in iter(lambda: archive.read(READ_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    seconds = time.monotonic() - started
    try:
        prove_bytes(manifest, store.region.name, digest.hexdigest(), size)
    except TamperedBackup:
        dest.unlink(missing_ok=True)
        raise
    log.info(
        "Downloaded and verified %s (%d bytes) in %.1f s", manifest.artifact.key, size, seconds
    )
    return Download(dest, size, seconds)


def read_globals(store: ObjectStore, manifest: Manifest) -> pg_globals.Globals | None:
    """The backup's globals, proven against the manifest before anything uses them; None (and
    a warning) for a backup taken before globals were kept."""
    entry = pg_globals.entry_of(manifest)
    if entry is None:
        log.warning(
            "%s keeps no roles or grants (taken before they were kept): restoring it without "
            "owners and privileges (--no-owner --no-privileges)",
            manifest.backup,
        )
        return None
    head, body = pg_globals.read_entry(store, entry)
    if head is None:
        raise RestoreRefused(
            f"{manifest.backup}: {store.where(entry.key)} (its roles and grants) does not "
            "exist; not restored"
        )
    digest = hashlib.sha256(body).hexdigest()
    if len(body) != entry.size or digest != entry.sha256:
        raise TamperedBackup(
            f"{manifest.backup} in {store.region.name}: its roles and grants ({pg_globals.OBJECT_NAME}) "
            f"have {head['ContentLength']} bytes with sha256 {digest[:16]}..., the manifest says "
            f"{entry.size} bytes with sha256 {entry.sha256[:16]}...; not restored"
        )
    try:
        return pg_globals.Globals.from_bytes(body)
    except ValueError as exc:
        raise RestoreRefused(f"{manifest.backup}: its roles and grants: {exc}") from None
