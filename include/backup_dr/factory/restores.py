"""The restore DAGs: `restore_verification` (the yearly drill into a sandbox, and point-in-time
recovery of each continuous server) and `dr_restore` (manual, approved by a human under Required
Actions). Both restore in parallel by priority within the destination's pool, and end with one
record of the whole estate against the RTO.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, BaseNotifier, Param, TaskGroup, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.alerts import OnCallNotifier
from include.backup_dr.deployment import placement
from include.backup_dr.factory.common import (
    LABELLED,
    TIMEOUTS,
    approval_task,
    dag_args,
    label,
    run_of,
    runtime,
)
from include.backup_dr.factory.docs import dr_restore_doc, drill_doc
from include.backup_dr.policy import KNOWN_TIERS, Policy, load_policy

log = logging.getLogger(__name__)

#: Restores go ahead of routine backups and checks when they share workers and pools.
DR_PRIORITY_WEIGHT = 100


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
        on_failure_callback=[_RunRecordNotifier()],
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
        _raise_for_run(document)  # the run is red when any target or the estate failed
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


def _dr_restore_params(policy: Policy) -> dict[str, Param]:
    """The trigger form of dr_restore. In a disaster it must submit with only what a database
    restore needs (targets): every other param has a default or may stay empty. Nothing runs
    before a human approves the plan (Required Actions)."""
    destinations = [d.conn_id for d in policy.recovery().destinations]
    production = sorted((t for t in policy.targets if t.is_production), key=lambda t: t.priority)
    in_use = {t.category for t in production}
    tiers = [
        name
        for name in KNOWN_TIERS
        if any(name in policy.categories[c].scheduled_tiers() for c in in_use)
    ]
    return {
        "targets": Param(
            [],
            type="array",
            examples=[t.name for t in production],
            items={"type": "string", "enum": [t.name for t in production]},
            description="Production targets to restore; they start highest priority first, "
            "in parallel within the policy's limits",
        ),
        "connection": Param(
            destinations[0],
            enum=destinations,
            description="The PostgreSQL server the databases are restored into (the policy's "
            "disaster_recovery.destinations; each has a pool bounding restores into it)",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="Plan only: check the request and show what would be restored, from "
            "which backup, and how long it would take; nothing is approved or restored",
        ),
        "overwrite": Param(
            False,
            type="boolean",
            description="Replace a database or destination that is not empty (refused otherwise)",
        ),
        "region": Param(
            "secondary",
            enum=["primary", "secondary"],
            description=f"Region whose backups are restored: primary "
            f"({policy.regions.primary.name}) or secondary ({policy.regions.secondary.name})",
        ),
        "tier": Param(
            "daily",
            enum=tiers,
            description="Tier whose newest verified backup is restored (ignored with target_time)",
        ),
        "backup": Param(
            None,
            type=["null", "string"],
            description="A backup window (ISO 8601) instead of the newest verified backup; "
            "one target only. Empty: the newest",
        ),
        "target_time": Param(
            None,
            type=["null", "string"],
            description="Databases: recover to this second (ISO 8601, or 'latest') from a "
            "base backup and the WAL archive. Empty: restore the tier's dump. What each region "
            "can recover to is a set of intervals, holes named: the recovery_window rows of "
            "the Backup compliance page (or `python -m include.backup_dr check`). A time in a "
            "hole is refused, and so is 'latest' when replay would stop at a gap",
        ),
        "bucket_connection": Param(
            "s3_restore_sandbox",
            type="string",
            description="Media: Airflow connection of the destination bucket",
        ),
        "bucket": Param(
            None,
            type=["null", "string"],
            description="Media: the bucket the objects are restored into (needed for media "
            "targets)",
        ),
        "prefix": Param(
            None,
            type=["null", "string"],
            description="Media: restore only the keys under this prefix. Empty: every key",
        ),
        "dest_prefix": Param(
            None,
            type=["null", "string"],
            description="Media: write each key under this prefix in the bucket. Empty: as is",
        ),
    }


class RestoreApprovalNotifier(BaseNotifier):
    """Tells on-call that a dr_restore plan waits for them, and where to answer it."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.alerts import send_message

        ti = context["ti"]
        plan = (ti.xcom_pull(task_ids="plan") or {}).get("markdown", "")
        send_message(
            "[backup] dr_restore: approval needed before anything is restored",
            f"{plan}\n\nApprove or reject under Browse > Required Actions "
            f"({getattr(ti, 'log_url', '') or 'dr_restore'}).\n",
            context,
            source="dr_restore",
        )


