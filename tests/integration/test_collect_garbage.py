"""Garbage collection against the real stack: what no kept snapshot refers to goes, nothing else.

Blobs and snapshot listings are written directly (tiny, named by their SHA-256), so each test
sets up exactly the references it needs in seconds.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime

import pytest

from include.backup_dr.backup.errors import CircuitBreakerTripped
from include.backup_dr.backup.gc import collect_garbage
from include.backup_dr.catalogue import MANIFEST_NAME, BackupId
from include.backup_dr.engines.base import LostListing
from include.backup_dr.engines.media import Entry, blob_key, replica_prefix
from local.backups import commit_backup
from tests.stack import mail_text, run_dag, wait_for_mail

pytestmark = pytest.mark.integration
CATEGORY = "media"
TARGET = "media_documents"
WINDOW = datetime(2026, 11, 20, tzinfo=UTC)


def _blob(store, text: str) -> str:
    body = f"{text} {datetime.now(UTC).isoformat()}".encode()
    sha = hashlib.sha256(body).hexdigest()
    store.put_bytes(blob_key(CATEGORY, sha), body, "application/octet-stream")
    return sha


def _listing(shas: list[str]) -> bytes:
    return b"".join(
        Entry(f"tenants/doc-{n}.pdf", "null", f"etag-{n}", 1, sha).line()
        for n, sha in enumerate(shas)
    )


def _snapshot(store, shas: list[str], window: datetime = WINDOW) -> BackupId:
    """A committed media snapshot whose listing refers to `shas` (one object each)."""
    backup = BackupId(CATEGORY, TARGET, "daily", window)
    commit_backup(store, backup, _listing(shas), engine="media", source={"kind": "s3"})
    return backup


def _present(store, sha: str) -> bool:
    return store.head(blob_key(CATEGORY, sha)) is not None


def evidence(store, category: str = CATEGORY) -> list[dict]:
    keys = sorted(o.key for o in store.list_objects(f"evidence/gc/{category}/"))
    return [store.get_json(key) for key in keys]


@pytest.fixture
def short_grace(policy_file):
    """A grace of 4 s: blobs written before a 5 s sleep are old enough to sweep."""
    return policy_file(lambda d: d["prune"].update(incomplete_upload_grace="4s"))


def test_a_truncated_listing_stops_gc_before_it_sweeps_what_the_lost_lines_referred_to(
    stores, short_grace
) -> None:
    """GC used to mark from whatever the listing held: a listing cut short at a line boundary
    parsed cleanly, and the blobs of its lost lines were swept. It must match its manifest."""
    store = stores.primary
    first, second = _blob(store, "first"), _blob(store, "second")
    backup = _snapshot(store, [first, second])
    listing = store.manifest(backup).artifact.key
    store.put_bytes(listing, _listing([first]), "application/x-ndjson")
    time.sleep(5)
    with pytest.raises(LostListing, match="is not the listing its manifest vouches for"):
        collect_garbage(short_grace, stores, CATEGORY)
    assert _present(store, first) and _present(store, second)
    [record] = evidence(store)
    assert str(backup) in record["stopped"] and record["executed"] is False


def test_a_missing_listing_stops_gc(stores, short_grace) -> None:
    store = stores.primary
    kept = _blob(store, "kept")
    backup = _snapshot(store, [kept])
    store.delete_all_versions(store.manifest(backup).artifact.key)
    time.sleep(5)
    with pytest.raises(LostListing, match=f"the listing of snapshot {backup}.*cannot be read"):
        collect_garbage(short_grace, stores, CATEGORY)
    assert _present(store, kept)


def test_a_snapshot_pruned_while_gc_reads_it_does_not_stop_gc(stores, short_grace) -> None:
    """A prune of one target may run beside GC: a snapshot whose manifest is gone by the time its
    listing is read is no longer kept, so it is not a lost listing."""
    from include.backup_dr.store import ObjectStore
    from include.backup_dr.stores import Stores

    store = stores.primary
    pruned_only, kept = _blob(store, "pruned"), _blob(store, "kept")
    pruned = _snapshot(store, [pruned_only])
    _snapshot(store, [kept], WINDOW.replace(day=21))

    class PrunedMeanwhile(ObjectStore):
        """The real primary store; a prune deletes the first snapshot just before GC reads it."""

        def iter_chunks(self, key, *args, **kwargs):
            if key == pruned.key("data.jsonl"):
                self.delete_all_versions(pruned.key(MANIFEST_NAME))  # manifest first, as prune
                self.delete_all_versions(pruned.prefix)
            yield from super().iter_chunks(key, *args, **kwargs)

    racing = PrunedMeanwhile(store.region, store.client, store.endpoint_url)
    time.sleep(5)
    collect_garbage(short_grace, Stores(racing, stores.secondary), CATEGORY)
    assert not _present(store, pruned_only)
    assert _present(store, kept)


def test_gc_that_would_sweep_most_blobs_deletes_nothing_unless_overridden(
    stores, short_grace
) -> None:
    """GC had no circuit breaker: with its snapshots' manifests gone, it swept every blob."""
    store = stores.primary
    kept = _blob(store, "kept")
    orphans = [_blob(store, f"orphan {n}") for n in range(3)]
    _snapshot(store, [kept])
    time.sleep(5)
    with pytest.raises(CircuitBreakerTripped, match="media blobs in eu-west-1: 3 of 4"):
        collect_garbage(short_grace, stores, CATEGORY)
    assert all(_present(store, sha) for sha in [kept, *orphans])
    for region in stores:
        [record] = evidence(region)
        assert record["executed"] is False and "3 of 4" in record["circuit_breaker"]
    [record] = evidence(store)
    assert {s["key"] for s in record["sweeps"][0]["sample"]} == {
        blob_key(CATEGORY, sha) for sha in orphans
    }

    collect_garbage(short_grace, stores, CATEGORY, override_circuit_breaker=True)
    assert _present(store, kept)
    assert not any(_present(store, sha) for sha in orphans)


