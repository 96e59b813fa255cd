"""One region's object store: streamed encrypted uploads, copies, re-reads, locks and deletes.

Every write is SSE-KMS with the region's key and carries a SHA-256 checksum that the server
verifies; every delete removes all versions of a key. The client comes from `client.py`, the
tenure guards from `guards.py`, and the catalogue listing from `listing.py`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Container, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import IO, Any, Protocol

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from include.backup_dr.catalogue import (
    MANIFEST_NAME,
    BackupId,
    Debris,
    Manifest,
    RegionListing,
    StoredObject,
)
from include.backup_dr.immutability import LockRule
from include.backup_dr.parts import (
    BUFFERED_PARTS,
    FIRST_PART_SIZE,
    MAX_OBJECT_SIZE,
    GiB,
    MiB,
    PartPlan,
    parts_in_memory,
)
from include.backup_dr.policy import Region
from include.backup_dr.store.client import (
    KEY_ARN,
    StoreError,
    describe_key,
    http_status,
    s3_client,
    translated,
)
from include.backup_dr.store.guards import watch
from include.backup_dr.store.listing import region_listing

#: How every streamed upload is cut into parts (tests pass a plan with fewer, smaller parts).
UPLOAD_PLAN = PartPlan()
#: CopyObject's own limit; larger objects are copied part by part (UploadPartCopy).
SINGLE_COPY_LIMIT = 5 * GiB
COPY_PART_SIZE = 512 * MiB
READ_CHUNK = 8 * MiB
#: Parallel ranged GETs for a restore download (the archive must be a file for pg_restore -j).
DOWNLOAD_STREAMS = 4
#: Chunks `iter_chunks` reads ahead of its caller.
READ_AHEAD = 4

log = logging.getLogger(__name__)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Uploaded:
    key: str
    size: int
    sha256: str


class HashingReader:
    """Wraps a byte stream, hashing and counting what passes through.

    `on_eof` runs when the source is exhausted and may raise: the upload that is reading then
    fails and is aborted, so a truncated source never becomes a complete object.
    """

    def __init__(self, source: Readable, on_eof: Any = None) -> None:
        self._source = source
        self._on_eof = on_eof
        self._hash = hashlib.sha256()
        self.size = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        if chunk:
            self._hash.update(chunk)
            self.size += len(chunk)
        elif not self._done:
            self._done = True
            if self._on_eof is not None:
                self._on_eof()
        return chunk

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class DeleteRefusedError(StoreError):
    """The store refused to delete versions it holds under Object Lock."""


class ObjectStore:
    """A region's backup bucket, reached through the region's Airflow connection."""

    def __init__(
        self,
        region: Region,
        client: Any,
        endpoint_url: str | None,
        lock: LockRule | None = None,
    ) -> None:
        self.region = region
        self.bucket = region.bucket
        self.client = client
        self.endpoint_url = endpoint_url
        #: What each write is locked until (Object Lock); None: the region locks nothing.
        self.lock = lock
        #: Deletes bypass governance locks: only a store opened with `for_break_glass`.
        self.bypass_governance = False
        self._kms_key_arn: str | None = None
        self._kms_lock = threading.Lock()
        client.meta.events.register("after-call.s3", self._name_unreachable_kms)
        watch(client)

    @classmethod
    def for_region(cls, region: Region, lock: LockRule | None = None) -> ObjectStore:
        return cls._connect(region, region.name, lock)

    @classmethod
    def for_break_glass(cls, region: Region, lock: LockRule | None) -> ObjectStore:
        """The region's bucket through its break-glass connection (`object_lock.bypass_conn_id`),
        whose deletes bypass governance locks. Only `include.backup_dr.backup.break_glass` opens one,
        and it records every use as evidence."""
        if region.object_lock is None or not region.object_lock.bypass_conn_id:
            raise StoreError(
                f"{region.name}: no object_lock.bypass_conn_id in the policy; a governance lock "
                "can only be bypassed through a break-glass connection named there"
            )
        glass = region.model_copy(update={"conn_id": region.object_lock.bypass_conn_id})
        store = cls._connect(glass, region.name, lock)
        store.bypass_governance = True
        return store

    @classmethod
    def for_bucket(cls, conn_id: str, bucket: str) -> ObjectStore:
        """A bucket outside the backup regions (a media source, a restore destination): its
        region comes from its connection, and writes keep the bucket's default encryption."""
        region = Region(name=f"bucket {bucket}", conn_id=conn_id, bucket=bucket, kms_key_id="")
        return cls._connect(region, None)

    @classmethod
    def _connect(
        cls, region: Region, region_name: str | None, lock: LockRule | None = None
    ) -> ObjectStore:
        return cls(region, *s3_client(region, region_name), lock)

    def __repr__(self) -> str:
        return f"ObjectStore({self.region.name}: s3://{self.bucket})"

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key} in {self.region.name}"

    @property
    def kms_key_arn(self) -> str:
        """The ARN of the key the policy names for this region, as S3 reports it on every object.

        The policy may name a key id, a key ARN, an alias or an alias ARN; anything but a key
        ARN is resolved with KMS DescribeKey, through the region's connection (so
        `service_config.kms.endpoint_url` applies), once per store. Writes then name the ARN
        and the integrity check compares with it: a store never mixes two keys even if the
        alias is re-pointed while it works. Empty for a bucket outside the backup regions.
        """
        reference = self.region.kms_key_id
        if not reference or KEY_ARN.fullmatch(reference):
            return reference
        with self._kms_lock:
            if self._kms_key_arn is None:
                self._kms_key_arn = self._describe_key(reference)
            return self._kms_key_arn

    def _describe_key(self, reference: str) -> str:
        # The key must live in the bucket's region.
        return describe_key(self.region, self.client.meta.region_name, reference)

    def _name_unreachable_kms(self, http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        """When S3 fails a call with a server error, say so if the region's KMS key cannot be
        reached: S3 needs it for every read and write of an SSE-KMS object, and may answer a
        KMS outage with a bare `InternalError` (SeaweedFS does), which would send on-call to
        the wrong part. Runs once per failed call, after the SDK's retries; never on success."""
        if http_response.status_code < 500 or not self.region.kms_key_id:
            return
        try:
            self._describe_key(self.region.kms_key_id)
        except StoreError as exc:
            error = parsed.setdefault("Error", {})
            error["Message"] = f"{error.get('Message', '')} (the region's KMS is out: {exc})"

    def encryption_at_rest(self) -> dict[str, str]:
        """What a manifest records of a copy's encryption here: SSE-KMS with the region's key."""
        return {"algorithm": "aws:kms", "kms_key_id": self.region.kms_key_id}

    @property
    def _encryption(self) -> dict[str, str]:
        if not self.region.kms_key_id:  # not a backup region: the bucket's default applies
            return {}
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_arn}

    def _locked(self, key: str, until: datetime | None = None) -> dict[str, Any]:
        """The Object Lock arguments of a write of `key`, until `until` if given, else by the
        key (none when the region locks nothing)."""
        if self.lock is None:
            return {}
        return self.lock.write_arguments(key, datetime.now(UTC), until)

    def same_service_as(self, other: ObjectStore) -> bool:
        """True when a server-side copy from `other` is possible (AWS: always; local: same server)."""
        return self.endpoint_url == other.endpoint_url

    # --- writes -------------------------------------------------------------------------------

    def upload_stream(
        self,
        key: str,
        source: Readable,
        on_eof: Any = None,
        *,
        lock_until: datetime | None = None,
        plan: PartPlan = UPLOAD_PLAN,
    ) -> Uploaded:
        """Stream `source` into `key` as a multipart upload cut by `plan`, hashing as it goes.

        Parts grow with the stream (include/backup_dr/parts.py), so any artifact up to 5 TiB
        fits S3's 10,000 parts. Memory stays at 80 MiB while parts are 16 MiB (up to 15.6 GiB)
        and at most 2 x the largest part (1.2 GiB) near 5 TiB (`parts.parts_in_memory`). If the
        source or `on_eof` raises, or the stream outgrows the plan, the multipart upload is
        aborted and no object appears. Each part carries its own SHA-256, which S3 verifies.
        """
        reader = HashingReader(source, on_eof)
        action = f"upload to {self.where(key)}"
        arguments = {"Bucket": self.bucket, "Key": key}
        parts = _cut(reader, plan)
        first = next(parts, b"")
        if not first:  # an empty stream: S3 takes no multipart upload without a part
            with translated(action):
                self.client.put_object(
                    **arguments,
                    Body=b"",
                    ChecksumAlgorithm="SHA256",
                    **self._encryption,
                    **self._locked(key, lock_until),
                )
            return Uploaded(key, 0, reader.sha256)
        with translated(action):
            upload_id = self.client.create_multipart_upload(
                **arguments,
                ChecksumAlgorithm="SHA256",
                **self._encryption,
                **self._locked(key, lock_until),
            )["UploadId"]
        stream = chain((first,), parts)
        del first  # the stream holds it until the pool has it
        try:
            with translated(action):
                done = self._upload_parts(arguments, upload_id, stream)
                self.client.complete_multipart_upload(
                    **arguments, UploadId=upload_id, MultipartUpload={"Parts": done}
                )
        except BaseException:
            self._abort_after_failure(key, upload_id)
            raise
        return Uploaded(key, reader.size, reader.sha256)

    def _upload_parts(
        self, arguments: dict[str, str], upload_id: str, parts: Iterator[bytes]
    ) -> list[dict[str, Any]]:
        """Upload `parts` as parts 1, 2, ..., a few at once (`parts_in_memory`); returns them
        as CompleteMultipartUpload lists them. Each carries its SHA-256, which S3 checks."""

        def put(number: int, body: bytes) -> dict[str, Any]:
            checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
            response = self.client.upload_part(
                **arguments,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=checksum,  # given, so botocore does not hash the part again
            )
            return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

        done: list[dict[str, Any]] = []
        pending: deque[Future[dict[str, Any]]] = deque()
        pool = ThreadPoolExecutor(max_workers=BUFFERED_PARTS, thread_name_prefix="upload-part")
        try:
            for number, body in enumerate(parts, 1):
                pending.append(pool.submit(put, number, body))
                room = parts_in_memory(len(body))  # with the next one, read meanwhile
                while len(pending) >= room or (pending and pending[0].done()):
                    done.append(pending.popleft().result())
                del body
            done.extend(future.result() for future in pending)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # no part is sent after an abort
        return done

    def _abort_after_failure(self, key: str, upload_id: str) -> None:
        """Abort a failed upload so that no object appears; if the store cannot be reached,
        its parts stay as an unfinished upload, which prune lists and removes later."""
        try:
            self.abort_upload(key, upload_id)
        except StoreError as exc:
            log.warning("Could not abort the failed upload %s: %s", upload_id, exc)

    def put_bytes(
        self, key: str, body: bytes, content_type: str, *, lock_until: datetime | None = None
    ) -> None:
        with translated(f"writing {self.where(key)}"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                **self._encryption,
                **self._locked(key, lock_until),
            )

    def put_json(self, key: str, document: Any) -> None:
        text = document if isinstance(document, str) else json.dumps(document, indent=2) + "\n"
        self.put_bytes(key, text.encode(), "application/json")

    def put_json_if(self, key: str, document: Any, *, etag: str | None) -> str | None:
        """Write `document` only if `key` is as last read: absent when `etag` is None, else still
        at that ETag. Returns the new ETag, or None when another writer changed it first (S3
        answers 412, or 409 when AWS sees concurrent conditional writes)."""
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        with translated(f"writing {self.where(key)} conditionally"):
            try:
                response = self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=(json.dumps(document, indent=2) + "\n").encode(),
                    ContentType="application/json",
                    ChecksumAlgorithm="SHA256",
                    **self._encryption,
                    **condition,
                )
            except ClientError as exc:
                gone = etag is not None and http_status(exc) == 404  # AWS: If-Match on no object
                if http_status(exc) in (409, 412) or gone:
                    return None
                raise
        return str(response["ETag"])

    def copy_from(
        self,
        source: ObjectStore,
        key: str,
        size: int,
        *,
        dest_key: str | None = None,
        version_id: str | None = None,
        single_copy_limit: int = SINGLE_COPY_LIMIT,
        lock_until: datetime | None = None,
    ) -> str:
        """Copy `key` (a version of it) from another store into `dest_key` here, re-encrypted,
        and locked until `lock_until` if given (else as its key says).

        Server-side when both stores are one service (as AWS S3 is across regions): CopyObject up
        to `single_copy_limit`, UploadPartCopy above it. Returns how the copy was made.
        """
        dest_key = dest_key or key
        copy_source = {"Bucket": source.bucket, "Key": key}
        if version_id:
            copy_source["VersionId"] = version_id
        if not self.same_service_as(source):
            body = source.open(key, version_id)
            try:
                if size <= FIRST_PART_SIZE:  # one request, not a multipart upload of one part
                    self.put_bytes(
                        dest_key, body.read(), "application/octet-stream", lock_until=lock_until
                    )
                else:
                    self.upload_stream(dest_key, body, lock_until=lock_until)
            finally:
                body.close()
            return "streamed copy (different S3 services)"
        action = f"server-side copy {source.where(key)} -> {self.where(dest_key)}"
        locked = self._locked(dest_key, lock_until)
        extra = {**self._encryption, **locked, "ChecksumAlgorithm": "SHA256"}
        if size <= single_copy_limit:  # one CopyObject: no HEAD for the size, no transfer threads
            with translated(action):
                copied = self.client.copy_object(
                    CopySource=copy_source, Bucket=self.bucket, Key=dest_key, **extra
                )
                self._lock_copy(dest_key, locked, copied.get("VersionId"))
            return "server-side copy"
        config = TransferConfig(
            multipart_threshold=single_copy_limit,
            multipart_chunksize=min(COPY_PART_SIZE, single_copy_limit),
        )
        with translated(action):
            self.client.copy(
                copy_source,
                self.bucket,
                dest_key,
                ExtraArgs=extra,
                SourceClient=source.client,
                Config=config,
            )
        return "server-side multipart copy"

    def _lock_copy(self, key: str, locked: dict[str, Any], version_id: str | None) -> None:
        """Set a copy's lock on the version it made (the current one if unnamed). AWS applies a
        CopyObject's lock; SeaweedFS drops it. The same date again is allowed."""
        if not locked:
            return
        self.client.put_object_retention(
            Bucket=self.bucket,
            Key=key,
            **({"VersionId": version_id} if version_id else {}),
            Retention={
                "Mode": locked["ObjectLockMode"],
                "RetainUntilDate": locked["ObjectLockRetainUntilDate"],
            },
        )

    def touch(self, key: str, *, lock_until: datetime | None = None) -> None:
        """Write a fresh version of `key` with the same bytes (server-side copy onto itself),
        locked until `lock_until` if given (else as its key says)."""
        locked = self._locked(key, lock_until)
        config = TransferConfig(
            multipart_threshold=SINGLE_COPY_LIMIT, multipart_chunksize=COPY_PART_SIZE
        )
        with translated(f"refreshing {self.where(key)}"):
            self.client.copy(
                {"Bucket": self.bucket, "Key": key},
                self.bucket,
                key,
                ExtraArgs={
                    **self._encryption,
                    **locked,
                    "MetadataDirective": "REPLACE",
                    "Metadata": {"refreshed-at": datetime.now(UTC).isoformat()},
                    "ChecksumAlgorithm": "SHA256",
                },
                Config=config,
            )
            self._lock_copy(key, locked, None)

    def extend_lock(self, key: str, until: datetime) -> None:
        """Lock the current version of `key` until at least `until`. A lock is never shortened:
        when the store refuses because the version is already locked longer, that is kept."""
        assert self.lock is not None, "extend_lock in a region that locks nothing"
        retention = {"Mode": self.lock.mode, "RetainUntilDate": until}
        try:
            with translated(f"locking {self.where(key)}"):
                self.client.put_object_retention(Bucket=self.bucket, Key=key, Retention=retention)
        except StoreError:
            current = self.locked_until(key)
            if current is None or current < until:
                raise
            log.info("%s is already locked until %s; kept.", self.where(key), current)

    # --- reads --------------------------------------------------------------------------------

    def head(self, key: str, *, checksums: bool = False) -> dict[str, Any] | None:
        """The object's metadata (with its S3 checksums if asked), or None when it does not exist."""
        extra = {"ChecksumMode": "ENABLED"} if checksums else {}
        with translated(f"reading {self.where(key)}", missing_ok=True):
            return self.client.head_object(Bucket=self.bucket, Key=key, **extra)
        return None

    def locked_until(self, key: str) -> datetime | None:
        """The retain-until date of the current version of `key` (Object Lock), past or not;
        None when it has none or there is no such object."""
        return retained_until(self.head(key))

    def open(self, key: str, version_id: str | None = None) -> IO[bytes]:
        extra = {"VersionId": version_id} if version_id else {}
        with translated(f"reading {self.where(key)}"):
            return self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]

    def iter_chunks(
        self, key: str, chunk_size: int = READ_CHUNK, version_id: str | None = None
    ) -> Iterator[bytes]:
        """`key`'s bytes in order, in chunks of up to `chunk_size`, from one GET.

        A thread reads up to READ_AHEAD chunks ahead of the caller, so the caller's work on
        one chunk (a SHA-256, a parse) overlaps the transfer of the next instead of waiting
        for it: both release the GIL. One GET, not ranged ones: SeaweedFS serves ranges of an
        SSE-KMS object at half the speed, and botocore checks a full-object checksum only on
        a whole read. Memory: READ_AHEAD + 1 chunks. An object of one chunk is read at once.
        """
        extra = {"VersionId": version_id} if version_id else {}
        with translated(f"reading {self.where(key)}"):
            response = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        body = response["Body"]
        if int(response["ContentLength"]) <= chunk_size:  # one chunk: no thread to start
            with body, translated(f"reading {self.where(key)}"):
                data = body.read()
            if data:
                yield data
            return

        def read() -> bytes:
            with translated(f"reading {self.where(key)}"):
                return _read_part(body, chunk_size)

        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead")
        try:
            ahead = deque(reader.submit(read) for _ in range(READ_AHEAD))  # run in this order
            while chunk := ahead.popleft().result():
                ahead.append(reader.submit(read))
                yield chunk
                del chunk
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            body.close()

    def sha256(self, key: str, version_id: str | None = None) -> str:
        """The SHA-256 of `key`'s bytes (of a version of it), read with `iter_chunks`."""
        digest = hashlib.sha256()
        for chunk in self.iter_chunks(key, version_id=version_id):
            digest.update(chunk)
        return digest.hexdigest()

    def download(self, key: str, dest: Path, size: int, streams: int = DOWNLOAD_STREAMS) -> None:
        """Fetch `key` into `dest` with parallel ranged GETs, each streamed in constant memory."""
        span = max(READ_CHUNK, -(-size // streams))
        ranges = [(start, min(start + span, size) - 1) for start in range(0, size, span)]

        def fetch(first: int, last: int) -> None:
            with translated(f"reading bytes {first}-{last} of {self.where(key)}"):
                body = self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}"
                )["Body"]
            with body:
                offset = first
                for chunk in iter(lambda: body.read(READ_CHUNK), b""):
                    os.pwrite(fd, chunk, offset)
                    offset += len(chunk)

        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with ThreadPoolExecutor(max_workers=len(ranges) or 1) as pool:
                for future in [pool.submit(fetch, first, last) for first, last in ranges]:
                    future.result()
        finally:
            os.close(fd)

    def get_json(self, key: str) -> Any | None:
        """A small JSON document, or None when it does not exist."""
        with (
            translated(f"reading {self.where(key)}", missing_ok=True),
            self.client.get_object(Bucket=self.bucket, Key=key)["Body"] as body,
        ):
            return json.loads(body.read())
        return None

    def get_json_tagged(self, key: str) -> tuple[Any, str] | None:
        """A small JSON document and its ETag (for a `put_json_if` after), or None."""
        with translated(f"reading {self.where(key)}", missing_ok=True):
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                return json.loads(body.read()), str(response["ETag"])
        return None

    def manifest(self, backup: BackupId) -> Manifest | None:
        document = self.get_json(backup.key(MANIFEST_NAME))
        return None if document is None else Manifest.from_json(json.dumps(document))

    def list_objects(self, prefix: str, start_after: str | None = None) -> Iterator[StoredObject]:
        """The objects under `prefix` in key order (only those after `start_after` if given)."""
        paginator = self.client.get_paginator("list_objects_v2")
        after = {"StartAfter": start_after} if start_after else {}
        with translated(f"listing {self.where(prefix)}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, **after):
                for item in page.get("Contents", []):
                    yield StoredObject(
                        item["Key"],
                        item["Size"],
                        # UTC, not botocore's tzlocal: one tzinfo object per timestamp otherwise.
                        item["LastModified"].astimezone(UTC),
                        item.get("ETag", "").strip('"'),
                    )

    def unfinished_uploads(self, prefix: str) -> list[Debris]:
        with translated(f"listing unfinished uploads under {self.where(prefix)}"):
            page = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [
            Debris(self.region.name, item["Key"], utc(item["Initiated"]), item["UploadId"])
            for item in page.get("Uploads", [])
        ]

    def listing(self, prefix: str) -> RegionListing:
        """Everything the catalogue needs from this region under `prefix` (see `listing`)."""
        return region_listing(self, prefix)

    def delete_all_versions(
        self,
        prefix: str,
        *,
        keep_latest: bool = False,
        written_before: datetime | None = None,
        keys: Container[str] | None = None,
    ) -> int:
        """Delete every version and delete marker under `prefix` (but the current ones if
        `keep_latest`, only those written before `written_before` if given, and only of `keys`
        if given: one listing for many keys); returns how many went. Deletes 1,000 at a time
        as the listing goes, so memory stays flat however many versions there are."""
        if isinstance(keys, Sized) and not len(keys):
            return 0
        paginator = self.client.get_paginator("list_object_versions")
        batch: list[dict[str, str]] = []
        deleted = 0
        with translated(f"listing versions under {self.where(prefix)}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if keep_latest and item.get("IsLatest"):
                        continue
                    if written_before and utc(item["LastModified"]) >= written_before:
                        continue
                    if keys is not None and item["Key"] not in keys:
                        continue
                    batch.append({"Key": item["Key"], "VersionId": item["VersionId"]})
                    if len(batch) == 1000:
                        deleted += self._delete_batch(prefix, batch)
                        batch = []
        return deleted + self._delete_batch(prefix, batch)

    def _delete_batch(self, prefix: str, batch: list[dict[str, str]]) -> int:
        if not batch:
            return 0
        bypass = {"BypassGovernanceRetention": True} if self.bypass_governance else {}
        with translated(f"deleting under {self.where(prefix)}"):
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}, **bypass
            )
        if response.get("Errors"):
            first = response["Errors"][0]
            refused = [e["Key"] for e in response["Errors"] if e.get("Code") == "AccessDenied"]
            if self.lock is not None and refused:
                raise DeleteRefusedError(
                    f"the store refused to delete {len(refused)} versions under "
                    f"{self.where(prefix)} (e.g. {refused[0]}): the bucket's Object Lock holds "
                    f"them ({self.lock.mode.lower()} mode). Nothing was retried; they are "
                    "deleted by the first prune or garbage collection after their lock ends."
                )
            raise StoreError(
                f"deleting under {self.where(prefix)} failed for {len(response['Errors'])} "
                f"versions, e.g. {first['Key']}: {first.get('Message')}"
            )
        return len(batch)

    def delete_version(self, key: str, version_id: str) -> None:
        """Delete one version of `key` (one found wrong), leaving every other version alone."""
        with translated(f"deleting version {version_id} of {self.where(key)}", missing_ok=True):
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)

    def abort_upload(self, key: str, upload_id: str) -> None:
        with translated(f"aborting the upload of {self.where(key)}", missing_ok=True):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)


def retained_until(head: dict[str, Any] | None) -> datetime | None:
    """The retain-until date a HEAD reports (None: no lock, or no object)."""
    until = None if head is None else head.get("ObjectLockRetainUntilDate")
    return None if until is None else utc(until)


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _cut(reader: Readable, plan: PartPlan) -> Iterator[bytes]:
    """The parts of `reader`, sized by `plan`. Reads past the plan's last part only to find
    the end, and raises if the stream is longer than the plan holds."""
    for size in plan.sizes():
        data = _read_part(reader, size)
        if data:
            yield data
        if len(data) < size:  # the end was read
            return
    if reader.read(1):
        raise StoreError(
            f"the stream is longer than {plan.capacity} bytes, the most {plan.limit} parts "
            f"hold (S3 takes objects of up to {MAX_OBJECT_SIZE} bytes); the upload is aborted"
        )


def _read_part(reader: Readable, size: int) -> bytes:
    """`size` bytes of `reader`, fewer only when its end was read (pipes return what they hold)."""
    chunks = []
    while size > 0 and (chunk := reader.read(size)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)  # one chunk, the usual case, is returned as it is, not copied
