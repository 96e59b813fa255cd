"""The catalogue cache format: round trip, and anything malformed is refused."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import pytest

from include.backup_dr.catalogue import StoredObject
from include.backup_dr.store.listing import (
    CACHE_DIR,
    CachedDocument,
    CacheUnreadableError,
    cache_key,
    decode,
    encode,
)

PREFIX = "platform/platform_core/daily/"
KEY = PREFIX + "20261127T003000Z/integrity.json"
ENTRY = CachedDocument(KEY, "0123abcd", 87, {"ok": True, "artifact_sha256": "ab" * 32})
WHEN = datetime(2026, 11, 27, tzinfo=UTC)


def test_round_trip() -> None:
    other = CachedDocument(PREFIX + "20261128T003000Z/manifest.json", "ff", 900, {"schema": "x"})
    assert list(decode(PREFIX, encode(PREFIX, [ENTRY, other]))) == [ENTRY, other]


def test_cache_lives_outside_the_backup_layout() -> None:
    assert cache_key(PREFIX) == f"{CACHE_DIR}/{PREFIX}catalogue.jsonl.gz"
    assert not cache_key(PREFIX).startswith(PREFIX)


def test_entry_matches_only_the_same_etag_and_size() -> None:
    assert ENTRY.matches(StoredObject(KEY, 87, WHEN, "0123abcd"))
    assert not ENTRY.matches(StoredObject(KEY, 87, WHEN, "0123abce"))  # rewritten
    assert not ENTRY.matches(StoredObject(KEY, 88, WHEN, "0123abcd"))
    assert not ENTRY.matches(StoredObject(PREFIX + "other/integrity.json", 87, WHEN, "0123abcd"))
    blank = CachedDocument(KEY, "", 87, {})
    assert not blank.matches(StoredObject(KEY, 87, WHEN, ""))  # no ETag: nothing to compare


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not gzip at all",
        encode(PREFIX, [ENTRY])[:-9],  # truncated: the gzip trailer (CRC) is gone
        gzip.compress(b'{"schema": "backup-dr/catalogue-cache/v0", "prefix": "x"}\n'),
        encode("platform/platform_billing/daily/", [ENTRY]),  # another prefix's cache
        gzip.compress(
            json.dumps({"schema": "backup-dr/catalogue-cache/v1", "prefix": PREFIX}).encode()
            + b'\n["k", "etag", "87", {}]\n'  # size is not a number
        ),
        gzip.compress(
            json.dumps({"schema": "backup-dr/catalogue-cache/v1", "prefix": PREFIX}).encode()
            + b"\n[1, 2]\n"
        ),
    ],
    ids=["empty", "garbage", "truncated", "old-schema", "foreign", "bad-size", "short-entry"],
)
def test_malformed_cache_is_refused(data: bytes) -> None:
    with pytest.raises(CacheUnreadableError):
        list(decode(PREFIX, data))
