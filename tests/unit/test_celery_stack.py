"""Celery mode of the local stack as configured (no process started): parts, ports, queues."""

from __future__ import annotations

import pytest

from include.backup_dr.deployment import DEFAULT_QUEUE, IO_QUEUE
from local import celery_stack, stack
from local.airflow_stack import log_server_ports
from local.proc import StackError


def test_celery_mode_runs_each_part_alone_and_never_binds_standalone_log_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKUP_AIRFLOW_EXECUTOR", "celery")
    monkeypatch.setenv("BACKUP_REDIS_PORT", "16379")
    monkeypatch.setenv("BACKUP_CELERY_LOG_PORT", "18793")
    monkeypatch.setenv("BACKUP_AIRFLOW_LOG_PORT", "8793")  # standalone's, Airflow's defaults
    parts = stack.services(["airflow"])
    assert [svc.name for svc in parts] == [
        "redis",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "celery-default",
        "celery-backup-io",
    ]
    listening = [port for svc in parts for port in svc.ports()]
    assert sorted(listening) == sorted({*listening})  # one owner each
    assert not set(listening) & set(log_server_ports())
    assert {16379, 18793, 18794, 18795} <= set(listening)  # the triggerer's logs: the third
    workers = [svc for svc in parts if isinstance(svc, stack.CeleryWorker)]
    assert [w.worker.queue for w in workers] == [DEFAULT_QUEUE, IO_QUEUE]
    for worker in workers:
        argv = worker.argv()
        assert argv[argv.index("-q") + 1] == worker.worker.queue
        env = worker.env()
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == str(worker.port)
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:16379/0"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/airflow")


def test_down_knows_the_parts_of_both_modes_and_up_only_the_chosen_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BACKUP_AIRFLOW_EXECUTOR", raising=False)
    assert [svc.name for svc in stack.services(["airflow"])] == ["airflow"]
    assert len(stack.services(["airflow"], "celery")) == 7
    monkeypatch.setenv("BACKUP_AIRFLOW_EXECUTOR", "kubernetes")
    with pytest.raises(StackError, match="choose one of standalone, celery"):
        celery_stack.mode()


def test_each_worker_records_its_own_name_as_the_task_hostname(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKUP_CELERY_WORKER", "celery-backup-io")
    assert celery_stack.worker_hostname() == "celery-backup-io"
