"""The generated DAGs: they import, match the policy file, and are safe and cheap to parse."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bench.parse import policy_with_targets
from include.backup_dr.alerts import OnCallNotifier
from include.backup_dr.factory.common import dag_id_for
from include.backup_dr.policy import DEFAULT_POLICY_PATH, format_duration, load_policy

REPO = Path(__file__).resolve().parents[2]
POLICY = load_policy(DEFAULT_POLICY_PATH)
TIER_DAGS = [
    dag_id_for("platform", tier) for tier in POLICY.categories["platform"].scheduled_tiers()
]
MEDIA_DAGS = [dag_id_for("media", tier) for tier in POLICY.categories["media"].scheduled_tiers()]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_dag_imports_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    others = {"media_replicate", "restore_verification", "dr_restore", "platform_backup_continuous"}
    others |= {"platform_continuous_monitor", "backup_collect_garbage"}
    others |= {"backup_compliance", "backup_audit_report", "dr_failover"}
    assert set(TIER_DAGS) | set(MEDIA_DAGS) | others == set(dagbag.dag_ids)
    assert MEDIA_DAGS == [
        "media_backup_6h",
        "media_backup_daily",
        "media_backup_weekly",
        "media_backup_monthly",
    ]
    assert TIER_DAGS == [
        "platform_backup_6h",
        "platform_backup_daily",
        "platform_backup_weekly",
        "platform_backup_monthly",
    ]


def test_continuous_tier_dag_takes_base_backups_per_server(dagbag) -> None:
    dag = dagbag.dags["platform_backup_continuous"]
    settings = POLICY.continuous
    assert settings is not None
    assert dag.schedule == settings.base_backup_schedule
    assert dag.max_active_runs == 1
    for server in POLICY.continuous_servers():
        chain = ["snapshot", "copy_to_secondary", "integrity_check", "prune"]
        for upstream, downstream in itertools.pairwise(chain):
            task = dag.get_task(f"{server.name}.{upstream}")
            assert f"{server.name}.{downstream}" in task.downstream_task_ids
        assert dag.get_task(f"{server.name}.snapshot").pool == server.dump_pool
    # Honest wording: what "1 s" means in each failure, and the rpo_after promise.
    assert "Loss of the primary*: at most the **measured standby lag**" in dag.doc_md
    assert "*Loss of primary and standby together*: at most **archive_timeout =" in dag.doc_md
    assert f"{format_duration(settings.archive_timeout)}** (every WAL segment" in dag.doc_md
    assert "any second within the last 7 days" in dag.doc_md
    assert "a week apart between 7 and 28 days" in dag.doc_md


@pytest.mark.parametrize("dag_id", TIER_DAGS)
def test_schedule_retention_and_shape_match_the_policy(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    tier_name = dag_id.removeprefix("platform_backup_")
    tier = POLICY.categories["platform"].tiers[tier_name]
    assert dag.schedule == tier.schedule
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert f"kept for **{format_duration(tier.retention)}**" in dag.doc_md
    assert dag.max_active_runs == 1
    assert not dag.catchup
    chain = ["snapshot", "copy_to_secondary", "integrity_check", "prune"]
    for server in POLICY.servers_for("platform"):
        ids = [f"{server.name}.{step}" for step in chain]
        for upstream, downstream in itertools.pairwise(ids):
            assert dag.get_task(downstream).upstream_task_ids == {upstream}
        assert dag.get_task(ids[0]).upstream_task_ids == {f"targets_on_{server.name}"}
        assert dag.get_task(ids[0]).pool == server.dump_pool
    assert {"dry_run", "override_circuit_breaker"} <= set(dag.params)
    # A run is late after the grace, plus the wait for its source when the tier promotes one.
    waits = tier.max_skew or timedelta(0)
    (alert,) = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert alert.interval == POLICY.compliance.grace + waits
    if tier.derive_from is not None:
        assert f"**Promoted from `{tier.derive_from}`:**" in dag.doc_md


@pytest.mark.parametrize("dag_id", TIER_DAGS + MEDIA_DAGS)
def test_tags_owner_retries_timeouts_and_callbacks(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    category, tier = dag_id.split("_backup_")
    assert {"backup", f"category:{category}", f"tier:{tier}"} <= set(dag.tags)
    for task in dag.tasks:
        assert task.owner == "platform-sre"
        assert task.retries >= 2 and task.retry_exponential_backoff
        assert task.execution_timeout is not None and task.execution_timeout <= timedelta(hours=3)
        callbacks = task.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert any(isinstance(cb, OnCallNotifier) for cb in callbacks), task.task_id


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_nothing_touches_the_network_at_parse_time() -> None:
    code = f"""
