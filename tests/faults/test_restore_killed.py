"""A disaster-recovery restore over a live destination is SIGKILLed mid-way, or its restored
data fails validation: the destination is always the old database or the new one, never
neither, and nothing is lost.

The restore runs in its own process: the function `dr_restore`'s restore task calls for a dump
(`dr.dumps._replace_from_dump`), reaching the destination server through a TCP proxy that
kills that process, with no hook in the code, as it sends pg_restore's first COPY (the
staging database half-restored) or the swap's second rename (the old database renamed aside,
the new one not yet in place). Then the same run's restore is run again and must complete.
Validation failing is the real `dr_restore` DAG's run, its backup holding a row that breaks a
business rule: the run fails, nothing is swapped in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from include.backup_dr.catalogue import BackupId
from include.backup_dr.restore.select import Selection
from tests.faults.harness import (
    WINDOW,
    alert_summary,
    alerts_sent,
    commit,
    only_targets,
    open_alert_path,
    record,
    row_checksums,
)
from tests.faults.pg_proxy import PgFaultProxy
from tests.integration.helpers import sandbox_databases, sql
from tests.stack import REPO, run_dag

pytestmark = pytest.mark.integration
DATABASE = "platform_core"
#: The bytes a client sends at each kill point (the servers run without SSL: queries are text).
KILL_POINTS = {
    "during-pg-restore": b"COPY ",  # pg_restore's first table data
    "between-renames": f'RENAME TO "{DATABASE}"'.encode(),  # staging -> destination
}
#: The restore function `dr_restore` runs for a dump, in a process of its own.
RESTORE = """
import json, sys
from datetime import datetime
from include.backup_dr.dr.dumps import _replace_from_dump
from include.backup_dr.backup.steps import Stores
from include.backup_dr.policy import load_policy
from include.backup_dr.restore.select import Selection
policy = load_policy()
selection = Selection.from_ref(json.loads(sys.argv[1]))
began = datetime.fromisoformat(sys.argv[2])
_replace_from_dump(policy, Stores.from_policy(policy), selection, "pg_sandbox",
                   selection.backup.target, {"run_id": "fault-restore"}, True, began)