def _restore_lanes(policy: Policy) -> list[tuple[str, str]]:
    """(lane, pool) per restore task of dr_restore: one per destination server, and media."""
    from include.backup_dr.dr.request import MEDIA_POOL

    return [(d.conn_id, d.pool) for d in policy.recovery().destinations] + [("media", MEDIA_POOL)]


def build_dr_restore_dag(policy: Policy) -> DAG:
    """`dr_restore`: plan -> (dry run stops) -> approve -> restore per target, in parallel by
    priority within pools -> one record for the run."""
    recovery = policy.recovery()
    lanes = _restore_lanes(policy)

    @task(task_id="plan", multiple_outputs=False)
    def plan() -> dict[str, Any]:
        from include.backup_dr.dr.request import DrRequest, make_plan

        context = get_current_context()
        policy_now, stores = runtime()
        request = DrRequest.from_params(policy_now, dict(context["params"]))
        made = make_plan(policy_now, stores, request, datetime.now(UTC))
        log.info(
            "The plan%s:\n%s", " (dry run: nothing is restored)" * request.dry_run, made.markdown()
        )
        return made.to_document()

    @task.short_circuit(task_id="live", ignore_downstream_trigger_rules=True)
    def live(planned: dict[str, Any]) -> bool:
        """A dry run ends with the plan; nothing is approved or restored."""
        return not planned["request"]["dry_run"]

    def units(planned: dict[str, Any], lane: str) -> list[dict[str, Any]]:
        """The plan's units for one lane (media, or the destination server), in priority
        order: Airflow starts a mapped task's instances in map-index order among equal
        priority weights."""
        connection = planned["request"]["connection"]
        return [
            u
            for u in planned["units"]
            if (u["kind"] == "media") == (lane == "media") and lane in ("media", connection)
        ]

    def restore(unit: dict[str, Any]) -> list[dict[str, Any]]:
        from include.backup_dr.dr.dumps import raise_for, restore_unit
        from include.backup_dr.dr.request import DrRequest, Unit

        context = label(unit["name"])
        ti = context["ti"]
        planned = ti.xcom_pull(task_ids="plan")
        approval = ti.xcom_pull(task_ids="approve") or {}
        began = _began(approval, planned)
        run = {
            **run_of(context),
            "approved_by": _approved_by(approval),
            "approved_at": began.isoformat(),
        }
        policy_now, stores = runtime()
        records = restore_unit(
            policy_now,
            stores,
            DrRequest.from_document(planned["request"]),
            Unit.from_document(unit),
            run,
            began,
        )
        # Pushed before failing, so `record` sees a failed target's evidence too.
        ti.xcom_push(key="records", value=[_brief(r) for r in records])
        raise_for(records)
        return [_brief(r) for r in records]

    @task(
        task_id="record",
        multiple_outputs=False,
        trigger_rule="all_done",
        retries=0,
        on_failure_callback=[_RunRecordNotifier()],
    )
    def record() -> dict[str, Any]:

        from include.backup_dr.restore.errors import DrillFailed
        from include.backup_dr.restore.record import record_estate

        context = get_current_context()
        ti = context["ti"]
        planned = ti.xcom_pull(task_ids="plan")
        approval = ti.xcom_pull(task_ids="approve") or {}
        if planned is None:  # the request was refused: the run must not end green
            raise DrillFailed("dr_restore was refused before anything was touched (see `plan`)")
        if not approval:  # a timeout or a broken approval: nothing ran, and it must show red
            raise DrillFailed("dr_restore was not approved (timed out or failed): nothing restored")
        records = [
            r
            for lane, _ in lanes
            for found in _all_mapped(ti, f"{lane}.restore", len(units(planned, lane)))
            for r in found or []
        ]
        if not records:  # a rejection or a dry run never gets here: they skip this task
            raise DrillFailed(
                "dr_restore restored nothing: the approval or every restore task failed "
                "(see their logs)"
            )
        policy_now, stores = runtime()
        document = record_estate(
            policy_now,
            stores,
            "dr_restore",
            {**run_of(context), "approved_by": _approved_by(approval)},
            records,
            _began(approval, planned),
            planned["estate"],
        )
        _raise_for_run(document)
        return {k: document[k] for k in ("wall_seconds", "rto_seconds", "within_rto", "evidence")}

    with DAG(
        dag_id="dr_restore",
        schedule=None,
        **dag_args(retries=0),
        max_active_tasks=recovery.concurrency,
        tags=["restore", "disaster-recovery"],
        doc_md=dr_restore_doc(policy),
        params=_dr_restore_params(policy),
    ) as dag:
        planned = plan()
        approve = approval_task(
            "Restore {{ params.targets | join(', ') }} into {{ params.connection }}?",
            "{{ ti.xcom_pull(task_ids='plan')['markdown'] }}",
            recovery.approval_timeout,
            RestoreApprovalNotifier(),
        )
        live(planned) >> approve
        restores = []
        for lane, pool in lanes:
            with TaskGroup(group_id=lane):
                chosen = task(units, task_id="units")(planned, lane)
                approve >> chosen
                restores.append(
                    task(
                        restore,
                        task_id="restore",
                        pool=pool,
                        priority_weight=DR_PRIORITY_WEIGHT,
                        weight_rule="absolute",
                        execution_timeout=TIMEOUTS["snapshot"],
                        **LABELLED,
                        **placement("restore"),
                    ).expand(unit=chosen)
                )
        restores >> record()
    return dag


