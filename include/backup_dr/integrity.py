"""Integrity checks of one region's copy, as a list of named results anyone can read.

Modelled on pgBackRest's `verify`: a check never just raises; it says what it looked at, what it
expected and what it found. The caller turns a failed report into a failed task and an alert.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.backup_dr.catalogue import MANIFEST_NAME, Manifest
from include.backup_dr.check import Check, encryption_check
from include.backup_dr.store import ObjectStore

if TYPE_CHECKING:
    from include.backup_dr.engines.base import Engine


@dataclass
class CopyReport:
    """Every check made on one region's copy of one backup."""

    backup: str
    region: str
    key: str
    checks: list[Check] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    checked_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def summary(self) -> str:
        verdict = "PASSED" if self.ok else "FAILED"
        parts = "; ".join(
            f"{c.name}: {'ok' if c.ok else 'FAILED'} ({c.detail})" for c in self.checks
        )
        return f"{self.backup}@{self.region} {verdict}: {parts}"

    def to_document(self) -> dict[str, Any]:
        """The evidence record stored beside the copy (integrity.json)."""
        throughput = self.bytes_read / self.seconds / 1e6 if self.seconds else None
        return {
            "schema": "backup-dr/integrity/v1",
            "backup": self.backup,
            "region": self.region,
            "key": self.key,
            "ok": self.ok,
            "verdict": "passed" if self.ok else "failed",
            "checked_at": self.checked_at,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "rehash_mb_per_s": round(throughput, 1) if throughput else None,
            "checks": [asdict(check) for check in self.checks],
        }


class _HashingChunks:
    """Yields a stream's chunks unchanged while hashing and counting them."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.hash = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.hash.update(chunk)
            self.size += len(chunk)
            yield chunk


def check_copy(store: ObjectStore, reference: Manifest, engine: Engine) -> CopyReport:
    """Check one region's copy against the manifest written when the backup was taken.

    One streamed pass (constant memory) both re-hashes the bytes and feeds the engine's reader.
    """
    key = reference.artifact.key
    report = CopyReport(str(reference.backup), store.region.name, key)
    started = time.monotonic()

    local = store.manifest(reference.backup)
    if local is None:
        report.checks.append(
            Check(
                "manifest", False, f"no {MANIFEST_NAME} at {store.where(reference.backup.prefix)}"
            )
        )
    elif local.artifact.sha256 != reference.artifact.sha256:
        report.checks.append(
            Check(
                "manifest",
                False,
                f"records sha256 {local.artifact.sha256[:16]}..., the original backup "
                f"{reference.artifact.sha256[:16]}...",
            )
        )
    else:
        report.checks.append(Check("manifest", True, "present and agrees with the original"))

    head = store.head(key)
    if head is None:
        report.checks.append(Check("present", False, f"{store.where(key)} does not exist"))
        report.seconds = time.monotonic() - started
        return report
    report.checks.append(Check("present", True, store.where(key)))

    size = int(head["ContentLength"])
    report.checks.append(
        Check(
            "size",
            size == reference.artifact.size,
            f"{size} bytes, manifest says {reference.artifact.size}",
        )
    )
    report.checks.append(encryption_check(store, head))

    stream = _HashingChunks(store.iter_chunks(key))
    readable = engine.check_readable(stream)
    digest = stream.hash.hexdigest()
    report.bytes_read = stream.size
    report.checks.append(
        Check(
            "sha256",
            digest == reference.artifact.sha256,
            f"re-hashed {stream.size} bytes: {digest[:16]}..., "
            f"manifest says {reference.artifact.sha256[:16]}...",
        )
    )
    report.checks.append(Check("readable", readable.ok, readable.detail))
    # The report's own time: the media sample re-hashed is derived from it, as its key is.
    checked_at = datetime.fromisoformat(report.checked_at)
    report.checks.extend(engine.check_contents(store, reference, checked_at))
    report.seconds = time.monotonic() - started
    return report
