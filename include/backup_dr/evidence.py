"""Evidence written to both regions under one failure rule, and read back newest first.

One region down must not cost the record in the other: each region is written on its own, the
regions that failed are named, and only when no region took the record does the write fail.
(New writers use this; the older ones still carry their own loops, see ARCHITECTURE.md.)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from include.backup_dr.store import ObjectStore, StoreError

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def evidence_key(kind: str, subject: str, at: datetime, run_id: str) -> str:
    """`evidence/<kind>/<subject>/<stamp>-<run id>.json`: sortable by time, one per run."""
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"evidence/{kind}/{subject}/{stamp}-{_UNSAFE.sub('_', run_id).strip('_')}.json"


def write_everywhere(stores: Iterable[ObjectStore], key: str, document: Any) -> list[str]:
    """Put `document` at `key` in every region; returns the regions written. Raises StoreError
    only when no region took it."""
    written, failed = [], []
    for store in stores:
        try:
            store.put_json(key, document)
            written.append(store.region.name)
        except Exception as exc:  # any failure of one region must not stop the other
            log.exception("Evidence %s could not be written to %s", key, store.region.name)
            failed.append(f"{store.region.name}: {exc}")
    if not written:
        raise StoreError(f"evidence {key} could not be written to any region: {failed}")
    return written


def newest(stores: Iterable[ObjectStore], prefix: str) -> tuple[str, Any] | None:
    """The newest JSON record under `prefix` in any readable region (keys sort by time)."""
    best: str | None = None
    source: ObjectStore | None = None
    for store in stores:
        try:
            keys = [o.key for o in store.list_objects(prefix) if o.key.endswith(".json")]
        except StoreError as exc:
            log.warning("Cannot list %s in %s: %s", prefix, store.region.name, exc)
            continue
        if keys and (best is None or max(keys) > best):
            best, source = max(keys), store
    if best is None or source is None:
        return None
    return best, source.get_json(best)


def read_newest(
    stores: Iterable[ObjectStore], key: str, stamp: str = "updated_at"
) -> dict[str, Any] | None:
    """The copy of `key` with the newest `stamp` among the regions that answer (a state file
    both regions keep); None when no region holds it. Raises StoreError only when no region
    answers at all."""
    found, problems, asked = [], [], 0
    for store in stores:
        asked += 1
        try:
            document = store.get_json(key)
        except StoreError as exc:
            problems.append(str(exc))
            continue
        if isinstance(document, dict):
            found.append(document)
    if asked and len(problems) == asked:
        raise StoreError(f"{key} cannot be read in any region: " + " | ".join(problems))
    return max(found, key=lambda d: str(d.get(stamp, "")), default=None)