def test_gc_sweeps_old_unreferenced_blobs_and_keeps_snapshot_replica_and_young_ones(
    stores, short_grace
) -> None:
    primary, secondary = stores.primary, stores.secondary
    kept = _blob(primary, "kept")
    body = primary.open(blob_key(CATEGORY, kept)).read()
    secondary.put_bytes(blob_key(CATEGORY, kept), body, "application/octet-stream")
    replicated = _blob(secondary, "only in the replica listing")
    orphans = {store.region.name: _blob(store, "orphan") for store in stores}
    for store in stores:
        _snapshot(store, [kept])
    secondary.put_bytes(
        replica_prefix(CATEGORY, TARGET) + "listing.jsonl",
        _listing([replicated]),
        "application/x-ndjson",
    )
    time.sleep(5)
    dry = collect_garbage(short_grace, stores, CATEGORY, dry_run=True)
    assert dry["executed"] is False
    assert all(_present(store, orphans[store.region.name]) for store in stores)

    young = _blob(primary, "young")  # written just now: well within the 4 s grace
    done = collect_garbage(short_grace, stores, CATEGORY)
    assert done["executed"] is True
    for store in stores:
        assert not _present(store, orphans[store.region.name])
        assert _present(store, kept)
    assert _present(secondary, replicated)
    assert _present(primary, young)
    for store in stores:
        # Both runs began in the same second: their keys sort by second only.
        [dry_record, record] = sorted(evidence(store), key=lambda r: not r["dry_run"])
        assert dry_record["dry_run"] is True and dry_record["executed"] is False
        assert record["executed"] is True
        [sweep] = record["sweeps"]
        assert (sweep["what"], sweep["doomed"]) == ("media blobs", 1)
        assert sweep["sample"] == [
            {
                "key": blob_key(CATEGORY, orphans[store.region.name]),
                "reason": "referenced by no kept snapshot, older than grace",
            }
        ]


