"""Media restores for real: the drill re-hashes every object; dr_restore restores a prefix."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from include.backup_dr.catalogue import BackupId
from include.backup_dr.engines.media import blob_key
from include.backup_dr.restore.media import selected
from tests.integration.helpers import MEDIA_TARGET as TARGET
from tests.integration.helpers import evidence, media_source
from tests.stack import run_dag

pytestmark = pytest.mark.integration
WINDOW = datetime(2026, 11, 23, 0, 45, tzinfo=UTC)
BACKUP = BackupId("media", TARGET, "daily", WINDOW)


def _sandbox():
    from include.backup_dr.drill.dumps import sandbox_bucket
    from include.backup_dr.policy import load_policy

    return sandbox_bucket(load_policy())


@pytest.fixture
def backed_up(stores) -> Iterator[None]:
    assert run_dag("media_backup_daily", WINDOW).state == "success"
    yield
    _sandbox().delete_all_versions("")


def test_drill_catches_a_rotten_blob_in_the_restore_region(backed_up, stores) -> None:
    manifest = stores.secondary.manifest(BACKUP)
    victim = next(selected(stores.secondary, manifest, ""))
    key = blob_key("media", victim.sha256)
    body = stores.secondary.open(key).read()
    stores.secondary.put_bytes(key, bytes([body[0] ^ 1]) + body[1:], "application/octet-stream")

    run = run_dag("restore_verification", WINDOW, {"target": TARGET})
    assert run.state == "failed"
    (record,) = evidence(stores.primary, "restore_verification", TARGET)
    assert record["outcome"] == "failed"
    failed = [r for r in record["validation"]["results"] if not r["success"]]
    assert [r["expectation"] for r in failed] == ["every_restored_object_matches_its_sha256"]
    assert victim.key in failed[0]["observed"]
    assert list(_sandbox().list_objects("")) == []  # the teardown emptied the sandbox


def test_dr_restore_brings_back_one_tenant_to_a_bucket(backed_up, stores) -> None:
    manifest = stores.secondary.manifest(BACKUP)
    tenant = next(selected(stores.secondary, manifest, "")).key.split("/")[1]
    prefix = f"tenants/{tenant}/"
    wanted = {e.key: e.sha256 for e in selected(stores.secondary, manifest, prefix)}
    everything = sum(1 for _ in selected(stores.secondary, manifest, ""))
    assert 0 < len(wanted) < everything
    conf = {
        "targets": [TARGET],
        "bucket": "restore-sandbox",
        "prefix": prefix,
        "dest_prefix": "recovered/",
    }
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "success"

    sandbox = _sandbox()
    restored = {o.key for o in sandbox.list_objects("")}
    assert restored == {f"recovered/{key}" for key in wanted}
    source = media_source()
    for key, sha in wanted.items():  # the source has not changed since the backup
        body = sandbox.open(f"recovered/{key}").read()
        assert hashlib.sha256(body).hexdigest() == sha
        assert body == source.get_object(Bucket="media-source", Key=key)["Body"].read()
    (record,) = evidence(stores.primary, "dr_restore", TARGET)
    assert record["outcome"] == "passed", record["problems"]
    assert record["steps"]["objects"] == len(wanted)
    assert record["steps"]["timings"]["copy"] > 0

    # Again, without overwrite: refused, and nothing changes.
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "failed"
    assert {o.key for o in sandbox.list_objects("")} == restored
