"""What every generated DAG shares: its owner, start date, step timeouts and default args (retries,
on-call paged on failure), the human approval task, the restore runs' priority and how a restore
run's record fails and pages, and the task plumbing: the target label, the lease around a step,
the run a record names, and the policy and stores a task loads when it runs (never at parse
time)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier, BaseOperator, get_current_context

from include.backup_dr.alerts import TARGET_KEY, OnCallNotifier
from include.backup_dr.policy import load_policy

if TYPE_CHECKING:  # the lease module talks to S3: imported by the tasks only, not at parse time
    from include.backup_dr.lease import Tenure

OWNER = "platform-sre"
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUTS = {
    "snapshot": timedelta(hours=3),
    "copy_to_secondary": timedelta(hours=3),
    "integrity_check": timedelta(hours=2),
    "prune": timedelta(minutes=30),
    "collect_garbage": timedelta(hours=2),
    "replicate": timedelta(minutes=50),
}

#: Mapped tasks are labelled with their target in the UI (set by `label`).
LABELLED: dict[str, Any] = {"map_index_template": "{{ " + TARGET_KEY + " }}"}

#: Restores go ahead of routine backups and checks when they share workers and pools.
DR_PRIORITY_WEIGHT = 100


def dag_id_for(category: str, tier: str) -> str:
    return f"{category}_backup_{tier}"


def label(target: str) -> dict[str, Any]:
    """Name the target in the running context: the UI's map label and the alert use it."""
    context = get_current_context()
    context[TARGET_KEY] = target  # type: ignore[literal-required]
    return context  # type: ignore[return-value]


def exclusive(store: Any, subject: str, step: str) -> AbstractContextManager[Tenure]:
    """The step's critical section on `subject` (e.g. `<category>/<target>/<tier>`): one task
    at a time, whatever runs beside it (backfills, other deployments; see lease.py). It waits at
    most a third of the step's timeout for the lease, then fails, to be retried."""
    from include.backup_dr.lease import Holder, critical_section

    holder = Holder.of(get_current_context()["ti"])
    return critical_section(store, subject, holder, max_wait=TIMEOUTS[step] / 3)


def runtime() -> tuple[Any, Any]:
    """The policy and both regions' stores, loaded when a task runs."""
    from include.backup_dr.stores import Stores

    policy = load_policy()
    return policy, Stores.from_policy(policy)


def dag_args(retries: int = 2) -> dict[str, Any]:
    """Every DAG: a start date, no catch-up, one run at a time. Every task: an owner, `retries`
    with backoff (none where a step is never repeated blindly or the next run is minutes away),
    a timeout, and on-call paged on failure."""
    return {
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {
            "owner": OWNER,
            "retries": retries,
            "retry_delay": timedelta(minutes=2),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=30),
            "execution_timeout": timedelta(hours=1),
            "on_failure_callback": [OnCallNotifier()],
        },
    }


def run_of(context: Any) -> dict[str, str]:
    """The run a record names: its DAG and run id."""
    return {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}


def approval_task(
    subject: str, body: str, timeout: timedelta, notifier: BaseNotifier
) -> BaseOperator:
    """The `approve` task: nothing changes until a human approves the plan under Required
    Actions. A reject skips what follows; no answer within `timeout` fails the task, which pages
    on-call like every task of the DAG it is built in."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    return ApprovalOperator(
        task_id="approve",
        subject=subject,
        body=body,
        response_timeout=timeout,
        notifiers=[notifier],
        fail_on_reject=False,
        ignore_downstream_trigger_rules=True,
        retries=0,
    )


def raise_for_run(document: dict[str, Any]) -> None:
    """Fail a run's record when it failed: its task is the run's last, so its state is the
    run's (targets that failed raise TargetsFailed, which pages no second time)."""
    from include.backup_dr.restore.errors import DrillFailed, TargetsFailed

    failed = [t["target"] for t in document["targets"] if t["outcome"] != "passed"]
    if failed:
        raise TargetsFailed(f"{document['kind']}: {', '.join(failed)} failed (see their tasks)")
    if document["outcome"] != "passed":
        raise DrillFailed(f"{document['kind']}: " + "; ".join(document["problems"]))


class RunRecordNotifier(OnCallNotifier):
    """Pages when a restore run's own record is red (over the RTO, evidence lost, nothing
    restored); not for targets that failed, whose own tasks have paged once each."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.restore.errors import TargetsFailed

        if isinstance(context.get("exception"), TargetsFailed):
            return
        super().notify(context)
