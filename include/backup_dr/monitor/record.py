"""`backup_compliance`'s I/O around the pure rules: evaluate every check from the store, page
on-call once per check that turns red (one message per run naming them all) and once when it
turns green again, and write one evidence record per run to both regions.

The paging state lives in the store (`state/compliance/state.json`, both regions; the newest
one read wins), not in Airflow, so a fresh Airflow never pages twice for an open breach.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from include.backup_dr.evidence import evidence_key, write_everywhere
from include.backup_dr.monitor.checks.result import CheckResult, overall
from include.backup_dr.monitor.compliance import evaluate
from include.backup_dr.monitor.facts import read_facts
from include.backup_dr.monitor.lag import Alert, plan_alerts, record_sent
from include.backup_dr.monitor.output import counts, render_table, summary
from include.backup_dr.policy import Policy
from include.backup_dr.store import ObjectStore, StoreError

log = logging.getLogger(__name__)

SCHEMA = "backup-dr/compliance/v1"
STATE_SCHEMA = "backup-dr/compliance-state/v1"
STATE_KEY = "state/compliance/state.json"
DAG_ID = "backup_compliance"


class StoreUnreadableError(StoreError):
    """Neither region could be read: nothing can be said about any promise (Nagios UNKNOWN)."""


def read_state(stores: Sequence[ObjectStore]) -> dict[str, Any]:
    """The newest compliance state of the two regions ({} before the first run). Raises
    StoreUnreadableError when no region answers at all."""
    found, problems = [], []
    for store in stores:
        try:
            state = store.get_json(STATE_KEY)
        except StoreError as exc:
            problems.append(str(exc))
            continue
        if state is not None:
            found.append(state)
    if len(problems) == len(stores):
        raise StoreUnreadableError("cannot read the store in any region: " + " | ".join(problems))
    return max(found, key=lambda s: s.get("updated_at", ""), default={})


def check(
    policy: Policy, stores: Sequence[ObjectStore], now: datetime, state: Mapping[str, Any]
) -> tuple[list[CheckResult], dict[str, Any]]:
    """Read the store and judge every check; writes nothing (what the CLI runs). Also returns
    the re-hash cache brought up to date, for the caller that keeps state."""
    facts, cache = read_facts(policy, stores, now, state.get("rehash", {}))
    return evaluate(policy, facts, now), cache


def run(
    policy: Policy,
    stores: Sequence[ObjectStore],
    run_info: Mapping[str, Any],
    *,
    context: Any = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One compliance run: checks, pages due, evidence and state in both regions. Returns the
    evidence document (its `status` is the worst check's)."""
    from include.backup_dr.alerts import condition_key, send_message

    now = now or datetime.now(UTC)
    state = read_state(stores)
    checks, cache = check(policy, stores, now, state)
    key = evidence_key("compliance", "", now)
    open_checks: dict[str, Any] = dict(state.get("open", {}))
    by_id = {c.id: c for c in checks}
    alerts = plan_alerts(open_checks, {c.id: c.status.is_red for c in checks})
    sent = []
    for kind in ("breach", "resolved"):
        group = [a for a in alerts if a.kind == kind]
        if not group:
            continue
        title, text = message(kind, group, by_id, checks, key, run_info)
        keys = [condition_key("compliance", a.condition) for a in group]
        resolve = kind == "resolved"
        channel = send_message(title, text, context, source=DAG_ID, keys=keys, resolve=resolve)
        if channel is not None:  # an undelivered page is not recorded: the next run retries
            for alert in group:
                open_checks = record_sent(
                    open_checks, alert, {"since": now.isoformat(), "evidence": key}
                )
        sent.append({"kind": kind, "checks": [a.condition for a in group], "channel": channel})
    document = {
        "schema": SCHEMA,
        "key": key,
        "run": dict(run_info),
        "evaluated_at": now.isoformat(),
        "policy": {"grace": str(policy.compliance.grace), "rto": str(policy.objectives.rto)},
        "status": overall(c.status for c in checks).name,
        "counts": counts(checks),
        "checks": [c.to_document() for c in checks],
        "alerts": sent,
    }
    new_state = {
        "schema": STATE_SCHEMA,
        "updated_at": now.isoformat(),
        "open": open_checks,
        "rehash": {**state.get("rehash", {}), **cache},
        "last_evidence": key,
    }
    written = write_everywhere(stores, key, document)  # the record first, then what names it
    write_everywhere(stores, STATE_KEY, new_state)
    log.info("%s; evidence %s in %s", summary(checks), key, ", ".join(written))
    log.info("\n%s", render_table(checks))
    return document


def message(
    kind: str,
    group: Sequence[Alert],
    by_id: Mapping[str, CheckResult],
    checks: Sequence[CheckResult],
    key: str,
    run_info: Mapping[str, Any],
) -> tuple[str, str]:
    """Title and text for on-call: the checks that changed, with figures, then every other
    check that is not OK, and where the evidence is."""
    dag_id = run_info.get("dag_id") or DAG_ID
    names = [a.condition for a in group]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    if kind == "breach":
        title = f"[backup] {dag_id}: {len(names)} check(s) red: {shown}"
        intro = "Newly red (paged once; a RESOLVED message follows when each is green again):"
    else:
        title = f"[backup] RESOLVED: {dag_id}: {len(names)} check(s) green again: {shown}"
        intro = "Green again:"
    lines = [f"DAG: {dag_id}", f"Run: {run_info.get('run_id', '')}", "", intro]
    for name in names:
        found = by_id.get(name)
        if found is None:
            lines.append(f"  {name}: no longer checked (the policy changed)")
        else:
            lines.append(
                f"  {found.status.name} {found.id}: {found.measured} (limit {found.limit}); "
                f"{found.detail}"
            )
    others = [c for c in checks if c.status.name != "OK" and c.id not in names]
    lines += ["", f"Overall: {summary(checks)}", f"Evidence: {key}"]
    if others:
        lines += ["", "Every other check that is not OK:", render_table(others)]
    return title, "\n".join(lines) + "\n"
