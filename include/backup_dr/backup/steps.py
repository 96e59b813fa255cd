"""The four steps every backup tier runs, as plain functions of the policy and a backup id.

The DAG factory wraps each in a task; the benchmarks and tests call them the same way. Every step
is idempotent for its window, so retries and re-runs of a window never store a duplicate.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

from include.backup_dr import __version__
from include.backup_dr.backup import promote
from include.backup_dr.backup.errors import CircuitBreakerTripped, IntegrityError, NotBackedUp
from include.backup_dr.catalogue import (
    INTEGRITY_NAME,
    MANIFEST_NAME,
    Artifact,
    BackupId,
    Manifest,
    backup_window,
    build_catalogue,
    window_label,
)
from include.backup_dr.engines import engine_for
from include.backup_dr.engines.wal import hold_recovery_window
from include.backup_dr.evidence import evidence_key, refusals_key, write_everywhere
from include.backup_dr.integrity import check_copy
from include.backup_dr.policy import CONTINUOUS, Policy
from include.backup_dr.retention import (
    Decision,
    PrunePlan,
    hold_locked,
    plan_prune,
    recovery_holds,
)
from include.backup_dr.store import DeleteRefusedError, ObjectStore, StoreError
from include.backup_dr.stores import Stores, backup_ref, from_ref

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def take_snapshot(
    policy: Policy,
    stores: Stores,
    target_name: str,
    tier: str,
    window: datetime,
    run: dict[str, str],
) -> dict[str, Any]:
    """Stream a consistent snapshot of one target into the primary region; manifest last.
    Database servers are reached through their current primary (`roles.follow`)."""
    from include.backup_dr.roles import follow

    target = policy.subject(target_name, tier)
    if reason := target.skip_reason():
        raise NotBackedUp(reason)
    backup = BackupId(target.category, target.name, tier, backup_window(window))
    primary = stores.primary

    existing = primary.manifest(backup)
    if existing is not None:
        if not _failed_check(primary, backup, existing):
            log.info(
                "Window %s of %s already has a backup taken at %s; not storing a duplicate.",
                window_label(window),
                backup,
                existing.finished_at.isoformat(),
            )
            return {**backup_ref(backup), "reused": True, "size": existing.artifact.size}
        log.warning("The backup of %s failed its integrity check; taking it again.", backup)

    rules = policy.categories[target.category].tiers[tier]
    not_derived = None
    if rules.derive_from is not None:
        plan = promote.plan(policy, stores, backup)
        if plan.wait_until is not None:
            log.info("%s: %s", backup, plan.reason)
            raise AirflowRescheduleException(min(_now() + promote.poll(), plan.wait_until))
        if plan.source is not None:
            return promote.promote(stores, backup, plan, run)
        log.warning("%s: not promoted from %s, so %s", backup, rules.derive_from, plan.reason)
        not_derived = plan.reason

    engine = engine_for(policy.engine_name(target.category, tier))
    if target.server is not None:
        policy = follow(policy, stores, [target.server])
    key = backup.key(f"data.{engine.extension}")
    started = _now()
    log.info("Snapshotting %s into %s", backup, primary.where(key))
    with engine.open_snapshot(policy, target, primary, backup) as snapshot:
        uploaded = primary.upload_stream(key, snapshot.stream, on_eof=snapshot.finish)
        facts = snapshot.facts()
    finished = _now()
    manifest = Manifest(
        backup=backup,
        region=primary.region.name,
        artifact=Artifact(uploaded.key, uploaded.size, uploaded.sha256),
        engine=engine.name,
        started_at=started,
        finished_at=finished,
        source=facts.source,
        tool_versions={**facts.tool_versions, "backup_dr": __version__},
        encryption=primary.encryption_at_rest(),
        row_counts=facts.row_counts,
        keys=facts.keys,
        run=run,
        not_derived=not_derived,
    )
    primary.put_json(backup.key(MANIFEST_NAME), manifest.to_json())
    seconds = (finished - started).total_seconds()
    log.info(
        "Committed %s: %d bytes, sha256 %s, %d tables, %.1f s",
        backup,
        uploaded.size,
        uploaded.sha256,
        len(facts.row_counts),
        seconds,
    )
    return {**backup_ref(backup), "reused": False, "size": uploaded.size, "seconds": seconds}


def copy_to_secondary(policy: Policy, stores: Stores, ref: dict[str, str]) -> dict[str, Any]:
    """Copy a committed backup to the secondary region, re-encrypted there; manifest last."""
    backup = from_ref(ref)
    primary, secondary = stores.primary, stores.secondary
    reference = primary.manifest(backup)
    if reference is None:
        raise AirflowFailException(
            f"{backup}: no manifest in {primary.region.name}; nothing to copy"
        )
    present = secondary.manifest(backup)
    engine = engine_for(reference.engine)
    same = present is not None and present.artifact.sha256 == reference.artifact.sha256
    if same and _failed_check(secondary, backup, reference):
        log.warning(
            "%s failed its integrity check in %s; copying it again.", backup, secondary.region.name
        )
    elif same:
        log.info("%s is already in %s; nothing to copy.", backup, secondary.region.name)
        if engine.contents_keep_arriving:  # WAL: fill whatever the secondary still lacks
            log.info(engine.copy_contents(reference, primary, secondary))
        return {**ref, "copy": "already present"}
    # A promoted copy is made from the secondary's own source, unless this is a copy that failed
    # its check there: the source may have rotted too, so the primary's verified bytes are taken.
    if (
        reference.derived_from is not None
        and not same
        and (promoted := promote.to_secondary(stores, reference))
    ):
        secondary.put_json(backup.key(MANIFEST_NAME), promoted.to_json())
        log.info("Promoted %s in %s too (%s).", backup, secondary.region.name, promoted.copied_from)
        return {**ref, "copy": promoted.copied_from["mode"]}  # type: ignore[index]
    contents = engine.copy_contents(reference, primary, secondary)
    mode = secondary.copy_from(primary, reference.artifact.key, reference.artifact.size)
    copied = dataclasses.replace(
        reference,
        region=secondary.region.name,
        encryption=secondary.encryption_at_rest(),
        copied_from={
            "region": primary.region.name,
            "bucket": primary.bucket,
            "key": reference.artifact.key,
            "mode": mode,
            "contents": contents,
            "copied_at": _now().isoformat(),
        },
    )
    secondary.put_json(backup.key(MANIFEST_NAME), copied.to_json())
    log.info(
        "Copied %s to %s (%s; %s).", backup, secondary.where(reference.artifact.key), mode, contents
    )
    return {**ref, "copy": mode}


def _failed_check(store: ObjectStore, backup: BackupId, reference: Manifest) -> bool:
    """Whether `store`'s copy of this very artifact failed its last integrity check there."""
    evidence = store.get_json(backup.key(INTEGRITY_NAME))
    return (
        evidence is not None
        and evidence.get("artifact_sha256") == reference.artifact.sha256
        and not evidence.get("ok")
    )