import socket
def refuse(*args, **kwargs):
    raise AssertionError(f"network access at parse time: {{args}}")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import runpy, glob
for path in sorted(glob.glob({str(REPO / "dags")!r} + "/*.py")):
    runpy.run_path(path)
print("parsed")
"""
    result = _run_python(code, {})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parsed" in result.stdout


def test_200_targets_parse_into_every_dag_without_errors(tmp_path: Path) -> None:
    """Parse time is measured in bench/parse.py; here: a large policy parses cleanly."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_with_targets(200)))
    code = f"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(REPO / "dags")!r})
print(json.dumps({{"errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "dags": sorted(bag.dag_ids)}}))
"""
    result = _run_python(code, {"BACKUP_POLICY_PATH": str(policy)})
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    assert {"platform_backup_daily", "dr_restore", "restore_verification"} <= set(parsed["dags"])


def test_invalid_policy_is_an_import_error_naming_file_and_field(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["categories"]["platform"]["tiers"]["daily"]["retention"] = "2h"
    policy = tmp_path / "bad-policy.yaml"
    policy.write_text(yaml.safe_dump(data))
    code = f"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(REPO / "dags")!r})
print(json.dumps({{k: str(v) for k, v in bag.import_errors.items()}}))
"""
    result = _run_python(code, {"BACKUP_POLICY_PATH": str(policy)})
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    message = errors[str(REPO / "dags" / "platform_backups.py")]
    assert str(policy) in message
    assert "categories.platform.tiers.daily" in message
    assert "retention 2h is shorter than the schedule period 1d" in message


def test_restore_verification_runs_yearly_and_always_drops_the_sandbox(dagbag) -> None:
    dag = dagbag.dags["restore_verification"]
    assert dag.schedule == POLICY.restore_verification.schedule
    assert {"target", "tier", "region", "backup"} <= set(dag.params)
    chain = ["drill.provision_sandbox", "drill.restore", "drill.validate", "drill.record"]
    for upstream, downstream in itertools.pairwise(chain):
        assert upstream in dag.get_task(downstream).upstream_task_ids
    assert dag.get_task("drill.record").trigger_rule == "all_done"
    teardown = dag.get_task("drill.drop_sandbox")
    assert teardown.is_teardown
    assert "drill.record" in teardown.upstream_task_ids
    report = dag.get_task("drill.record")
    assert any(isinstance(cb, OnCallNotifier) for cb in report.on_failure_callback)


def test_media_replicate_runs_hourly_and_checks_the_rpo_after_copying(dagbag) -> None:
    dag = dagbag.dags["media_replicate"]
    assert dag.schedule == POLICY.categories["media"].replication_schedule == "5 * * * *"
    assert dag.max_active_runs == 1  # a backfill's runs follow one another: nothing copied twice
    assert "replica.replicate" in dag.get_task("replica.check_rpo").upstream_task_ids
    check = dag.get_task("replica.check_rpo")
    assert check.retries == 0  # a missed RPO is a fact to page about, not to retry
    assert any(isinstance(cb, OnCallNotifier) for cb in check.on_failure_callback)


def test_garbage_collection_runs_once_a_day_one_task_per_category(dagbag) -> None:
    dag = dagbag.dags["backup_collect_garbage"]
    assert dag.schedule == POLICY.prune.gc_schedule == "0 5 * * *"
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.max_active_runs == 1 and not dag.catchup
    assert {"dry_run", "override_circuit_breaker"} <= set(dag.params)
    assert dag.params["dry_run"] is False and dag.params["override_circuit_breaker"] is False
    collect = dag.get_task("collect_garbage")
    assert collect.upstream_task_ids == {"categories"}
    assert collect.map_index_template  # labelled with the category in the UI
    for task in dag.tasks:
        assert task.owner == "platform-sre"
        assert task.retries >= 2 and task.retry_exponential_backoff
        assert task.execution_timeout is not None and task.execution_timeout <= timedelta(hours=3)
        assert any(isinstance(cb, OnCallNotifier) for cb in task.on_failure_callback)
    for words in ("once per category", "not at the end of every", "circuit breaker", "dry_run"):
        assert words in dag.doc_md, words
    assert "evidence/gc/<category>/" in dag.doc_md


def test_compliance_runs_every_15_minutes_and_pages_only_from_its_own_state(dagbag) -> None:
    dag = dagbag.dags["backup_compliance"]
    assert dag.schedule == POLICY.compliance.schedule == "*/15 * * * *"
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.max_active_runs == 1 and not dag.catchup
    [check] = dag.tasks
    assert check.task_id == "check_promises" and check.retries == 0
    assert check.execution_timeout is not None and check.execution_timeout <= timedelta(minutes=15)
    # Red checks page once from record.run; the callback pages only when the check itself breaks.
    [callback] = check.on_failure_callback
    assert type(callback).__name__ == "_MonitorFailureNotifier"
    kinds = ("backup_age", "standby_lag", "wal_archive", "server_config", "replication_lag")
    for kind in (*kinds, "restore_drill"):
        assert f"`{kind}`" in dag.doc_md, kind
    for words in ("`projected_rto`", "`rehash_coverage`", "2h grace", "state/compliance/"):
        assert words in dag.doc_md, words
    assert "python -m include.backup_dr check" in dag.doc_md


def test_dr_restore_is_manual_approved_and_parallel_by_priority(dagbag) -> None:
    dag = dagbag.dags["dr_restore"]
    assert dag.schedule is None
    assert "confirm" not in dag.params and dag.params["dry_run"] is False
    assert dag.params["overwrite"] is False
    schema = {name: dag.params.get_param(name).schema for name in dag.params}
    recovery = POLICY.recovery()
    assert schema["connection"]["enum"] == [d.conn_id for d in recovery.destinations]
    # Nothing is restored before a human approves the plan (Required Actions).
    approve = dag.get_task("approve")
    assert type(approve).__name__ == "ApprovalOperator"
    assert approve.upstream_task_ids == {"live"} and dag.get_task("live").upstream_task_ids == {
        "plan"
    }
    assert approve.response_timeout == recovery.approval_timeout
    # One mapped restore task per destination server (its pool) and one for media, all
    # behind the approval, at most `concurrency` at once, ahead of routine work.
    assert dag.max_active_tasks == recovery.concurrency
    for destination in recovery.destinations:
        restore = dag.get_task(f"{destination.conn_id}.restore")
        assert restore.pool == destination.pool
        assert restore.priority_weight > 1 and restore.map_index_template
        assert dag.get_task(f"{destination.conn_id}.units").upstream_task_ids >= {"approve"}
    assert dag.get_task("record").trigger_rule == "all_done"
    # The trigger form submits with only targets: nothing else is required.
    production = [
        t.name for t in sorted(POLICY.targets, key=lambda t: t.priority) if t.is_production
    ]
    assert schema["targets"]["examples"] == schema["targets"]["items"]["enum"] == production
    for name in ("backup", "target_time", "bucket", "prefix", "dest_prefix"):
        assert schema[name]["type"] == ["null", "string"] and dag.params[name] is None, name
    assert schema["tier"]["enum"] == ["6h", "daily", "weekly", "monthly"]
    assert all(spec.description for spec in map(dag.params.get_param, dag.params))
    dag.params.validate()


def test_continuous_monitor_runs_every_minute_one_task_per_server(dagbag) -> None:
    dag = dagbag.dags["platform_continuous_monitor"]
    monitor = POLICY.continuous.monitor
    assert dag.schedule == monitor.schedule == "* * * * *"
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.max_active_runs == 1 and not dag.catchup
    assert dag.params["duration_seconds"] == monitor.duration.total_seconds() == 50
    measure = dag.get_task("measure")
    assert measure.upstream_task_ids == {"servers"}
    assert measure.retries == 0  # the next run is a minute away
    assert monitor.duration < measure.execution_timeout <= monitor.duration + timedelta(minutes=1)
    assert measure.map_index_template  # labelled with the server in the UI
    # Open conditions page once from the monitor itself; the callback pages only when it breaks.
    [callback] = measure.on_failure_callback
    assert type(callback).__name__ == "_MonitorFailureNotifier"
    assert isinstance(callback, OnCallNotifier)
    for words in (
        "measured standby lag",
        "archive_timeout\n  (60 s)",
        "any second within the last 7 days",
    ):
        assert words in dag.doc_md


def test_the_monitor_locks_new_wal_only_where_a_region_locks(tmp_path) -> None:
    from include.backup_dr.factory.monitoring import build_continuous_monitor_dag

    unlocked = build_continuous_monitor_dag(POLICY)
    assert {t.task_id for t in unlocked.tasks} == {"servers", "measure"}
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["regions"]["secondary"]["object_lock"] = {"mode": "compliance"}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(data))
    locked = build_continuous_monitor_dag(load_policy(tmp_path / "policy.yaml"))
    lock_wal = locked.get_task("lock_wal")
    assert not lock_wal.upstream_task_ids and lock_wal.retries == 0
    assert lock_wal.execution_timeout < timedelta(minutes=1)  # the next run is a minute away


def test_audit_report_runs_yearly_and_writes_the_previous_year(dagbag) -> None:
    from include.backup_dr.audit import run_period

    dag = dagbag.dags["backup_audit_report"]
    assert dag.schedule == "0 6 2 1 *"
    assert not dag.catchup and dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["write_report"]
    assert dag.params["from"] is None and dag.params["to"] is None  # the form submits as is
    on = datetime(2027, 1, 2, 6, tzinfo=UTC)
    assert run_period(on, {"from": None, "to": None}) == (date(2026, 1, 1), date(2026, 12, 31))
    chosen = {"from": "2026-03-01", "to": "2026-03-31"}
    assert run_period(on, chosen) == (date(2026, 3, 1), date(2026, 3, 31))


def test_dr_failover_is_manual_asks_a_human_and_fences_before_promoting(dagbag) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = dagbag.dags["dr_failover"]
    assert dag.schedule is None and dag.max_active_runs == 1
    assert dag.doc_md and "Required Actions" in dag.doc_md
    schema = {name: dag.params.get_param(name).schema for name in dag.params}
    with_standby = [s.name for s in POLICY.servers if s.standby is not None]
    assert schema["server"]["enum"] == with_standby and dag.params["server"] == with_standby[0]
    assert dag.params["planned"] is False
    assert all(spec.description for spec in map(dag.params.get_param, dag.params))
    dag.params.validate()
    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator)
    assert approve.response_timeout is not None and not approve.fail_on_reject
    assert [type(n).__name__ for n in approve.notifiers] == ["FailoverApprovalNotifier"]
    # Nothing changes before the approval: fence, then promote, only after it.
    assert dag.get_task("fence").upstream_task_ids >= {"approve", "preflight"}
    assert dag.get_task("promote").upstream_task_ids == {"fence"}
    assert "approve" in dag.get_task("preflight").downstream_task_ids
    assert dag.get_task("base_backup").trigger_dag_id == "platform_backup_continuous"
    assert dag.get_task("evidence").trigger_rule == "all_done"
    for task in dag.tasks:
        assert task.retries == 0, task.task_id  # a failover step is never repeated blindly
        callbacks = task.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert any(isinstance(cb, OnCallNotifier) for cb in callbacks), task.task_id
