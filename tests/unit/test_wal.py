"""The WAL archive rules: names, continuity, the segment header check and what GC may remove."""

from __future__ import annotations

import gzip
import struct

from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.wal import (
    DEFAULT_SEGMENT_SIZE,
    Segment,
    check_segment,
    classify,
    continuity,
    format_lsn,
    parse_lsn,
    removable,
)

PREFIX = "wal/platform_primary/wals/0000000100000000/"
SYSID = 7_441_234_567_890_123_456


def archived(*names: str):
    return [classify(PREFIX + name, 100) for name in names]


def seg(timeline: int, number: int) -> str:
    return Segment(timeline, number).name()


@given(timeline=st.integers(1, 0xFFFF), number=st.integers(0, 0xFFFFFF))
def test_segment_names_round_trip(timeline: int, number: int) -> None:
    segment = Segment(timeline, number)
    assert Segment.parse(segment.name()) == segment
    assert Segment.of_lsn(timeline, segment.start_lsn()) == segment


def test_lsn_text() -> None:
    assert parse_lsn("0/5000028") == 0x5000028
    assert format_lsn(parse_lsn("1A/FF000000")) == "1A/FF000000"


def test_classify_names_what_barman_writes() -> None:
    assert classify(PREFIX + "000000010000000000000005.gz", 1).kind == "segment"
    assert classify(PREFIX + "000000010000000000000005.00000028.backup.gz", 1).kind == "backup"
    assert classify(PREFIX + "000000020000000000000007.partial.gz", 1).kind == "partial"
    history = classify(PREFIX + "00000002.history.gz", 1)
    assert (history.kind, history.history_timeline) == ("history", 2)
    assert classify(PREFIX + "verified.json", 1).kind == "other"


def test_continuous_chain_passes_and_says_so() -> None:
    chain = continuity(archived(*(seg(1, n) + ".gz" for n in range(3, 9))), Segment(1, 4))
    assert chain.ok
    assert chain.describe() == f"{seg(1, 4)} .. {seg(1, 8)}: all 5 segment(s) present, no gap"


def test_gap_is_named() -> None:
    files = archived(*(seg(1, n) + ".gz" for n in (4, 5, 7, 8)))
    chain = continuity(files, Segment(1, 4))
    assert not chain.ok
    assert chain.missing == (Segment(1, 6),)
    assert f"missing segment(s) {seg(1, 6)}" in chain.describe()


def test_nothing_archived_since_the_start_fails() -> None:
    chain = continuity(archived(seg(1, 2) + ".gz"), Segment(1, 4))
    assert not chain.ok
    assert "no segment from" in chain.describe()


def test_timeline_switch_needs_its_history_file() -> None:
    # Promotion at segment 6: timeline 2 continues the chain from there.
    names = [seg(1, 4) + ".gz", seg(1, 5) + ".gz", seg(2, 6) + ".gz", seg(2, 7) + ".gz"]
    without = continuity(archived(*names), Segment(1, 4))
    assert not without.ok and without.missing_history == (2,)
    assert "missing timeline history 00000002.history" in without.describe()
    assert continuity(archived(*names, "00000002.history.gz"), Segment(1, 4)).ok


def _segment_bytes(timeline: int, number: int, sysid: int = SYSID) -> bytes:
    page = struct.pack("<HHIQI", 0xD113, 0x0002, timeline, number * DEFAULT_SEGMENT_SIZE, 0)
    page += b"\x00" * 4 + struct.pack("<QII", sysid, DEFAULT_SEGMENT_SIZE, 8192)
    return page + bytes(DEFAULT_SEGMENT_SIZE - len(page))


def test_segment_header_matches_its_name() -> None:
    data = gzip.compress(_segment_bytes(1, 5), compresslevel=1)
    assert check_segment(data, Segment(1, 5), system_identifier=SYSID).ok


def test_segment_stored_under_the_wrong_name_is_caught() -> None:
    data = gzip.compress(_segment_bytes(1, 5), compresslevel=1)
    result = check_segment(data, Segment(1, 6), system_identifier=SYSID)
    assert not result.ok
    assert "header says timeline 1 at 0/5000000" in result.detail


def test_segment_of_another_cluster_is_caught() -> None:
    data = gzip.compress(_segment_bytes(1, 5, sysid=42), compresslevel=1)
    result = check_segment(data, Segment(1, 5), system_identifier=SYSID)
    assert not result.ok and "from cluster 42" in result.detail


def test_damaged_compressed_segment_is_caught() -> None:
    data = bytearray(gzip.compress(_segment_bytes(1, 5), compresslevel=1))
    data[-20:] = bytes(20)
    result = check_segment(bytes(data), Segment(1, 5), system_identifier=SYSID)
    assert not result.ok
    assert "decompress" in result.detail or "bytes, a segment is" in result.detail


@given(
    present=st.sets(st.integers(0, 40), min_size=1),
    oldest=st.one_of(st.none(), st.integers(0, 40)),
)
def test_gc_never_removes_wal_a_kept_base_backup_needs(present: set[int], oldest) -> None:
    files = archived(*(seg(1, n) + ".gz" for n in present), "00000002.history.gz")
    needed = None if oldest is None else Segment(1, oldest)
    doomed = removable(files, needed)
    if needed is None:
        assert doomed == []
    kept = [f for f in files if f not in doomed]
    assert any(f.kind == "history" for f in kept)
    for item in doomed:
        assert item.segment is not None and item.segment.number < oldest
    # The chain from the oldest kept base backup is exactly what it was before GC.
    if needed is not None:
        assert continuity(kept, needed) == continuity(files, needed)
