"""The worker running a prune is SIGKILLed between two deletes, then the prune is re-run.

The DAG runs in its own process (`airflow dags test`), its secondary region behind a proxy that
kills that process the moment it sends its second delete of the first expired copy: that copy
has lost its manifest and nothing else, the worst point to die. The half-deleted copy must not count as a
backup; the re-run must keep exactly what the retention keeps, intact in both regions, and
leave nothing of the deleted backups behind: no object, no old version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup_dr.catalogue import BackupId, build_catalogue
from tests.faults.harness import (
    DAG_ID,
    TARGET,
    WINDOW,
    alerts,
    commit,
    committed,
    connection_through,
    describe,
    lost,
    only_targets,
    record,
    timed_run,
)
from tests.faults.s3_proxy import Fault, ProxiedRequest, S3FaultProxy
from tests.stack import REPO, run_dag

pytestmark = pytest.mark.integration
KEPT = WINDOW - timedelta(days=1)
#: Older than the daily tier's 7 days: the prune deletes both, in both regions.
EXPIRED = (WINDOW - timedelta(days=10), WINDOW - timedelta(days=9))


def _versions(store: Any, prefix: str) -> list[str]:
    """Every version and delete marker under `prefix`: what "fully gone" must leave empty."""
    found = store.client.list_object_versions(Bucket=store.bucket, Prefix=prefix)
    return [v["Key"] for v in found.get("Versions", []) + found.get("DeleteMarkers", [])]


def test_prune_killed_between_two_deletes_then_rerun_keeps_the_policy_and_leaves_nothing(
    stores, policy_file, smtp_sink, tmp_path: Path
) -> None:
    def policy_for_test(data: dict[str, Any]) -> None:
        only_targets(TARGET)(data)
        # An expired copy's bytes are days old in production; here they are seconds old.
        data["prune"]["incomplete_upload_grace"] = "2s"

    policy = policy_file(policy_for_test)
    clean, clean_seconds = timed_run(DAG_ID, KEPT)  # the baseline, and a backup to keep
    assert clean.state == "success"
    for window in EXPIRED:
        commit(policy, stores, TARGET, "daily", window)
    expired = [BackupId("platform", TARGET, "daily", window) for window in EXPIRED]
    first = expired[0]
    worker: subprocess.Popen[bytes] | None = None
    deletes = 0

    def kill_worker_at_its_second_delete(request: ProxiedRequest) -> Fault | None:
        nonlocal deletes
        if request.operation != "DeleteObjects" or first.prefix.encode() not in request.body:
            return None
        deletes += 1
        if deletes < 2:
            return None  # the first expired copy's manifest goes
        assert worker is not None
        os.killpg(worker.pid, signal.SIGKILL)  # before the rest of that copy goes
        worker.wait()
        return Fault.DROP

    conn_id = stores.secondary.region.conn_id
    with (
        S3FaultProxy(
            stores.secondary.endpoint_url, kill_worker_at_its_second_delete
        ).running() as proxy,
        (tmp_path / "worker.log").open("wb") as log,
    ):
        env = {
            **os.environ,
            f"AIRFLOW_CONN_{conn_id.upper()}": connection_through(conn_id, proxy.endpoint),
            "PYTHONPATH": str(REPO),
        }
        worker = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "airflow"), "dags", "test", DAG_ID, WINDOW.isoformat()],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker.wait(timeout=600)
    assert worker.returncode == -signal.SIGKILL, "the prune finished before it could be killed"
    killed_at = time.monotonic()

    # The half-deleted copy lost its manifest first: it is debris now, never a backup.
    prefix = f"platform/{TARGET}/daily/"
    backups, debris = build_catalogue(store.listing(prefix) for store in stores)
    copies = {b.id: sorted(b.copies) for b in backups}
    assert copies[first] == [stores.primary.region.name], copies
    # The dump and (when the kill came after it) the globals beside it, never more.
    left = [describe(d) for d in debris]
    beside = {
        f"object with no manifest {first.key(name)} in {stores.secondary.region.name}"
        for name in ("data.pgdump", "data.globals.json")
    }
    assert left and set(left) <= beside, left
    kept = {
        key: manifest
        for key, manifest in committed(stores, prefix).items()
        if key[0].window in (KEPT, WINDOW)
    }
    assert len(kept) == 4

    assert run_dag(DAG_ID, WINDOW).state == "success"  # the prune, re-run
    recovery_seconds = time.monotonic() - killed_at
    leftovers = [
        key for backup in expired for store in stores for key in _versions(store, backup.prefix)
    ]
    assert leftovers == [], "the deleted backups left objects (or old versions) behind"
    assert lost(stores, kept) == []
    backups, debris = build_catalogue(store.listing(prefix) for store in stores)
    assert [(b.id.window, sorted(b.copies)) for b in backups] == [
        (window, sorted(store.region.name for store in stores)) for window in (KEPT, WINDOW)
    ]
    assert debris == []
    assert alerts(smtp_sink, timeout=2) == ""  # the killed worker sent nothing; the re-run is green
    record(
        "worker SIGKILLed mid-prune, prune re-run",
        injected_when=(
            f"between the prune's two deletes of {first}@{stores.secondary.region.name} "
            "(its manifest gone, its data not yet)"
        ),
        lost=[],
        alert="none (a killed worker has no callback; the re-run finishes the prune)",
        recovery_seconds=recovery_seconds,
        clean_run_seconds=clean_seconds,
        debris_after_heal=[],
    )
