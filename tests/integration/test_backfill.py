"""`airflow backfill create` over missed windows, run by a real scheduler (airflow standalone)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter

from include.backup_dr.catalogue import BackupId, Verification, build_catalogue
from include.backup_dr.policy import load_policy
from tests.stack import airflow_cli, wait_for_runs

pytestmark = pytest.mark.integration
DAG_ID = "platform_backup_daily"
TARGETS = ("platform_billing", "platform_core")


def _windows(stores) -> dict[str, list[datetime]]:
    found = {}
    for target in TARGETS:
        backups, _ = build_catalogue(store.listing(f"platform/{target}/daily/") for store in stores)
        assert all(
            c.verification is Verification.PASSED for b in backups for c in b.copies.values()
        )
        found[target] = [b.id.window for b in backups]
    return found


def _backfill(scheduler, span: list[str], reprocess: str) -> None:
    """`airflow backfill create` of the DAG over `span`, as an engineer types it."""
    airflow_cli(
        scheduler,
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        *span,
        "--reprocess-behavior",
        reprocess,
    )


def test_backfill_fills_exactly_the_missed_windows_once(stores, airflow_scheduler) -> None:
    schedule = load_policy().categories["platform"].tiers["daily"].schedule
    now = datetime.now(UTC)
    latest = croniter(schedule, now).get_prev(datetime)
    missed = [latest - timedelta(days=5), latest - timedelta(days=4)]
    started = datetime.now(UTC)
    # Unpausing also lets the scheduler take its own latest window (catchup is off).
    airflow_cli(airflow_scheduler, "dags", "unpause", DAG_ID)
    span = [
        "--from-date", (missed[0] - timedelta(hours=1)).isoformat(),
        "--to-date", (missed[1] + timedelta(hours=1)).isoformat(),
    ]  # fmt: skip
    _backfill(airflow_scheduler, span, "none")
    wait_for_runs(airflow_scheduler, DAG_ID, [*missed, latest], started)

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
            _backfill(airflow_scheduler, span, "completed")
            break
        except AssertionError as refused:
            if "AlreadyRunningBackfill" not in str(refused) or time.monotonic() > deadline:
                raise
            time.sleep(5)
    wait_for_runs(airflow_scheduler, DAG_ID, missed, again)
    airflow_cli(airflow_scheduler, "dags", "pause", DAG_ID)
    assert _windows(stores) == dict.fromkeys(TARGETS, expected)
    for (target, window), manifest in first.items():
        assert stores.primary.manifest(BackupId("platform", target, "daily", window)) == manifest
        versions = stores.primary.client.list_object_versions(
            Bucket=stores.primary.bucket, Prefix=manifest.artifact.key
        )
        assert len(versions["Versions"]) == 1
