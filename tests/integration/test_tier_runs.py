"""Each platform tier DAG, run for real against PostgreSQL and both S3 regions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from croniter import croniter

from include.backup_dr.catalogue import INTEGRITY_NAME, BackupId
from include.backup_dr.policy import load_policy
from tests.stack import run_dag

pytestmark = pytest.mark.integration
#: Three hours ago: a weekly or monthly window then lies beyond its max_skew (2h), so its run
#: never waits for a daily that this test does not take; it reads the source.
NOW = datetime.now(UTC) - timedelta(hours=3)


def latest_window(schedule: str) -> datetime:
    return croniter(schedule, NOW).get_prev(datetime)


def table_counts(database: str) -> dict[str, int]:
    from local.settings import read_settings

    conn = next(c for c in read_settings().connections if c.conn_id == "pg_platform")
    with (
        psycopg2.connect(
            host=conn.host, port=conn.port, user=conn.login, password=conn.password, dbname=database
        ) as db,
        db.cursor() as cursor,
    ):
        cursor.execute("SELECT schemaname || '.' || relname FROM pg_stat_user_tables ORDER BY 1")
        counts = {}
        for (name,) in cursor.fetchall():
            schema, table = name.split(".")
            cursor.execute(f'SELECT count(*) FROM "{schema}"."{table}"')
            counts[name] = cursor.fetchone()[0]
        return counts


@pytest.mark.parametrize("tier", ["6h", "daily", "weekly", "monthly"])
def test_full_run_backs_up_verifies_and_prunes_every_production_target(
    tier: str, stores, caplog
) -> None:
    policy = load_policy()
    window = latest_window(policy.categories["platform"].tiers[tier].schedule)
    run = run_dag(f"platform_backup_{tier}", window)
    assert run.state == "success"

    for target in ("platform_core", "platform_billing"):
        backup = BackupId("platform", target, tier, window)
        primary = stores.primary.manifest(backup)
        secondary = stores.secondary.manifest(backup)
        assert primary is not None and secondary is not None, target
        assert primary.backup.window == window
        assert primary.started_at <= primary.finished_at
        assert primary.source["server_version"].startswith("16")
        assert primary.row_counts == table_counts(target)
        assert primary.encryption["kms_key_id"] == "backup-primary-key"
        assert secondary.encryption["kms_key_id"] == "backup-secondary-key"
        assert secondary.copied_from is not None
        assert secondary.artifact == primary.artifact
        for store in stores:
            head = store.head(primary.artifact.key)
            assert head["ContentLength"] == primary.artifact.size
            assert head["ServerSideEncryption"] == "aws:kms"
            assert head["SSEKMSKeyId"].endswith(store.region.kms_key_id)
            evidence = store.get_json(backup.key(INTEGRITY_NAME))
            assert evidence["ok"] is True, evidence
            assert {c["name"] for c in evidence["checks"]} == {
                "manifest",
                "present",
                "size",
                "encrypted",
                "sha256",
                "readable",
                "globals",
                "globals encrypted",
            }
            assert list(store.list_objects(f"evidence/prune/platform/{target}/{tier}/"))

    for store in stores:
        assert not list(store.list_objects("platform/uat_core/"))
    assert (
        "Skipping uat_core: uat_core is UAT data; the policy says 'We do not take any backups of UAT data'"
        in caplog.text
    )


def test_rerunning_a_verified_window_stores_no_duplicate(stores) -> None:
    window = datetime(2026, 11, 20, 0, 30, tzinfo=UTC)
    assert run_dag("platform_backup_daily", window).state == "success"
    backup = BackupId("platform", "platform_core", "daily", window)
    first = stores.primary.manifest(backup)
    keys_before = sorted(o.key for o in stores.primary.list_objects("platform/platform_core/"))

    assert run_dag("platform_backup_daily", window).state == "success"
    again = stores.primary.manifest(backup)
    assert again == first
    versions = stores.primary.client.list_object_versions(
        Bucket=stores.primary.bucket, Prefix=first.artifact.key
    )["Versions"]
    assert len(versions) == 1
    keys_after = sorted(o.key for o in stores.primary.list_objects("platform/platform_core/"))
    assert keys_after == keys_before
