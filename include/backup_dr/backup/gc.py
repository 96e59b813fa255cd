"""Garbage collection: once a day per category, what no kept backup refers to any more goes.

Prune deletes expired backups target by target. What backups refer to is shared across a whole
category (media blobs, stored once for every snapshot that lists them; the WAL that base backups
replay from), so it is collected once per category by its own DAG, `backup_collect_garbage`, not
at the end of every prune. Each engine first plans its sweeps in both regions (nothing deleted);
the circuit breaker then looks at every plan, and only if it holds does anything go. Each run
leaves one evidence record per region.

A run holds the leases of what it sweeps (`lease_subjects`), in the primary region's store as
the tier steps do, from its first listing to its last deletion: the continuous tier's of each
server whose WAL it sweeps (so no base backup of it is copied, checked or pruned meanwhile),
and the category's own (its media blobs: one collection of a category at a time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr.backup.errors import CircuitBreakerTripped
from include.backup_dr.engines import engine_for
from include.backup_dr.engines.base import LostListing, Sweep
from include.backup_dr.evidence import evidence_key, refusals_key
from include.backup_dr.lease import Holder, critical_section
from include.backup_dr.policy import CONTINUOUS, Policy, format_duration
from include.backup_dr.store import DeleteRefusedError, ObjectStore
from include.backup_dr.stores import Stores

log = logging.getLogger(__name__)
#: The longest a run waits for the leases it needs: a third of its task's two hours.
LEASE_WAIT = timedelta(minutes=40)


def lease_subjects(policy: Policy, category: str) -> list[str]:
    """The lease subjects a collection of `category` holds, in the order it takes them."""
    subjects = [f"{category}/garbage"]
    if policy.continuous is not None and policy.continuous.category == category:
        subjects += [f"{category}/{s.name}/{CONTINUOUS}" for s in policy.continuous_servers()]
    return sorted(subjects)


def gc_breaker(sweeps: Iterable[tuple[str, Sweep]], max_delete_fraction: float) -> str | None:
    """Why the circuit breaker trips on these (region, sweep) plans, or None when it holds: as
    prune's, when a sweep would delete more than one item and more than the policy's share."""
    tripped = [
        f"{sweep.what} in {region}: {sweep.doomed} of {sweep.total}"
        for region, sweep in sweeps
        if sweep.doomed > 1 and sweep.doomed > max_delete_fraction * sweep.total
    ]
    if not tripped:
        return None
    return (
        f"circuit breaker: garbage collection would delete more than {max_delete_fraction:.0%} "
        f"at once ({'; '.join(tripped)}); nothing was deleted. Check that no snapshot, listing "
        "or base backup went missing, then re-run with the param override_circuit_breaker=true "
        "if it is right."
    )


def collect_garbage(
    policy: Policy,
    stores: Stores,
    category: str,
    *,
    dry_run: bool = False,
    override_circuit_breaker: bool = False,
    run: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Plan every sweep of `category` in both regions, record the plans, then (unless the
    breaker or `dry_run` stops it) delete what they name, holding `lease_subjects`."""
    holder = Holder.current("collect_garbage")
    with ExitStack() as leases:
        for subject in lease_subjects(policy, category):
            leases.enter_context(
                critical_section(stores.primary, subject, holder, max_wait=LEASE_WAIT)
            )
        return _collect(policy, stores, category, dry_run, override_circuit_breaker, run)


def _collect(
    policy: Policy,
    stores: Stores,
    category: str,
    dry_run: bool,
    override_circuit_breaker: bool,
    run: dict[str, str] | None,
) -> dict[str, Any]:
    now = datetime.now(UTC)  # the wall clock: the grace protects writes happening now
    engines = sorted({policy.engine_name(category, t) for t in policy.categories[category].tiers})
    key = evidence_key("gc", category, now)
    facts = {
        "schema": "backup-dr/gc/v1",
        "category": category,
        "started_at": now.isoformat(),
        "grace": format_duration(policy.prune.incomplete_upload_grace),
        "max_delete_fraction": policy.prune.max_delete_fraction,
        "dry_run": dry_run,
        "override_circuit_breaker": override_circuit_breaker,
        "run": run or {},
    }
    with ExitStack() as plans:
        try:
            planned = [
                (store, sweep)
                for store in stores
                for name in engines
                for sweep in plans.enter_context(
                    engine_for(name).plan_garbage(policy, store, category, now)
                )
            ]
        except LostListing as exc:
            _record(stores, key, [], {**facts, "stopped": str(exc), "executed": False})
            raise
        breaker = gc_breaker(
            ((store.region.name, sweep) for store, sweep in planned),
            policy.prune.max_delete_fraction,
        )
        stopped = breaker is not None and not override_circuit_breaker
        executed = not (dry_run or stopped)
        _record(stores, key, planned, {**facts, "circuit_breaker": breaker, "executed": executed})
        if stopped:
            raise CircuitBreakerTripped(f"category {category}: {breaker}")
        regions: dict[str, list[dict[str, Any]]] = {store.region.name: [] for store in stores}
        for store, sweep in planned:
            refused = None
            try:
                versions = sweep.delete() if executed else 0
            except DeleteRefusedError as exc:  # locked longer than its current version says
                versions, refused = 0, str(exc)
                log.warning("%s, %s: REFUSED: %s", store.region.name, sweep.what, refused)
                store.put_json(
                    refusals_key(key),
                    {**facts, "region": store.region.name, "what": sweep.what, "refused": refused},
                )
            log.info(
                "%s, %s: %d of %d planned for deletion, %d kept under Object Lock; %d versions "
                "deleted",
                store.region.name,
                sweep.what,
                sweep.doomed,
                sweep.total,
                sweep.locked,
                versions,
            )
            regions[store.region.name].append(
                {
                    "what": sweep.what,
                    "total": sweep.total,
                    "doomed": sweep.doomed,
                    "locked": sweep.locked,
                    "deleted_versions": versions,
                    "refused": refused,
                }
            )
    if dry_run:
        log.info("Dry run: %d deletions planned, none made.", sum(s.doomed for _, s in planned))
    return {
        "category": category,
        "executed": executed,
        "dry_run": dry_run,
        "regions": regions,
        "evidence": key,
    }


def _record(
    stores: Stores, key: str, planned: list[tuple[ObjectStore, Sweep]], facts: dict[str, Any]
) -> None:
    """One evidence record per region: its own sweeps, counted, with a sample of deletions."""
    for store in stores:
        sweeps = [
            {
                "what": sweep.what,
                "total": sweep.total,
                "doomed": sweep.doomed,
                "kept": sweep.total - sweep.doomed,
                "locked": sweep.locked,
                "sample": sweep.sample,
                "locked_sample": sweep.locked_sample,
            }
            for where, sweep in planned
            if where is store
        ]
        store.put_json(key, {**facts, "region": store.region.name, "sweeps": sweeps})
