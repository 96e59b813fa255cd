"""The weekly tier promotes the verified daily (policy.yaml: `derive_from: daily`): a server-side
copy in each region, re-verified there, with its own manifest naming the source. A target with
no daily to promote reads its source as before and says why."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from include.backup_dr.catalogue import INTEGRITY_NAME, BackupId
from include.backup_dr.pg_globals import OBJECT_NAME
from tests.integration.helpers import RUN, back_up, daily_far_from_now, daily_window
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
