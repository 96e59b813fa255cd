"""Two S3 regions on seaweedfs ``weed mini``, with SSE-KMS through the local KMS stand-in.

Every port weed opens is pinned (offsets from the S3 port) so that two servers coexist
and 8080 stays free for Airflow. The admin server cannot be switched off in mini mode
(its maintenance worker needs it), so only its UI is disabled; WebDAV, Iceberg and Lance
are disabled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from local.config import (
    HOST,
    S3_ACCESS_KEY,
    S3_ADMIN_KEY,
    S3_ADMIN_SECRET,
    S3_SECRET_KEY,
    VENV_BIN,
    Ports,
    S3Site,
)

# weed's worker dials the admin gRPC service at admin port + 10000 whatever
# -admin.port.grpc says, so the admin gRPC port must sit exactly there.
_GRPC_OFFSET = 10000


def weed_ports(site: S3Site) -> dict[str, int]:
    """Every listening port of one weed mini, as its command-line flags."""
    base = site.port
    admin = base + 8
    return {
        "s3.port": base,
        "s3.port.grpc": base + 1,
        "master.port": base + 2,
        "master.port.grpc": base + 3,
        "volume.port": base + 4,
        "volume.port.grpc": base + 5,
        "filer.port": base + 6,
        "filer.port.grpc": base + 7,
        "admin.port": admin,
        "admin.port.grpc": admin + _GRPC_OFFSET,
        "webdav.port": base + 9,  # disabled, but weed still checks the port is free
        "debug.port": base + 10,  # only used with -debug
    }


def s3_config(site: S3Site, kms_port: int) -> dict[str, Any]:
    """The -s3.config document: the backup and break-glass identities, and the KMS that
    SSE-KMS uses. The backup identity may read, write, list and delete objects and read their
    locks, as the README's IAM policy for the backup role allows; only the break-glass one may
    administer buckets and bypass a governance lock.

    Provider type ``aws`` with a custom endpoint, not weed's ``local`` type: the latter
    generates new key material at each start, so encrypted objects would not survive a
    restart.
    """
    return {
        "identities": [
            {
                "name": S3_ACCESS_KEY,
                "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                "actions": [
                    "Read",
                    "Write",
                    "List",
                    "Tagging",
                    "GetObjectRetention",
                    "PutObjectRetention",
                ],
            },
            {
                "name": S3_ADMIN_KEY,
                "credentials": [{"accessKey": S3_ADMIN_KEY, "secretKey": S3_ADMIN_SECRET}],
                "actions": [
                    "Admin",
                    "Read",
                    "Write",
                    "List",
                    "Tagging",
                    "BypassGovernanceRetention",
                ],
            },
        ],
        "kms": {
            "default_provider": "local-kms",
            "providers": {
                "local-kms": {
                    "type": "aws",
                    "region": site.region,
                    "endpoint": f"http://{HOST}:{kms_port}",
                    "access_key": S3_ACCESS_KEY,
                    "secret_key": S3_SECRET_KEY,
                }
            },
        },
    }


def weed_command(site: S3Site, kms_port: int) -> list[str]:
    """Write the site's config and return the weed mini command line."""
    data = site.data_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    # weed saves the flags of its last run here and re-applies them to flags left at
    # their defaults; stale values must not leak into this run.
    (data / "mini.options").unlink(missing_ok=True)
    config = site.data_dir / "s3-config.json"
    config.write_text(json.dumps(s3_config(site, kms_port), indent=2))
    config.chmod(0o600)
    flags = {
        "dir": str(data),
        "ip": HOST,
        "ip.bind": HOST,
        "s3.config": str(config),
        "admin.ui": "false",
        "webdav": "false",
        "s3.port.iceberg": "0",
        "s3.port.lance": "0",
        "master.telemetry": "false",
        "filer.localSocket": str(site.data_dir / "filer.sock"),
        "s3.localSocket": str(site.data_dir / "s3.sock"),
        **{flag: str(port) for flag, port in weed_ports(site).items()},
    }
    # -logtostderr: logs go to our log file only, not to weed.* files in /tmp.
    weed = [str(Path(VENV_BIN) / "weed"), "-logtostderr", "mini"]
    return [*weed, *(f"-{k}={v}" for k, v in flags.items())]


def _client(service: str, endpoint: str, region: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=S3_ADMIN_KEY,
        aws_secret_access_key=S3_ADMIN_SECRET,
        config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=60),
    )


def s3_client(site: S3Site) -> Any:
    """A boto3 S3 client for one region's server, as its administrator (the stack's tooling)."""
    return _client("s3", site.endpoint, site.region)


def kms_client(site: S3Site, port: int | None = None) -> Any:
    """A boto3 KMS client for one region of the KMS stand-in (e.g. to create extra keys)."""
    return _client("kms", f"http://{HOST}:{port or Ports.from_env().kms}", site.region)


def probe(site: S3Site) -> None:
    """A signed request that needs master, filer and S3 gateway up; raises until ready."""
    s3_client(site).list_buckets()


def ensure_bucket(site: S3Site) -> None:
    """Create the site's bucket if missing, with versioning and Object Lock enabled (a policy
    region with `object_lock` needs it; without, nothing is locked: there is no default rule)."""
    s3 = s3_client(site)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if site.bucket not in existing:
        s3.create_bucket(
            Bucket=site.bucket,
            CreateBucketConfiguration={"LocationConstraint": site.region},
            ObjectLockEnabledForBucket=True,
        )
    s3.put_bucket_versioning(Bucket=site.bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object_lock_configuration(  # a bucket made before locks existed here gets them too
        Bucket=site.bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
    )
