"""A part of the storage dies (SIGKILL) in the middle of a real DAG run: an S3 region while the
snapshot uploads into the primary or while the copy streams into the secondary, or the KMS that
both regions encrypt with while the snapshot uploads.

The run must fail with one alert naming the DAG, the task, the target and the cause (the
unreachable region or KMS); every backup committed before stays intact in both regions; the
half-written upload is never counted as a backup; and once the part is back a re-run of the
window heals it.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from include.backup_dr.catalogue import BackupId, build_catalogue
from tests.faults.harness import (
    BULK_DATABASE,
    DAG_ID,
    EARLIER,
    RETRY_DELAY_SECONDS,
    WINDOW,
    alert_summary,
    alerts,
    bring_back,
    bulk_database,  # noqa: F401 (fixture)
    committed,
    content_lost,
    describe,
    fault_when,
    lost,
    only_targets,
    open_alert_path,
    outage,  # noqa: F401 (fixture)
    record,
    row_checksums,
    timed_run,
    upload_in_progress,
    window_state,
)
from tests.stack import run_dag

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("fault", "part", "role", "task", "cause"),
    [
        (
            "S3 region eu-west-1 (primary) killed mid-upload",
            "s3-primary",
            "primary",
            "snapshot",
            ("eu-west-1", "Could not connect"),
        ),
        (
            "S3 region eu-central-1 (secondary) killed mid-copy",
            "s3-secondary",
            "secondary",
            "copy_to_secondary",
            ("eu-central-1", "Could not connect"),
        ),
        (
            "KMS stand-in killed mid-upload",
            "kms",
            "primary",
            "snapshot",
            ("KMS key backup-primary-key", "DescribeKey", "Could not connect"),
        ),
    ],
    ids=["primary-mid-upload", "secondary-mid-copy", "kms-mid-upload"],
)
def test_storage_part_killed_mid_transfer_loses_nothing_alerts_and_heals(
    fault: str,
    part: str,
    role: str,
    task: str,
    cause: tuple[str, ...],
    bulk_database: str,  # noqa: F811
    outage,  # noqa: F811
    stores,
    policy_file,
    smtp_sink,
) -> None:
    policy_file(only_targets(bulk=True))
    baseline = row_checksums(BULK_DATABASE)  # the source's rows, before anything happens
    open_alert_path(smtp_sink)
    clean, clean_seconds = timed_run(DAG_ID, EARLIER)  # the baseline, and a committed backup
    assert clean.state == "success"
    before = committed(stores, f"platform/{BULK_DATABASE}/")
    assert len(before) == 2

    backup = BackupId("platform", BULK_DATABASE, "daily", WINDOW)
    dying = stores.role(role)
    with fault_when(upload_in_progress(dying, backup.prefix), lambda: outage(part)):
        run = run_dag(DAG_ID, WINDOW, retry_delay=timedelta(seconds=RETRY_DELAY_SECONDS))
    assert run.state == "failed"

    alert = alerts(smtp_sink)
    assert alert.count("[backup] ") == 1, alert  # one alert, after the last retry
    for fact in (DAG_ID, task, BULK_DATABASE, *cause):
        assert fact in alert, (fact, alert)

    removed = time.monotonic()
    restart_seconds = bring_back()
    # The half-written transfer is debris at most; the window is not a backup where it died.
    backups, _ = build_catalogue(store.listing(backup.prefix) for store in stores)
    assert all(dying.region.name not in b.copies for b in backups), backups

    assert run_dag(DAG_ID, WINDOW).state == "success"
    verified, debris = window_state(stores, backup)
    recovery_seconds = time.monotonic() - removed
    assert verified == sorted(store.region.name for store in stores)
    earlier = BackupId("platform", BULK_DATABASE, "daily", EARLIER)
    missing = lost(stores, before) + content_lost(
        stores, baseline, [earlier, backup], stores.secondary.region.name
    )
    record(
        fault,
        injected_when=f"{role}'s multipart upload of the window listed ({task} running)",
        lost=missing,
        alert=alert_summary(alert),
        recovery_seconds=recovery_seconds,
        clean_run_seconds=clean_seconds,
        restart_seconds=round(restart_seconds, 1),
        debris_after_heal=[describe(d) for d in debris],
    )
    assert missing == []
