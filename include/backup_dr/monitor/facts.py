"""The compliance check's reads: what both regions' stores say about every promise, as the plain
facts `monitor/compliance.py` judges. Never Airflow's database.

A read that fails becomes an `error` on the facts it would have given (those checks say
UNKNOWN), never a crash: one region down must not hide what the other region shows.

The media re-hash history is the one incremental read: every integrity check leaves a record
under `evidence/integrity/<category>/<target>/` (kept for good), and re-reading a year of them
every 15 minutes would cost hundreds of requests. The `cache` (kept in the compliance state by
the DAG) holds, per target and region, the newest passed re-hash per sample bucket and the
records already read in the last few days; records are stamped with the time their check
began, so a long check's record can land after a later one's, hence a look-back, not a mark.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr.catalogue import Manifest, Verification, copy_from_listing, parse_window
from include.backup_dr.engines.media import (
    blob_bucket,
    parse_listing,
    rehash_bucket,
    replica_prefix,
)
from include.backup_dr.monitor import continuous
from include.backup_dr.monitor.checks.inputs import (
    BackupFacts,
    DrillFacts,
    MonitorFacts,
    RehashFacts,
    ReplicationFacts,
    StoreFacts,
    WindowFacts,
)
from include.backup_dr.policy import CONTINUOUS, Policy
from include.backup_dr.restore.record import measured_restore
from include.backup_dr.store import ObjectStore
from include.backup_dr.subjects import backup_subjects, drill_subjects, media_targets

log = logging.getLogger(__name__)

#: Integrity records stamped up to this long before the newest one may still be arriving
#: (a check's record is named after its start; the integrity task times out after 2 h).
REHASH_LOOKBACK = timedelta(days=2)


def read_facts(
    policy: Policy, stores: Iterable[ObjectStore], now: datetime, cache: Mapping[str, Any]
) -> tuple[StoreFacts, dict[str, Any]]:
    """Everything the checks need, and the re-hash cache brought up to date."""
    regions = list(stores)
    backups, newest_media = _backups(policy, regions)
    monitors = {s.name: _monitor(regions, s.name, now) for s in policy.continuous_servers()}
    replications = {name: _replication(policy, regions, name) for name in media_targets(policy)}
    drills = {name: _drill(policy, regions, name) for name in drill_subjects(policy)}
    windows = {
        (server.name, store.region.name): _window(policy, store, server.name)
        for server in policy.continuous_servers()
        for store in regions
    }
    rehash: dict[tuple[str, str], RehashFacts] = {}
    new_cache: dict[str, Any] = {}
    for name in media_targets(policy):
        category = policy.target(name).category
        for store in regions:
            label = f"{name}@{store.region.name}"
            newest = newest_media.get((name, store.region.name))
            facts, entry = read_rehash(store, category, name, now, cache.get(label), newest)
            rehash[(name, store.region.name)] = facts
            if entry is not None:
                new_cache[label] = entry
    return StoreFacts(backups, monitors, replications, drills, rehash, windows), new_cache


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def restore_bytes(manifest: Manifest) -> int:
    """What restoring the backup moves, in the unit its drill measures: listed bytes for media,
    the artifact (dump or base backup) otherwise."""
    if manifest.engine == "media":
        return int(manifest.source.get("bytes", manifest.artifact.size))
    return manifest.artifact.size


def _backups(
    policy: Policy, stores: list[ObjectStore]
) -> tuple[dict[tuple[str, str, str], BackupFacts], dict[tuple[str, str], Manifest]]:
    """Per subject, tier and region: the newest verified backup. Also, per media target and
    region, the newest verified snapshot (whose listing counts the blobs)."""
    tiers: dict[tuple[str, str], list[str]] = {}
    for item in backup_subjects(policy):
        tiers.setdefault((item.category, item.subject), []).append(item.tier)
    found: dict[tuple[str, str, str], BackupFacts] = {}
    newest_media: dict[tuple[str, str], Manifest] = {}
    for (category, subject), names in tiers.items():
        for store in stores:
            region = store.region.name
            try:
                listing = store.listing(f"{category}/{subject}/")
            except Exception as exc:  # this region's facts become UNKNOWN, the rest go on
                log.warning("Cannot read %s/%s in %s: %s", category, subject, region, exc)
                for tier in names:
                    found[(subject, tier, region)] = BackupFacts(error=_why(exc))
                continue
            verified = []
            for tier in names:
                manifests = [m for b, m in listing.manifests.items() if b.tier == tier]
                passed = [
                    m
                    for m in manifests
                    if copy_from_listing(listing, m.backup).verification is Verification.PASSED
                ]
                newest = max(passed, key=lambda m: m.started_at, default=None)
                newer = [m for m in manifests if newest is None or m.started_at > newest.started_at]
                found[(subject, tier, region)] = BackupFacts(
                    restore_point=newest.started_at if newest else None,
                    window=newest.backup.window if newest else None,
                    restore_bytes=restore_bytes(newest) if newest else None,
                    newer_unverified=len(newer),
                )
                verified.extend(passed)
            if verified and policy.categories[category].engine == "media":
                newest_media[(subject, region)] = max(verified, key=lambda m: m.started_at)
    return found, newest_media


def _monitor(stores: list[ObjectStore], server: str, now: datetime) -> MonitorFacts:
    """The newest monitor record of today or yesterday (UTC), from the first readable region:
    listing two days' keys, not a year of records."""
    prefix = continuous.evidence_prefix(server)
    problems = []
    for store in stores:
        try:
            keys = [
                obj.key
                for day in (now, now - timedelta(days=1))
                for obj in store.list_objects(f"{prefix}{day.astimezone(UTC):%Y%m%d}")
            ]
            if not keys:
                return MonitorFacts()
            key = max(keys)
            doc = store.get_json(key) or {}
            stats = doc.get("stats", {})
            return MonitorFacts(
                evidence=key,
                measured_at=datetime.fromisoformat(doc["finished_at"]),
                samples=int(stats.get("count") or 0),
                p99_ms=stats.get("p99_ms"),
                max_ms=stats.get("max_ms"),
                archive_age_seconds=doc.get("archive_age_seconds"),
                ready_files=(doc.get("archiver") or {}).get("ready_files"),
                conditions=dict(doc.get("conditions", {})),
                settings=doc.get("settings"),
                sync_state=(doc.get("replication") or {}).get("sync_state"),
            )
        except Exception as exc:
            log.warning("Cannot read the monitor evidence of %s in %s: %s", server, store, exc)
            problems.append(f"{store.region.name}: {_why(exc)}")
    return MonitorFacts(error="; ".join(problems))


