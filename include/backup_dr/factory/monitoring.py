"""The DAGs that watch the promises: `<category>_continuous_monitor` (standby lag by heartbeat,
WAL archive health, WAL locking; every minute), `backup_compliance` (every promise judged from
the store) and `backup_audit_report` (the year's audit report, kept as evidence).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param, get_current_context, task

from include.backup_dr.alerts import OnCallNotifier
from include.backup_dr.factory.common import (
    LABELLED,
    dag_args,
    label,
    run_of,
    runtime,
)
from include.backup_dr.factory.docs import audit_doc, compliance_doc, monitor_doc
from include.backup_dr.policy import Policy, load_policy

log = logging.getLogger(__name__)


class _MonitorFailureNotifier(OnCallNotifier):
    """Pages when the monitor itself breaks (primary or store unreachable); not when it failed
    red on an open condition, which `continuous.measure` has already paged once for."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.monitor.lag import ConditionsOpenError

        if isinstance(context.get("exception"), ConditionsOpenError):
            return
        super().notify(context)


def build_continuous_monitor_dag(policy: Policy) -> DAG:
    """`<category>_continuous_monitor`: a mapped `measure` per continuous server, every minute."""
    settings = policy.continuous
    assert settings is not None
    monitor = settings.monitor
    default_duration = int(monitor.duration.total_seconds())

    @task(task_id="servers")
    def select_servers() -> list[str]:
        return [server.name for server in load_policy().continuous_servers()]

    # Longest run: the duration, then the last heartbeat's 10 s visibility limit, then the reads.
    @task(
        retries=0,  # the next run is a minute away
        multiple_outputs=False,
        execution_timeout=monitor.duration + timedelta(seconds=40),
        on_failure_callback=[_MonitorFailureNotifier()],
        **LABELLED,
    )
    def measure(server: str) -> dict[str, Any]:
        from include.backup_dr.monitor import continuous
        from include.backup_dr.monitor.lag import ConditionsOpenError

        context = label(server)
        policy_now, stores = runtime()
        run = run_of(context)
        duration = float(context["params"]["duration_seconds"])
        doc = continuous.measure(policy_now, stores, server, duration, run, context=context)
        summary = {
            "server": server,
            "evidence": doc["key"],
            "stats": doc["stats"],
            "end_segment": doc["end_segment"],
            "conditions": doc["conditions"],
        }
        if opened := continuous.open_conditions(doc):
            lag = doc["stats"]["p99_ms"]
            raise ConditionsOpenError(
                f"{server}: {', '.join(opened)} (lag p99 "
                f"{'not measurable' if lag is None else f'{lag} ms'}, RPO {doc['rpo_seconds']} s);"
                f" on-call is paged once per breach; evidence {doc['key']}"
            )
        return summary

    @task(retries=0, execution_timeout=timedelta(seconds=50))
    def lock_wal() -> list[dict[str, Any]]:
        """Lock the WAL archived since the last run, in every region that locks."""
        from include.backup_dr.engines.wal import lock_archive
        from include.backup_dr.lease import LeaseBusyError
        from include.backup_dr.store import StoreError

        policy_now, stores = runtime()
        assert policy_now.continuous is not None
        done, failed = [], []
        for store in stores:  # one region down never stops the other's locking
            if store.lock is None:
                continue
            for server in policy_now.continuous_servers():
                try:
                    done.append(lock_archive(store, server.name, policy_now.continuous.category))
                except (StoreError, LeaseBusyError) as exc:
                    log.error("lock_wal in %s for %s: %s", store.region.name, server.name, exc)
                    failed.append(f"{store.region.name}/{server.name}: {exc}")
        if failed:
            raise StoreError("WAL could not be locked in " + "; ".join(failed))
        return done

    with DAG(
        dag_id=f"{settings.category}_continuous_monitor",
        schedule=monitor.schedule,
        **dag_args(retries=0),
        tags=["monitor", "continuous", f"category:{settings.category}"],
        doc_md=monitor_doc(policy),
        params={
            "duration_seconds": Param(
                default_duration,
                type="integer",
                minimum=1,
                maximum=default_duration,
                description="how long to write a heartbeat a second (shorter for a quick check)",
            ),
        },
    ) as dag:
        measure.expand(server=select_servers())
        if policy.locked_regions():
            lock_wal()
    return dag


def build_compliance_dag(policy: Policy) -> DAG:
    """`backup_compliance`: every promise judged from the store; pages once per breach."""

    @task(
        retries=0,  # the next run is minutes away
        multiple_outputs=False,
        execution_timeout=timedelta(minutes=10),
        on_failure_callback=[_MonitorFailureNotifier()],
    )
    def check_promises() -> dict[str, Any]:
        from include.backup_dr.monitor import record
        from include.backup_dr.monitor.lag import ConditionsOpenError

        context = get_current_context()
        policy_now, stores = runtime()
        run = run_of(context)
        document = record.run(policy_now, list(stores), run, context=context)
        red = [c["id"] for c in document["checks"] if c["status"] in ("CRITICAL", "UNKNOWN")]
        if red:
            raise ConditionsOpenError(
                f"{len(red)} check(s) red: {', '.join(red[:8])}"
                + (f" and {len(red) - 8} more" if len(red) > 8 else "")
                + f"; on-call is paged once per breach; evidence {document['key']}"
            )
        return {"status": document["status"], "counts": document["counts"]}

    with DAG(
        dag_id="backup_compliance",
        schedule=policy.compliance.schedule,
        **dag_args(retries=0),
        tags=["monitor", "compliance", "iso27001"],
        doc_md=compliance_doc(policy),
    ) as dag:
        check_promises()
    return dag


#: `backup_audit_report`: on 2 January, once the last windows of the year are checked.
AUDIT_SCHEDULE = "0 6 2 1 *"


def build_audit_dag(policy: Policy) -> DAG:
    """`backup_audit_report`: the year's audit report, from the store, kept as evidence."""

    @task(multiple_outputs=False, execution_timeout=timedelta(hours=2))
    def write_report() -> dict[str, str]:
        from include.backup_dr.audit import build_audit, run_period, write_evidence

        context = get_current_context()
        policy_now, stores = runtime()
        start, end = run_period(context["logical_date"], context["params"])
        report = build_audit(policy_now, stores, start, end)
        prefix = write_evidence(report, stores)
        log.info("%d exception(s) in the audit of %s to %s", len(report.exceptions), start, end)
        return {"from": start.isoformat(), "to": end.isoformat(), "evidence": prefix}

    with DAG(
        dag_id="backup_audit_report",
        schedule=AUDIT_SCHEDULE,
        **dag_args(),
        params={
            "from": Param(
                None,
                type=["null", "string"],
                format="date",
                description="First day reported (YYYY-MM-DD). Empty: 1 January of the year "
                "before the run. Give `to` too.",
            ),
            "to": Param(
                None,
                type=["null", "string"],
                format="date",
                description="Last day reported, included (YYYY-MM-DD). Empty: 31 December of "
                "the year before the run.",
            ),
        },
        tags=["compliance", "audit", "iso27001"],
        doc_md=audit_doc(policy, AUDIT_SCHEDULE),
    ) as dag:
        write_report()
    return dag
