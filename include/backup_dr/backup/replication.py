"""Media replication: keeps the secondary region within the media RPO between backups.

The 6-hourly backup alone would leave up to 6 h of new documents in one region only; the policy
promises 2 h. Every run lists the source once, copies into the secondary region's blob store
only the content it lacks (the media engine's incremental snapshot, aimed at the secondary),
and replaces the replica listing `replica/<category>/<target>/listing.jsonl` there: the
secondary's view of the source as of this run. Blob GC treats that listing as a kept snapshot.

Lag is the age of the oldest source change not yet in the secondary region, measured when the
run begins: the oldest LastModified among objects whose content had to be copied. A run finds
the state as it is, whatever window it was scheduled for, so a backfill of missed windows
catches up on its first run and copies nothing twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.backup.errors import NotBackedUp
from include.backup_dr.engines.media import EarlierListing, MediaSnapshot, replica_prefix
from include.backup_dr.evidence import evidence_key
from include.backup_dr.policy import Policy, format_duration
from include.backup_dr.store import ObjectStore
from include.backup_dr.stores import Stores

log = logging.getLogger(__name__)


class RpoExceeded(AirflowFailException):
    """The secondary region was further behind the source than the RPO allows."""


def measure_lag(began: datetime, oldest_missing: datetime | None) -> timedelta:
    """Age, when the run began, of the oldest source change the secondary lacked (0 if none)."""
    if oldest_missing is None:
        return timedelta(0)
    return max(began - oldest_missing, timedelta(0))


def replicate(
    policy: Policy, stores: Stores, target_name: str, run: dict[str, str]
) -> dict[str, Any]:
    """Bring the secondary region up to date with one media target's source; report the lag."""
    target = policy.target(target_name)
    if reason := target.skip_reason():
        raise NotBackedUp(reason)
    assert target.source is not None
    secondary = stores.secondary
    prefix = replica_prefix(target.category, target.name)
    state = secondary.get_json(prefix + "state.json")
    earlier = secondary.iter_chunks(prefix + "listing.jsonl") if state else ()
    previous = EarlierListing(earlier)
    source = ObjectStore.for_bucket(target.source.conn_id, target.source.bucket)
    began = datetime.now(UTC)
    try:
        grace = policy.prune.incomplete_upload_grace
        snapshot = MediaSnapshot(target, source, secondary, previous, grace)
        uploaded = secondary.upload_stream(prefix + "listing.jsonl", snapshot.stream)
        deleted = previous.unseen()
    finally:
        previous.close()
    finished = datetime.now(UTC)
    rpo = policy.categories[target.category].rpo
    lag = measure_lag(began, snapshot.oldest_missing)
    document = {
        "schema": "backup-dr/replication/v1",
        "target": target.name,
        "source": {"bucket": target.source.bucket, "prefix": target.source.prefix},
        "region": secondary.region.name,
        "began_at": began.isoformat(),
        "finished_at": finished.isoformat(),
        "listing": {"key": uploaded.key, "sha256": uploaded.sha256, "bytes": uploaded.size},
        **snapshot.counts,
        "deleted_since_last_run": deleted,
        "oldest_missing_change": (
            snapshot.oldest_missing.isoformat() if snapshot.oldest_missing else None
        ),
        "lag_seconds": round(lag.total_seconds(), 3),
        "rpo_seconds": rpo.total_seconds(),
        "within_rpo": lag <= rpo,
        "run": run,
    }
    secondary.put_json(prefix + "state.json", document)
    # The bucket is versioned: keep only the current listing, not one per hour forever.
    secondary.delete_all_versions(prefix + "listing.jsonl", keep_latest=True)
    # The replica's own record: kept where the replica is (see evidence.py).
    subject = f"{target.category}/{target.name}"
    secondary.put_json(evidence_key("replication", subject, began), document)
    log.info(
        "Replicated %s to %s: %d objects, %d copied (%d bytes), %d deleted since the last run; "
        "lag %s (RPO %s)",
        target.name,
        secondary.region.name,
        snapshot.counts["objects"],
        snapshot.counts["copied"],
        snapshot.counts["copied_bytes"],
        deleted,
        lag,
        format_duration(rpo),
    )
    return document


def check_rpo(state: dict[str, Any]) -> dict[str, Any]:
    """Fail (which pages on-call) when a replication run found the secondary beyond the RPO."""
    if not state["within_rpo"]:
        raise RpoExceeded(
            f"RPO exceeded for target {state['target']}: the secondary region "
            f"{state['region']} was {timedelta(seconds=round(state['lag_seconds']))} behind "
            f"the source (oldest missing change written {state['oldest_missing_change']}), "
            f"over the RPO of {format_duration(timedelta(seconds=state['rpo_seconds']))}. "
            f"It has caught up now ({state['copied']} objects copied); find out why it fell "
            "behind (missed runs, slow copies)."
        )
    log.info(
        "Target %s is within the RPO: lag %.0f s of %.0f s allowed",
        state["target"],
        state["lag_seconds"],
        state["rpo_seconds"],
    )
    return state
