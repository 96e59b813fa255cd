"""Media tiers for real: content-addressed blobs in both regions, incremental, checked."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter

from include.backup_dr.backup.errors import IntegrityError
from include.backup_dr.backup.steps import (
    check_integrity,
    copy_to_secondary,
    take_snapshot,
)
from include.backup_dr.catalogue import INTEGRITY_NAME, BackupId
from include.backup_dr.engines.media import SAMPLE_BUCKETS, blob_key, blob_prefix, parse_listing
from include.backup_dr.policy import load_policy
from include.backup_dr.stores import backup_ref
from tests.integration.helpers import MEDIA_TARGET as TARGET
from tests.integration.helpers import media_source
from tests.stack import mail_text, run_dag, wait_for_mail

pytestmark = pytest.mark.integration


def _entries(store, backup: BackupId):
    manifest = store.manifest(backup)
    return list(parse_listing(store.iter_chunks(manifest.artifact.key)))


def _backed_up(policy, stores, window: datetime, tier: str = "daily") -> dict:
    """A window's snapshot, copied and checked: only a checked listing is reused later."""
    ref = take_snapshot(policy, stores, TARGET, tier, window, {})
    copy_to_secondary(policy, stores, ref)
    check_integrity(policy, stores, ref)
    return ref


@pytest.mark.parametrize("tier", ["6h", "daily", "weekly", "monthly"])
def test_full_run_of_each_media_tier(tier: str, stores) -> None:
    schedule = load_policy().categories["media"].tiers[tier].schedule
    window = croniter(schedule, datetime.now(UTC)).get_prev(datetime)
    assert run_dag(f"media_backup_{tier}", window).state == "success"
    backup = BackupId("media", TARGET, tier, window)
    entries = _entries(stores.primary, backup)
    source_keys = sorted(
        o["Key"]
        for page in media_source().get_paginator("list_objects_v2").paginate(Bucket="media-source")
        for o in page.get("Contents", [])
    )
    assert [e.key for e in entries] == source_keys
    unique = {e.sha256 for e in entries}
    for store in stores:
        blobs = {o.key.rsplit("/", 1)[-1] for o in store.list_objects(blob_prefix("media"))}
        assert unique <= blobs
        evidence = store.get_json(backup.key(INTEGRITY_NAME))
        assert evidence["ok"] is True, evidence
        names = {c["name"] for c in evidence["checks"]}
        assert {"blobs", "sample_rehash", "sha256", "readable"} <= names
        head = store.head(blob_key("media", next(iter(unique))))
        assert head["SSEKMSKeyId"].endswith(store.region.kms_key_id)


def test_second_snapshot_copies_only_what_changed(stores) -> None:
    from local.samplemedia import mutate

    policy = load_policy()
    first_window = datetime(2026, 11, 26, 0, 45, tzinfo=UTC)
    first = _backed_up(policy, stores, first_window)
    manifest = stores.primary.manifest(BackupId("media", TARGET, "daily", first_window))
    total = manifest.source["objects"]
    changed = mutate(media_source(), "media-source", 0.01, seed=int(datetime.now(UTC).timestamp()))
    assert 0 < len(changed) < total

    second_window = first_window + timedelta(days=1)
    _backed_up(policy, stores, second_window)
    second = stores.primary.manifest(BackupId("media", TARGET, "daily", second_window))
    assert second.source["copied"] == len(changed)
    assert second.source["reused"] == total - len(changed)
    assert second.source["copied_bytes"] <= 0.02 * second.source["bytes"]

    third_window = second_window + timedelta(days=1)
    take_snapshot(policy, stores, TARGET, "daily", third_window, {})
    third = stores.primary.manifest(BackupId("media", TARGET, "daily", third_window))
    assert (third.source["copied"], third.source["reused"]) == (0, total)
    assert first["size"] > 0


