"""The backup DAGs: one per scheduled tier of a category, all with the same shape,

    targets_on_<server>  ->  <server>[target].snapshot -> copy_to_secondary -> integrity_check -> prune

and the continuous tier's base backups in that shape; `<category>_replicate` (the copy to the
secondary region, for the RPO); `backup_collect_garbage` (what no backup refers to any more).

The per-target chain is a mapped task group over the production targets found at run time, so
adding a database or a bucket is a policy edit. Each database server gets its own group, whose
snapshot task runs in that server's pool; media targets are grouped by source bucket. The steps
that move a backup's bytes run on the `backup-io` queue, with their pod under the
KubernetesExecutor (deployment.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import (
    DAG,
    AsyncCallback,
    DeadlineAlert,
    DeadlineReference,
    Param,
    get_current_context,
    task,
    task_group,
)

from include.backup_dr.alerts import page_late_run
from include.backup_dr.deployment import placement
from include.backup_dr.factory.common import (
    LABELLED,
    TIMEOUTS,
    dag_args,
    dag_id_for,
    exclusive,
    label,
    run_of,
    runtime,
)
from include.backup_dr.factory.docs import continuous_tier_doc, gc_doc, replication_doc, tier_doc
from include.backup_dr.policy import CONTINUOUS, Policy, format_duration, load_policy

if TYPE_CHECKING:  # the lease module talks to S3: imported by the tasks only, not at parse time
    pass

log = logging.getLogger(__name__)


def _io_step(step: str) -> dict[str, Any]:
    """A labelled step that moves a backup's bytes: its timeout, and its queue (deployment.py)."""
    return {"execution_timeout": TIMEOUTS[step], **LABELLED, **placement(step)}


@contextmanager
def _on_backup(ref: dict[str, Any], step: str) -> Iterator[tuple[Any, Any]]:
    """A step on one backup: labelled with its target, given the policy and stores, and holding
    the lease on its target and tier (`<category>/<target>/<tier>`, as its snapshot did): the
    store's tenure guard stops its writes and deletes once the lease is lost."""
    label(ref["target"])
    policy, stores = runtime()
    subject = f"{ref['category']}/{ref['target']}/{ref['tier']}"
    with exclusive(stores.primary, subject, step):
        yield policy, stores


