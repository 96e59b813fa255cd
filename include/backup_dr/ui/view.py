"""What the compliance page shows, as plain data (the JSON endpoints serve it as is).

The source is the newest record `backup_compliance` wrote (`state/compliance/state.json` names
it: three small reads, whatever the number of records), so every request does not re-read the
whole store; `live=True` recomputes through the same code as the `check` CLI, and is also the
fallback before the DAG's first run. Never Airflow's database.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from include.backup_dr.monitor import record
from include.backup_dr.monitor.checks.result import CheckResult, Status, overall
from include.backup_dr.monitor.output import counts
from include.backup_dr.monitor.promises import measured, promises
from include.backup_dr.policy import Policy, cron_period, human
from include.backup_dr.store import ObjectStore
from include.backup_dr.subjects import backup_subjects

log = logging.getLogger(__name__)

#: Per-target checks shown in the target rows; the others go in their own table.
ROW_KINDS = ("backup_age", "restore_drill", "projected_rto")
#: Which DAG's runs a check of each kind is about (backup_age: the tier's own DAG).
KIND_DAGS = {
    "restore_drill": "restore_verification",
    "projected_rto": "restore_verification",
    "replication_lag": "{category}_replicate",
    "standby_lag": "{category}_continuous_monitor",
    "wal_archive": "{category}_continuous_monitor",
    "server_config": "{category}_continuous_monitor",
    "recovery_window": "{category}_backup_continuous",
}


@dataclass(frozen=True)
class Snapshot:
    """The checks at one moment, and where they come from."""

    source: str  # "record": the DAG's newest evidence record; "live": recomputed now
    evaluated_at: datetime
    checks: list[CheckResult]
    evidence: str | None = None
    run: dict[str, Any] = field(default_factory=dict)
    #: The record is older than two compliance periods: the DAG has stopped running.
    stale: bool = False

    def to_document(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "evaluated_at": self.evaluated_at.isoformat(),
            "evidence": self.evidence,
            "run": self.run,
            "stale": self.stale,
            "status": overall(c.status for c in self.checks).name,
            "counts": counts(self.checks),
            "checks": [c.to_document() for c in self.checks],
        }


def read_snapshot(
    policy: Policy, stores: Sequence[ObjectStore], now: datetime, *, live: bool = False
) -> Snapshot:
    """The newest compliance record, or the checks recomputed now (`live`, or no record yet).
    Raises StoreUnreadableError when no region answers."""
    state = record.read_state(stores)
    key = state.get("last_evidence")
    if not live and key:
        document = _first(stores, key)
        if document is not None:
            evaluated_at = datetime.fromisoformat(document["evaluated_at"])
            limit = 2 * cron_period(policy.compliance.schedule)
            return Snapshot(
                "record",
                evaluated_at,
                [_result(c) for c in document["checks"]],
                key,
                dict(document.get("run", {})),
                stale=now - evaluated_at > limit,
            )
    checks, _ = record.check(policy, stores, now, state)
    return Snapshot("live", now, checks)


def _first(stores: Sequence[ObjectStore], key: str) -> dict[str, Any] | None:
    """The record from the first region that has it (both hold a copy)."""
    for store in stores:
        try:
            document = store.get_json(key)
        except Exception as exc:  # the other region may still answer
            log.warning("Cannot read %s in %s: %s", key, store.region.name, exc)
            continue
        if document is not None:
            return document
    return None


def _result(document: dict[str, Any]) -> CheckResult:
    return CheckResult(
        id=document["id"],
        kind=document["kind"],
        subject=document["subject"],
        status=Status[document["status"]],
        measured=document["measured"],
        limit=document["limit"],
        detail=document["detail"],
        value=document.get("value"),
        tier=document.get("tier"),
        region=document.get("region"),
    )


def target_rows(policy: Policy, checks: Sequence[CheckResult]) -> list[dict[str, Any]]:
    """One row per target (or continuous server) and tier: its backup age in each region (the
    worst of them is the row's status: is this tier's promise kept?), and beside it the
    target's newest drill and projected RTO, coloured on their own."""
    by_id = {c.id: c for c in checks}
    regions = [r.name for r in policy.iter_regions()]
    rows = []
    for item in backup_subjects(policy):
        ages = {r: by_id.get(f"backup_age:{item.subject}/{item.tier}@{r}") for r in regions}
        drill = by_id.get(f"restore_drill:{item.subject}")
        rto = by_id.get(f"projected_rto:{item.subject}")
        found = [c for c in ages.values() if c is not None]
        rows.append(
            {
                "subject": item.subject,
                "category": item.category,
                "tier": item.tier,
                "status": overall(c.status for c in found).name if found else "UNKNOWN",
                "period": human(item.period),
                "dag_id": f"{item.category}_backup_{item.tier}",
                "regions": {r: c.to_document() if c else None for r, c in ages.items()},
                "drill": drill.to_document() if drill else None,
                "projected_rto": rto.to_document() if rto else None,
            }
        )
    return rows


def other_checks(policy: Policy, checks: Sequence[CheckResult]) -> list[dict[str, Any]]:
    """The checks that are not about one target's tier: continuous monitor, replication,
    re-hash coverage, the RTO of all targets together; each with the DAG that feeds it."""
    categories = {t.name: t.category for t in policy.targets}
    categories.update({s.name: policy.continuous.category for s in policy.continuous_servers()})
    rows = []
    for check in checks:
        if check.kind in ROW_KINDS and check.subject != "all targets":
            continue
        dag = KIND_DAGS.get(check.kind, "")
        category = categories.get(check.subject, "")
        rows.append({**check.to_document(), "dag_id": dag.format(category=category) or None})
    return rows


def policy_report(policy: Policy, checks: Sequence[CheckResult] | None) -> list[dict[str, str]]:
    """Each promise of the policy: what the configuration delivers, and what is measured."""
    return [
        {
            "promise": p.promise,
            "configured": p.configured,
            "verdict": p.verdict.value,
            "measured": measured(p, checks) if checks else "-",
        }
        for p in promises(policy)
    ]


def record_age(snapshot: Snapshot, now: datetime) -> str:
    return human(max(now - snapshot.evaluated_at, timedelta(0)))


def newest_failovers(policy: Policy, stores: Sequence[ObjectStore]) -> list[dict[str, Any]]:
    """Per server with a standby: its newest dr_failover record (ISO 27001 A.5.29 / A.5.30),
    or None, beside the roles the store gives it now."""
    from include.backup_dr.dr.failover import failover_servers
    from include.backup_dr.evidence import newest
    from include.backup_dr.roles import current_roles

    rows = []
    for server in failover_servers(policy):
        found = newest(stores, f"evidence/failover/{server}/")
        record = found[1] if found and isinstance(found[1], dict) else None
        roles = current_roles(policy, stores, server)
        rows.append(
            {
                "server": server,
                "primary": roles.primary_conn_id,
                "standby": roles.standby_conn_id,
                "timeline": roles.timeline,
                "evidence": found[0] if found else None,
                "failover": record,
            }
        )
    return rows
