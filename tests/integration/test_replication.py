"""media_replicate for real: the secondary region catches up, lag is measured and alerted."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.engines.media import blob_key, parse_listing, replica_prefix
from tests.integration.helpers import MEDIA_TARGET as TARGET
from tests.integration.helpers import media_source
from tests.stack import mail_text, run_dag, wait_for_mail

pytestmark = pytest.mark.integration
STATE = replica_prefix("media", TARGET) + "state.json"


def _source_keys() -> list[str]:
    pages = media_source().get_paginator("list_objects_v2").paginate(Bucket="media-source")
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _replica(store) -> dict[str, str]:
    chunks = store.iter_chunks(replica_prefix("media", TARGET) + "listing.jsonl")
    return {entry.key: entry.sha256 for entry in parse_listing(chunks)}


def _backed_up(stores) -> None:
    """Last night's daily backup, copied: the secondary holds the source as of then."""
    from include.backup_dr.backup.steps import copy_to_secondary, take_snapshot
    from include.backup_dr.policy import load_policy

    policy = load_policy()
    window = datetime.now(UTC).replace(hour=0, minute=45, second=0, microsecond=0)
    copy_to_secondary(policy, stores, take_snapshot(policy, stores, TARGET, "daily", window, {}))


def test_replication_catches_up_once_and_a_backfill_copies_nothing_twice(stores) -> None:
    from local.samplemedia import mutate

    _backed_up(stores)
    hour = datetime.now(UTC).replace(minute=5, second=0, microsecond=0) - timedelta(hours=3)
    assert run_dag("media_replicate", hour).state == "success"
    state = stores.secondary.get_json(STATE)
    replica = _replica(stores.secondary)
    assert sorted(replica) == _source_keys()
    assert state["copied"] == 0  # the backup's copy already brought every blob over
    assert state["lag_seconds"] == 0 and state["within_rpo"] is True
    for sha in set(replica.values()):
        head = stores.secondary.head(blob_key("media", sha))
        assert head["SSEKMSKeyId"].endswith(stores.secondary.region.kms_key_id)

    changed = mutate(media_source(), "media-source", 0.01, seed=int(time.time()))
    # A backfill over the two missed hours: the first run catches up, the second copies nothing.
    runs = []
    for missed in (hour + timedelta(hours=1), hour + timedelta(hours=2)):
        assert run_dag("media_replicate", missed).state == "success"
        runs.append(stores.secondary.get_json(STATE))
    assert runs[0]["copied"] == len(changed)
    assert runs[0]["reused"] == runs[0]["objects"] - len(changed)
    assert runs[1]["copied"] == 0 and runs[1]["copied_bytes"] == 0
    assert sorted(_replica(stores.secondary)) == _source_keys()
    for sha in set(_replica(stores.secondary).values()):
        versions = stores.secondary.client.list_object_versions(
            Bucket=stores.secondary.bucket, Prefix=blob_key("media", sha)
        )
        assert len(versions.get("Versions", [])) == 1  # never copied twice
    # One current replica listing, not one per run; one evidence record per run.
    listing = stores.secondary.client.list_object_versions(
        Bucket=stores.secondary.bucket, Prefix=replica_prefix("media", TARGET) + "listing.jsonl"
    )
    assert len(listing["Versions"]) == 1
    evidence = list(stores.secondary.list_objects("evidence/replication/media/"))
    assert len(evidence) == 3


def test_lag_over_the_rpo_is_measured_and_pages_on_call(stores, smtp_sink, policy_file) -> None:
    policy_file(lambda d: d["categories"]["media"].update(rpo="2s"))
    _backed_up(stores)
    hour = datetime.now(UTC).replace(minute=5, second=0, microsecond=0)
    assert run_dag("media_replicate", hour - timedelta(hours=1)).state == "success"
    key = "tenants/replication-test/documents/late.pdf"
    before = datetime.now(UTC)
    media_source().put_object(
        Bucket="media-source",
        Key=key,
        Body=f"%PDF {time.time()}".encode(),
        ChecksumAlgorithm="SHA256",
    )
    time.sleep(3)  # the change waits longer than the RPO before replication sees it

    assert run_dag("media_replicate", hour).state == "failed"
    state = stores.secondary.get_json(STATE)
    assert state["copied"] == 1 and state["within_rpo"] is False
    # S3's LastModified has whole seconds, so the lag may read up to 1 s older than the write.
    assert 3 <= state["lag_seconds"] <= (datetime.now(UTC) - before).total_seconds() + 1
    assert key in _replica(stores.secondary)  # it caught up even though the RPO was missed
    text = "\n".join(m["Subject"] + "\n" + mail_text(m) for m in wait_for_mail(smtp_sink))
    assert "media_replicate" in text and TARGET in text and "RPO exceeded" in text
    media_source().delete_object(Bucket="media-source", Key=key)


def test_two_runs_in_the_same_second_keep_both_evidence_records(stores) -> None:
    """Evidence keys had 1-second resolution: a second run that began in the same second
    overwrote the first run's record. Both must be kept, in time order."""
    import threading

    from include.backup_dr.backup.replication import replicate
    from include.backup_dr.policy import load_policy

    _backed_up(stores)
    policy = load_policy()
    replicate(policy, stores, TARGET, {"run_id": "catch-up"})  # later runs copy nothing
    prefix = f"evidence/replication/media/{TARGET}/"
    before = {o.key for o in stores.secondary.list_objects(prefix)}
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(name: str) -> None:
        start.wait()
        try:
            replicate(policy, stores, TARGET, {"run_id": name})
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    time.sleep(1 - datetime.now(UTC).microsecond / 1e6)  # both begin early in one second
    threads = [threading.Thread(target=run, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    new = sorted({o.key for o in stores.secondary.list_objects(prefix)} - before)
    assert len(new) == 2, new
    assert sorted(stores.secondary.get_json(k)["run"]["run_id"] for k in new) == ["one", "two"]
    assert all(k > max(before) for k in new)  # sortable by time: after the earlier run