def check_integrity(policy: Policy, stores: Stores, ref: dict[str, str]) -> dict[str, Any]:
    """Check both regions' copies; record evidence beside each; fail loudly on any mismatch."""
    backup = from_ref(ref)
    reference = stores.primary.manifest(backup)
    if reference is None:
        raise IntegrityError(f"{backup}: manifest missing in {stores.primary.region.name}")
    engine = engine_for(reference.engine)
    reports = []
    for store in stores:
        report = check_copy(store, reference, engine)
        document = {
            **report.to_document(),
            "artifact_sha256": reference.artifact.sha256,
            # Where the data came from outlives the manifest (the audit reads it after prune).
            "derived_from": reference.derived_from,
            "not_derived": reference.not_derived,
        }
        store.put_json(backup.key(INTEGRITY_NAME), document)
        # Kept for good (integrity.json beside the copy is overwritten by the next check and
        # pruned with it): this region's check, in this region.
        subject = f"{backup.category}/{backup.target}"
        at = datetime.fromisoformat(report.checked_at)
        store.put_json(evidence_key("integrity", subject, at), document)
        log.info(report.summary())
        reports.append(report)
    failed = [report for report in reports if not report.ok]
    if failed:
        raise IntegrityError(
            f"Integrity check failed for target {backup.target} ({backup}): "
            + " | ".join(report.summary() for report in failed)
        )
    return {
        **ref,
        "verified_regions": [report.region for report in reports],
        "bytes_read": sum(report.bytes_read for report in reports),
    }


