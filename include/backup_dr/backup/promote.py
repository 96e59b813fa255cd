"""A tier's backup made from another tier's verified backup (`derive_from` in the policy):
server-side copies in each region, no read of the source, its own manifest naming where it came
from. The rules (which backup, or why none) are `promotion.py`'s; this is their I/O.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.catalogue import (
    MANIFEST_NAME,
    BackupId,
    Manifest,
    backup_window,
    build_catalogue,
)
from include.backup_dr.policy import Policy
from include.backup_dr.promotion import (
    Candidate,
    Promotion,
    plan_promotion,
    promoted_label,
    promoted_manifest,
    source_windows,
)
from include.backup_dr.store import ObjectStore
from include.backup_dr.stores import Stores, backup_ref

log = logging.getLogger(__name__)

#: How often a promoting tier looks again for its source's verdict (the task is rescheduled in
#: between, like a sensor, so it holds no worker and no pool slot while it waits).
PROMOTION_POLL_ENV = "BACKUP_PROMOTION_POLL_SECONDS"


def poll() -> timedelta:
    """`BACKUP_PROMOTION_POLL_SECONDS` if set, else two minutes."""
    value = os.environ.get(PROMOTION_POLL_ENV)
    poll = timedelta(seconds=float(value)) if value else timedelta(minutes=2)
    if poll <= timedelta(0):
        raise ValueError(f"{PROMOTION_POLL_ENV} must be positive, not {value!r}")
    return poll


def _now() -> datetime:
    return datetime.now(UTC)


def plan(policy: Policy, stores: Stores, backup: BackupId) -> Promotion:
    """Which backup of the source tier (`derive_from`) this window may promote, from both
    regions' catalogues of that tier."""
    rules = policy.categories[backup.category].tiers[backup.tier]
    assert rules.derive_from is not None and rules.max_skew is not None
    source = policy.categories[backup.category].tiers[rules.derive_from]
    listings = [
        store.listing(f"{backup.category}/{backup.target}/{rules.derive_from}/") for store in stores
    ]
    found, _ = build_catalogue(listings)
    manifests = listings[0].manifests
    candidates = [
        Candidate(
            b.id,
            manifests[b.id].started_at,
            {region: copy.verification for region, copy in b.copies.items()},
        )
        for b in found
        if b.id in manifests
    ]
    now = _now()
    due = [w for w in source_windows(source.schedule, backup.window, rules.max_skew) if w <= now]
    regions = [store.region.name for store in stores]
    return plan_promotion(
        backup.window, rules.derive_from, rules.max_skew, candidates, due, regions, now
    )


def _copy_within(
    store: ObjectStore, source: Manifest, derived: BackupId
) -> tuple[str, dict[str, str]]:
    """Copy a backup's artifact and what lies beside it to `derived`'s keys in the same region,
    server-side (no bytes through the worker), locked as the derived tier's keys say. The
    manifest is the caller's, last. Returns how it was copied, and each key's new key."""
    moved = {source.artifact.key: derived.key(source.artifact.key.rpartition("/")[2])}
    mode = store.copy_from(
        store, source.artifact.key, source.artifact.size, dest_key=moved[source.artifact.key]
    )
    if entry := source.source.get("globals"):
        moved[entry["key"]] = derived.key(entry["key"].rpartition("/")[2])
        store.copy_from(store, entry["key"], int(entry["size"]), dest_key=moved[entry["key"]])
    return mode, moved


def promote(
    stores: Stores, backup: BackupId, plan: Promotion, run: dict[str, str]
) -> dict[str, Any]:
    """Promote the planned backup into `backup` in the primary region (the secondary's copy is
    `copy_to_secondary`'s, from the secondary's own copy of the source)."""
    assert plan.source is not None
    primary = stores.primary
    source = primary.manifest(plan.source.backup)
    if source is None:
        raise AirflowFailException(
            f"{plan.source.backup} vanished from {primary.region.name} while being promoted"
        )
    log.info("Promoting %s into %s: %s", plan.source.backup, backup, plan.reason)
    mode, moved = _copy_within(primary, source, backup)
    manifest = promoted_manifest(
        source,
        backup,
        moved=moved,
        region=primary.region.name,
        encryption=primary.encryption_at_rest(),
        run=run,
        promoted_at=_now(),
        mode=mode,
    )
    primary.put_json(backup.key(MANIFEST_NAME), manifest.to_json())
    label = promoted_label(manifest.derived_from)
    log.info(
        "Committed %s, %s (%s): %d bytes, sha256 %s",
        backup,
        label,
        mode,
        manifest.artifact.size,
        manifest.artifact.sha256,
    )
    return {
        **backup_ref(backup),
        "reused": False,
        "size": manifest.artifact.size,
        "promoted": label,
    }


def to_secondary(stores: Stores, reference: Manifest) -> Manifest | None:
    """The secondary's copy of a promoted backup, made there from the secondary's own copy of
    its source (server-side, no cross-region transfer); None when that copy is not the same
    bytes (then the backup is copied across regions like any other)."""
    assert reference.derived_from is not None
    secondary = stores.secondary
    source_id = BackupId(
        reference.backup.category,
        reference.backup.target,
        reference.derived_from["tier"],
        backup_window(datetime.fromisoformat(reference.derived_from["window"])),
    )
    source = secondary.manifest(source_id)
    if source is None or source.artifact.sha256 != reference.artifact.sha256:
        return None
    mode, _ = _copy_within(secondary, source, reference.backup)
    return dataclasses.replace(
        reference,
        region=secondary.region.name,
        encryption=secondary.encryption_at_rest(),
        copied_from={
            "region": secondary.region.name,
            "bucket": secondary.bucket,
            "key": source.artifact.key,
            "mode": f"{mode} of {source_id} within {secondary.region.name}",
            "copied_at": _now().isoformat(),
        },
    )
