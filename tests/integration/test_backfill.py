"""`airflow backfill create` over missed windows, run by a real scheduler (airflow standalone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from croniter import croniter

from include.backup_dr.catalogue import BackupId, Verification, build_catalogue
from include.backup_dr.policy import load_policy
from tests.stack import REPO, STATE

pytestmark = pytest.mark.integration
DAG_ID = "platform_backup_daily"
TARGETS = ("platform_billing", "platform_core")


@pytest.fixture(scope="module")
def airflow(stack) -> Iterator[dict[str, str]]:
    """Airflow standalone (scheduler, API, dag processor) with its own home, on the test stack."""
    env = {
        **os.environ,
        "BACKUP_LOCAL_DIR": f"{STATE}-standalone",
        "PYTHONPATH": str(REPO),
        # PostgreSQL as the metadata DB, as in production: SQLite locks under a busy scheduler.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _metadata_db(),
    }
    # Connections come from its own metadata DB (loaded by `up`), as in a real deployment.
    env = {k: v for k, v in env.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    for command in ("down", "up"):  # a fresh metadata DB: only the store remembers backups
        if command == "up":
            shutil.rmtree(Path(env["BACKUP_LOCAL_DIR"]) / "airflow", ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "local.stack", command, "--only", "airflow"],
            env=env,
            check=True,
            cwd=REPO,
        )
    from local.airflow_stack import airflow_env

    cli_env = {
        **{
            k: v
            for k, v in airflow_env().items()
            if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))
        },
        "BACKUP_LOCAL_DIR": env["BACKUP_LOCAL_DIR"],
        "AIRFLOW_HOME": f"{env['BACKUP_LOCAL_DIR']}/airflow",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
    }
    yield cli_env
    subprocess.run(
        [sys.executable, "-m", "local.stack", "down", "--only", "airflow"],
        env=env,
        check=False,
        cwd=REPO,
    )


def _metadata_db() -> str:
    from local.config import HOST, PG_PASSWORD, PG_USER, Ports
    from local.pg import connect

    with connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS airflow_backfill_test WITH (FORCE)")
        conn.execute("CREATE DATABASE airflow_backfill_test")
    port = Ports.from_env().pg
    return f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@{HOST}:{port}/airflow_backfill_test"


def _airflow(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "airflow"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _runs(env: dict[str, str]) -> dict[str, dict]:
    out = _airflow(env, "dags", "list-runs", DAG_ID, "-o", "json")
    return {run["logical_date"]: run for run in json.loads(out.strip().splitlines()[-1])}


def _wait_for(
    env: dict[str, str], dates: list[datetime], after: datetime, timeout: float = 300
) -> None:
    wanted = {d.isoformat() for d in dates}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _runs(env)
        done = {
            date
            for date, run in runs.items()
            if run["state"] in ("success", "failed")
            and run["end_date"]
            and datetime.fromisoformat(run["end_date"]) > after
        }
        if wanted <= done:
            assert all(runs[d]["state"] == "success" for d in wanted), runs
            return
        time.sleep(5)
    raise AssertionError(f"runs for {sorted(wanted)} did not finish: {_runs(env)}")


def _windows(stores) -> dict[str, list[datetime]]:
    found = {}
    for target in TARGETS:
        backups, _ = build_catalogue(store.listing(f"platform/{target}/daily/") for store in stores)
        assert all(
            c.verification is Verification.PASSED for b in backups for c in b.copies.values()
        )
        found[target] = [b.id.window for b in backups]
    return found


def test_backfill_fills_exactly_the_missed_windows_once(stores, airflow) -> None:
    schedule = load_policy().categories["platform"].tiers["daily"].schedule
    now = datetime.now(UTC)
    latest = croniter(schedule, now).get_prev(datetime)
    missed = [latest - timedelta(days=5), latest - timedelta(days=4)]
    started = datetime.now(UTC)
    # Unpausing also lets the scheduler take its own latest window (catchup is off).
    _airflow(airflow, "dags", "unpause", DAG_ID)
    span = [
        "--from-date", (missed[0] - timedelta(hours=1)).isoformat(),
        "--to-date", (missed[1] + timedelta(hours=1)).isoformat(),
    ]  # fmt: skip
    _airflow(
        airflow, "backfill", "create", "--dag-id", DAG_ID, *span, "--reprocess-behavior", "none"
    )
    _wait_for(airflow, [*missed, latest], started)

    expected = sorted([*missed, latest])
    assert _windows(stores) == dict.fromkeys(TARGETS, expected)
    first = {}
    for target in TARGETS:
        for window in missed:
            manifest = stores.primary.manifest(BackupId("platform", target, "daily", window))
            assert manifest.backup.window == window  # the window it fills
            assert manifest.finished_at >= started  # when it was really taken
            assert manifest.run["run_id"].startswith("backfill__")
            first[(target, window)] = manifest

    # Re-running the same windows reuses the verified backups: nothing is stored twice. The
    # scheduler marks the first backfill complete on its own clock; until then a second is refused.
    again = datetime.now(UTC)
    deadline = time.monotonic() + 180
    while True:
        try:
            _airflow(
                airflow,
                "backfill",
                "create",
                "--dag-id",
                DAG_ID,
                *span,
                "--reprocess-behavior",
                "completed",
            )
            break
        except AssertionError as refused:
            if "AlreadyRunningBackfill" not in str(refused) or time.monotonic() > deadline:
                raise
            time.sleep(5)
    _wait_for(airflow, missed, again)
    _airflow(airflow, "dags", "pause", DAG_ID)
    assert _windows(stores) == dict.fromkeys(TARGETS, expected)
    for (target, window), manifest in first.items():
        assert stores.primary.manifest(BackupId("platform", target, "daily", window)) == manifest
        versions = stores.primary.client.list_object_versions(
            Bucket=stores.primary.bucket, Prefix=manifest.artifact.key
        )
        assert len(versions["Versions"]) == 1