def plan_for(
    policy: Policy,
    stores: Iterable[ObjectStore],
    category: str,
    target: str,
    tier: str,
    now: datetime,
) -> PrunePlan:
    """Read the regions' catalogues of one target's tier (both, for a prune) and plan."""
    prefix = f"{category}/{target}/{tier}/"
    stores = list(stores)
    backups, debris = build_catalogue(store.listing(prefix) for store in stores)
    retention = {tier: policy.categories[category].tiers[tier].retention}
    plan = plan_prune(
        backups,
        debris,
        retention,
        now,
        grace=policy.prune.incomplete_upload_grace,
        max_delete_fraction=policy.prune.max_delete_fraction,
        recovery_windows=frozenset({CONTINUOUS}) & retention.keys(),
    )
    locked = {store.region.name: store for store in stores if store.lock is not None}
    if not locked:
        return plan
    # Read the lock of each planned deletion (a backup's manifest's, written last with the same
    # date; debris's own): what the store would refuse is kept, with its date, not attempted.
    # An unfinished multipart upload has no version to lock.
    locks = {
        decision.subject: until
        for decision in plan.deletions
        if decision.region in locked
        if (key := _lock_key(decision)) is not None
        if (until := locked[decision.region].locked_until(key))
    }
    return hold_locked(plan, locks, now, policy.prune.max_delete_fraction)


def _lock_key(decision: Decision) -> str | None:
    """The object whose lock decides whether `decision`'s deletion would be refused."""
    if decision.backup is not None:
        return decision.backup.key(MANIFEST_NAME)
    assert decision.debris is not None
    return None if decision.debris.upload_id else decision.debris.key


def _hold_recovery_window(
    policy: Policy, stores: Stores, target: str, tier: str, plan: PrunePlan, now: datetime
) -> list[dict[str, Any]]:
    """Extend the locks of the base backups and WAL that prune keeps of a recovery window, in
    each region that locks (see `retention.RecoveryHold`); other tiers need nothing."""
    locking = [store for store in stores if store.lock is not None]
    if tier != CONTINUOUS or not locking:
        return []
    category = policy.subject(target, tier).category
    retention = policy.categories[category].tiers[tier].retention
    backups, _ = build_catalogue(s.listing(f"{category}/{target}/{tier}/") for s in stores)
    holds = recovery_holds(backups, retention, now)
    kept = {(d.backup, d.region) for d in plan.keeps if d.backup is not None}
    done = []
    for store in locking:
        region = store.region.name
        mine = [
            hold
            for key, hold in holds.items()
            if key in kept and key[1] == region and hold.until > now
        ]
        report = hold_recovery_window(store, target, mine, now)
        log.info(
            "%s: locks extended to hold the recovery window: %d base backup(s), %d WAL "
            "range(s) of %d file(s)",
            region,
            report["bases"],
            report["wal_ranges"],
            report["wal_files"],
        )
        done.append(report)
    return done


def _record_windows(policy: Policy, stores: Stores, server: str) -> None:
    """The recovery window each region is left with, as evidence (the audit report reads it);
    one region unreadable never costs the other's record."""
    from include.backup_dr.pitr.window import record_window

    for store in stores:
        try:
            span = record_window(policy, store, server, _now())
            log.info("Recovery window left: %s", span.describe())
        except StoreError as exc:
            log.error("The recovery window in %s could not be recorded: %s", store.region.name, exc)


