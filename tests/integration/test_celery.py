"""Scale-out on Celery: a platform tier, a media tier and the restore drill, run by a real
scheduler through Redis on two Celery workers (one per queue), give the same backups, integrity
verdicts and drill outcomes as one process running everything (dag.test()). So no task relies
on a file or a process another task left on its machine.

The Celery Airflow has its own state directory, metadata DB (`airflow` on the platform server)
and api-server port (the standalone's plus one); its log servers are not standalone's
8793/8794 or their test ports, so it may run beside the session's standalone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from include.backup_dr.catalogue import build_catalogue
from include.backup_dr.deployment import DEFAULT_QUEUE, IO_QUEUE
from local.samplemedia import tenant_ids
from tests.browser import airflow_login
from tests.stack import REPO, STATE, continuous_without_production, empty_store, run_dag

pytestmark = pytest.mark.integration
TIERS = ("platform_backup_daily", "media_backup_daily")
DRILL = "restore_verification"
WORKER_OF_QUEUE = {DEFAULT_QUEUE: "celery-default", IO_QUEUE: "celery-backup-io"}


def _celery_env() -> dict[str, str]:
    env = {
        **os.environ,
        "BACKUP_LOCAL_DIR": f"{STATE}-celery",
        "BACKUP_AIRFLOW_EXECUTOR": "celery",
        "BACKUP_AIRFLOW_PORT": str(int(os.environ["BACKUP_AIRFLOW_PORT"]) + 1),
        "PYTHONPATH": str(REPO),
    }
    # Connections and pools come from its own metadata DB (loaded by `up`), as in production.
    return {k: v for k, v in env.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}


def _local_stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local.stack", *args, "--only", "airflow"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


class Api:
    """Airflow's REST API (/api/v2) as the admin that the api-server generated."""

    def __init__(self, env: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{env['BACKUP_AIRFLOW_PORT']}"
        user, password = airflow_login({"AIRFLOW_HOME": f"{env['BACKUP_LOCAL_DIR']}/airflow"})
        answer = requests.post(
            f"{self.base}/auth/token", json={"username": user, "password": password}, timeout=30
        )
        answer.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        answer = self.call("GET", path, params=params)
        answer.raise_for_status()
        return answer.json()

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> None:
        """Until the dag-processor has parsed and stored it."""
        deadline = time.monotonic() + timeout
        while self.call("GET", f"/dags/{dag_id}").status_code != 200:
            assert time.monotonic() < deadline, f"{dag_id} was never parsed"
            time.sleep(2)

    def run_scheduled(self, *dag_ids: str, timeout: float = 900) -> dict[str, dict[str, Any]]:
        """Unpause them together: the scheduler runs each one's latest window (catchup is off).
        Each DAG's first finished run, by DAG id."""
        for dag_id in dag_ids:
            self.wait_for_dag(dag_id)
            self.set_paused(dag_id, False)
        finished: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(finished) < len(dag_ids):
            assert time.monotonic() < deadline, f"not finished: {set(dag_ids) - set(finished)}"
            time.sleep(3)
            for dag_id in set(dag_ids) - set(finished):
                runs = self.get(f"/dags/{dag_id}/dagRuns")["dag_runs"]
                done = [run for run in runs if run["state"] in ("success", "failed")]
                if done:
                    self.set_paused(dag_id, True)  # no second window, should a cron time pass
                    finished[dag_id] = done[0]
        return finished

    def task_instances(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        path = f"/dags/{run['dag_id']}/dagRuns/{quote(run['dag_run_id'], safe='')}/taskInstances"
        return self.get(path, limit=100)["task_instances"]


@contextmanager
def celery_airflow() -> Iterator[Api]:
    """Redis, api-server, scheduler, dag-processor and two workers on a fresh metadata DB."""
    from local.pg import connect

    env = _celery_env()
    _local_stack(env, "down")
    shutil.rmtree(Path(env["BACKUP_LOCAL_DIR"]) / "airflow", ignore_errors=True)
    with connect() as conn:  # only the store remembers backups
        conn.execute("DROP DATABASE IF EXISTS airflow WITH (FORCE)")
    try:
        started = _local_stack(env, "up")
        if started.returncode != 0:  # e.g. redis-server missing: the message names the package
            pytest.fail(f"the Celery Airflow did not start:\n{started.stdout}\n{started.stderr}")
        yield Api(env)
    finally:
        _local_stack(env, "down")


def _outcome(stores, windows: dict[str, datetime]) -> dict[str, Any]:
    """What a run leaves in the store: the backups of the runs' windows with each region's
    integrity verdict, and each drill report's outcome, backup and validation results."""
    backups = {}
    for category, window in windows.items():
        catalogue, _ = build_catalogue(store.listing(f"{category}/") for store in stores)
        for backup in catalogue:
            if backup.id.window == window:
                verdicts = {r: copy.verification.value for r, copy in backup.copies.items()}
                backups[str(backup.id)] = verdicts
    drills = {}
    for store in stores:
        for obj in store.list_objects("evidence/restore_verification/"):
            if obj.key.endswith("/report.json"):
                record = store.get_json(obj.key)
                results = (record.get("validation") or {}).get("results") or []
                drills[f"{store.region.name}:{record['target']}"] = {
                    "outcome": record["outcome"],
                    "backup": record["backup"],
                    "validation": sorted(bool(r["success"]) for r in results),
                }
    return {"backups": backups, "drills": drills}


def _smallest(data: dict[str, Any]) -> None:
    """The least the policy allows for a platform tier, a media tier and a drill of each: the
    smallest sample database (platform_core becomes UAT) and one tenant's documents. No base
    backup is taken here: the continuous tier has no production target."""
    continuous_without_production(data)
    for target in data["targets"]:
        if target["name"] == "platform_core":
            target["environment"] = "uat"
        if target["category"] == "media":
            target["source"]["prefix"] = f"tenants/{tenant_ids()[0]}/documents/"


def test_two_workers_give_the_same_backups_and_drill_as_one_process(policy_file, stores) -> None:
    policy = policy_file(_smallest)  # the Celery Airflow inherits BACKUP_POLICY_PATH
    with celery_airflow() as api:
        runs = api.run_scheduled(*TIERS)
        runs |= api.run_scheduled(DRILL)  # restores the daily backups just taken
        task_instances = {dag_id: api.task_instances(run) for dag_id, run in runs.items()}
        pool = api.get(f"/pools/{policy.servers[0].dump_pool}")

    assert {dag_id: run["state"] for dag_id, run in runs.items()} == dict.fromkeys(runs, "success")
    for dag_id, instances in task_instances.items():
        ran = [ti for ti in instances if ti["state"] == "success"]
        assert {ti["state"] for ti in instances} <= {"success", "skipped"}, instances
        # Heavy steps on the backup-io worker, the rest on the default one: a run uses both.
        for ti in ran:
            assert ti["hostname"] == WORKER_OF_QUEUE[ti["queue"]], ti
        assert {ti["hostname"] for ti in ran} == set(WORKER_OF_QUEUE.values()), dag_id
    snapshots = [ti for ti in task_instances[TIERS[0]] if ti["task_id"].endswith(".snapshot")]
    assert snapshots and {ti["pool"] for ti in snapshots} == {policy.servers[0].dump_pool}
    assert pool["slots"] == 2  # airflow_settings.yaml's bound on dumps per server, as before

    windows = {
        dag_id.split("_")[0]: datetime.fromisoformat(runs[dag_id]["logical_date"])
        for dag_id in TIERS
    }
    under_celery = _outcome(stores, windows)
    assert len(under_celery["backups"]) == 2  # platform_billing, media_documents
    assert all(
        v == {"eu-west-1": "passed", "eu-central-1": "passed"}
        for v in under_celery["backups"].values()
    )
    assert len(under_celery["drills"]) == 4  # two targets, evidence in both regions
    assert {d["outcome"] for d in under_celery["drills"].values()} == {"passed"}

    # The same windows again, every task in this one process.
    for store in stores:
        empty_store(store)
    for dag_id, run in runs.items():
        assert run_dag(dag_id, datetime.fromisoformat(run["logical_date"])).state == "success"
    assert _outcome(stores, windows) == under_celery
