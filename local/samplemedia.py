# ruff: noqa: S311 (seeded pseudo-random sample data, not cryptography)
"""A sample *media source* bucket on the primary S3 server: tenants' documents and videos.

The bucket (versioned) holds ``small`` files of 1-20 KB under
``tenants/<tenant-id>/documents/<uuid>.pdf|.docx|.png`` spread over 50 tenants, and
``large`` videos of ``large_mb`` MB under ``tenants/<tenant-id>/videos/onboarding-<n>.mp4``.
Keys and content are deterministic for a given seed. Every put sends a SHA-256 checksum:
small objects carry a full-object SHA-256, videos are multipart uploads whose checksum is
composite (SHA-256 of the part checksums, ``-<parts>`` suffix).

The bucket is filled only while empty, so ``ensure_sample_media`` is fast once done.
``mutate`` overwrites a fraction of the small objects, to exercise incremental backups.

Run: ``python -m local.samplemedia [--small N] [--large N] [--large-mb N] [--bucket B] [--reset]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from local.config import S3_ADMIN_KEY, S3_ADMIN_SECRET, S3Site, s3_sites

DEFAULT_BUCKET = "media-source"
SEED = 20240611
TENANTS = 50
WORKERS = 16
PART_SIZE = 8 * 1024 * 1024  # multipart part size of the videos
SMALL_MIN, SMALL_MAX = 1024, 20 * 1024

# Extension -> (content type, leading magic bytes, relative frequency).
_KINDS = {
    ".pdf": ("application/pdf", b"%PDF-1.7\n", 5),
    ".docx": (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        b"PK\x03\x04",
        3,
    ),
    ".png": ("image/png", b"\x89PNG\r\n\x1a\n", 2),
}
_MP4_MAGIC = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"


@dataclass(frozen=True)
class SmallFile:
    key: str
    size: int
    content_type: str
    magic: bytes

    def body(self, salt: str = "") -> bytes:
        """Deterministic content; another ``salt`` gives other content of the same kind."""
        rng = random.Random(f"{SEED}/{self.key}/{salt}")
        return self.magic + rng.randbytes(self.size - len(self.magic))


def tenant_ids(seed: int = SEED) -> list[str]:
    rng = random.Random(f"{seed}/tenants")
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(TENANTS)]


def small_files(count: int, seed: int = SEED) -> list[SmallFile]:
    """The small documents: a few big tenants, a long tail of small ones."""
    rng = random.Random(f"{seed}/small")
    tenants = tenant_ids(seed)
    weights = [1 / (rank + 1) ** 0.7 for rank in range(len(tenants))]
    exts = list(_KINDS)
    ext_weights = [_KINDS[e][2] for e in exts]
    files = []
    for _ in range(count):  # file i does not depend on count: a smaller set is a prefix
        tenant = rng.choices(tenants, weights)[0]
        ext = rng.choices(exts, ext_weights)[0]
        name = uuid.UUID(int=rng.getrandbits(128), version=4)
        content_type, magic, _ = _KINDS[ext]
        key = f"tenants/{tenant}/documents/{name}{ext}"
        files.append(SmallFile(key, rng.randint(SMALL_MIN, SMALL_MAX), content_type, magic))
    return files


def large_keys(count: int, seed: int = SEED) -> list[str]:
    tenants = tenant_ids(seed)
    return [
        f"tenants/{tenants[n % len(tenants)]}/videos/onboarding-{n + 1}.mp4" for n in range(count)
    ]


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def media_client(site: S3Site | None = None) -> Any:
    """A boto3 S3 client for the primary server with a connection pool for WORKERS threads, as
    its administrator: it stands for the customer's own tooling, which owns the media buckets."""
    site = site or s3_sites()[0]
    return boto3.client(
        "s3",
        endpoint_url=site.endpoint,
        region_name=site.region,
        aws_access_key_id=S3_ADMIN_KEY,
        aws_secret_access_key=S3_ADMIN_SECRET,
        config=Config(
            retries={"max_attempts": 3},
            connect_timeout=3,
            read_timeout=120,
            max_pool_connections=WORKERS * 2,
        ),
    )


def _workers(client: Any) -> int:
    # More threads than pooled connections only makes urllib3 drop and reopen connections.
    return max(1, min(WORKERS, client.meta.config.max_pool_connections))


def _put_small(client: Any, bucket: str, f: SmallFile, salt: str = "") -> None:
    client.put_object(
        Bucket=bucket,
        Key=f.key,
        Body=f.body(salt),
        ContentType=f.content_type,
        ChecksumAlgorithm="SHA256",
    )


def _part(key: str, number: int, size: int) -> bytes:
    """Part ``number`` (1-based) of a video of ``size`` bytes."""
    start = (number - 1) * PART_SIZE
    length = min(PART_SIZE, size - start)
    data = random.Random(f"{SEED}/{key}/{number}").randbytes(length)
    return _MP4_MAGIC + data[len(_MP4_MAGIC) :] if number == 1 else data