def prune(
    policy: Policy,
    stores: Stores,
    target: str,
    tier: str,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    override_circuit_breaker: bool = False,
) -> dict[str, Any]:
    """Plan, record the plan as evidence in both regions, then (unless stopped) carry it out.
    A step whose lease is lost stops at its next delete: the store's tenure guard refuses it."""
    category = policy.subject(target, tier).category
    # Only what the plan saw is the plan's to delete: a version written after the listing (a
    # window re-taken meanwhile) survives, whatever runs beside this prune. S3 stamps versions
    # to the second, so the bound is a whole second before the listing began.
    listed_from = _now().replace(microsecond=0) - timedelta(seconds=1)
    now = now or _now()
    plan = plan_for(policy, stores, category, target, tier, now)
    for decision in plan.decisions:
        log.info("%-6s %s: %s", decision.action.value.upper(), decision.subject, decision.reason)
    stopped = plan.breaker is not None and not override_circuit_breaker
    evidence = {
        "schema": "backup-dr/prune/v1",
        "target": target,
        "tier": tier,
        "planned_at": now.isoformat(),
        "dry_run": dry_run,
        "circuit_breaker": plan.breaker,
        "executed": not (dry_run or stopped),
        "decisions": [
            {"subject": d.subject, "action": d.action.value, "reason": d.reason}
            for d in plan.decisions
        ],
    }
    key = evidence_key("prune", f"{category}/{target}/{tier}", now)
    # Before any deletion; one region holding the plan is enough (evidence.py's rule).
    written = write_everywhere(stores, key, evidence)
    if stopped:
        raise CircuitBreakerTripped(f"target {target}, tier {tier}: {plan.breaker}")
    held = [] if dry_run else _hold_recovery_window(policy, stores, target, tier, plan, now)
    refused: list[dict[str, str]] = []
    refusals = None
    if dry_run:
        log.info("Dry run: %d deletions planned, none made.", len(plan.deletions))
    else:
        try:
            for decision in plan.deletions:
                if refusal := _delete(stores.by_region(decision.region), decision, listed_from):
                    refused.append(refusal)
        except BaseException as exc:  # the refusals already met are evidence all the same
            _record_refusals(stores, key, evidence, refused, f"{type(exc).__name__}: {exc}")
            raise
        refusals = _record_refusals(stores, key, evidence, refused, None)
        # What the deleted backups referred to (blobs, WAL) goes later, once per category:
        # see include/backup_dr/backup/gc.py.
        if tier == CONTINUOUS:
            _record_windows(policy, stores, target)
    return {
        "target": target,
        "tier": tier,
        "kept": len(plan.keeps),
        "deleted": 0 if dry_run else len(plan.deletions) - len(refused),
        "refused": len(refused),
        "planned_deletions": len(plan.deletions),
        "refusals": refusals,
        "locks_extended": held,
        "dry_run": dry_run,
        "evidence": key,
        "evidence_missing_in": [s.region.name for s in stores if s.region.name not in written],
    }


def _delete(store: ObjectStore, decision: Decision, listed_from: datetime) -> dict[str, str] | None:
    """Carry out one planned deletion; what the store refuses (locked longer than the plan
    knew) is returned as a refusal, never retried."""
    try:
        if decision.backup is not None:
            # Manifest first, with the evidence beside it, in one request: an interrupted
            # delete leaves only data without a manifest, which the catalogue lists as
            # debris and a later prune removes; never a half backup, nor an orphan record
            # that no listing shows and no prune ever removes.
            backup = decision.backup
            store.delete_all_versions(
                backup.prefix,
                keys={backup.key(MANIFEST_NAME), backup.key(INTEGRITY_NAME)},
                written_before=listed_from,
            )
            store.delete_all_versions(backup.prefix, written_before=listed_from)
        elif decision.debris is not None and decision.debris.upload_id:
            store.abort_upload(decision.debris.key, decision.debris.upload_id)
        elif decision.debris is not None:
            store.delete_all_versions(decision.debris.key, written_before=listed_from)
    except DeleteRefusedError as exc:
        log.warning("REFUSED %s: %s", decision.subject, exc)
        return {"subject": decision.subject, "region": decision.region, "reason": str(exc)}
    return None


def _record_refusals(
    stores: Stores,
    plan_key: str,
    plan: dict[str, Any],
    refused: list[dict[str, str]],
    interrupted: str | None,
) -> str | None:
    """What the plan meant to delete and the store kept, as its own record beside the plan
    (never an executed plan: the audit lists it as refused), under evidence.py's rule; when the
    prune is dying (`interrupted`), no region taking it is logged, never raised over the error
    that stopped the prune. Returns the key, or None when nothing was refused."""
    if not refused:
        return None
    key = refusals_key(plan_key)
    record = {
        "schema": "backup-dr/prune-refusals/v1",
        "target": plan["target"],
        "tier": plan["tier"],
        "plan": plan_key,
        "planned_at": plan["planned_at"],
        "recorded_at": _now().isoformat(),
        "executed": False,
        "interrupted": interrupted,
        "refused": refused,
    }
    try:
        write_everywhere(stores, key, record)
    except StoreError as exc:
        if interrupted is None:
            raise
        log.error("The refusals could not be recorded: %s", exc)
    return key
