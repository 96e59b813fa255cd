"""The catalogue cache on the real S3 server: a listing GETs only what changed, yet always sees a
rewritten integrity record, a re-taken or deleted manifest; a broken or stale cache never breaks
a listing; and the cache is never taken for a backup or debris, so prune never deletes it."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from include.backup_dr.backup.steps import prune
from include.backup_dr.catalogue import (
    INTEGRITY_NAME,
    MANIFEST_NAME,
    BackupId,
    Verification,
    build_catalogue,
)
from include.backup_dr.store import ObjectStore
from include.backup_dr.store.listing import CachedDocument, cache_key, decode, encode
from local.backups import commit_backup

pytestmark = pytest.mark.integration
TARGET, TIER = "platform_core", "daily"
PREFIX = f"platform/{TARGET}/{TIER}/"
START = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)


def backup_of(day: int) -> BackupId:
    return BackupId("platform", TARGET, TIER, START + timedelta(days=day))


def commit(store: ObjectStore, day: int, *, body: bytes = b"", ok: bool = True) -> BackupId:
    """A committed backup as take_snapshot leaves it (data, then manifest), with its check."""
    backup = backup_of(day)
    body = body or f"backup of day {day}".encode()
    commit_backup(
        store,
        backup,
        body,
        engine="pg_dump",
        source={"database": TARGET},
        tool_versions={"pg_dump": "pg_dump (PostgreSQL) 16.2"},
        encryption={"algorithm": "aws:kms", "kms_key_id": store.region.kms_key_id},
    )
    check(store, backup, ok=ok)
    return backup


def check(store: ObjectStore, backup: BackupId, *, ok: bool) -> None:
    """Record an integrity verdict on the copy's current artifact, as check_integrity does."""
    manifest = store.manifest(backup)
    assert manifest is not None
    evidence = {
        "ok": ok,
        "verdict": "passed" if ok else "failed",
        "checked_at": (backup.window + timedelta(hours=1)).isoformat(),
        "artifact_sha256": manifest.artifact.sha256,
    }
    store.put_json(backup.key(INTEGRITY_NAME), evidence)


def verdicts(store: ObjectStore) -> dict[BackupId, Verification]:
    backups, _ = build_catalogue([store.listing(PREFIX)])
    return {b.id: b.copies[store.region.name].verification for b in backups}


