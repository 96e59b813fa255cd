"""Builds one DAG per scheduled tier of a category, all with the same shape:

    targets_on_<server>  ->  <server>[target].snapshot -> copy_to_secondary -> integrity_check -> prune

The per-target chain is a mapped task group over the production targets found at run time, so
adding a database is a policy edit. Each database server gets its own group, whose snapshot task
runs in that server's pool. Parsing reads only the local policy file: no network, no database.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task, task_group

from include.backup_dr.alerts import TARGET_KEY, OnCallNotifier
from include.backup_dr.policy import Category, Policy, Server, Tier, format_duration, load_policy

log = logging.getLogger(__name__)

OWNER = "platform-sre"
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUTS = {
    "snapshot": timedelta(hours=3),
    "copy_to_secondary": timedelta(hours=3),
    "integrity_check": timedelta(hours=2),
    "prune": timedelta(minutes=30),
}

#: Mapped tasks are labelled with their target in the UI (set by `_label`).
LABELLED: dict[str, Any] = {"map_index_template": "{{ " + TARGET_KEY + " }}"}


def dag_id_for(category: str, tier: str) -> str:
    return f"{category}_backup_{tier}"


def _doc(category_name: str, category: Category, tier_name: str, tier: Tier, policy: Policy) -> str:
    rows = "\n".join(
        f"| {name} | `{t.schedule}` | {format_duration(t.retention)} |"
        for name, t in category.tiers.items()
    )
    return f"""### {category.description}: {tier_name} backups

**Policy row:** a `{tier_name}` backup of every production {category_name} target on schedule
`{tier.schedule}`, kept for **{format_duration(tier.retention)}**, stored in
{policy.regions.primary.name} and copied to {policy.regions.secondary.name}.
RPO target {format_duration(category.rpo)}; RTO target {format_duration(policy.objectives.rto)}.

Each target runs `snapshot -> copy_to_secondary -> integrity_check -> prune`.
Params: `dry_run` plans the prune without deleting; `override_circuit_breaker` lets a prune
that deletes more than the policy expects go ahead (only after checking why).

| tier | schedule | retention |
|---|---|---|
{rows}
"""


def _label(target: str) -> dict[str, Any]:
    """Name the target in the running context: the UI's map label and the alert use it."""
    context = get_current_context()
    context[TARGET_KEY] = target  # type: ignore[literal-required]
    return context  # type: ignore[return-value]


def _runtime() -> tuple[Any, Any]:
    from include.backup_dr.pipeline import Stores

    policy = load_policy()
    return policy, Stores.from_policy(policy)


def _server_group(category: str, tier: str, server: Server) -> None:
    @task(task_id=f"targets_on_{server.name}")
    def select_targets() -> list[str]:
        """The production targets on this server; every other one is skipped with its reason."""
        policy = load_policy()
        chosen = []
        for target in policy.targets_on(category, server.name):
            if reason := target.skip_reason():
                log.warning("Skipping %s: %s", target.name, reason)
            else:
                chosen.append(target.name)
        log.info("Backing up %d target(s) on %s: %s", len(chosen), server.name, chosen)
        return chosen

    @task(pool=server.dump_pool, execution_timeout=TIMEOUTS["snapshot"], **LABELLED)
    def snapshot(target: str) -> dict[str, Any]:
        from include.backup_dr.pipeline import take_snapshot

        context = _label(target)
        window = context.get("logical_date") or context["dag_run"].run_after
        policy, stores = _runtime()
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        return take_snapshot(policy, stores, target, tier, window, run)

    @task(execution_timeout=TIMEOUTS["copy_to_secondary"], **LABELLED)
    def copy_to_secondary(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr import pipeline

        _label(ref["target"])
        policy, stores = _runtime()
        return pipeline.copy_to_secondary(policy, stores, ref)

    @task(execution_timeout=TIMEOUTS["integrity_check"], **LABELLED)
    def integrity_check(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.pipeline import check_integrity

        _label(ref["target"])
        policy, stores = _runtime()
        return check_integrity(policy, stores, ref)

    @task(execution_timeout=TIMEOUTS["prune"], **LABELLED)
    def prune(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr import pipeline

        context = _label(ref["target"])
        policy, stores = _runtime()
        params = context["params"]
        return pipeline.prune(
            policy,
            stores,
            ref["target"],
            ref["tier"],
            dry_run=bool(params["dry_run"]),
            override_circuit_breaker=bool(params["override_circuit_breaker"]),
        )

    @task_group(group_id=server.name)
    def per_target(target: str) -> None:
        prune(integrity_check(copy_to_secondary(snapshot(target))))

    per_target.expand(target=select_targets())


def build_tier_dag(policy: Policy, category_name: str, tier_name: str) -> DAG:
    category = policy.categories[category_name]
    tier = category.tiers[tier_name]
    default_args = {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=1),
        "on_failure_callback": [OnCallNotifier()],
    }
    with DAG(
        dag_id=dag_id_for(category_name, tier_name),
        schedule=tier.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args,
        tags=["backup", f"category:{category_name}", f"tier:{tier_name}"],
        doc_md=_doc(category_name, category, tier_name, tier, policy),
        params={
            "dry_run": Param(False, type="boolean", description="Plan the prune, delete nothing"),
            "override_circuit_breaker": Param(
                False, type="boolean", description="Let an unusually large prune go ahead"
            ),
        },
    ) as dag:
        for server in policy.servers_for(category_name):
            _server_group(category_name, tier_name, server)
    return dag


def build_tier_dags(category: str, policy: Policy | None = None) -> dict[str, DAG]:
    """Every scheduled tier of `category` as a DAG, keyed by dag_id (for a DAG file's globals)."""
    policy = policy or load_policy()
    return {
        dag_id_for(category, tier): build_tier_dag(policy, category, tier)
        for tier in policy.categories[category].scheduled_tiers()
    }
