"""Promotion under faults: a daily that failed its check is never promoted, a promotion cut off
between regions leaves no half-made backup and the next run completes it, and a promoted weekly
outlives the daily it came from and restores."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.backup import steps
from include.backup_dr.backup.errors import IntegrityError
from include.backup_dr.catalogue import BackupId, build_catalogue
from include.backup_dr.drill import dumps
from include.backup_dr.restore.select import Selection
from include.backup_dr.stores import from_ref
from tests.faults.harness import connection_through, only_targets, window_state
from tests.faults.s3_proxy import Fault, S3FaultProxy
from tests.integration.helpers import RUN, back_up, daily_far_from_now, daily_window
from tests.stack import run_dag

pytestmark = pytest.mark.integration
TARGET = "platform_core"
DAG_ID = "platform_backup_weekly"


def _policy(policy_file):
    def mutate(data: dict) -> None:
        only_targets(TARGET)(data)
        daily_far_from_now(data)

    return policy_file(mutate)


def _verified_daily(policy, stores, now: datetime) -> BackupId:
    window = daily_window(policy, now)
    back_up(policy, stores, TARGET, "daily", window, RUN)
    return BackupId("platform", TARGET, "daily", window)


def test_a_daily_that_failed_its_integrity_check_is_never_promoted(stores, policy_file) -> None:
    policy = _policy(policy_file)
    now = datetime.now(UTC).replace(microsecond=0)
    window = daily_window(policy, now)
    ref = steps.take_snapshot(policy, stores, TARGET, "daily", window, RUN)
    steps.copy_to_secondary(policy, stores, ref)
    daily = from_ref(ref)
    rotten = stores.secondary.manifest(daily).artifact
    body = bytearray(stores.secondary.open(rotten.key).read())
    body[len(body) // 2] ^= 0xFF  # bit rot, same size
    stores.secondary.put_bytes(rotten.key, bytes(body), "application/octet-stream")
    with pytest.raises(IntegrityError, match="eu-central-1"):
        steps.check_integrity(policy, stores, ref)

    weekly = steps.take_snapshot(policy, stores, TARGET, "weekly", now, RUN)
    assert "promoted" not in weekly
    manifest = stores.primary.manifest(from_ref(weekly))
    assert manifest.derived_from is None
    assert manifest.not_derived == (
        f"read the source: daily {window:%Y%m%dT%H%M%SZ} failed its integrity check in "
        "eu-central-1 (never promoted: only verified)"
    )
    assert manifest.artifact.key.startswith("platform/platform_core/weekly/")
    steps.copy_to_secondary(policy, stores, weekly)
    assert steps.check_integrity(policy, stores, weekly)["verified_regions"] == [
        "eu-west-1",
        "eu-central-1",
    ]


def test_a_promotion_cut_off_between_regions_leaves_no_half_made_backup_and_completes_next_run(
    stores, policy_file, monkeypatch
) -> None:
    """The secondary refuses the promoted weekly's manifest (the connection drops, every
    attempt): the run fails with the primary's copy committed and the secondary's bytes as
    debris, not a backup. The next run of the window completes it from where it stopped."""
    policy = _policy(policy_file)
    now = datetime.now(UTC).replace(microsecond=0)
    daily = _verified_daily(policy, stores, now)
    weekly = BackupId("platform", TARGET, "weekly", now)

    def cut(request) -> Fault | None:
        is_manifest = request.path.split("?")[0].endswith(weekly.key("manifest.json"))
        return Fault.DROP if request.method == "PUT" and is_manifest else None

    conn_id = stores.secondary.region.conn_id
    with S3FaultProxy(stores.secondary.endpoint_url, cut).running() as proxy:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}", connection_through(conn_id, proxy.endpoint)
        )
        failed = run_dag(DAG_ID, now, retry_delay=timedelta(seconds=1))
    monkeypatch.undo()
    policy = _policy(policy_file)  # undo() reverted the policy too
    assert failed.state == "failed"
    assert proxy.injected["DROP PUT"] > 0
    states = {ti.task_id: ti.state for ti in failed.get_task_instances()}
    assert states["platform_primary.snapshot"] == "success"
    assert states["platform_primary.copy_to_secondary"] == "failed"
    assert stores.primary.manifest(weekly).derived_from["backup"] == str(daily)
    assert stores.secondary.manifest(weekly) is None
    backups, debris = build_catalogue([stores.secondary.listing(weekly.prefix)])
    assert backups == []  # the secondary has no weekly backup, only bytes without a manifest
    assert {d.key for d in debris} >= {weekly.key("data.pgdump")}

    assert run_dag(DAG_ID, now).state == "success"
    verified, debris = window_state(stores, weekly)
    assert verified == ["eu-central-1", "eu-west-1"] and debris == []
    assert "within eu-central-1" in stores.secondary.manifest(weekly).copied_from["mode"]


def test_a_promoted_weekly_survives_prune_of_its_daily_and_restores(stores, policy_file) -> None:
    policy = _policy(policy_file)
    now = datetime.now(UTC).replace(microsecond=0)
    daily = _verified_daily(policy, stores, now)
    ref = back_up(policy, stores, TARGET, "weekly", now, RUN)
    assert ref["promoted"] == f"promoted from daily {daily.window:%Y%m%dT%H%M%SZ}"
    weekly = from_ref(ref)
    later = BackupId("platform", TARGET, "daily", daily.window + timedelta(days=1))
    back_up(policy, stores, TARGET, "daily", later.window, RUN)

    time.sleep(2)  # prune deletes only what was written a second before it listed
    pruned = steps.prune(
        policy, stores, TARGET, "daily", now=daily.window + timedelta(days=7, hours=12)
    )
    assert pruned["deleted"], pruned
    for store in stores:
        assert store.manifest(daily) is None and store.manifest(later) is not None
        assert list(store.list_objects(daily.prefix)) == []
    assert steps.check_integrity(policy, stores, ref)["verified_regions"] == [
        "eu-west-1",
        "eu-central-1",
    ]

    params = {"tier": "weekly", "region": "secondary", "target": TARGET}
    (chosen,) = dumps.select(policy, stores, params)
    assert chosen["window"] == weekly.window.isoformat()
    sandbox = dumps.provision(policy, chosen, "promotion-test")["sandbox"]
    try:
        selection = Selection.from_ref(chosen)
        restored = dumps.restore_sandbox(policy, stores, selection, sandbox)
        assert restored["restored_bytes"] > 0
        validation = dumps.validate_sandbox(policy, stores, selection, sandbox)
        assert validation.ok, validation.to_document()
    finally:
        dumps.teardown(policy, chosen, "promotion-test")


def test_a_promoted_copy_that_rotted_with_its_daily_is_copied_again_from_the_other_region(
    stores, policy_file
) -> None:
    """Bit rot in the secondary hits the daily and then its promoted weekly: the weekly's check
    fails there, and the next copy takes the primary's verified bytes, not the rotten daily's."""
    policy = _policy(policy_file)
    now = datetime.now(UTC).replace(microsecond=0)
    daily = _verified_daily(policy, stores, now)
    ref = back_up(policy, stores, TARGET, "weekly", now, RUN)
    weekly = from_ref(ref)
    for backup in (daily, weekly):
        key = stores.secondary.manifest(backup).artifact.key
        body = bytearray(stores.secondary.open(key).read())
        body[len(body) // 3] ^= 0xFF
        stores.secondary.put_bytes(key, bytes(body), "application/octet-stream")
    with pytest.raises(IntegrityError, match="eu-central-1"):
        steps.check_integrity(policy, stores, ref)

    copied = steps.copy_to_secondary(policy, stores, ref)
    assert "within" not in copied["copy"]
    assert stores.secondary.manifest(weekly).copied_from["region"] == "eu-west-1"
    assert steps.check_integrity(policy, stores, ref)["verified_regions"] == [
        "eu-west-1",
        "eu-central-1",
    ]
