"""The weekly tier promotes the verified daily (policy.yaml: `derive_from: daily`): a server-side
copy in each region, re-verified there, with its own manifest naming the source. A target with
no daily to promote reads its source as before and says why."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.catalogue import INTEGRITY_NAME, BackupId
from include.backup_dr.pg_globals import OBJECT_NAME
from tests.integration.helpers import (
    RUN,
    back_up,
    daily_far_from_now,
    daily_window,
    evidence,
    lock_policy,
    locked_stores,
)
from tests.stack import run_dag

pytestmark = pytest.mark.integration


def test_weekly_promotes_the_verified_daily_and_dumps_where_there_is_none(
    stores, policy_file, caplog
) -> None:
    policy = policy_file(daily_far_from_now)
    now = datetime.now(UTC).replace(microsecond=0)
    window = daily_window(policy, now)
    back_up(policy, stores, "platform_core", "daily", window, RUN)
    daily = BackupId("platform", "platform_core", "daily", window)
    source = stores.primary.manifest(daily)

    caplog.set_level(logging.INFO)
    assert run_dag("platform_backup_weekly", now).state == "success"

    promoted = BackupId("platform", "platform_core", "weekly", now)
    for store in stores:
        manifest = store.manifest(promoted)
        assert manifest.derived_from["backup"] == str(daily)
        assert manifest.artifact.key == promoted.key("data.pgdump")
        assert (manifest.artifact.size, manifest.artifact.sha256) == (
            source.artifact.size,
            source.artifact.sha256,
        )
        assert manifest.row_counts == source.row_counts and manifest.started_at == source.started_at
        assert manifest.source["globals"]["key"] == promoted.key(OBJECT_NAME)
        checks = store.get_json(promoted.key(INTEGRITY_NAME))
        assert checks["ok"] is True
        assert {c["name"] for c in checks["checks"]} >= {"size", "sha256", "readable", "globals"}
        head = store.head(manifest.artifact.key)
        assert head["SSEKMSKeyId"].endswith(store.region.kms_key_id)
        # The check kept for good says where the data came from, after the manifest is pruned.
        kept = [
            r for r in evidence(store, "integrity", "platform/platform_core") if r["derived_from"]
        ]
        assert [r["derived_from"]["backup"] for r in kept] == [str(daily)]
    # The secondary's copy is made from the secondary's own daily, not across regions.
    copied = stores.secondary.manifest(promoted).copied_from
    assert copied["key"] == source.artifact.key
    assert copied["mode"] == f"server-side copy of {daily} within eu-central-1"
    label = f"promoted from daily {window:%Y%m%dT%H%M%SZ}"
    assert label in caplog.text

    dumped = stores.primary.manifest(BackupId("platform", "platform_billing", "weekly", now))
    assert dumped.derived_from is None
    assert dumped.not_derived == (
        "read the source: no daily backup's data was read within 2h of the window "
        "(never promoted: only verified)"
    )
    assert stores.secondary.manifest(dumped.backup).copied_from["region"] == "eu-west-1"


class _Seen(logging.Handler):
    """Sets `event` when a log message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_weekly_waits_for_a_due_daily_then_promotes_it(stores, policy_file, monkeypatch) -> None:
    """The daily fired ten minutes ago and has no backup yet: the weekly's snapshot is
    rescheduled (holding no worker or pool slot) until the daily is verified, then promotes it."""
    monkeypatch.setenv("BACKUP_PROMOTION_POLL_SECONDS", "2")
    now = datetime.now(UTC).replace(microsecond=0)
    due = (now - timedelta(minutes=10)).replace(second=0)

    def daily_just_due(data: dict) -> None:
        data["targets"] = [t for t in data["targets"] if t["name"] != "platform_billing"]
        tiers = data["categories"]["platform"]["tiers"]
        del tiers["monthly"]
        tiers["daily"]["schedule"] = f"{due.minute} {due.hour} * * *"
        tiers["weekly"]["schedule"] = f"{now.minute} {now.hour} * * 0"

    policy = policy_file(daily_just_due)
    waiting = _Seen(f"waiting for daily {due:%Y%m%dT%H%M%SZ} to be verified")
    logger = logging.getLogger("include.backup_dr.backup.steps")
    logger.addHandler(waiting)

    def take_the_daily_once_the_weekly_waits() -> None:
        assert waiting.event.wait(300), "the weekly never waited for the daily"
        back_up(policy, stores, "platform_core", "daily", due, RUN)

    try:
        with ThreadPoolExecutor(1) as pool:
            daily = pool.submit(take_the_daily_once_the_weekly_waits)
            run = run_dag("platform_backup_weekly", now)
            daily.result()
    finally:
        logger.removeHandler(waiting)
    assert run.state == "success"
    (snapshot,) = [ti for ti in run.get_task_instances() if ti.task_id.endswith(".snapshot")]
    assert snapshot.try_number == 1  # rescheduled, not retried
    weekly = stores.secondary.manifest(BackupId("platform", "platform_core", "weekly", now))
    assert weekly.derived_from["window"] == due.isoformat()


@pytest.fixture
def locked_promotion(stores, policy_file):
    """Governance locks in both regions, and a daily twelve hours from now."""

    def mutate(data: dict) -> None:
        lock_policy(data)
        daily_far_from_now(data)

    yield from locked_stores(policy_file(mutate))


def test_a_promoted_weekly_is_locked_for_the_weekly_retention_not_the_daily(
    locked_promotion,
) -> None:
    policy, stores = locked_promotion
    now = datetime.now(UTC).replace(microsecond=0)
    window = daily_window(policy, now)
    back_up(policy, stores, "platform_core", "daily", window, RUN)
    daily = BackupId("platform", "platform_core", "daily", window)
    ref = back_up(policy, stores, "platform_core", "weekly", now, RUN)
    assert "promoted" in ref
    weekly = BackupId("platform", "platform_core", "weekly", now)
    for store in stores:
        for name in ("data.pgdump", OBJECT_NAME, "manifest.json"):
            assert store.locked_until(weekly.key(name)) == now + timedelta(days=28 + 1), name
            assert store.locked_until(daily.key(name)) == window + timedelta(days=7 + 1), name
