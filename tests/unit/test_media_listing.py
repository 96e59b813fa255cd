"""The media engine's parts without services: the earlier listing, the listing read ahead, and
the replication lag."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.backup.replication import measure_lag
from include.backup_dr.catalogue import StoredObject
from include.backup_dr.engines.media.layout import blob_key
from include.backup_dr.engines.media.listing import (
    PAGE_SIZE,
    EarlierListing,
    Entry,
    ListedAhead,
    parse_listing,
)
from include.backup_dr.engines.media.snapshot import UNCHANGED_RUN, MediaSnapshot, _epoch
from include.backup_dr.immutability import LockRule
from include.backup_dr.store import StoreError

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
keys = st.text(alphabet="ab/-.é0", min_size=1, max_size=6)


def _entry(key: str) -> Entry:
    return Entry(key, "v1", f"etag-{key}", len(key), "ab" * 32)


@settings(max_examples=300, deadline=None)
@given(st.lists(keys, max_size=150, unique=True), st.data())
def test_earlier_listing_finds_every_earlier_entry_in_any_order(earlier, data) -> None:
    """The source lists again in the same order, or with objects added, deleted and (on another
    server) reordered: every object must be found if and only if the earlier listing has it,
    with its line byte for byte; and what was never found counts as deleted."""
    order = data.draw(st.sampled_from(["same", "edited", "any"]))
    if order == "same":
        listed = earlier
    elif order == "edited":  # some deleted, some added ("n" is not in the keys' alphabet)
        kept = data.draw(st.lists(st.booleans(), min_size=len(earlier), max_size=len(earlier)))
        added = data.draw(st.lists(st.booleans(), min_size=len(earlier), max_size=len(earlier)))
        listed = [
            key
            for n, key in enumerate(earlier)
            for key in ([key] if kept[n] else []) + ([f"n{n}"] if added[n] else [])
        ]
    else:
        listed = data.draw(st.lists(st.sampled_from([*earlier, "n"]) | keys, unique=True))
    body = b"".join(_entry(key).line() for key in earlier)
    size = data.draw(st.integers(1, 64))
    listing = EarlierListing(body[i : i + size] for i in range(0, len(body), size))
    try:
        for key in listed:
            found = listing.get(key)
            assert (found is None) == (key not in earlier)
            if found is not None:
                assert (found.etag, found.size) == (f"etag-{key}", len(key))
                assert found.line == _entry(key).line()  # written again as it was
                assert found.entry() == _entry(key)
        assert listing.unseen() == len(set(earlier) - set(listed))
        if order == "same":
            assert listing._index is None  # an unchanged bucket needs no index
    finally:
        listing.close()


class _Source:
    """A source bucket's HEAD, for the objects a snapshot finds new or changed."""

    def head(self, key: str, checksums: bool = False) -> dict:
        sha = hashlib.sha256(key.encode()).digest()
        return {
            "VersionId": "v2",
            "ContentLength": len(key) + 1,
            "ETag": f'"changed-{key}"',
            "ChecksumSHA256": base64.b64encode(sha).decode(),
            "LastModified": NOW,
        }


class _Store:
    """A backup region holding no blob yet: every new content is copied into it. It locks
    nothing unless given a rule; then it records each lock extension."""

    def __init__(self, lock: LockRule | None = None) -> None:
        self.copied: list[str] = []
        self.lock = lock
        self.extended: dict[str, datetime] = {}

    def extend_lock(self, key: str, until: datetime) -> None:
        self.extended[key] = until

    def head(self, key: str, checksums: bool = False) -> None:
        return None

    def copy_from(self, source, key: str, size: int, **_: object) -> None:
        self.copied.append(key)


class _Target:
    category, name = "media", "docs"

    class source:  # noqa: N801 (the policy's shape: target.source.prefix)
        prefix, bucket = "", "media-source"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.booleans(), max_size=3 * UNCHANGED_RUN), st.booleans())