def test_corrupted_blob_is_found_and_pages_on_call(stores, smtp_sink) -> None:
    window = datetime(2026, 11, 25, 0, 45, tzinfo=UTC)
    assert run_dag("media_backup_daily", window).state == "success"
    backup = BackupId("media", TARGET, "daily", window)
    victim = _entries(stores.secondary, backup)[0]
    key = blob_key("media", victim.sha256)
    body = stores.secondary.open(key).read()
    stores.secondary.put_bytes(key, body[: len(body) // 2], "application/octet-stream")

    assert run_dag("media_backup_daily", window).state == "failed"
    evidence = stores.secondary.get_json(backup.key(INTEGRITY_NAME))
    assert [c["name"] for c in evidence["checks"] if not c["ok"]] == ["blobs"]
    text = "\n".join(m["Subject"] + "\n" + mail_text(m) for m in wait_for_mail(smtp_sink))
    assert "media_backup_daily" in text and TARGET in text and "blobs: FAILED" in text


def test_rolling_rehash_finds_same_size_bit_rot_on_its_day(stores) -> None:
    from include.backup_dr.engines.media import MediaEngine

    policy = load_policy()
    window = datetime(2026, 11, 24, 0, 45, tzinfo=UTC)
    ref = take_snapshot(policy, stores, TARGET, "daily", window, {})
    copy_to_secondary(policy, stores, ref)
    check_integrity(policy, stores, backup_ref(BackupId("media", TARGET, "daily", window)))
    backup = BackupId("media", TARGET, "daily", window)
    victim = _entries(stores.secondary, backup)[0]
    key = blob_key("media", victim.sha256)
    body = stores.secondary.open(key).read()
    stores.secondary.put_bytes(key, bytes([body[0] ^ 1]) + body[1:], "application/octet-stream")

    turn = int(victim.sha256[:8], 16) % SAMPLE_BUCKETS  # the day of year this blob is re-hashed
    day = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=(turn or SAMPLE_BUCKETS) - 1)
    manifest = stores.secondary.manifest(backup)
    checks = {c.name: c for c in MediaEngine().check_contents(stores.secondary, manifest, day)}
    assert checks["blobs"].ok  # same size: only a re-hash can tell
    assert not checks["sample_rehash"].ok
    assert victim.sha256 in checks["sample_rehash"].detail


def test_snapshot_refreshes_an_old_blob_so_a_racing_gc_cannot_sweep_it(stores, policy_file) -> None:
    """The blob of content that no kept snapshot references is what GC sweeps; a new snapshot
    that meets that content again gives the blob a fresh version, which GC's delete (versions
    older than the grace only) leaves alone, whatever its stale plan said."""
    from include.backup_dr.engines.media import MediaEngine

    policy = policy_file(lambda d: d["prune"].update(incomplete_upload_grace="4s"))
    day = datetime(2026, 11, 20, tzinfo=UTC)
    body = f"%PDF seen twice {datetime.now(UTC).isoformat()}".encode()
    first_key = "tenants/refresh-test/documents/first.pdf"
    media_source().put_object(Bucket="media-source", Key=first_key, Body=body)
    _backed_up(policy, stores, day)
    sha = next(
        e.sha256
        for e in _entries(stores.primary, BackupId("media", TARGET, "daily", day))
        if e.key == first_key
    )
    media_source().delete_object(Bucket="media-source", Key=first_key)
    _backed_up(policy, stores, day + timedelta(days=1))
    stores.primary.delete_all_versions(BackupId("media", TARGET, "daily", day).prefix)
    time.sleep(5)  # no snapshot refers to the blob, and it is older than the grace

    again = "tenants/refresh-test/documents/again.pdf"
    media_source().put_object(Bucket="media-source", Key=again, Body=body)
    started = datetime.now(UTC)
    third = BackupId("media", TARGET, "daily", day + timedelta(days=2))
    take_snapshot(policy, stores, TARGET, "daily", third.window, {})
    manifest = stores.primary.manifest(third)
    assert (manifest.source["copied"], manifest.source["refreshed"]) == (0, 1)
    # What a GC that planned from a listing taken before this snapshot deletes, at the latest
    # (S3 keeps LastModified in whole seconds, hence the second's margin):
    cutoff = started - timedelta(seconds=1)
    stores.primary.delete_all_versions(blob_key("media", sha), written_before=cutoff)
    assert stores.primary.open(blob_key("media", sha)).read() == body
    checks = MediaEngine().check_contents(stores.primary, manifest, datetime.now(UTC))
    assert checks[0].ok, checks[0].detail
    media_source().delete_object(Bucket="media-source", Key=again)


def test_a_snapshot_that_checks_reused_blobs_refreshes_the_old_ones(stores, policy_file) -> None:
    """After a failed check, a snapshot looks at the blob of every unchanged object before it
    reuses the entry. It found old blobs and reused them as they were, so a GC that planned
    without this snapshot could sweep them under it; it must refresh them, as for new objects."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    prefix = f"tenants/verify-refresh-{stamp}/"

    def mutate(data) -> None:
        data["prune"]["incomplete_upload_grace"] = "4s"
        next(t for t in data["targets"] if t["name"] == TARGET)["source"]["prefix"] = prefix

    policy = policy_file(mutate)
    keys = [f"{prefix}kept.pdf", f"{prefix}damaged.pdf"]
    for key in keys:
        media_source().put_object(Bucket="media-source", Key=key, Body=f"%PDF {key}".encode())
    try:
        day = datetime(2026, 11, 18, tzinfo=UTC)
        _backed_up(policy, stores, day)  # checked: the listing later snapshots reuse
        failed = BackupId("media", TARGET, "daily", day + timedelta(days=1))
        copy_to_secondary(
            policy, stores, take_snapshot(policy, stores, TARGET, "daily", failed.window, {})
        )
        entries = {e.key: e for e in _entries(stores.primary, failed)}
        kept, damaged = (blob_key("media", entries[key].sha256) for key in keys)
        _corrupt(stores.primary, damaged, "truncate")
        with pytest.raises(IntegrityError):
            check_integrity(policy, stores, backup_ref(failed))
        time.sleep(2.5)  # the kept blob is now older than half the grace

        started = datetime.now(UTC)
        third = BackupId("media", TARGET, "daily", day + timedelta(days=2))
        take_snapshot(policy, stores, TARGET, "daily", third.window, {})
        manifest = stores.primary.manifest(third)
        assert (manifest.source["healed"], manifest.source["refreshed"]) == (1, 1)
        # What a GC that planned from a listing taken before this snapshot deletes, at the latest:
        stores.primary.delete_all_versions(kept, written_before=started - timedelta(seconds=1))
        assert stores.primary.open(kept).read() == f"%PDF {keys[0]}".encode()
    finally:
        for key in keys:
            media_source().delete_object(Bucket="media-source", Key=key)


def _corrupt(store, key: str, fault: str) -> None:
    body = store.open(key).read()
    if fault == "delete":
        store.delete_all_versions(key)
    else:
        store.put_bytes(key, body[: len(body) // 2], "application/octet-stream")


def _green(stores, backup: BackupId) -> None:
    for store in stores:
        evidence = store.get_json(backup.key(INTEGRITY_NAME))
        assert evidence["ok"] is True, evidence


@pytest.mark.parametrize(
    ("region", "fault", "tier"),
    [
        ("primary", "truncate", "6h"),
        ("secondary", "truncate", "weekly"),
        ("primary", "delete", "monthly"),
    ],
)
def test_a_bad_blob_is_healed_by_the_next_run_of_any_tier(region, fault, tier, stores) -> None:
    """A snapshot used to reuse entries from the newest listing, even one whose check failed, and
    the copy skipped blobs the secondary had in whatever state: a lost or rotten blob was carried
    into every later backup. The next run of any tier must store it again."""
    policy = load_policy()
    earlier = datetime(2026, 11, 21, 0, 45, tzinfo=UTC)  # a passed listing, older than the fault
    _backed_up(policy, stores, earlier)
    window = datetime(2026, 11, 22, 0, 45, tzinfo=UTC)
    assert run_dag("media_backup_daily", window).state == "success"
    backup = BackupId("media", TARGET, "daily", window)
    store = stores.role(region)
    victim = _entries(store, backup)[0]
    key = blob_key("media", victim.sha256)
    body = store.open(key).read()
    _corrupt(store, key, fault)
    assert run_dag("media_backup_daily", window).state == "failed"  # the check finds it

    schedule = policy.categories["media"].tiers[tier].schedule
    later = croniter(schedule, window + timedelta(days=1)).get_prev(datetime)
    assert run_dag(f"media_backup_{tier}", later).state == "success"
    _green(stores, BackupId("media", TARGET, tier, later))
    assert store.open(key).read() == body
    assert run_dag("media_backup_daily", window).state == "success"  # that window is green again
    _green(stores, backup)


@pytest.mark.parametrize("damaged", ["blob", "listing"])
def test_a_copy_that_failed_its_check_in_the_secondary_is_copied_again(damaged, stores) -> None:
    """The copy step skipped a backup whose manifest was already in the secondary, so a copy
    that had failed its check there stayed broken on every re-run of the window."""
    policy = load_policy()
    window = datetime(2026, 11, 19, 0, 45, tzinfo=UTC)
    backup = BackupId("media", TARGET, "daily", window)
    ref = _backed_up(policy, stores, window)
    manifest = stores.secondary.manifest(backup)
    key = (
        blob_key("media", _entries(stores.secondary, backup)[0].sha256)
        if damaged == "blob"
        else manifest.artifact.key
    )
    body = stores.secondary.open(key).read()
    _corrupt(stores.secondary, key, "truncate")
    with pytest.raises(IntegrityError):
        check_integrity(policy, stores, ref)

    again = take_snapshot(policy, stores, TARGET, "daily", window, {})  # the re-run of the window
    assert again["reused"] is True  # the primary is fine: nothing to take again there
    assert copy_to_secondary(policy, stores, again)["copy"] != "already present"
    check_integrity(policy, stores, again)
    _green(stores, backup)
    assert stores.secondary.open(key).read() == body


@pytest.mark.parametrize("versioned", [False, True])
def test_an_object_changed_while_it_is_copied_is_stored_under_its_own_hash(
    versioned: bool, stores, policy_file
) -> None:
    """In a bucket without versions, an object overwritten between its hashing and its copy used
    to be stored under the old content's SHA-256: a blob whose bytes do not match its name."""
    import hashlib

    from include.backup_dr.engines.media import EarlierListing, MediaSnapshot
    from include.backup_dr.store import ObjectStore

    bucket = "media-source-versioned" if versioned else "media-source-plain"
    client = media_source()
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": client.meta.region_name}
        )
        if versioned:
            client.put_bucket_versioning(
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
            )
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
    stamp = datetime.now(UTC).isoformat()
    with_checksum = f"tenants/changing/with-checksum-{stamp}.pdf"
    without_checksum = f"tenants/changing/without-checksum-{stamp}.pdf"
    client.put_object(
        Bucket=bucket, Key=with_checksum, Body=b"%PDF old", ChecksumAlgorithm="SHA256"
    )
    client.put_object(Bucket=bucket, Key=without_checksum, Body=b"%PDF old too")
    changed: set[str] = set()

    class ChangingSource(ObjectStore):
        """The real source bucket, overwritten by a user right after each object is hashed."""

        def _change(self, key: str) -> None:
            if key not in changed:
                changed.add(key)
                client.put_object(Bucket=bucket, Key=key, Body=b"%PDF new, longer " + key.encode())

        def head(self, key: str, *, checksums: bool = False):
            found = super().head(key, checksums=checksums)
            if found is not None and found.get("ChecksumSHA256"):  # hashed by S3 already
                self._change(key)
            return found

        def iter_chunks(self, key: str, chunk_size: int = 8 << 20, version_id=None):
            yield from super().iter_chunks(key, chunk_size, version_id)
            self._change(key)

    policy = policy_file(
        lambda d: next(t for t in d["targets"] if t["name"] == TARGET)["source"].update(
            bucket=bucket
        )
    )
    target = policy.target(TARGET)
    plain = ObjectStore.for_bucket(target.source.conn_id, bucket)
    source = ChangingSource(plain.region, plain.client, plain.endpoint_url)
    previous = EarlierListing(())
    try:
        snapshot = MediaSnapshot(
            target, source, stores.primary, previous, policy.prune.incomplete_upload_grace
        )
        entries = list(parse_listing([snapshot.stream.read()]))
    finally:
        previous.close()
    assert changed == {with_checksum, without_checksum}
    mine = [e for e in entries if e.key in changed]
    assert len(mine) == 2
    for entry in mine:
        stored = stores.primary.open(blob_key("media", entry.sha256)).read()
        assert hashlib.sha256(stored).hexdigest() == entry.sha256, entry
        assert len(stored) == entry.size
    for key in changed:
        client.delete_object(Bucket=bucket, Key=key)
