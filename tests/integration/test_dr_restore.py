"""dr_restore under Airflow's real scheduler: approved through the REST API as on-call does from
Required Actions, then run in parallel, highest priority first, within the destination's pool.
(dag.test() ignores pools and runs tasks one at a time, in no particular order: only a scheduler
can show this.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.browser import airflow_login
from tests.faults.airflow_api import Approver, _call
from tests.integration.helpers import back_up, sandbox_databases
from tests.stack import airflow_cli, dag_runs

pytestmark = pytest.mark.integration

RUN = {"dag_id": "test_dr_restore", "run_id": "manual"}
TARGETS = ["platform_billing", "platform_core"]  # in the form's order; core has priority 1


def _backup(stores: Any, target: str, window: datetime) -> None:
    from include.backup_dr.policy import load_policy

    back_up(load_policy(), stores, target, "daily", window, RUN)


def _restore(env: dict[str, str], token: str, conf: str) -> dict[str, Any]:
    """Trigger, approve through the API once it waits, wait for the end; the estate record."""
    base = env["AIRFLOW__API__BASE_URL"]
    before = set(dag_runs(env, "dr_restore"))
    approver = Approver(base, token, "dr_restore", timeout=300)
    approver.start()
    airflow_cli(env, "dags", "trigger", "dr_restore", "-c", conf)
    deadline = time.monotonic() + 420
    while True:
        new = [r for d, r in dag_runs(env, "dr_restore").items() if d not in before]
        if new and new[0]["state"] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, new
        time.sleep(3)
    approver.join(timeout=10)
    assert approver.error is None, approver.error
    assert new[0]["state"] == "success", new
    return approver.response or {}


def _estate(stores: Any) -> dict[str, Any]:
    keys = sorted(o.key for o in stores.secondary.list_objects("evidence/estate/dr_restore/"))
    return stores.secondary.get_json(keys[-1])


def test_dr_restore_under_the_scheduler_runs_by_priority_within_the_pool(
    airflow_scheduler, stores
) -> None:
    env = airflow_scheduler
    window = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for target in TARGETS:
        _backup(stores, target, window)
    user, password = airflow_login(env)
    token = _call(
        env["AIRFLOW__API__BASE_URL"],
        "POST",
        "/auth/token",
        {"username": user, "password": password},
    )["access_token"]
    airflow_cli(env, "dags", "unpause", "dr_restore")
    try:
        # One slot in the sandbox's pool: one restore at a time, platform_core (priority 1)
        # first although the form named it second.
        airflow_cli(env, "pools", "set", "pg_sandbox_restores", "1", "test: one at a time")
        response = _restore(env, token, '{"targets": ["platform_billing", "platform_core"]}')
        serial = {t["target"]: t for t in _estate(stores)["targets"]}
        assert serial["platform_core"]["finished_at"] <= serial["platform_billing"]["started_at"]
        assert _estate(stores)["run"]["approved_by"] == response["responded_by"]["name"] == user
        # Three slots: both restores at once (overwrite: the first run's databases are there).
        airflow_cli(env, "pools", "set", "pg_sandbox_restores", "3", "test: three at once")
        _restore(
            env, token, '{"targets": ["platform_billing", "platform_core"], "overwrite": true}'
        )
        estate = _estate(stores)
        both = {t["target"]: t for t in estate["targets"]}
        core, billing = both["platform_core"], both["platform_billing"]
        assert (
            core["started_at"] < billing["finished_at"]
            and billing["started_at"] < core["finished_at"]
        )
        assert estate["outcome"] == "passed" and estate["within_rto"] is True
        # The estate's wall time runs from the approval to the last restore's end, so it spans
        # every restore (parallelism itself is the overlap above: the approval's scheduling
        # latency makes "wall < sum" a race on small databases).
        span = max(datetime.fromisoformat(t["finished_at"]) for t in estate["targets"]) - min(
            datetime.fromisoformat(t["started_at"]) for t in estate["targets"]
        )
        assert estate["wall_seconds"] >= round(span.total_seconds(), 1) - 0.1
    finally:
        airflow_cli(env, "pools", "set", "pg_sandbox_restores", "3", "restores into the sandbox")
        airflow_cli(env, "dags", "pause", "dr_restore")
        from local.pg import connect

        with connect("postgres", server="sandbox") as conn:
            for name in sandbox_databases():
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