def test_a_snapshot_lists_in_source_order_whatever_mix_of_changed_and_unchanged(changed, gap):
    """Unchanged objects go out in runs, changed ones through the copy workers: the listing
    must still be the source's order, object for object, each unchanged line as it was."""
    keys = [f"k{n:05d}" for n in range(len(changed))]
    earlier = b"".join(_entry(key).line() for key in keys)
    listed = [
        StoredObject(key, len(key) + 1 if new else len(key), NOW, "x" if new else f"etag-{key}")
        for key, new in zip(keys, changed, strict=True)
        if not (gap and key.endswith("7"))  # deleted since, if `gap`
    ]
    store = _Store()
    previous = EarlierListing([earlier])
    try:
        snapshot = MediaSnapshot(
            _Target, _Source(), store, previous, timedelta(hours=2), listing=listed
        )
        body = snapshot.stream.read()
    finally:
        previous.close()
    entries = list(parse_listing([body]))
    assert [e.key for e in entries] == [obj.key for obj in listed]
    for obj, entry in zip(listed, entries, strict=True):
        if obj.etag == "x":
            assert entry.etag == f"changed-{obj.key}"
        else:
            assert entry == _entry(obj.key)
    new = sum(obj.etag == "x" for obj in listed)
    assert snapshot.counts["copied"] == len(store.copied) == new
    assert snapshot.counts["reused"] == len(listed) - new
    assert snapshot.counts["objects"] == len(listed)
    assert snapshot.counts["bytes"] == sum(obj.size for obj in listed)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([None, "short", "enough"]), max_size=2 * UNCHANGED_RUN))
def test_a_snapshot_extends_the_lock_of_exactly_the_reused_blobs_held_short_of_its_expiry(holds):
    """Kopia's rule: a blob a new snapshot reuses stays locked as long as that snapshot needs
    it. An entry whose hold ends before this snapshot's expiry (or that has none) gets its
    blob's lock extended to this snapshot's hold plus the margin, and the new hold in its line;
    every other line goes out as it was, with no request."""
    expires, hold = NOW + timedelta(days=7), NOW + timedelta(days=37)
    given_hold = {None: None, "short": NOW + timedelta(days=6), "enough": NOW + timedelta(days=9)}
    keys = [f"k{n:05d}" for n in range(len(holds))]
    entries = [
        Entry(key, "v1", f"etag-{key}", len(key), f"{n:064x}", _epoch(given_hold[h]))
        if given_hold[h]
        else Entry(key, "v1", f"etag-{key}", len(key), f"{n:064x}")
        for n, (key, h) in enumerate(zip(keys, holds, strict=True))
    ]
    rule = LockRule("GOVERNANCE", timedelta(days=1), timedelta(days=400), {})
    store = _Store(rule)
    listed = [StoredObject(e.key, e.size, NOW, e.etag) for e in entries]
    previous = EarlierListing([b"".join(e.line() for e in entries)])
    try:
        snapshot = MediaSnapshot(
            _Target,
            _Source(),
            store,
            previous,
            timedelta(hours=2),
            listing=listed,
            holds=(expires, hold),
        )
        body = snapshot.stream.read()
    finally:
        previous.close()
    short = {
        blob_key("media", e.sha256) for e, h in zip(entries, holds, strict=True) if h != "enough"
    }
    assert store.extended == dict.fromkeys(short, hold + timedelta(days=1))
    assert snapshot.counts["extended"] == len(short)
    assert snapshot.counts["reused"] == len(entries) and not store.copied
    out = list(parse_listing([body]))
    for before, after, h in zip(entries, out, holds, strict=True):
        assert after == (
            before if h == "enough" else Entry(**{**asdict(before), "hold": _epoch(hold)})
        )


def test_lag_is_the_age_of_the_oldest_missing_change() -> None:
    assert measure_lag(NOW, None) == timedelta(0)
    assert measure_lag(NOW, NOW - timedelta(hours=3)) == timedelta(hours=3)
    # A clock a little ahead at the source never makes the lag negative.
    assert measure_lag(NOW, NOW + timedelta(seconds=2)) == timedelta(0)


def _objects(count: int, fail_at: int | None = None):
    for n in range(count):
        if n == fail_at:
            raise StoreError(f"listing failed at object {n}")
        yield StoredObject(f"k{n}", n, NOW)


def test_a_listing_read_ahead_keeps_its_order_and_raises_its_error_to_the_reader() -> None:
    """The snapshot lists the source in a thread of its own: an object lost or reordered there,
    or an error swallowed (a listing cut short would look like deleted objects), loses data."""
    count = 3 * PAGE_SIZE + 7
    with ListedAhead(_objects(count)) as listing:
        assert [obj.key for obj in listing] == [f"k{n}" for n in range(count)]
    with ListedAhead(_objects(count, fail_at=PAGE_SIZE + 1)) as listing:
        read = []
        with pytest.raises(StoreError, match="failed at object"):
            read.extend(listing)
    assert len(read) == PAGE_SIZE  # the whole pages before the error, then the error


def test_a_listing_read_ahead_stops_when_its_reader_leaves() -> None:
    endless = (StoredObject(f"k{n}", n, NOW) for n in count())
    with ListedAhead(endless) as listing:
        assert next(iter(listing)).key == "k0"
    assert not listing._thread.is_alive()
