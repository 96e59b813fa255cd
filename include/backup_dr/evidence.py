"""Evidence and state records: their keys, written under one failure rule, read newest first.

Keys: `evidence_key` builds every record's key, `evidence/<kind>/<subject>/<stamp>-<id><ending>`
(the stamp is a window label, UTC to the second, so keys sort by time; the id is the run's, or
a random one so that two records of one second both stay). A record may be a directory of files
(`<stamp>-<id>/report.json`, report.md ...), and a prune's refusals sit beside its plan
(`refusals_key`).

The failure rule, for every record about the estate (plans, drills, restores, audits,
failovers, compliance and monitor runs, break glass, and the state files beside them):
- every region is written on its own: one that fails never stops the next;
- a region that fails is named: logged, and left out of the regions returned, which callers
  keep in the record's result (`evidence_missing_in`, `regions`);
- the write fails (StoreError) only when no region took the record;
- a record that must exist before an action (a prune plan, a break-glass request) is written
  before it, and the action starts only if that write succeeded by this rule.
One region holding the record is enough to act: evidence is locked from its write, and readers
take each record from the first region that has it, so an action never runs without a durable
record, and one region down never stops a backup system from pruning, recording or deleting
on purpose in the other (where it fails anyway if that region is the one down). A task may
still go red once its work is done when a region lacks its record, so that on-call looks (the
continuous monitor does); the record stays where it was written.

A record about one region's own copy is kept in that region only, and the step fails with it
(it could not act on that region either): integrity checks, garbage-collection sweeps, recovery
windows, the replica's listing and its run, and the WAL lock markers under `wal/<server>/`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from include.backup_dr.catalogue import WINDOW_FORMAT
from include.backup_dr.store import ObjectStore, StoreError

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Kinds whose records have been stamped otherwise from their first release; their readers
#: compare keys, so the shape stays.
_STAMPS = {"continuous_monitor": "%Y%m%dT%H%M%S"}
#: A prune's (or a sweep's) refusals, beside its plan: `<plan stem>-refused.json`.
REFUSALS_SUFFIX = "-refused.json"


def evidence_key(
    kind: str, subject: str, at: datetime, run_id: str | None = None, *, ending: str = ".json"
) -> str:
    """`evidence/<kind>/<subject>/<stamp>-<id><ending>`: sortable by time, and one per run
    (`run_id`) or, without one, unique (a random id). `subject` may be empty or hold slashes;
    `ending` "/" gives a directory-style record's prefix."""
    stamp = at.astimezone(UTC).strftime(_STAMPS.get(kind, WINDOW_FORMAT))
    unique = uuid.uuid4().hex[:8] if run_id is None else _UNSAFE.sub("_", run_id).strip("_")
    folder = "/".join(part for part in ("evidence", kind, subject) if part)
    return f"{folder}/{stamp}-{unique}{ending}"


def refusals_key(plan_key: str) -> str:
    """Where the refusals of the plan at `plan_key` are kept, beside it."""
    return plan_key.removesuffix(".json") + REFUSALS_SUFFIX


def write_everywhere(stores: Iterable[ObjectStore], key: str, document: Any) -> list[str]:
    """Put `document` (JSON, or JSON text) at `key` in every region under the failure rule;
    the regions written."""
    return _each_region(stores, key, lambda store: store.put_json(key, document))


def write_files_everywhere(
    stores: Iterable[ObjectStore], prefix: str, files: Mapping[str, tuple[bytes, str]]
) -> list[str]:
    """A directory-style record: each `name: (body, content type)` at `prefix + name`, in every
    region under the failure rule; a region counts as written once all its files are."""

    def put(store: ObjectStore) -> None:
        for name, (body, content_type) in files.items():
            store.put_bytes(prefix + name, body, content_type)

    return _each_region(stores, prefix, put)


def _each_region(
    stores: Iterable[ObjectStore], what: str, put: Callable[[ObjectStore], None]
) -> list[str]:
    written, failed = [], []
    for store in stores:
        try:
            put(store)
            written.append(store.region.name)
        except Exception as exc:  # any failure of one region must not stop the other
            log.exception("Evidence %s could not be written to %s", what, store.region.name)
            failed.append(f"{store.region.name}: {exc}")
    if not written:
        raise StoreError(f"evidence {what} could not be written to any region: {failed}")
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