def _window(policy: Policy, store: ObjectStore, server: str) -> WindowFacts:
    """What `store`'s region can recover `server` to, and since when the tier has run there
    (its first prune record: the window cannot be older than the tier)."""
    from include.backup_dr.pitr.window import recovery_range

    try:
        span = recovery_range(policy, store, server)
        prunes = (
            f"evidence/prune/{policy.subject(server, CONTINUOUS).category}/{server}/{CONTINUOUS}/"
        )
        first = next(store.list_objects(prunes), None)
    except Exception as exc:  # this region's window becomes UNKNOWN, the rest go on
        log.warning("Cannot read the recovery window of %s in %s: %s", server, store, exc)
        return WindowFacts(error=_why(exc))
    return WindowFacts(
        intervals=span.intervals,
        since=_stamp(first.key, prunes) if first else None,
        gaps=tuple(b.gap_at for b in span.usable() if b.gap_at),
        detail=span.wal_detail,
    )


def _replication(policy: Policy, stores: list[ObjectStore], target: str) -> ReplicationFacts:
    """media_replicate's state, which lives in the secondary region only."""

    secondary = next(s for s in stores if s.region.name == policy.regions.secondary.name)
    key = replica_prefix(policy.target(target).category, target) + "state.json"
    try:
        state = secondary.get_json(key)
    except Exception as exc:
        return ReplicationFacts(error=f"{secondary.region.name}: {_why(exc)}")
    if state is None:
        return ReplicationFacts()
    return ReplicationFacts(
        began_at=datetime.fromisoformat(state["began_at"]),
        lag_seconds=float(state["lag_seconds"]),
        evidence=secondary.where(key),
    )


