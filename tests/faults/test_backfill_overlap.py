"""A backfill of several windows overlapping the scheduled run of the same DAG, on a real
scheduler (Airflow standalone).

Airflow 3 runs a backfill under its own max_active_runs, beside the scheduled runs, so four runs
work on the same targets at once. Each step's critical section on (target, tier) is a lease in
the primary region's store; this proves, from the task logs, that no two of them ever
overlapped, that tasks really waited for one another, and that every window ended up backed up
once and verified in both regions, with nothing committed before lost and no alert.

The database server's pool is closed until every run's snapshots are ready, then opened for all
of them: they start together however slowly this machine starts tasks, so the runs meet in the
critical sections on every run of the test, not only when the timing happens to line up.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from croniter import croniter

from include.backup_dr.backup.steps import check_integrity, copy_to_secondary, take_snapshot
from include.backup_dr.catalogue import Verification, build_catalogue
from include.backup_dr.policy import load_policy
from tests.faults.harness import alert_summary, alerts, committed, lost, record
from tests.stack import airflow_cli, run_dag, wait_for_runs

pytestmark = pytest.mark.integration
DAG_ID = "platform_backup_weekly"
TARGETS = ("platform_billing", "platform_core")
STEPS = ("snapshot", "copy_to_secondary", "integrity_check", "prune")
BACKFILL_RUNS = 3
WAITING = re.compile(r"Waiting for the lease on (\S+): held by (.+?) since ")


def _commit(stores, window: datetime) -> None:
    """Take, copy and verify `window` of every target, as a run long ago did (no prune)."""
    policy = load_policy()
    for target in TARGETS:
        ref = take_snapshot(policy, stores, target, "weekly", window, {"run_id": "earlier"})
        check_integrity(policy, stores, copy_to_secondary(policy, stores, ref))


def _scheduled_snapshots(env: dict[str, str]) -> int:
    """How many snapshot task instances of the DAG wait for a pool slot."""
    from local.pg import connect

    database = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]
    with connect(database) as conn:
        row = conn.execute(
            "SELECT count(*) FROM task_instance WHERE dag_id = %s AND task_id LIKE %s "
            "AND state = 'scheduled'",
            (DAG_ID, "%.snapshot"),
        ).fetchone()
    return int(row[0]) if row else 0


def _task_log_lines(logs: Path) -> list[tuple[str, str]]:
    """(task log file, message) for every line of the DAG's task logs."""
    found = []
    for path in sorted((logs / f"dag_id={DAG_ID}").rglob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                message = str(json.loads(line).get("event", ""))
            except (ValueError, AttributeError):
                message = line
            found.append((str(path.relative_to(logs)), message))
    return found


def test_backfill_overlapping_a_scheduled_run_never_shares_a_critical_section(
    stores, smtp_sink, airflow_scheduler
) -> None:
    policy = load_policy()
    schedule = policy.categories["platform"].tiers["weekly"].schedule
    latest = croniter(schedule, datetime.now(UTC)).get_prev(datetime)
    backfilled = [latest - timedelta(weeks=n) for n in range(BACKFILL_RUNS, 0, -1)]
    expired = latest - timedelta(weeks=5)  # beyond the 28 days: some prune deletes it meanwhile
    # A clean run of the DAG for the first backfilled window, alone (dag.test): committed
    # before the overlap, and the baseline the overlapping runs are timed against.
    clean = time.monotonic()
    assert run_dag(DAG_ID, backfilled[0]).state == "success"
    clean_run_seconds = time.monotonic() - clean
    _commit(stores, expired)  # after that run, whose prune would have deleted it
    before = committed(stores, "platform/")
    kept_before = {key: m for key, m in before.items() if key[0].window != expired}

    (server,) = policy.servers
    shown = airflow_cli(airflow_scheduler, "pools", "get", server.dump_pool, "-o", "json")
    (pool,) = json.loads(shown.strip().splitlines()[-1])
    snapshots = (BACKFILL_RUNS + 1) * len(TARGETS)
    airflow_cli(airflow_scheduler, "pools", "set", pool["pool"], "0", pool["description"])
    try:
        # The backfill's runs wait while the DAG is paused; unpausing starts them together with
        # the scheduled run of the latest window (catchup is off).
        started = datetime.now(UTC)
        airflow_cli(
            airflow_scheduler, "backfill", "create", "--dag-id", DAG_ID,
            "--from-date", (backfilled[0] - timedelta(hours=1)).isoformat(),
            "--to-date", (backfilled[-1] + timedelta(hours=1)).isoformat(),
            "--max-active-runs", str(BACKFILL_RUNS), "--reprocess-behavior", "none",
        )  # fmt: skip
        airflow_cli(airflow_scheduler, "dags", "unpause", DAG_ID)
        deadline = time.monotonic() + 600
        while _scheduled_snapshots(airflow_scheduler) < snapshots:
            assert time.monotonic() < deadline, "the runs' snapshots never became ready"
            time.sleep(2)
        airflow_cli(
            airflow_scheduler, "pools", "set", pool["pool"], str(snapshots), pool["description"]
        )
        opened = time.monotonic()
        wait_for_runs(airflow_scheduler, DAG_ID, [*backfilled, latest], started, timeout=900)
        overlap_seconds = time.monotonic() - opened
    finally:
        airflow_cli(airflow_scheduler, "dags", "pause", DAG_ID)
        airflow_cli(
            airflow_scheduler, "pools", "set", pool["pool"], str(pool["slots"]), pool["description"]
        )

    subjects = {f"platform/{target}/weekly" for target in TARGETS}
    # (a) every step of every run held its target's lease once, and no two holders were ever
    # inside at once: each entrant wrote its marker, then found no other's (the store's word).
    witness = stores.primary
    entries = Counter(
        o.key.removeprefix("witness/entries/").rsplit("/", 1)[0]
        for o in witness.list_objects("witness/entries/")
    )
    assert entries == dict.fromkeys(subjects, 4 * len(STEPS))
    overlaps = [witness.get_json(o.key) for o in witness.list_objects("witness/overlaps/")]
    assert overlaps == []
    assert [o.key for o in witness.list_objects("witness/inside/")] == [], "a holder never left"
    # (c) the runs really contended: steps waited for a lease another run held.
    waited: dict[str, set[str]] = defaultdict(set)
    for task_log, message in _task_log_lines(Path(airflow_scheduler["AIRFLOW_HOME"]) / "logs"):
        if match := WAITING.search(message):
            waited[match.group(1)].add(task_log)
    assert set(waited) & subjects, "no task ever waited: the runs did not overlap"

    # (b) every window backed up once and verified in both regions; nothing committed lost;
    # the expired window went the way the policy says, and nobody was paged.
    regions = {store.region.name for store in stores}
    for target in TARGETS:
        backups, debris = build_catalogue(
            store.listing(f"platform/{target}/weekly/") for store in stores
        )
        assert sorted(b.id.window for b in backups) == [*backfilled, latest]
        for backup in backups:
            assert set(backup.copies) == regions
            assert all(c.verification is Verification.PASSED for c in backup.copies.values())
            manifest = stores.primary.manifest(backup.id)
            versions = stores.primary.client.list_object_versions(
                Bucket=stores.primary.bucket, Prefix=manifest.artifact.key
            )
            assert len(versions["Versions"]) == 1, f"{backup.id} stored more than once"
        assert debris == []
    assert lost(stores, kept_before) == []
    for (backup, _), manifest in kept_before.items():  # revisited by the backfill, not re-taken
        assert stores.primary.manifest(backup) == manifest
    alert = alerts(smtp_sink, timeout=5)
    assert alert == "", alert
    record(
        "backfill overlapping a scheduled run",
        injected_when=(
            f"backfill of {BACKFILL_RUNS} windows (--max-active-runs {BACKFILL_RUNS}) started "
            "with the scheduled run of the latest window, their snapshots released together"
        ),
        lost=[],
        alert=alert_summary(alert),
        recovery_seconds=overlap_seconds,  # all four runs done, from their release
        clean_run_seconds=clean_run_seconds,  # one run of one window, alone
        critical_sections=sum(entries.values()),
        tasks_that_waited=sum(len(t) for t in waited.values()),
    )
