"""The store against a real S3 server: server-side copies re-encrypt, failures name the bucket."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime

import pytest

from include.backup_dr.pipeline import Stores, copy_to_secondary, from_ref, take_snapshot
from include.backup_dr.policy import Region
from include.backup_dr.store import MiB, ObjectStore, StoreError

pytestmark = pytest.mark.integration


def test_copy_within_one_service_is_server_side_and_re_encrypted(stores) -> None:
    from local.config import s3_sites
    from local.s3 import kms_client, s3_client

    source = stores.primary
    site = s3_sites()[0]
    new_key = kms_client(site).create_key()["KeyMetadata"]["KeyId"]
    admin = s3_client(site)  # the backup role creates no bucket
    admin.create_bucket(
        Bucket="copies-eu-west-1", CreateBucketConfiguration={"LocationConstraint": site.region}
    )
    # A second bucket on the same service, with its own key: what AWS gives across regions.
    target = ObjectStore(
        Region(
            name="eu-west-1-copy",
            conn_id="s3_primary",
            bucket="copies-eu-west-1",
            kms_key_id=new_key,
        ),
        source.client,
        source.endpoint_url,
    )
    body = os.urandom(6 * MiB)
    uploaded = source.upload_stream("obj/data.bin", io.BytesIO(body))
    assert uploaded.sha256 == hashlib.sha256(body).hexdigest()

    mode = target.copy_from(source, "obj/data.bin", uploaded.size)
    assert mode == "server-side copy"
    head = target.head("obj/data.bin")
    assert head["SSEKMSKeyId"].endswith(new_key)
    assert source.head("obj/data.bin")["SSEKMSKeyId"].endswith("backup-primary-key")
    copied = b"".join(target.iter_chunks("obj/data.bin"))
    assert hashlib.sha256(copied).hexdigest() == uploaded.sha256
    target.delete_all_versions("")
    admin.delete_bucket(Bucket="copies-eu-west-1")


def test_unreachable_secondary_region_is_a_clear_error_and_loses_nothing(
    stores, policy_file, monkeypatch
) -> None:
    # Nothing listens on port 9 (discard) here: the region's S3 endpoint is down.
    broken = {
        "conn_type": "aws",
        "login": "x",
        "password": "y",
        "extra": {"endpoint_url": "http://127.0.0.1:9"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_S3_DOWN", json.dumps(broken))
    policy = policy_file(lambda d: d["regions"]["secondary"].update(conn_id="s3_down"))
    window = datetime(2026, 11, 26, 0, 30, tzinfo=UTC)
    ref = take_snapshot(policy, stores, "platform_billing", "daily", window, {})
    with pytest.raises(
        StoreError,
        match=r"s3://backups-eu-central-1/platform/.* in eu-central-1 failed: Could not connect",
    ):
        copy_to_secondary(policy, Stores.from_policy(policy), ref)
    assert stores.primary.manifest(from_ref(ref)) is not None