def _drill(policy: Policy, stores: list[ObjectStore], subject: str) -> DrillFacts:
    """The newest restore drill record of a target or server, from either region (each drill
    writes both; a region that cannot be read is skipped)."""
    prefix = f"evidence/restore_verification/{subject}/"
    found: dict[str, ObjectStore] = {}
    problems = []
    for store in stores:
        try:
            for obj in store.list_objects(prefix):
                if obj.key.endswith("/report.json"):
                    found.setdefault(obj.key, store)
        except Exception as exc:
            problems.append(f"{store.region.name}: {_why(exc)}")
    if len(problems) == len(stores):
        return DrillFacts(error="; ".join(problems))
    if not found:
        return DrillFacts()
    key = max(found)
    try:
        doc = found[key].get_json(key) or {}
        backup = doc.get("backup", {})
        media = policy.categories[backup["category"]].engine == "media"
        restored, seconds = measured_restore(doc, media)
        return DrillFacts(
            evidence=key.removesuffix("/report.json"),
            recorded_at=datetime.fromisoformat(doc["recorded_at"]),
            outcome=doc.get("outcome"),
            problems=tuple(doc.get("problems", [])),
            tier=backup.get("tier"),
            region=backup.get("region"),
            restored_bytes=restored,
            seconds=seconds,
        )
    except Exception as exc:
        return DrillFacts(error=f"{key}: {_why(exc)}")


def read_rehash(
    store: ObjectStore,
    category: str,
    target: str,
    now: datetime,
    cached: Mapping[str, Any] | None,
    newest: Manifest | None,
) -> tuple[RehashFacts, dict[str, Any] | None]:
    """The target's re-hash history in one region, from its integrity records; read only the
    records not read before (all of them without a recent cache)."""
    prefix = f"evidence/integrity/{category}/{target}/"
    try:
        recent = cached is not None and now - _at(cached["listed_at"]) < REHASH_LOOKBACK
        if recent:
            assert cached is not None
            days = {now - timedelta(days=n) for n in range(REHASH_LOOKBACK.days + 1)}
            keys = sorted(
                obj.key
                for day in days
                for obj in store.list_objects(f"{prefix}{day.astimezone(UTC):%Y%m%d}")
            )
            passed = {int(b): _at(t) for b, t in cached["passed"].items()}
            since = _at(cached["since"]) if cached.get("since") else None
            read = set(cached["read"])
        else:
            keys = sorted(obj.key for obj in store.list_objects(prefix))
            passed, since, read = {}, None, set()
        for key in keys:
            stamp = _stamp(key, prefix)
            since = stamp if since is None else min(since, stamp)
            if key in read:
                continue
            doc = store.get_json(key) or {}
            checked_at = datetime.fromisoformat(doc["checked_at"])
            rehash = next((c for c in doc.get("checks", []) if c["name"] == "sample_rehash"), None)
            if rehash is not None and rehash["ok"]:
                bucket = rehash_bucket(checked_at)
                passed[bucket] = max(passed.get(bucket, checked_at), checked_at)
        keep_from = now - REHASH_LOOKBACK - timedelta(days=1)
        entry = {
            "listed_at": now.isoformat(),
            "since": since.isoformat() if since else None,
            "passed": {str(b): t.isoformat() for b, t in sorted(passed.items())},
            "read": sorted(k for k in keys if _stamp(k, prefix) >= keep_from),
        }
    except Exception as exc:
        log.warning("Cannot read the integrity records of %s in %s: %s", target, store, exc)
        return RehashFacts(error=_why(exc)), None
    return RehashFacts(passed, since, _blobs_per_bucket(store, newest)), entry


def _blobs_per_bucket(store: ObjectStore, manifest: Manifest | None) -> dict[int, int] | None:
    """How many distinct blobs of the snapshot fall in each sample bucket (None: unreadable)."""
    if manifest is None:
        return None
    try:
        unique = {e.sha256 for e in parse_listing(store.iter_chunks(manifest.artifact.key))}
    except Exception as exc:
        log.warning("Cannot read the listing %s: %s", store.where(manifest.artifact.key), exc)
        return None
    return dict(Counter(blob_bucket(sha) for sha in unique))


def _stamp(key: str, prefix: str) -> datetime:
    """The time in a record key `<prefix><YYYYmmddTHHMMSSZ>-<hex>.json`."""
    return parse_window(key.removeprefix(prefix).split("-", 1)[0])


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)
