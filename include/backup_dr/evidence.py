"""Records kept in both regions, under one failure rule: one region down never costs the
record in the other. A write succeeds when at least one region took it (the failures are
logged and returned, so a caller can say where it is missing); a read takes the newest copy
that any region gives."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from include.backup_dr.store import ObjectStore, StoreError

log = logging.getLogger(__name__)


def write_to_regions(stores: Iterable[ObjectStore], key: str, document: Any) -> list[str]:
    """Write `document` at `key` in every region that answers; the regions it is missing in.
    Raises StoreError only when no region took it."""
    written, missing = [], []
    for store in stores:
        try:
            store.put_json(key, document)
            written.append(store.region.name)
        except StoreError as exc:
            log.error("%s could not be written to %s: %s", key, store.region.name, exc)
            missing.append(store.region.name)
    if not written:
        raise StoreError(f"{key} could not be written to any region ({', '.join(missing)})")
    return missing


def read_newest(
    stores: Iterable[ObjectStore], key: str, stamp: str = "updated_at"
) -> dict[str, Any] | None:
    """The copy of `key` with the newest `stamp` among the regions that answer; None when no
    region holds it. Raises StoreError only when no region answers at all."""
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