def _put_large(client: Any, bucket: str, key: str, size: int, pool: ThreadPoolExecutor) -> None:
    """A multipart upload with SHA-256 part checksums, so the object checksum is composite."""
    upload = client.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType="video/mp4", ChecksumAlgorithm="SHA256"
    )
    upload_id = upload["UploadId"]

    def put_part(number: int) -> dict[str, Any]:
        data = _part(key, number, size)
        checksum = _sha256_b64(data)
        resp = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": checksum}

    try:
        parts = list(pool.map(put_part, range(1, -(-size // PART_SIZE) + 1)))
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def ensure_bucket(client: Any, bucket: str = DEFAULT_BUCKET) -> None:
    """Create ``bucket`` in the client's region if missing; (re-)enable versioning."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(
            Bucket=bucket,
            CreateBucketConfiguration={"LocationConstraint": client.meta.region_name},
        )
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def ensure_sample_media(
    client: Any,
    bucket: str = DEFAULT_BUCKET,
    *,
    small: int = 2000,
    large: int = 2,
    large_mb: float = 70,
    log: Callable[[str], None] = print,
) -> bool:
    """Create the versioned bucket if missing and fill it if empty; True if it was filled.

    ``client`` is an S3 client of the primary server (``media_client()`` has a large
    enough connection pool for the upload threads).
    """
    ensure_bucket(client, bucket)
    if client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0):
        log(f"{bucket}: already filled")
        return False
    workers = _workers(client)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        started = time.monotonic()
        files = small_files(small)
        list(pool.map(lambda f: _put_small(client, bucket, f), files))
        total = sum(f.size for f in files)
        log(
            f"{bucket}: {len(files)} small files ({total / 2**20:.1f} MB) in "
            f"{time.monotonic() - started:.1f}s ({workers} threads)"
        )
        if large:
            started = time.monotonic()
            size = int(large_mb * 2**20)
            for key in large_keys(large):
                _put_large(client, bucket, key, size, pool)
            log(
                f"{bucket}: {large} multipart file(s) of {large_mb} MB in "
                f"{time.monotonic() - started:.1f}s"
            )
    return True


def _current_keys(client: Any, bucket: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def mutate(client: Any, bucket: str, fraction: float, seed: int) -> list[str]:
    """Overwrite ``fraction`` of the small objects with new content; return the keys, sorted.

    The choice and the new content depend only on ``seed`` and the bucket listing; any
    fraction > 0 changes at least one object. Each overwrite adds a version.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction {fraction} is not within [0, 1]")
    keys = sorted(k for k in _current_keys(client, bucket) if "/documents/" in k)
    count = min(len(keys), max(1, round(fraction * len(keys)))) if fraction and keys else 0
    chosen = sorted(random.Random(f"{seed}/mutate").sample(keys, count))
    by_ext = {ext: (ctype, magic) for ext, (ctype, magic, _) in _KINDS.items()}

    def overwrite(key: str) -> None:
        ctype, magic = by_ext.get(key[key.rfind(".") :], ("application/octet-stream", b""))
        size = random.Random(f"{seed}/{key}/size").randint(SMALL_MIN, SMALL_MAX)
        _put_small(client, bucket, SmallFile(key, size, ctype, magic), salt=f"mutate-{seed}")

    with ThreadPoolExecutor(max_workers=_workers(client)) as pool:
        list(pool.map(overwrite, chosen))
    return chosen


def empty_bucket(client: Any, bucket: str, log: Callable[[str], None] = print) -> int:
    """Delete every version and delete marker (and pending multipart uploads) of ``bucket``."""
    deleted = 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        entries = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        for start in range(0, len(entries), 1000):
            batch = entries[start : start + 1000]
            resp = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if resp.get("Errors"):
                raise RuntimeError(f"{bucket}: could not delete {resp['Errors'][:3]}")
            deleted += len(batch)
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for up in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    log(f"{bucket}: deleted {deleted} version(s) and delete marker(s)")
    return deleted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create and fill the sample media bucket")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help=f"({DEFAULT_BUCKET})")
    parser.add_argument("--small", type=int, default=2000, help="small files (2000)")
    parser.add_argument("--large", type=int, default=2, help="multipart videos (2)")
    parser.add_argument("--large-mb", type=float, default=70, help="size of each video (70)")
    parser.add_argument("--reset", action="store_true", help="empty the bucket first")
    args = parser.parse_args(argv)
    client = media_client()
    if args.reset:
        ensure_bucket(client, args.bucket)
        empty_bucket(client, args.bucket)
    ensure_sample_media(
        client, args.bucket, small=args.small, large=args.large, large_mb=args.large_mb
    )


if __name__ == "__main__":
    main()