"""


def _what_is_there(source: dict[str, str]) -> str:
    """The destination now: "old" (the precious database), "new" (the source's rows), or
    "neither" (absent, or anything else)."""
    if DATABASE not in sandbox_databases():
        return "neither"
    if sql(DATABASE, "SELECT to_regclass('precious') IS NOT NULL", server="sandbox") == [(True,)]:
        return (
            "old"
            if sql(DATABASE, "SELECT id FROM precious", server="sandbox") == [(42,)]
            else "neither"
        )
    return "new" if row_checksums(DATABASE, server="sandbox") == source else "neither"


def _precious_kept() -> list[str]:
    """Every sandbox database that still holds the old destination's row."""
    return [
        name
        for name in sandbox_databases()
        if name == DATABASE or name.startswith(f"{DATABASE}__before_")
        if sql(name, "SELECT to_regclass('precious') IS NOT NULL", server="sandbox") == [(True,)]
        and sql(name, "SELECT id FROM precious", server="sandbox") == [(42,)]
    ]


@pytest.fixture
def destination(stores, policy_file) -> Iterator[dict[str, Any]]:
    """DATABASE backed up for WINDOW, and a destination of that name on the sandbox server
    holding data nobody may lose; the sandbox's databases are dropped afterwards."""
    policy = policy_file(only_targets(DATABASE))
    source = row_checksums(DATABASE)  # the source's rows, before anything happens
    commit(policy, stores, DATABASE, "daily", WINDOW)
    sql("postgres", f'CREATE DATABASE "{DATABASE}"', server="sandbox")
    sql(DATABASE, "CREATE TABLE precious (id int)", server="sandbox")
    sql(DATABASE, "INSERT INTO precious VALUES (42)", server="sandbox")
    yield {"policy": policy, "source": source}
    for name in sandbox_databases():
        sql("postgres", f'DROP DATABASE "{name}" WITH (FORCE)', server="sandbox")


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_restore_killed_leaves_the_old_or_the_new_database_and_a_rerun_completes(
    point: str, destination: dict[str, Any], stores, tmp_path: Path
) -> None:
    from include.backup_dr.dr.dumps import _replace_from_dump
    from include.backup_dr.restore.database import server_info

    selection = Selection(
        BackupId("platform", DATABASE, "daily", WINDOW), stores.secondary.region.name, "test"
    )
    began = datetime.now(UTC).replace(microsecond=0)
    sandbox = server_info("pg_sandbox")
    worker: subprocess.Popen[bytes] | None = None

    def kill_worker() -> None:
        assert worker is not None
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    proxy = PgFaultProxy(sandbox.port, lambda sent: KILL_POINTS[point] in sent, kill_worker)
    connection = json.loads(os.environ["AIRFLOW_CONN_PG_SANDBOX"])
    with proxy.running(), (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", RESTORE, json.dumps(selection.to_ref()), began.isoformat()],
            env={
                **os.environ,
                "AIRFLOW_CONN_PG_SANDBOX": json.dumps({**connection, "port": proxy.port}),
                "PYTHONPATH": str(REPO),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker.wait(timeout=600)
    assert proxy.fired and worker.returncode == -signal.SIGKILL, (
        "the restore finished before it could be killed:\n"
        + (tmp_path / "worker.log").read_text()[-2000:]
    )

    killed = _what_is_there(destination["source"])
    assert killed == "old", f"killed {point}, the destination is {killed}: {sandbox_databases()}"
    assert _precious_kept() == [DATABASE]

    # The same run's restore again, as Airflow's retry of the task would run it.
    rerun = time.monotonic()
    _, validation, problems = _replace_from_dump(
        destination["policy"],
        stores,
        selection,
        "pg_sandbox",
        DATABASE,
        {"run_id": "fault-restore"},
        True,
        began,
    )
    recovery_seconds = time.monotonic() - rerun
    assert validation.ok and problems == [], problems
    missing = _lost(destination["source"], "new")
    record(
        f"DR restore SIGKILLed {point.replace('-', ' ')}, restore re-run",
        injected_when={
            "during-pg-restore": "as pg_restore sent its first COPY into the staging database",
            "between-renames": "as the swap sent its second rename (the old database renamed "
            "aside in the same transaction)",
        }[point],
        lost=missing,
        alert="not measured (the restore function runs outside Airflow here)",
        recovery_seconds=recovery_seconds,
        clean_run_seconds=None,  # the re-run is a whole restore from scratch
        destination_when_killed=killed,
    )
    assert missing == []
    assert [d for d in sandbox_databases() if "__restoring_" in d] == []


def _lost(source: dict[str, str], expected: str) -> list[str]:
    """What a restore lost, measured: the old destination's row (kept in place or renamed
    aside, never dropped), and the destination not being what it should (`expected`)."""
    missing = []
    kept = _precious_kept()
    if len(kept) != 1:
        missing.append(f"the old destination's row is kept in {kept}, not in exactly one database")
    elif (expected == "new") != kept[0].startswith(f"{DATABASE}__before_"):
        missing.append(f"the old destination is {kept[0]}, expected it {expected!r}")
    there = _what_is_there(source)
    if there != expected:
        missing.append(f"{DATABASE} on the destination is {there}, expected {expected}")
    return missing


@pytest.fixture
def bad_row() -> Iterator[None]:
    """A row that breaks a business rule (not a database constraint) in the production data."""
    from local.pg import connect

    with connect(DATABASE) as conn:
        conn.execute(
            "INSERT INTO users (id, tenant_id, email, full_name, role, created_at) "
            "SELECT 999999999, min(id), 'not-an-email', 'Bad Row', 'member', now() FROM tenants"
        )
    yield
    with connect(DATABASE) as conn:
        conn.execute("DELETE FROM users WHERE id = 999999999")


def test_restore_failing_validation_is_reported_failed_and_swaps_nothing_in(
    bad_row, destination: dict[str, Any], stores, smtp_sink
) -> None:
    conf = {"targets": [DATABASE], "connection": "pg_sandbox", "overwrite": True}
    open_alert_path(smtp_sink)
    started = time.monotonic()
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "failed"
    run_seconds = time.monotonic() - started
    sent = alerts_sent(smtp_sink)
    pages = [p for p in sent if "dr_restore" in p and "approval needed" not in p]
    missing = _lost(destination["source"], "old")
    record(
        "DR restore failing validation after pg_restore",
        injected_when="in the backup: a users row whose email breaks a business rule",
        lost=missing,
        alert=f"{len(pages)} page(s): " + " | ".join(alert_summary(p) for p in pages),
        recovery_seconds=0.0,  # nothing to recover: the destination was never touched
        clean_run_seconds=None,
        failed_run_seconds=round(run_seconds, 1),
    )
    assert missing == []
    assert len(pages) == 1, sent  # the failed restore pages once (the record task does not)
    keys = sorted(
        o.key
        for o in stores.primary.list_objects(f"evidence/dr_restore/{DATABASE}/")
        if o.key.endswith(".json")
    )
    evidence = stores.primary.get_json(keys[-1])
    assert evidence["outcome"] == "failed", evidence
    failed = [r["expectation"] for r in evidence["validation"]["results"] if not r["success"]]
    assert failed == ["expect_column_values_to_match_regex"], failed
    assert evidence["steps"]["swapped_in"] is False
    (staging,) = [d for d in sandbox_databases() if "__restoring_" in d]  # kept for inspection
    assert sql(staging, "SELECT email FROM users WHERE id = 999999999", server="sandbox") == [
        ("not-an-email",)
    ]
