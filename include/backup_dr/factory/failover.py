"""The `dr_failover` DAG: fail a database server over to its standby (manual, approved by a
human under Required Actions), then make backups, the monitor and a new standby follow it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, BaseNotifier, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.factory.common import (
    approval_task,
    dag_args,
    dag_id_for,
    run_of,
    runtime,
)
from include.backup_dr.factory.docs import failover_doc
from include.backup_dr.policy import CONTINUOUS, Policy

log = logging.getLogger(__name__)

#: How long on-call has to answer the approval before the run fails (and pages); nothing
#: changes on the servers until someone approves.
FAILOVER_APPROVAL_TIMEOUT = timedelta(hours=1)


class FailoverApprovalNotifier(BaseNotifier):
    """Tells on-call that a failover waits for them: the plan, and where to answer it."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.alerts import send_message

        ti = context["ti"]
        plan = (ti.xcom_pull(task_ids="preflight") or {}).get("plan", "")
        server = context["params"]["server"]
        send_message(
            f"[backup] dr_failover: approval needed to fail {server} over",
            f"{plan}\n\nApprove or reject under Browse > Required Actions "
            f"({getattr(ti, 'log_url', '') or 'dr_failover'}).\n",
            context,
            source="dr_failover",
        )


def build_failover_dag(policy: Policy) -> DAG:
    """`dr_failover`: preflight -> approve (Human-in-the-loop) -> fence -> promote -> follow
    -> archive_timeline -> base_backup, and rebuild_standby; evidence at the end."""
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    from include.backup_dr.dr.failover import failover_servers

    servers = failover_servers(policy)
    continuous_dag = (
        dag_id_for(policy.continuous.category, CONTINUOUS) if policy.continuous else None
    )

    def _server_and_wait() -> tuple[Any, str, float]:
        context = get_current_context()
        params = context["params"]
        return context, str(params["server"]), float(params["wait_seconds"])

    @task(retries=0, multiple_outputs=False)
    def preflight() -> dict[str, Any]:
        """Measure first, change nothing; refuse a split brain."""
        import uuid

        from include.backup_dr.dr import failover, failover_steps

        context, server, _ = _server_and_wait()
        policy_now, stores = runtime()
        checked = failover_steps.preflight(
            policy_now, list(stores), server, planned=bool(context["params"]["planned"])
        )
        log.info("Preflight of %s: %s", server, checked)
        if reason := failover.refusal(checked):
            raise AirflowFailException(reason)
        return {
            "failover_id": uuid.uuid4().hex[:12],
            "preflight": checked.to_document(),
            "plan": failover.plan_text(policy_now, checked),
        }

    @task(retries=0, multiple_outputs=False)
    def fence(checked: dict[str, Any]) -> dict[str, Any]:
        """Stop the old primary for good before anything is promoted."""
        from include.backup_dr.dr import failover_steps

        context, server, wait = _server_and_wait()
        policy_now, stores = runtime()
        return failover_steps.fence(
            policy_now,
            list(stores),
            server,
            checked["failover_id"],
            planned=bool(context["params"]["planned"]),
            wait_seconds=wait,
        )

    @task(retries=0, multiple_outputs=False)
    def promote(fenced: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.dr import failover_steps

        _, server, wait = _server_and_wait()
        policy_now, stores = runtime()
        return failover_steps.promote(policy_now, list(stores), server, wait_seconds=wait)

    @task(retries=0, multiple_outputs=False)
    def follow(checked: dict[str, Any], promoted: dict[str, Any]) -> dict[str, Any]:
        """Record the new primary in the store: backups and the monitor follow it."""
        from include.backup_dr.dr import failover_steps
        from include.backup_dr.roles import current_roles

        _, server, _ = _server_and_wait()
        policy_now, stores = runtime()
        roles = current_roles(policy_now, list(stores), server)
        return failover_steps.record_new_primary(
            list(stores), roles, promoted, checked["failover_id"]
        ).to_document()

    @task(retries=0, multiple_outputs=False)
    def archive_timeline(promoted: dict[str, Any], followed: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.dr import failover_steps

        _, server, wait = _server_and_wait()
        _, stores = runtime()
        return failover_steps.archive_timeline(
            list(stores), server, int(promoted["timeline"]), wait_seconds=wait
        )

    # A new standby copies the whole cluster: hours for a large one.
    @task(retries=0, multiple_outputs=False, execution_timeout=timedelta(hours=12))
    def rebuild_standby(checked: dict[str, Any], followed: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.dr import failover_steps

        _, server, wait = _server_and_wait()
        policy_now, stores = runtime()
        return failover_steps.rebuild_standby(
            policy_now,
            list(stores),
            server,
            checked["failover_id"],
            checked["preflight"]["primary_conn_id"],
            wait_seconds=wait,
        ).to_document()

    @task(retries=0, multiple_outputs=False, trigger_rule="all_done")
    def evidence() -> dict[str, Any]:
        """Whatever happened after the approval, in both regions."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.backup_dr.dr import failover_steps
        from include.backup_dr.dr.failover import FailoverRecord, old_primary_fate

        context, server, _ = _server_and_wait()
        ti = context["ti"]

        def pulled(task_id: str) -> dict[str, Any]:
            return ti.xcom_pull(task_ids=task_id) or {}

        checked, approval, promoted = pulled("preflight"), pulled("approve"), pulled("promote")
        if not promoted:
            raise AirflowSkipException("nothing was promoted: nothing changed, nothing to record")
        policy_now, stores = runtime()
        fenced, followed = pulled("fence"), pulled("follow")
        archived, rebuilt = pulled("archive_timeline"), pulled("rebuild_standby")
        approver = approval.get("responded_by_user") or {}
        steps = ["follow", "archive_timeline", "base_backup", "rebuild_standby"]
        found = ti.get_task_states(
            dag_id=context["dag"].dag_id, task_ids=steps, run_ids=[context["run_id"]]
        )
        states = {t: str(found.get(context["run_id"], {}).get(t)) for t in steps}
        record = FailoverRecord(
            server=server,
            failover_id=checked["failover_id"],
            run=run_of(context),
            planned=bool(context["params"]["planned"]),
            preflight_at=checked["preflight"]["checked_at"],
            approved_at=_iso(approval.get("responded_at")),
            approved_by=approver.get("name") or approver.get("id"),
            fenced_at=fenced.get("fenced_at"),
            old_primary=(
                f"{checked['preflight']['primary_conn_id']}: "
                + old_primary_fate(policy_now, server)
                + (f"; now the standby (slot {rebuilt.get('slot')})" if rebuilt else "")
            ),
            promoted_at=promoted.get("promoted_at"),
            writable_at=promoted.get("writable_at"),
            timeline=promoted.get("timeline"),
            history_file=archived.get("history_file"),
            history_regions=archived.get("regions", []),
            new_primary_conn_id=promoted.get("new_primary_conn_id"),
            standby_conn_id=rebuilt.get("standby_conn_id") if rebuilt else None,
            loss=checked["preflight"]["loss"],
            base_backup_run=f"{continuous_dag}: after_failover__{context['run_id']}"
            if states["base_backup"] == "success"
            else None,
            outcome="promoted" if followed else "promoted, not followed",
            problems=[f"{t}: {s}" for t, s in states.items() if s != "success"],
        )
        document = failover_steps.write_record(list(stores), record, datetime.now(UTC))
        if record.problems:  # recorded first; the run still ends red, naming what is left
            raise AirflowFailException(
                f"{server} failed over (evidence {document['key']}), but: "
                + "; ".join(record.problems)
            )
        return document

    with DAG(
        dag_id="dr_failover",
        schedule=None,
        **dag_args(retries=0),
        tags=["disaster-recovery", "failover", "iso27001"],
        doc_md=failover_doc(servers, FAILOVER_APPROVAL_TIMEOUT),
        params={
            "server": Param(
                servers[0] if servers else None,
                type="string",
                enum=servers,
                description="The server whose primary is lost (one with a standby)",
            ),
            "planned": Param(
                False,
                type="boolean",
                description="A switchover while the primary still answers: stop it first and "
                "lose nothing. Without it, a primary that answers makes preflight refuse.",
            ),
            "wait_seconds": Param(
                300,
                type="integer",
                minimum=5,
                description="How long each wait may take (caught up, writable, history "
                "archived, new standby streaming)",
            ),
        },
    ) as dag:
        checked = preflight()
        approve = approval_task(
            "Fail {{ params.server }} over to its standby?",
            "{{ ti.xcom_pull(task_ids='preflight')['plan'] }}",
            FAILOVER_APPROVAL_TIMEOUT,
            FailoverApprovalNotifier(),
        )
        fenced = fence(checked)
        checked >> approve >> fenced
        promoted = promote(fenced)
        followed = follow(checked, promoted)
        archived = archive_timeline(promoted, followed)
        chain: list[Any] = [archived]
        if continuous_dag is not None:
            base_backup = TriggerDagRunOperator(
                task_id="base_backup",
                trigger_dag_id=continuous_dag,
                trigger_run_id="after_failover__{{ run_id }}",
                retries=0,
            )
            archived >> base_backup
            chain = [base_backup]
        rebuilt = rebuild_standby(checked, followed)
        [*chain, rebuilt] >> evidence()
    return dag


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)
