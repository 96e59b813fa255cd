"""The store against a real S3 server: server-side copies re-encrypt, failures name the bucket."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from include.backup_dr.backup.steps import copy_to_secondary, take_snapshot
from include.backup_dr.parts import MiB, PartPlan
from include.backup_dr.policy import Region
from include.backup_dr.store import ObjectStore, StoreError
from include.backup_dr.stores import Stores, from_ref

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


#: Eight parts from 5 MiB: a stream of 60 MiB would need 12 parts of 5 MiB, so it must take
#: parts that grow (5, 10, 20 and the last 25 MiB), as a 5 TiB stream does at 10,000 parts.
SMALL_PLAN = PartPlan(first=5 * MiB, limit=8)


class Trickle:
    """A non-seekable source that returns short reads (as a pipe does) and can fail or end
    early, like a pg_dump that dies."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self._data = memoryview(data)
        self._offset = 0
        self._fail_at = fail_at

    def read(self, size: int = -1, /) -> bytes:
        if self._fail_at is not None and self._offset >= self._fail_at:
            raise OSError("the source died mid-stream")
        size = min(size if size >= 0 else len(self._data), 3 * MiB + 1)
        chunk = bytes(self._data[self._offset : self._offset + size])
        self._offset += len(chunk)
        return chunk


def _part_sizes(store: ObjectStore, key: str) -> list[int]:
    head = store.client.head_object(Bucket=store.bucket, Key=key, PartNumber=1)
    return [
        store.client.head_object(Bucket=store.bucket, Key=key, PartNumber=n)["ContentLength"]
        for n in range(1, head["PartsCount"] + 1)
    ]


def test_a_stream_beyond_fixed_parts_grows_its_parts_and_round_trips(stores) -> None:
    store = stores.primary
    body = os.urandom(60 * MiB)
    uploaded = store.upload_stream("grow/data.bin", Trickle(body), plan=SMALL_PLAN)

    assert (uploaded.size, uploaded.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert [size // MiB for size in _part_sizes(store, "grow/data.bin")] == [5, 10, 20, 25]
    head = store.head("grow/data.bin")
    assert head["ContentLength"] == len(body)
    assert head["ServerSideEncryption"] == "aws:kms"
    copied = hashlib.sha256(b"".join(store.iter_chunks("grow/data.bin"))).hexdigest()
    assert copied == uploaded.sha256


def test_an_exact_multiple_of_the_parts_ends_cleanly(stores) -> None:
    ended = []
    body = os.urandom(35 * MiB)  # parts of 5, 10 and 20 MiB, then an empty read
    uploaded = stores.primary.upload_stream(
        "grow/exact.bin", io.BytesIO(body), lambda: ended.append(True), plan=SMALL_PLAN
    )
    assert ended == [True]
    assert uploaded.sha256 == hashlib.sha256(body).hexdigest()
    assert _part_sizes(stores.primary, "grow/exact.bin") == [5 * MiB, 10 * MiB, 20 * MiB]


def _failed_upload(store: ObjectStore, key: str, upload: Callable[[], object]) -> str:
    """Run an upload that must fail; prove it left no object and no open multipart upload."""
    with pytest.raises((OSError, StoreError, RuntimeError)) as failure:
        upload()
    assert store.head(key) is None
    assert store.unfinished_uploads(key) == []
    return str(failure.value)


def test_a_source_failing_mid_stream_leaves_no_object_and_no_open_upload(stores) -> None:
    store = stores.primary
    body = os.urandom(60 * MiB)
    message = _failed_upload(
        store,
        "grow/died.bin",
        lambda: store.upload_stream("grow/died.bin", Trickle(body, 40 * MiB), plan=SMALL_PLAN),
    )
    assert "died mid-stream" in message


def test_an_end_of_stream_check_failing_leaves_no_object_and_no_open_upload(stores) -> None:
    def pg_dump_exited_1() -> None:
        raise RuntimeError("pg_dump exited with 1")

    store = stores.primary
    body = io.BytesIO(os.urandom(40 * MiB))
    message = _failed_upload(
        store,
        "grow/eof.bin",
        lambda: store.upload_stream("grow/eof.bin", body, pg_dump_exited_1, plan=SMALL_PLAN),
    )
    assert "exited with 1" in message


def test_a_stream_longer_than_the_plan_holds_is_refused_and_aborted(stores) -> None:
    store = stores.primary
    two_parts = PartPlan(first=5 * MiB, limit=2)  # 15 MiB at most
    body = io.BytesIO(os.urandom(16 * MiB))
    message = _failed_upload(
        store, "grow/long.bin", lambda: store.upload_stream("grow/long.bin", body, plan=two_parts)
    )
    assert f"longer than {15 * MiB} bytes, the most 2 parts hold" in message


def test_chunks_read_ahead_come_in_order_and_a_reader_may_stop_early(stores) -> None:
    store = stores.primary
    old, new = os.urandom(10 * MiB + 5), os.urandom(9 * MiB)
    store.upload_stream("ahead/data.bin", io.BytesIO(old))
    version = store.head("ahead/data.bin")["VersionId"]
    store.upload_stream("ahead/data.bin", io.BytesIO(new))

    chunks = list(store.iter_chunks("ahead/data.bin", chunk_size=MiB))
    assert b"".join(chunks) == new
    assert [len(chunk) for chunk in chunks] == [MiB] * 9
    older = store.iter_chunks("ahead/data.bin", chunk_size=MiB, version_id=version)
    assert b"".join(older) == old

    stopped = store.iter_chunks("ahead/data.bin", chunk_size=MiB)
    assert next(stopped) == new[:MiB]
    stopped.close()  # the read-ahead thread ends and the GET is closed: nothing hangs


def test_an_empty_stream_is_an_empty_object(stores) -> None:
    uploaded = stores.primary.upload_stream("ahead/empty", io.BytesIO(b""))
    assert (uploaded.size, uploaded.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert stores.primary.head("ahead/empty")["ServerSideEncryption"] == "aws:kms"
    assert list(stores.primary.iter_chunks("ahead/empty")) == []
