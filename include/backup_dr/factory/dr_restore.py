"""`dr_restore`: manual only. Its trigger form submits with only the targets in a disaster; a
plan (a dry run stops there) waits for a human's approval under Required Actions; then the
targets restore in parallel by priority within each destination's pool, and one record of the
run is kept against the RTO.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, BaseNotifier, Param, TaskGroup, get_current_context, task

from include.backup_dr.deployment import placement
from include.backup_dr.factory.common import (
    DR_PRIORITY_WEIGHT,
    LABELLED,
    TIMEOUTS,
    RunRecordNotifier,
    approval_task,
    dag_args,
    label,
    raise_for_run,
    run_of,
    runtime,
)
from include.backup_dr.factory.docs import dr_restore_doc
from include.backup_dr.policy import KNOWN_TIERS, Policy

log = logging.getLogger(__name__)


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
        on_failure_callback=[RunRecordNotifier()],
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
        raise_for_run(document)
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
