"""`restore_verification`, the yearly drill: each production target restored into a sandbox,
validated with Great Expectations and recorded; the whole estate restored as dr_restore would
(in parallel by priority within the sandbox's pool) and timed against the RTO; and point-in-time
recovery of each continuous server.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.deployment import placement
from include.backup_dr.factory.common import (
    DR_PRIORITY_WEIGHT,
    LABELLED,
    TIMEOUTS,
    RunRecordNotifier,
    dag_args,
    label,
    raise_for_run,
    run_of,
    runtime,
)
from include.backup_dr.factory.docs import drill_doc
from include.backup_dr.policy import Policy, load_policy


def build_restore_verification_dag(policy: Policy) -> DAG:
    """select -> [provision_sandbox -> restore -> validate -> record, teardown] per target."""
    drill = policy.restore_verification
    assert drill is not None
    tiers = sorted({t for c in policy.categories.values() for t in c.scheduled_tiers()})
    tiers += ["continuous"] if policy.continuous is not None else []
    # The steps fail red; `record` alone pages on-call, once per drill, naming the cause.
    quiet = {"on_failure_callback": None}

    @task
    def select() -> list[dict[str, str]]:
        from include.backup_dr.drill import dumps as drills

        policy_now, stores = runtime()
        return drills.select(policy_now, stores, dict(get_current_context()["params"]))

    @task(multiple_outputs=False, **LABELLED, **quiet, execution_timeout=timedelta(minutes=10))
    def provision_sandbox(ref: dict[str, str]) -> dict[str, str]:
        from include.backup_dr.drill import dumps as drills

        context = label(ref["target"])
        return drills.provision(load_policy(), ref, context["run_id"])

    # The estate rehearsal: restores run as dr_restore runs them, in parallel by priority
    # within the sandbox's pool and the configured concurrency.
    recovery = policy.recovery()
    sandbox_pool = next(
        (d.pool for d in recovery.destinations if d.conn_id == drill.sandbox_conn_id),
        "default_pool",
    )

    @task(
        multiple_outputs=False,
        **LABELLED,
        **quiet,
        execution_timeout=TIMEOUTS["snapshot"],
        pool=sandbox_pool,
        priority_weight=DR_PRIORITY_WEIGHT,
        weight_rule="absolute",
        **placement("restore"),
    )
    def restore(ref: dict[str, str]) -> dict[str, Any]:
        from include.backup_dr.drill import dumps as drills
        from include.backup_dr.restore.select import Selection

        label(ref["target"])
        policy_now, stores = runtime()
        return drills.restore_sandbox(policy_now, stores, Selection.from_ref(ref), ref["sandbox"])

    @task(multiple_outputs=False, **LABELLED, **quiet, execution_timeout=timedelta(hours=1))
    def validate(ref: dict[str, str]) -> dict[str, Any]:
        from include.backup_dr.drill import dumps as drills
        from include.backup_dr.restore.select import Selection

        context = label(ref["target"])
        policy_now, stores = runtime()
        result = drills.validate_sandbox(
            policy_now, stores, Selection.from_ref(ref), ref["sandbox"]
        )
        document = result.to_document()
        # Pushed before failing, so `record` keeps every result of a failed validation too.
        context["ti"].xcom_push(key="validation", value=document)
        if not result.ok:
            failed = result.failures()
            raise AirflowFailException(
                f"{len(failed)} expectation(s) failed for target {ref['target']}: "
                + "; ".join(f"{r.expectation} on {r.table} ({r.observed})" for r in failed)
            )
        return document

    @task(
        task_id="record",
        multiple_outputs=False,
        **LABELLED,
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=10),
    )
    def record_drill(ref: dict[str, str]) -> dict[str, Any]:
        from include.backup_dr.restore import record
        from include.backup_dr.restore.errors import DrillFailed

        context = label(ref["target"])
        ti = context["ti"]
        group = ti.task_id.rsplit(".", 1)[0]
        restored = ti.xcom_pull(task_ids=f"{group}.restore", map_indexes=ti.map_index)
        validation = ti.xcom_pull(
            task_ids=f"{group}.validate", key="validation", map_indexes=ti.map_index
        )
        policy_now, stores = runtime()
        selection = ti.xcom_pull(task_ids=f"{group}.provision_sandbox", map_indexes=ti.map_index)
        document = record.record_restore(
            policy_now,
            stores,
            selection or ref,
            restored,
            validation,
            run_of(context),
        )
        # Pushed before failing, so `estate` counts a failed target too.
        ti.xcom_push(key="record", value=document)
        if document["outcome"] != "passed":
            raise DrillFailed(
                f"Restore test of target {ref['target']} failed: " + "; ".join(document["problems"])
            )
        return document

    @task(**LABELLED, execution_timeout=timedelta(minutes=10))
    def drop_sandbox(ref: dict[str, str]) -> bool:
        from include.backup_dr.drill import dumps as drills

        context = label(ref["target"])
        return drills.teardown(load_policy(), ref, context["run_id"])

    @task_group(group_id="drill")
    def per_target(ref: dict[str, str]) -> None:
        provisioned = provision_sandbox(ref)
        checked = validate(provisioned)
        restore(provisioned) >> checked
        recorded = record_drill(ref)
        checked >> recorded
        recorded >> drop_sandbox(ref).as_teardown(setups=provisioned)

    @task(
        multiple_outputs=False,
        trigger_rule="all_done",
        retries=0,
        execution_timeout=timedelta(minutes=10),
        on_failure_callback=[RunRecordNotifier()],
    )
    def estate() -> dict[str, Any]:
        """The whole estate restored in parallel, as dr_restore would: its wall time from the
        first restore's start to the last record, against the RTO (evidence/estate/...)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.backup_dr.restore.errors import TargetsFailed
        from include.backup_dr.restore.record import record_estate

        context = get_current_context()
        ti = context["ti"]
        chosen = ti.xcom_pull(task_ids="select") or []
        found = ti.xcom_pull(
            task_ids="drill.record", key="record", map_indexes=list(range(len(chosen)))
        )
        records = [r for r in found or [] if r]
        starts = [
            datetime.fromisoformat(r["steps"]["started_at"])
            for r in records
            if (r.get("steps") or {}).get("started_at")
        ]
        if not chosen:
            raise AirflowSkipException("no database or media target was drilled")
        if len(records) < len(chosen) or not starts:
            raise TargetsFailed(
                f"{len(chosen) - len(records)} of {len(chosen)} drill(s) left no record "
                "(see their tasks)"
            )
        policy_now, stores = runtime()
        document = record_estate(
            policy_now,
            stores,
            "restore_verification",
            run_of(context),
            records,
            min(starts),
        )
        raise_for_run(document)  # the run is red when any target or the estate failed
        return {
            k: document[k] for k in ("wall_seconds", "serial_seconds", "within_rto", "evidence")
        }

    @task(task_id="continuous_servers")
    def pitr_servers() -> list[str]:
        from include.backup_dr.drill import pitr as pitrs

        return pitrs.drill_servers(load_policy(), dict(get_current_context()["params"]))

    @task(
        **LABELLED,
        retries=0,
        multiple_outputs=False,
        execution_timeout=TIMEOUTS["snapshot"],
        **placement("pitr"),
    )
    def pitr(server: str) -> dict[str, Any]:
        """Recover the server to a recorded second, prove it, validate; pages when it fails.
        Without a base backup it fails too (recorded): a skip would leave the run green with
        point-in-time recovery never drilled."""
        from include.backup_dr.drill import pitr as pitrs
        from include.backup_dr.restore.errors import DrillFailed

        context = label(server)
        policy_now, stores = runtime()
        run = run_of(context)
        document = pitrs.drill(policy_now, stores, server, dict(context["params"]), run)
        if document["outcome"] != "passed":
            raise DrillFailed(
                f"Point-in-time recovery drill of {server} failed: "
                + "; ".join(document["problems"])
            )
        keys = ("target", "target_time", "proof", "outcome", "evidence_prefix")
        return {key: document[key] for key in keys}

    with DAG(
        dag_id="restore_verification",
        schedule=drill.schedule,
        **dag_args(),
        max_active_tasks=recovery.concurrency,
        tags=["restore", "drill", "iso27001"],
        doc_md=drill_doc(policy),
        params={
            "target": Param(None, type=["null", "string"], description="one target (default: all)"),
            "tier": Param(drill.tier, enum=tiers, description="tier to restore from"),
            "region": Param(drill.region, enum=["primary", "secondary"]),
            "backup": Param(None, type=["null", "string"], description="window, ISO 8601"),
        },
    ) as dag:
        records = per_target.expand(ref=select())
        records >> estate()
        pitr.expand(server=pitr_servers())
    return dag
