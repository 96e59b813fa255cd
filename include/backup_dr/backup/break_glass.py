"""Break glass: delete a backup its governance lock still holds, on purpose and on the record.

The backup connections can never do this (the README's IAM split: no
s3:BypassGovernanceRetention for the backup role). Only the region's `object_lock.bypass_conn_id`
can, and only through here: the request is written as evidence before anything is deleted
(itself under lock), and the outcome after, so an auditor sees who removed what, why and when,
even if the deletion fails half way. Both regions are written under evidence.py's rule: the
deletion starts once at least one region holds the request.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from include.backup_dr.catalogue import MANIFEST_NAME, BackupId
from include.backup_dr.evidence import evidence_key, write_everywhere
from include.backup_dr.immutability import LockRule
from include.backup_dr.policy import Policy
from include.backup_dr.store import ObjectStore
from include.backup_dr.stores import Stores

log = logging.getLogger(__name__)


def delete_locked_backup(
    policy: Policy, backup: BackupId, role: str, *, reason: str, operator: str
) -> dict[str, Any]:
    """Delete every version of `backup` in the `role` region ("primary" or "secondary"),
    bypassing its governance lock through the break-glass connection. Returns the evidence."""
    if not reason.strip():
        raise ValueError(
            "a break-glass deletion needs a reason: it is the auditor's first question"
        )
    region = getattr(policy.regions, role)
    glass = ObjectStore.for_break_glass(region, LockRule.for_region(policy, region))
    stores = Stores.from_policy(policy)
    store = stores.role(role)
    now = datetime.now(UTC)
    record: dict[str, Any] = {
        "schema": "backup-dr/break-glass/v1",
        "action": "delete a locked backup (governance bypass)",
        "backup": str(backup),
        "region": region.name,
        "bucket": region.bucket,
        "connection": region.object_lock.bypass_conn_id if region.object_lock else None,
        "operator": operator,
        "reason": reason,
        "requested_at": now.isoformat(),
        "locked_until": _iso(store.locked_until(backup.key(MANIFEST_NAME))),
        "outcome": "requested",
    }
    key = evidence_key("break-glass", "", now)
    # Before the act: a deletion without its record must not be possible.
    write_everywhere(stores, key, record)
    log.warning("BREAK GLASS by %s: deleting %s in %s (%s)", operator, backup, region.name, reason)
    try:
        deleted = glass.delete_all_versions(backup.prefix)
    except Exception as exc:
        record.update(outcome=f"failed: {exc}", finished_at=datetime.now(UTC).isoformat())
        write_everywhere(stores, key, record)
        raise
    record.update(
        outcome="deleted", deleted_versions=deleted, finished_at=datetime.now(UTC).isoformat()
    )
    written = write_everywhere(stores, key, record)
    missing = [each.region.name for each in stores if each.region.name not in written]
    return {**record, "evidence": key, "evidence_missing_in": missing}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
