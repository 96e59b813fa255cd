"""The worker running a prune is SIGKILLed at one of three points, then the prune is re-run.

The DAG runs in its own process (`airflow dags test`), both regions behind proxies that kill
that process at the point: as it sends the prune's first delete (nothing deleted yet), as it
sends its second delete of the first expired copy in the secondary (that copy has lost its
manifest and nothing else, the worst point to die), or once the last delete took effect and
before the worker hears back (every deletion made, nothing after it: no refusal evidence, no
lease release). A half-deleted copy must not count as a backup; the re-run must keep exactly
what the retention keeps, intact in both regions and holding the source's rows, and leave
nothing of the deleted backups behind: no object, no old version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
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
    content_lost,
    describe,
    lost,
    only_targets,
    open_alert_path,
    record,
    row_checksums,
    timed_run,
)
from tests.faults.s3_proxy import Fault, ProxiedRequest, S3FaultProxy
from tests.stack import REPO, run_dag

pytestmark = pytest.mark.integration
KEPT = WINDOW - timedelta(days=1)
#: Older than the daily tier's 7 days: the prune deletes both, in both regions.
EXPIRED = (WINDOW - timedelta(days=10), WINDOW - timedelta(days=9))
#: Where the worker dies: (test id, the fault table's words for it).
KILL_POINTS = {
    "before-first-delete": "as the prune sent its first delete (nothing deleted yet)",
    "between-deletes": (
        "between the prune's two deletes of the first expired copy in the secondary "
        "(its manifest gone, its data not yet)"
    ),
    "after-last-delete": (
        "once the prune's last delete took effect, before the worker heard back (every "
        "deletion made; nothing after it)"
    ),
}


def _versions(store: Any, prefix: str) -> list[str]:
    """Every version and delete marker under `prefix`: what "fully gone" must leave empty."""
    found = store.client.list_object_versions(Bucket=store.bucket, Prefix=prefix)
    return [v["Key"] for v in found.get("Versions", []) + found.get("DeleteMarkers", [])]


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_prune_killed_then_rerun_keeps_the_policy_and_leaves_nothing(
    point: str, stores, policy_file, smtp_sink, tmp_path: Path
) -> None:
    def policy_for_test(data: dict[str, Any]) -> None:
        only_targets(TARGET)(data)
        # An expired copy's bytes are days old in production; here they are seconds old.
        data["prune"]["incomplete_upload_grace"] = "2s"

    policy = policy_file(policy_for_test)
    baseline = row_checksums(TARGET)  # the source's rows, before anything happens
    open_alert_path(smtp_sink)
    clean, clean_seconds = timed_run(DAG_ID, KEPT)  # the baseline run, and a backup to keep
    assert clean.state == "success"
    for window in EXPIRED:
        commit(policy, stores, TARGET, "daily", window)
    expired = [BackupId("platform", TARGET, "daily", window) for window in EXPIRED]
    first = expired[0]
    worker: subprocess.Popen[bytes] | None = None
    firsts_deleted_in_secondary = 0

    def kill_worker() -> None:
        assert worker is not None
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    def deletes_expired(request: ProxiedRequest) -> bool:
        return request.operation == "DeleteObjects" and any(
            b.prefix.encode() in request.body for b in expired
        )

    def kill_before(store: Any) -> Callable[[ProxiedRequest], Fault | None]:
        def rule(request: ProxiedRequest) -> Fault | None:
            nonlocal firsts_deleted_in_secondary
            if not deletes_expired(request) or point == "after-last-delete":
                return None
            if point == "between-deletes":
                if store is not stores.secondary or first.prefix.encode() not in request.body:
                    return None
                firsts_deleted_in_secondary += 1
                if firsts_deleted_in_secondary < 2:
                    return None  # the first expired copy's manifest goes
            kill_worker()  # before this delete leaves
            return Fault.DROP

        return rule

    def kill_after(request: ProxiedRequest) -> None:
        if point == "after-last-delete" and deletes_expired(request) and not _left(expired):
            kill_worker()  # every deletion made, the worker not yet told

    def _left(backups: list[BackupId]) -> list[str]:
        return [key for b in backups for store in stores for key in _versions(store, b.prefix)]

    with ExitStack() as running, (tmp_path / "worker.log").open("wb") as log:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for store in stores:
            proxy = running.enter_context(
                S3FaultProxy(store.endpoint_url, kill_before(store), kill_after).running()
            )
            conn_id = store.region.conn_id
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = connection_through(conn_id, proxy.endpoint)
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

    prefix = f"platform/{TARGET}/daily/"
    backups, debris = build_catalogue(store.listing(prefix) for store in stores)
    copies = {b.id: sorted(b.copies) for b in backups}
    both = sorted(store.region.name for store in stores)
    left = [describe(d) for d in debris]
    if point == "before-first-delete":
        assert all(copies[b] == both for b in expired) and left == [], (copies, left)
    elif point == "between-deletes":
        # The half-deleted copy lost its manifest first: it is debris now, never a backup.
        assert copies[first] == [stores.primary.region.name], copies
        # The dump and (when the kill came after it) the globals beside it, never more.
        beside = {
            f"object with no manifest {first.key(name)} in {stores.secondary.region.name}"
            for name in ("data.pgdump", "data.globals.json")
        }
        assert left and set(left) <= beside, left
    else:
        assert _left(expired) == [] and left == [], (copies, left)
    kept = {
        key: manifest
        for key, manifest in committed(stores, prefix).items()
        if key[0].window in (KEPT, WINDOW)
    }
    assert len(kept) == 4

    assert run_dag(DAG_ID, WINDOW).state == "success"  # the prune, re-run
    recovery_seconds = time.monotonic() - killed_at
    leftovers = _left(expired)
    assert leftovers == [], "the deleted backups left objects (or old versions) behind"
    backups, debris = build_catalogue(store.listing(prefix) for store in stores)
    assert [(b.id.window, sorted(b.copies)) for b in backups] == [
        (window, both) for window in (KEPT, WINDOW)
    ]
    assert debris == []
    assert alerts(smtp_sink) == ""  # the killed worker sent nothing; the re-run is green
    missing = lost(stores, kept) + content_lost(
        stores,
        baseline,
        [BackupId("platform", TARGET, "daily", window) for window in (KEPT, WINDOW)],
        stores.secondary.region.name,
    )
    record(
        f"worker SIGKILLed mid-prune ({point}), prune re-run",
        injected_when=KILL_POINTS[point],
        lost=missing,
        alert="none (a killed worker has no callback; the re-run finishes the prune)",
        recovery_seconds=recovery_seconds,
        clean_run_seconds=clean_seconds,
        debris_after_heal=[],
    )
    assert missing == []
