"""Break glass: delete a backup its governance lock still holds, on purpose and on the record.

The backup connections can never do this (the README's IAM split: no
s3:BypassGovernanceRetention for the backup role). Only the region's `object_lock.bypass_conn_id`
can, and only through here: the request is written as evidence in both regions before anything
is deleted (itself under lock), and the outcome after, so an auditor sees who removed what, why
and when, even if the deletion fails half way.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from include.backup_dr.catalogue import MANIFEST_NAME, BackupId, window_label
from include.backup_dr.immutability import LockRule
from include.backup_dr.pipeline import Stores
from include.backup_dr.policy import Policy
from include.backup_dr.store import ObjectStore

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
    key = f"evidence/break-glass/{window_label(now)}-{uuid.uuid4().hex[:8]}.json"
    for each in stores:  # before the act: a deletion without its record must not be possible
        each.put_json(key, record)
    log.warning("BREAK GLASS by %s: deleting %s in %s (%s)", operator, backup, region.name, reason)
    try:
        deleted = glass.delete_all_versions(backup.prefix)
    except Exception as exc:
        record.update(outcome=f"failed: {exc}", finished_at=datetime.now(UTC).isoformat())
        for each in stores:
            each.put_json(key, record)
        raise
    record.update(
        outcome="deleted", deleted_versions=deleted, finished_at=datetime.now(UTC).isoformat()
    )
    for each in stores:
        each.put_json(key, record)
    return {**record, "evidence": key}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
