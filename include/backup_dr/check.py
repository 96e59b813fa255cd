"""One named check and its verdict, the unit every integrity record is made of, and the check
every stored object passes whoever stored it: its encryption at rest.

Engines return checks (the `Engine` protocol), `integrity` collects them into a copy's record
and `pg_globals` checks the globals kept beside a dump; they live below all three so none
imports another for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from include.backup_dr.store import ObjectStore, StoreError


@dataclass(frozen=True)
class Check:
    """What a check looked at and what it found: a check never just raises."""

    name: str
    ok: bool
    detail: str


def encryption_check(store: ObjectStore, head: dict[str, Any]) -> Check:
    """SSE-KMS under the region's key, compared by exact key ARN.

    S3 reports the key ARN whatever the write named (id, alias or ARN), so the policy's key is
    resolved to its ARN first (see ObjectStore.kms_key_arn); a suffix match would let an alias
    never match and `...-key` match `old-...-key`. A service that reports the bare key id is
    matched on the ARN's key id, exactly.
    """
    sse, kms_key = head.get("ServerSideEncryption"), head.get("SSEKMSKeyId", "")
    found = f"{sse or 'none'} with key {kms_key or 'none'}"
    configured = store.region.kms_key_id
    try:
        expected = store.kms_key_arn
    except StoreError as exc:
        return Check("encrypted", False, f"{found}; the policy's key is unknown: {exc}")
    named = expected if expected == configured else f"{expected} ({configured})"
    same_key = kms_key in (expected, expected.rsplit("/", 1)[-1])
    return Check(
        "encrypted", sse == "aws:kms" and same_key, f"{found}, expected aws:kms with {named}"
    )