def _raise_for_run(document: dict[str, Any]) -> None:
    """Fail a run's record when it failed: its task is the run's last, so its state is the
    run's (targets that failed raise TargetsFailed, which pages no second time)."""
    from include.backup_dr.restore.errors import DrillFailed, TargetsFailed

    failed = [t["target"] for t in document["targets"] if t["outcome"] != "passed"]
    if failed:
        raise TargetsFailed(f"{document['kind']}: {', '.join(failed)} failed (see their tasks)")
    if document["outcome"] != "passed":
        raise DrillFailed(f"{document['kind']}: " + "; ".join(document["problems"]))


def _began(approval: dict[str, Any], planned: dict[str, Any]) -> datetime:
    """When the restores were allowed to start: the approval (else the plan, for the record)."""
    at = approval.get("responded_at") or planned["planned_at"]
    return at if isinstance(at, datetime) else datetime.fromisoformat(str(at))


def _approved_by(approval: dict[str, Any]) -> str:
    approver = approval.get("responded_by_user") or {}
    return approver.get("name") or approver.get("id") or "-"


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("target", "outcome", "problems", "recorded_at", "steps", "evidence_prefix")
    return {k: record.get(k) for k in keys}


def _all_mapped(ti: Any, task_id: str, count: int) -> list[Any]:
    """Every map index's `records` of a mapped task (a failed one pushed them before failing)."""
    if not count:
        return []
    found = ti.xcom_pull(task_ids=task_id, key="records", map_indexes=list(range(count)))
    return list(found or [])


class _RunRecordNotifier(OnCallNotifier):
    """Pages when a restore run's own record is red (over the RTO, evidence lost, nothing
    restored); not for targets that failed, whose own tasks have paged once each."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.restore.errors import TargetsFailed

        if isinstance(context.get("exception"), TargetsFailed):
            return
        super().notify(context)
