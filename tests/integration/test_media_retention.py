"""A document deleted at the source leaves every backup once the longest retention has passed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.backup.gc import collect_garbage
from include.backup_dr.backup.steps import check_integrity, copy_to_secondary, prune, take_snapshot
from include.backup_dr.catalogue import BackupId
from include.backup_dr.engines.media import blob_key, parse_listing
from tests.integration.helpers import MEDIA_TARGET as TARGET
from tests.integration.helpers import media_source

pytestmark = pytest.mark.integration
START = datetime(2025, 10, 1, 2, 30, tzinfo=UTC)


def _month(n: int) -> datetime:
    year, month = divmod(START.month - 1 + n, 12)
    return START.replace(year=START.year + year, month=month + 1)


def test_deleted_document_is_gone_from_every_backup_after_twelve_months(
    stores, policy_file
) -> None:
    # Blob grace runs on the wall clock (it guards writes happening now): shorten it here.
    policy = policy_file(lambda d: d["prune"].update(incomplete_upload_grace="1s"))
    assert policy.categories["media"].tiers["monthly"].retention == timedelta(days=365)
    source = media_source()
    victim = "tenants/retention-test/documents/to-be-deleted.pdf"
    source.put_object(
        Bucket="media-source",
        Key=victim,
        Body=b"%PDF unique " + START.isoformat().encode(),
        ChecksumAlgorithm="SHA256",
    )

    first = take_snapshot(policy, stores, TARGET, "monthly", _month(0), {})
    copy_to_secondary(policy, stores, first)
    check_integrity(policy, stores, first)
    entries = parse_listing(
        stores.primary.iter_chunks(
            stores.primary.manifest(BackupId("media", TARGET, "monthly", _month(0))).artifact.key
        )
    )
    sha = next(e.sha256 for e in entries if e.key == victim)
    source.delete_object(Bucket="media-source", Key=victim)  # the customer deletes it

    for n in range(1, 14):
        window = _month(n)
        ref = take_snapshot(policy, stores, TARGET, "monthly", window, {})
        copy_to_secondary(policy, stores, ref)
        check_integrity(policy, stores, ref)
        prune(policy, stores, TARGET, "monthly", now=window + timedelta(minutes=10))
        collect_garbage(policy, stores, "media")  # as backup_collect_garbage does daily
        still_listed = (window + timedelta(minutes=10)) - _month(0) <= timedelta(days=365)
        for store in stores:
            present = store.head(blob_key("media", sha)) is not None
            assert present == still_listed, (n, store.region.name)
    # Thirteen months on: no snapshot lists it, and its bytes are gone in both regions.
    for store in stores:
        versions = store.client.list_object_versions(
            Bucket=store.bucket, Prefix=blob_key("media", sha)
        )
        assert not versions.get("Versions") and not versions.get("DeleteMarkers")