def _target_group(category: str, tier: str, group: str, pool: str | None) -> None:
    @task(task_id=f"targets_on_{group}")
    def select_targets() -> list[str]:
        """The production targets in this group; every other one is skipped with its reason."""
        policy = load_policy()
        if tier == CONTINUOUS:  # one base backup holds every database of the server
            chosen = [s.name for s in policy.continuous_servers() if s.name == group]
            log.info("Base backup of server %s (all its databases): %s", group, chosen)
            return chosen
        chosen = []
        for target in policy.targets_on(category, group):
            if reason := target.skip_reason():
                log.warning("Skipping %s: %s", target.name, reason)
            else:
                chosen.append(target.name)
        log.info("Backing up %d target(s) on %s: %s", len(chosen), group, chosen)
        return chosen

    @task(multiple_outputs=False, pool=pool or "default_pool", **_io_step("snapshot"))
    def snapshot(target: str) -> dict[str, Any]:
        from include.backup_dr.backup.steps import take_snapshot

        context = label(target)
        window = context.get("logical_date") or context["dag_run"].run_after
        policy, stores = runtime()
        run = run_of(context)
        with exclusive(stores.primary, f"{category}/{target}/{tier}", "snapshot"):
            return take_snapshot(policy, stores, target, tier, window, run)

    @task(multiple_outputs=False, **_io_step("copy_to_secondary"))
    def copy_to_secondary(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.backup import steps

        with _on_backup(ref, "copy_to_secondary") as (policy, stores):
            return steps.copy_to_secondary(policy, stores, ref)

    @task(multiple_outputs=False, **_io_step("integrity_check"))
    def integrity_check(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.backup.steps import check_integrity

        with _on_backup(ref, "integrity_check") as (policy, stores):
            return check_integrity(policy, stores, ref)

    @task(multiple_outputs=False, execution_timeout=TIMEOUTS["prune"], **LABELLED)
    def prune(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.backup import steps

        params = get_current_context()["params"]
        with _on_backup(ref, "prune") as (policy, stores):
            return steps.prune(
                policy,
                stores,
                ref["target"],
                ref["tier"],
                dry_run=bool(params["dry_run"]),
                override_circuit_breaker=bool(params["override_circuit_breaker"]),
            )

    @task_group(group_id=group)
    def per_target(target: str) -> None:
        prune(integrity_check(copy_to_secondary(snapshot(target))))

    per_target.expand(target=select_targets())


class _DeadlineDAG(DAG):
    """A DAG with Deadline Alerts that `dag.test()` (and `airflow dags test`) can still run.

    Airflow 3.3.2's dag.test() gives DagRun.update_state a DAG whose `deadline` holds the encoded
    alerts instead of their database ids, so a run that succeeds crashes in
    DeadlineAlertModel.get_by_id ("'dict' object has no attribute 'hex'"). dag.test() never
    evaluates deadlines anyway, so it runs without them.
    """

    def test(self, *args: Any, **kwargs: Any) -> Any:
        deadline, self.deadline = self.deadline, None
        try:
            return super().test(*args, **kwargs)
        finally:
            self.deadline = deadline


def build_tier_dag(policy: Policy, category_name: str, tier_name: str) -> DAG:
    category = policy.categories[category_name]
    tier = category.tiers[tier_name]
    groups = policy.groups_for(category_name)
    schedule = tier.schedule
    doc = tier_doc(category_name, category, tier_name, tier, policy)
    if tier.is_continuous:
        assert policy.continuous is not None
        groups = [(s.name, s.dump_pool) for s in policy.continuous_servers()]
        schedule = policy.continuous.base_backup_schedule
        doc = continuous_tier_doc(policy, category, tier)
    late_after = policy.compliance.grace + (tier.max_skew or timedelta(0))
    with _DeadlineDAG(
        dag_id=dag_id_for(category_name, tier_name),
        schedule=schedule,
        **dag_args(),
        tags=["backup", f"category:{category_name}", f"tier:{tier_name}"],
        doc_md=doc,
        params=_deletion_params("prune"),
        # A run not done by its window plus the grace pages on-call (experimental in 3.3; the
        # triggerer runs the callback; dag.test() never evaluates it). A promoting tier may wait
        # max_skew for its source by design: that wait is not lateness (the source pages).
        deadline=DeadlineAlert(
            reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
            interval=late_after,
            callback=AsyncCallback(page_late_run, kwargs={"grace": format_duration(late_after)}),
        ),
    ) as dag:
        for group, pool in groups:
            _target_group(category_name, tier_name, group, pool)
    return dag


def _deletion_params(what: str) -> dict[str, Param]:
    """The params of a DAG that deletes: plan without deleting, or let a large plan through."""
    return {
        "dry_run": Param(False, type="boolean", description=f"Plan the {what}, delete nothing"),
        "override_circuit_breaker": Param(
            False, type="boolean", description=f"Let an unusually large {what} go ahead"
        ),
    }


def build_gc_dag(policy: Policy) -> DAG:
    """`backup_collect_garbage`: one mapped `collect_garbage` per category, once a day."""

    @task(task_id="categories")
    def select_categories() -> list[str]:
        return list(load_policy().categories)

    @task(multiple_outputs=False, execution_timeout=TIMEOUTS["collect_garbage"], **LABELLED)
    def collect_garbage(category: str) -> dict[str, Any]:
        from include.backup_dr.backup import gc

        context = label(category)
        policy_now, stores = runtime()
        params = context["params"]
        return gc.collect_garbage(
            policy_now,
            stores,
            category,
            dry_run=bool(params["dry_run"]),
            override_circuit_breaker=bool(params["override_circuit_breaker"]),
            run=run_of(context),
        )

    with DAG(
        dag_id="backup_collect_garbage",
        schedule=policy.prune.gc_schedule,
        **dag_args(),
        tags=["backup", "gc"],
        doc_md=gc_doc(policy),
        params=_deletion_params("garbage collection"),
    ) as dag:
        collect_garbage.expand(category=select_categories())
    return dag


def build_tier_dags(category: str, policy: Policy | None = None) -> dict[str, DAG]:
    """Every tier of `category` as a DAG, keyed by dag_id (for a DAG file's globals): the
    scheduled tiers, and the continuous tier's base backups where the policy configures it."""
    policy = policy or load_policy()
    tiers = list(policy.categories[category].scheduled_tiers())
    if policy.continuous is not None and policy.continuous.category == category:
        tiers.append(CONTINUOUS)
    return {dag_id_for(category, tier): build_tier_dag(policy, category, tier) for tier in tiers}


def build_replication_dag(policy: Policy, category_name: str) -> DAG:
    """`<category>_replicate`: per production target, replicate -> check_rpo (pages on breach)."""
    category = policy.categories[category_name]
    assert category.replication_schedule is not None

    @task(task_id="targets")
    def select_targets() -> list[str]:
        chosen = []
        for target in load_policy().targets:
            if target.category != category_name:
                continue
            if reason := target.skip_reason():
                log.warning("Skipping %s: %s", target.name, reason)
            else:
                chosen.append(target.name)
        return chosen

    @task(multiple_outputs=False, **_io_step("replicate"))
    def replicate(target: str) -> dict[str, Any]:
        from include.backup_dr.backup import replication

        context = label(target)
        policy_now, stores = runtime()
        run = run_of(context)
        # Its lease lives in the secondary region, the only one it writes: replication goes on
        # while the primary region is out.
        with exclusive(stores.secondary, f"{category_name}/{target}/replicate", "replicate"):
            return replication.replicate(policy_now, stores, target, run)

    @task(multiple_outputs=False, retries=0, execution_timeout=timedelta(minutes=5), **LABELLED)
    def check_rpo(state: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.backup import replication

        label(state["target"])
        return replication.check_rpo(state)

    @task_group(group_id="replica")
    def per_target(target: str) -> None:
        check_rpo(replicate(target))

    with DAG(
        dag_id=f"{category_name}_replicate",
        schedule=category.replication_schedule,
        **dag_args(),
        tags=["replication", f"category:{category_name}"],
        doc_md=replication_doc(policy, category_name),
    ) as dag:
        per_target.expand(target=select_targets())
    return dag
