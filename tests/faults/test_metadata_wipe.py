"""Airflow's metadata database is wiped between two runs of the same window.

The store is the source of truth (a backup exists when its manifest does): with every DAG run,
task instance and XCom gone, a re-run of the window must find its backup in the store, store
nothing twice, let the prune keep exactly what it kept before, and lose nothing.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from include.backup_dr.catalogue import BackupId
from tests.faults.harness import (
    DAG_ID,
    EARLIER,
    TARGET,
    WINDOW,
    alerts,
    commit,
    committed,
    describe,
    lost,
    only_targets,
    open_alert_path,
    record,
    timed_run,
    window_state,
)
from tests.stack import REPO, run_dag

pytestmark = pytest.mark.integration


def _artifact_versions(stores: Any, backup: BackupId) -> dict[str, int]:
    key = backup.key("data.pgdump")
    return {
        store.region.name: len(
            store.client.list_object_versions(Bucket=store.bucket, Prefix=key).get("Versions", [])
        )
        for store in stores
    }


def _kept(stores: Any) -> list[str]:
    """What the newest prune of the tier decided to keep (its evidence record)."""
    prefix = f"evidence/prune/platform/{TARGET}/daily/"
    newest = max(stores.primary.list_objects(prefix), key=lambda o: o.key)
    decisions = stores.primary.get_json(newest.key)["decisions"]
    return sorted(d["subject"] for d in decisions if d["action"] == "keep")


def _dag_runs() -> int:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(select(func.count()).select_from(DagRun)) or 0


def test_wiped_metadata_db_the_store_alone_decides(stores, policy_file, smtp_sink) -> None:
    policy = policy_file(only_targets(TARGET))
    open_alert_path(smtp_sink)
    commit(policy, stores, TARGET, "daily", EARLIER)
    clean, clean_seconds = timed_run(DAG_ID, WINDOW)
    assert clean.state == "success"
    backup = BackupId("platform", TARGET, "daily", WINDOW)
    before = committed(stores, f"platform/{TARGET}/")
    manifests = {store.region.name: store.manifest(backup) for store in stores}
    kept = _kept(stores)
    assert len(before) == 4 and len(kept) == 4
    assert _artifact_versions(stores, backup) == {store.region.name: 1 for store in stores}

    # The wipe: every table dropped and created again, as `airflow db reset` does.
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "airflow"), "db", "reset", "--yes"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert _dag_runs() == 0
    from local.settings import load_into_airflow

    load_into_airflow()  # connections, variables, pools: what a fresh deployment provisions
    removed = time.monotonic()

    assert run_dag(DAG_ID, WINDOW).state == "success"
    verified, debris = window_state(stores, backup)
    recovery_seconds = time.monotonic() - removed
    assert verified == sorted(store.region.name for store in stores)
    assert {store.region.name: store.manifest(backup) for store in stores} == manifests
    assert _artifact_versions(stores, backup) == {store.region.name: 1 for store in stores}
    assert _kept(stores) == kept
    assert committed(stores, f"platform/{TARGET}/").keys() == before.keys()
    missing = lost(stores, before)
    assert debris == []
    assert alerts(smtp_sink) == ""
    record(
        "Airflow metadata DB wiped between runs",
        injected_when="after a verified run of the window, before its re-run (airflow db reset)",
        lost=missing,
        alert="none (the re-run found the window's backup in the store and stored nothing)",
        recovery_seconds=recovery_seconds,
        clean_run_seconds=clean_seconds,
        debris_after_heal=[describe(d) for d in debris],
    )
    assert missing == []