@contextmanager
def requests(store: ObjectStore) -> Iterator[Counter[str]]:
    """Counts the S3 operations the store's own client makes (botocore's event hooks)."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def count(event_name: str, **_: Any) -> None:
        with lock:
            seen[event_name.rsplit(".", 1)[-1]] += 1

    events = store.client.meta.events
    events.register("before-call.s3", count)
    try:
        yield seen
    finally:
        events.unregister("before-call.s3", count)


def raw_cache(store: ObjectStore) -> bytes:
    return b"".join(store.iter_chunks(cache_key(PREFIX)))


def test_warm_listing_reads_only_new_and_changed_records(stores) -> None:
    store = stores.primary
    for day in range(5):
        commit(store, day)
    with requests(store) as cold:
        assert set(verdicts(store).values()) == {Verification.PASSED}
    assert (cold["GetObject"], cold["PutObject"]) == (1 + 10, 1)  # cache (absent) + 5 x 2

    with requests(store) as warm:
        assert len(verdicts(store)) == 5
    assert (warm["GetObject"], warm["PutObject"]) == (1, 0)  # the cache only, not rewritten

    commit(store, 5)
    with requests(store) as one_more:
        assert len(verdicts(store)) == 6
    assert (one_more["GetObject"], one_more["PutObject"]) == (1 + 2, 1)


def test_rewritten_integrity_record_and_retaken_manifest_are_seen(stores) -> None:
    store = stores.primary
    days = [commit(store, day) for day in range(3)]
    assert set(verdicts(store).values()) == {Verification.PASSED}  # now cached as passed

    check(store, days[1], ok=False)  # the next check found the copy damaged
    commit(store, 2, body=b"the window taken again")  # a new artifact, not yet checked
    store.delete_all_versions(days[2].key(INTEGRITY_NAME))
    assert verdicts(store) == {
        days[0]: Verification.PASSED,
        days[1]: Verification.FAILED,
        days[2]: Verification.UNCHECKED,
    }


def test_deleted_manifest_disappears_and_its_data_becomes_debris(stores) -> None:
    store = stores.primary
    days = [commit(store, day) for day in range(3)]
    assert len(verdicts(store)) == 3

    store.delete_all_versions(days[1].key(MANIFEST_NAME))
    backups, debris = build_catalogue([store.listing(PREFIX)])
    assert [b.id for b in backups] == [days[0], days[2]]
    assert [d.key for d in debris] == [days[1].key("data.pgdump")]


def test_older_cache_written_last_hides_nothing(stores) -> None:
    """Two listings race; the one that read before a change writes its cache last."""
    store = stores.primary
    days = [commit(store, day) for day in range(2)]
    verdicts(store)
    older = raw_cache(store)
    check(store, days[0], ok=False)
    verdicts(store)
    store.put_bytes(cache_key(PREFIX), older, "application/gzip")  # last writer wins
    assert verdicts(store)[days[0]] is Verification.FAILED


def _forged(store: ObjectStore) -> bytes:
    """A cache whose ETags and sizes match the store but whose documents are wrong."""
    entries = {entry.key: entry for entry in decode(PREFIX, raw_cache(store))}
    manifests = sorted(k for k in entries if k.endswith(MANIFEST_NAME))
    records = sorted(k for k in entries if k.endswith(INTEGRITY_NAME))
    swapped = {  # day 0's manifest entry holds day 1's manifest; a record is not a document
        manifests[0]: entries[manifests[1]].document,
        records[0]: "not a record",
        manifests[1]: {"schema": "something else"},
    }
    forged = [
        CachedDocument(key, entry.etag, entry.size, swapped.get(key, entry.document))
        for key, entry in entries.items()
    ]
    return encode(PREFIX, forged)


@pytest.mark.parametrize(
    "broken",
    [lambda store: b"\x1f\x8b not really gzip", lambda store: raw_cache(store)[:-20], _forged],
    ids=["garbage", "truncated", "documents-not-what-the-keys-hold"],
)
def test_broken_cache_never_breaks_a_listing(stores, broken) -> None:
    store = stores.primary
    days = [commit(store, day, ok=day != 1) for day in range(3)]
    expected = verdicts(store)
    assert expected[days[1]] is Verification.FAILED
    store.put_bytes(cache_key(PREFIX), broken(store), "application/gzip")

    listing = store.listing(PREFIX)
    assert {b: m.backup for b, m in listing.manifests.items()} == {d: d for d in days}
    assert verdicts(store) == expected
    with requests(store) as warm:  # the listing above wrote a good cache again
        verdicts(store)
    assert warm["GetObject"] == 1


def test_cache_is_encrypted_kept_once_and_never_pruned(stores, policy_file) -> None:
    policy = policy_file()
    for store in stores:
        for day in range(3):
            commit(store, day)
        store.put_bytes(backup_of(3).key("data.pgdump"), b"died", "application/octet-stream")
    for store in stores:  # write the caches, then rewrite them twice
        for day in (4, 5):
            store.listing(PREFIX)
            commit(store, day)
        store.listing(PREFIX)
    time.sleep(2)  # prune deletes only what was written before its listing, to the second

    result = prune(
        policy,
        stores,
        TARGET,
        TIER,
        now=datetime.now(UTC) + timedelta(days=1),  # debris a day old, backups weeks old
        override_circuit_breaker=True,
    )
    assert result["deleted"] == 2 * (4 + 1)  # per region: all but the newest backup, the debris
    plan = json.loads(b"".join(stores.primary.iter_chunks(result["evidence"])))
    assert not [d for d in plan["decisions"] if "catalogue-cache" in d["subject"]]
    for store in stores:
        key = cache_key(PREFIX)
        head = store.head(key)
        assert head is not None, f"the cache in {store.region.name} was deleted"
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith(store.region.kms_key_id)
        versions = store.client.list_object_versions(Bucket=store.bucket, Prefix=key)
        assert len(versions.get("Versions", [])) == 1
        assert not versions.get("DeleteMarkers")
        assert not [o.key for o in store.list_objects("platform/") if "catalogue" in o.key]
        assert list(verdicts(store)) == [backup_of(5)]