def test_gc_dag_stops_on_a_lost_listing_sweeps_keeps_and_trips_the_breaker(
    stores, policy_file, smtp_sink
) -> None:
    """One real run of `backup_collect_garbage` per case, as the scheduler would run it."""
    # The grace must outlast the DAG's start-up (parsing, the first task) for the young blob,
    # even on a loaded machine; the blobs written first age meanwhile.
    grace = 120
    policy_file(lambda d: d["prune"].update(incomplete_upload_grace=f"{grace}s"))
    store = stores.primary
    written = time.monotonic()
    referenced = [_blob(store, f"kept {n}") for n in range(3)]
    orphan = _blob(store, "orphan")
    backup = _snapshot(store, referenced)

    # A snapshot whose listing is lost: nothing it refers to may be swept, so nothing is.
    store.delete_all_versions(backup.key("data.jsonl"))
    assert run_dag("backup_collect_garbage", datetime.now(UTC)).state == "failed"
    assert all(_present(store, sha) for sha in [*referenced, orphan])
    text = "\n".join(mail_text(m) for m in wait_for_mail(smtp_sink))
    assert f"the listing of snapshot {backup}" in text and "nothing deleted" in text
    for old in smtp_sink.glob("*.eml"):
        old.unlink()

    _snapshot(store, referenced)  # the listing is back
    time.sleep(max(0.0, written + grace + 2 - time.monotonic()))
    young = _blob(store, "young")
    assert run_dag("backup_collect_garbage", datetime.now(UTC)).state == "success"
    assert not _present(store, orphan)
    assert all(_present(store, sha) for sha in [*referenced, young])
    record = evidence(store)[-1]
    assert (record["sweeps"][0]["total"], record["sweeps"][0]["doomed"]) == (5, 1)
    assert record["run"]["dag_id"] == "backup_collect_garbage" and record["executed"] is True

    # Every snapshot gone at once (a bad prune, a wrong prefix): GC must not follow.
    store.delete_all_versions(backup.key(MANIFEST_NAME))
    assert run_dag("backup_collect_garbage", datetime.now(UTC)).state == "failed"
    assert all(_present(store, sha) for sha in [*referenced, young])
    text = "\n".join(mail_text(m) for m in wait_for_mail(smtp_sink))
    # 3 of 4, or 4 of 4 once the young blob is past the grace too.
    assert "circuit breaker" in text and re.search(r"media blobs in eu-west-1: [34] of 4", text)


def test_wal_gc_deletes_only_wal_older_than_the_oldest_kept_base_backup(stores) -> None:
    """WAL collection moved out of prune: it must still keep every file a kept base backup
    replays, so the chain from its start stays whole in both regions."""
    from include.backup_dr import wal_segments
    from include.backup_dr.backup.steps import check_integrity
    from include.backup_dr.engines.wal import archive_files
    from include.backup_dr.policy import load_policy
    from tests.integration.helpers import SERVER, base_backup, switch_wal, wait_archived

    older = switch_wal()
    for store in stores:
        wait_archived(store, older)
    ref = base_backup(stores)
    policy = load_policy()
    manifest = stores.primary.manifest(
        BackupId("platform", SERVER, "continuous", datetime.fromisoformat(ref["window"]))
    )
    first_needed = manifest.source["start_wal"]
    # A few segments: the breaker's share is not what this test is about.
    collect_garbage(policy, stores, "platform", override_circuit_breaker=True)
    for store in stores:
        names = {
            f.segment.name()
            for f in archive_files(store, SERVER, wal_segments.DEFAULT_SEGMENT_SIZE)
            if f.kind == "segment" and f.segment
        }
        assert older not in names
        assert first_needed in names and min(names) == first_needed
        [record] = evidence(store, "platform")
        [sweep] = record["sweeps"]
        assert sweep["what"] == f"WAL of server {SERVER}" and sweep["doomed"] >= 1
        assert all(first_needed in s["reason"] for s in sweep["sample"])
    check_integrity(policy, stores, ref)  # the WAL chain from the base backup is whole
