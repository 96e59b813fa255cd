"""Object Lock against the real S3 server: what the backup credentials cannot do, a prune that
waits for the lock, and the break-glass bypass with its evidence."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from include.backup_dr.backup import steps
from include.backup_dr.backup.break_glass import delete_locked_backup
from include.backup_dr.backup.gc import collect_garbage
from include.backup_dr.backup.steps import (
    check_integrity,
    copy_to_secondary,
    prune,
    take_snapshot,
)
from include.backup_dr.catalogue import INTEGRITY_NAME, MANIFEST_NAME, BackupId, Manifest
from include.backup_dr.engines.media import blob_key, parse_listing
from include.backup_dr.engines.wal import lock_archive
from include.backup_dr.immutability import LockRule
from include.backup_dr.lease import LeaseLostError
from include.backup_dr.policy import SHARED_EXTENSION
from include.backup_dr.store import DeleteRefusedError, ObjectStore
from include.backup_dr.wal_segments import archive_prefix
from tests.integration.helpers import HELD, lock_policy, locked_stores, switch_wal
from tests.stack import run_dag

pytestmark = pytest.mark.integration
TARGET, TIER = "platform_billing", "daily"
MEDIA = "media_documents"


@pytest.fixture
def locked_short_grace(stores, policy_file):
    """`locked`, with a 4 s grace: blobs written before a 5 s sleep are old enough to sweep."""

    def mutate(data) -> None:
        lock_policy(data)
        data["prune"]["incomplete_upload_grace"] = "4s"

    yield from locked_stores(policy_file(mutate))


def _backed_up(policy, stores, window: datetime) -> BackupId:
    ref = take_snapshot(policy, stores, TARGET, TIER, window, {})
    copy_to_secondary(policy, stores, ref)
    check_integrity(policy, stores, ref)
    return BackupId("platform", TARGET, TIER, window)


@contextmanager
def _denied() -> Iterator[None]:
    with pytest.raises(ClientError) as caught:
        yield
    assert caught.value.response["Error"]["Code"] == "AccessDenied", caught.value.response


def test_the_backup_credentials_cannot_delete_overwrite_or_shorten_a_locked_backup(locked):
    policy, stores = locked
    window = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    backup = _backed_up(policy, stores, window)
    for store in stores:
        manifest = store.head(backup.key(MANIFEST_NAME))
        assert manifest["ObjectLockMode"] == "GOVERNANCE"
        assert store.locked_until(backup.key(MANIFEST_NAME)) == window + HELD
        artifact_key = store.manifest(backup).artifact.key
        assert store.locked_until(artifact_key) == window + HELD  # streamed or copied alike
        original = b"".join(store.iter_chunks(artifact_key))
        version = store.head(artifact_key)["VersionId"]

        with pytest.raises(DeleteRefusedError, match="Object Lock holds them"):
            store.delete_all_versions(backup.prefix)
        client, bucket = store.client, store.bucket
        with _denied():  # asking to bypass does not help: the backup role lacks the permission
            client.delete_object(
                Bucket=bucket, Key=artifact_key, VersionId=version, BypassGovernanceRetention=True
            )
        with _denied():
            client.put_object_retention(
                Bucket=bucket,
                Key=artifact_key,
                VersionId=version,
                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": window + timedelta(days=1)},
            )
        # An overwrite only adds a version on top: the locked one keeps its bytes and its lock.
        client.put_object(Bucket=bucket, Key=artifact_key, Body=b"ransom note")
        kept = b"".join(store.iter_chunks(artifact_key, version_id=version))
        assert kept == original
        head = client.head_object(Bucket=bucket, Key=artifact_key, VersionId=version)
        assert head["ObjectLockRetainUntilDate"] == window + HELD


def test_prune_keeps_a_backup_until_its_lock_ends_then_deletes_it(locked) -> None:
    """A simulated timeline with a real lock: the expired backup's lock ends a minute after it
    is taken (time enough to plan twice before then on a busy machine)."""
    policy, stores = locked
    _backed_up(policy, stores, datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))
    now = datetime.now(UTC).replace(microsecond=0)
    expired = _backed_up(policy, stores, now + timedelta(seconds=60) - HELD)
    until = expired.window + HELD
    time.sleep(2)  # S3 times versions to the second; prune spares what it may not have seen

    before = prune(policy, stores, TARGET, TIER, now=until - timedelta(seconds=1))
    assert (before["deleted"], before["planned_deletions"]) == (0, 0)
    record = stores.primary.get_json(before["evidence"])
    reasons = [d["reason"] for d in record["decisions"] if d["subject"].startswith(str(expired))]
    assert len(reasons) == 2
    assert all(f"locked until {until.isoformat()}" in reason for reason in reasons)

    # Planned a second too early for the store: it refuses, the prune says so and goes on.
    early = prune(policy, stores, TARGET, TIER, now=until + timedelta(seconds=1))
    assert (early["planned_deletions"], early["refused"], early["deleted"]) == (2, 2, 0)
    refused = stores.secondary.get_json(early["evidence"].removesuffix(".json") + "-refused.json")
    assert {r["subject"].split("@")[0] for r in refused["refused"]} == {str(expired)}
    for store in stores:
        assert store.manifest(expired) is not None

    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 2)
    after = prune(policy, stores, TARGET, TIER, now=until + timedelta(seconds=1))
    assert (after["deleted"], after["refused"]) == (2, 0)
    for store in stores:
        assert store.manifest(expired) is None
        versions = store.client.list_object_versions(Bucket=store.bucket, Prefix=expired.prefix)
        assert not versions.get("Versions") and not versions.get("DeleteMarkers")


def test_break_glass_deletes_a_locked_backup_through_its_own_connection_on_record(locked):
    policy, stores = locked
    backup = _backed_up(
        policy, stores, datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    )
    with pytest.raises(DeleteRefusedError):
        stores.primary.delete_all_versions(backup.prefix)
    with pytest.raises(ValueError, match="needs a reason"):
        delete_locked_backup(policy, backup, "primary", reason=" ", operator="pytest")

    record = delete_locked_backup(
        policy, backup, "primary", reason="restore test data leaked into backups", operator="sre"
    )
    assert record["outcome"] == "deleted" and record["deleted_versions"] >= 3
    assert record["connection"] == "s3_primary_break_glass"
    assert stores.primary.manifest(backup) is None
    assert stores.secondary.manifest(backup) is not None  # only the region asked for
    for store in stores:  # the evidence is in both regions, and locked itself
        evidence = store.get_json(record["evidence"])
        assert (evidence["operator"], evidence["outcome"]) == ("sre", "deleted")
        assert evidence["reason"] == "restore test data leaked into backups"
        assert store.locked_until(record["evidence"]) > datetime.now(UTC) + timedelta(days=399)
        versions = store.client.list_object_versions(Bucket=store.bucket, Prefix=record["evidence"])
        assert [v["IsLatest"] for v in versions["Versions"]].count(False) >= 1  # the request too


def test_break_glass_with_the_other_region_down_deletes_on_the_record_it_could_keep(
    locked, policy_file, monkeypatch
):
    policy, stores = locked
    backup = _backed_up(
        policy, stores, datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    )
    broken = {"conn_type": "aws", "login": "x", "password": "y"}
    broken["extra"] = {"endpoint_url": "http://127.0.0.1:9"}  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_S3_DOWN", json.dumps(broken))

    def secondary_down(data) -> None:
        lock_policy(data)
        data["regions"]["secondary"]["conn_id"] = "s3_down"

    record = delete_locked_backup(
        policy_file(secondary_down), backup, "primary", reason="leaked data", operator="sre"
    )
    assert record["outcome"] == "deleted" and record["evidence_missing_in"] == ["eu-central-1"]
    assert stores.primary.manifest(backup) is None
    evidence = stores.primary.get_json(record["evidence"])
    assert (evidence["operator"], evidence["outcome"]) == ("sre", "deleted")
    assert stores.secondary.get_json(record["evidence"]) is None


def _media(policy, stores, tier: str, window: datetime) -> Manifest:
    ref = take_snapshot(policy, stores, MEDIA, tier, window, {})
    copy_to_secondary(policy, stores, ref)
    check_integrity(policy, stores, ref)
    return stores.primary.manifest(BackupId("media", MEDIA, tier, window))


def test_a_snapshot_that_reuses_a_blob_extends_its_lock_in_both_regions(locked) -> None:
    """Kopia's rule on the real server: a blob is locked as long as the newest snapshot that
    lists it needs it. The daily's blobs are held for its 7 days plus the 30-day step; a daily
    the next day needs less than that, so it makes no request; the monthly needs a year, so it
    extends every blob it reuses, here and in the secondary region."""
    policy, stores = locked
    window = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    first = _media(policy, stores, "daily", window)
    entries = list(parse_listing(stores.primary.iter_chunks(first.artifact.key)))
    blobs = {blob_key("media", e.sha256) for e in entries}
    held = window + timedelta(days=7) + SHARED_EXTENSION
    assert {e.hold for e in entries} == {int(held.timestamp())}
    for store in stores:
        for blob in blobs:
            assert store.locked_until(blob) == held + timedelta(days=1), (store, blob)

    later = _media(policy, stores, "daily", window + timedelta(days=1))
    assert (later.source["reused"], later.source["extended"]) == (len(entries), 0)
    assert "0 locks extended" in stores.secondary.manifest(later.backup).copied_from["contents"]

    monthly = _media(policy, stores, "monthly", window)
    assert monthly.source["reused"] == len(entries)
    assert monthly.source["extended"] == len(entries)
    copied = stores.secondary.manifest(monthly.backup).copied_from["contents"]
    assert f"{len(blobs)} locks extended" in copied
    year = window + timedelta(days=365) + SHARED_EXTENSION + timedelta(days=1)
    for store in stores:
        for blob in blobs:
            assert store.locked_until(blob) == year, (store, blob)


def test_gc_keeps_an_unreferenced_blob_until_its_lock_ends_and_says_so(locked_short_grace):
    policy, stores = locked_short_grace
    primary = stores.primary
    body = f"orphan {datetime.now(UTC).isoformat()}".encode()
    orphan = blob_key("media", hashlib.sha256(body).hexdigest())
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
    primary.put_bytes(orphan, body, "application/octet-stream", lock_until=until)
    time.sleep(5)  # older than the grace

    kept = collect_garbage(policy, stores, "media")
    [sweep] = kept["regions"][primary.region.name]
    assert (sweep["doomed"], sweep["locked"], sweep["refused"]) == (0, 1, None)
    [record] = [primary.get_json(o.key) for o in primary.list_objects("evidence/gc/media/")]
    assert record["sweeps"][0]["locked_sample"] == [
        {
            "key": orphan,
            "reason": f"referenced by no kept snapshot; but locked until {until.isoformat()} "
            "(Object Lock): kept until then",
        }
    ]
    assert primary.head(orphan) is not None

    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 2)
    gone = collect_garbage(policy, stores, "media")
    [sweep] = gone["regions"][primary.region.name]
    assert (sweep["doomed"], sweep["locked"], sweep["deleted_versions"]) == (1, 0, 1)
    assert primary.head(orphan) is None


def test_wal_archived_since_the_last_run_is_locked_and_only_that(locked) -> None:
    """barman-cloud archives without a lock; the monitor's `lock_wal` locks what arrived since
    its last run, until archived + the continuous tier's 7 days + the margin. First as the
    monitor DAG runs it, then step by step."""
    _, stores = locked
    run = run_dag("platform_continuous_monitor", datetime.now(UTC), {"duration_seconds": 1})
    by_task = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert by_task["lock_wal"] == "success", by_task
    server = "platform_primary"
    segment = switch_wal()
    deadline = time.monotonic() + 90
    for store in stores:
        while not (
            found := [o for o in store.list_objects(archive_prefix(server)) if segment in o.key]
        ):
            assert time.monotonic() < deadline, f"{segment} never reached {store.region.name}"
            time.sleep(1)
        done = lock_archive(store, server, "platform")
        assert done["locked"] >= 1 and done["last"] >= found[0].key
        until = store.locked_until(found[0].key)
        assert abs(until - (found[0].last_modified + timedelta(days=8))) < timedelta(seconds=2)
        version = store.head(found[0].key)["VersionId"]
        with _denied():
            store.client.delete_object(Bucket=store.bucket, Key=found[0].key, VersionId=version)
        again = lock_archive(store, server, "platform")  # only what arrived in between, if any
        assert again["locked"] == 0 or again["first"] > done["last"]


def test_a_compliance_lock_holds_even_against_the_break_glass_connection(locked) -> None:
    """Compliance mode on the real server, with a lock of seconds (SeaweedFS, like AWS, lets
    nobody remove one): neither the backup credentials nor the bypass delete or shorten it;
    once it ends, the backup credentials delete it."""
    policy, _ = locked
    region = policy.regions.primary
    rule = dataclasses.replace(LockRule.for_region(policy, region), mode="COMPLIANCE")
    store = ObjectStore.for_region(region, rule)
    glass = ObjectStore.for_break_glass(region, rule)
    key = f"evidence/compliance-probe/{datetime.now(UTC).timestamp()}.json"
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=10)
    store.put_bytes(key, b"{}", "application/json", lock_until=until)
    assert store.head(key)["ObjectLockMode"] == "COMPLIANCE"
    assert store.locked_until(key) == until

    for who in (store, glass):
        with pytest.raises(DeleteRefusedError):
            who.delete_all_versions(key)
    with _denied():
        glass.client.put_object_retention(
            Bucket=glass.bucket,
            Key=key,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until - timedelta(seconds=5)},
            BypassGovernanceRetention=True,
        )
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 2)
    assert store.delete_all_versions(key) == 1
    assert store.head(key) is None


def _debris_of(policy, backup: BackupId) -> None:
    """Leave `backup`'s locked objects without their manifest (an upload whose manifest write
    failed): only the break-glass connection can remove a locked manifest."""
    for region in policy.iter_regions():
        glass = ObjectStore.for_break_glass(region, LockRule.for_region(policy, region))
        glass.delete_all_versions(
            backup.prefix, keys={backup.key(MANIFEST_NAME), backup.key(INTEGRITY_NAME)}
        )


def test_locked_debris_is_kept_until_its_lock_ends_and_refusals_survive_a_dying_prune(
    locked_short_grace, monkeypatch
) -> None:
    """Debris whose lock still holds is kept with its date; a delete the store refuses anyway
    (planned a second early) is recorded as a refusal, also when the prune dies after it."""
    policy, stores = locked_short_grace
    _backed_up(policy, stores, datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))
    window = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    debris = _backed_up(policy, stores, window)
    _debris_of(policy, debris)
    until = window + HELD
    time.sleep(5)  # older than the 4 s grace, and than the listing's second

    kept = prune(policy, stores, TARGET, TIER)
    assert (kept["planned_deletions"], kept["deleted"], kept["refused"]) == (0, 0, 0)
    record = stores.primary.get_json(kept["evidence"])
    reasons = [d["reason"] for d in record["decisions"] if d["subject"].startswith("debris ")]
    assert reasons and all(f"locked until {until.isoformat()}" in r for r in reasons), reasons

    calls = []
    delete = steps._delete

    def lease_lost_on_the_second_delete(*args):
        calls.append(1)
        if len(calls) == 2:
            raise LeaseLostError("taken over")
        return delete(*args)

    with monkeypatch.context() as patched, pytest.raises(LeaseLostError):
        patched.setattr(steps, "_delete", lease_lost_on_the_second_delete)
        prune(policy, stores, TARGET, TIER, now=until + timedelta(seconds=1))
    prefix = f"evidence/prune/platform/{TARGET}/{TIER}/"
    for store in stores:
        (found,) = [
            store.get_json(o.key) for o in store.list_objects(prefix) if "-refused" in o.key
        ]
        assert found["schema"] == "backup-dr/prune-refusals/v1" and not found["executed"]
        assert found["interrupted"].startswith("LeaseLostError")
        (refusal,) = found["refused"]
        assert refusal["subject"].startswith("debris ") and "Object Lock" in refusal["reason"]

    early = prune(policy, stores, TARGET, TIER, now=until + timedelta(seconds=1))
    assert early["refused"] == early["planned_deletions"] >= 2 and early["deleted"] == 0
    assert stores.secondary.get_json(early["refusals"])["interrupted"] is None
