"""The WAL archive rules: names, continuity, the segment header check and what GC may remove."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.wal_segments import (
    DEFAULT_SEGMENT_SIZE,
    Segment,
    check_segment,
    classify,
    continuity,
    format_lsn,
    parse_history,
    parse_lsn,
    removable,
    timeline_path,
)
from local.backups import SYSTEM_IDENTIFIER, wal_segment

PREFIX = "wal/platform_primary/wals/0000000100000000/"


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


def test_segment_header_matches_its_name() -> None:
    data = wal_segment(Segment(1, 5))
    assert check_segment(data, Segment(1, 5), system_identifier=SYSTEM_IDENTIFIER).ok


def test_segment_stored_under_the_wrong_name_is_caught() -> None:
    data = wal_segment(Segment(1, 5))
    result = check_segment(data, Segment(1, 6), system_identifier=SYSTEM_IDENTIFIER)
    assert not result.ok
    assert "header says timeline 1 at 0/5000000" in result.detail


def test_segment_of_another_cluster_is_caught() -> None:
    data = wal_segment(Segment(1, 5), system_identifier=42)
    result = check_segment(data, Segment(1, 5), system_identifier=SYSTEM_IDENTIFIER)
    assert not result.ok and "from cluster 42" in result.detail


def test_damaged_compressed_segment_is_caught() -> None:
    data = bytearray(wal_segment(Segment(1, 5)))
    data[-20:] = bytes(20)
    result = check_segment(bytes(data), Segment(1, 5), system_identifier=SYSTEM_IDENTIFIER)
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


# --- timelines: a position counts only on the timeline that owns it --------------------------

HISTORY_2_AT_6 = "1\t0/6000000\tno recovery target specified\n"


def histories(**texts: str):
    return {
        int(name.removeprefix("tl"), 16): parse_history(int(name.removeprefix("tl"), 16), text)
        for name, text in texts.items()
    }


def test_history_file_is_read_as_the_server_writes_it() -> None:
    text = "1\t0/6000000\tno recovery target specified\n\n2\t0/A0000A0\tbefore 2026-12-01\n"
    history = parse_history(3, text)
    assert history.ancestors == ((1, 0x6000000), (2, 0xA0000A0))
    path = timeline_path(3, {3: history}, DEFAULT_SEGMENT_SIZE)
    assert [path.owner(n) for n in (5, 6, 9, 10, 11)] == [1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="is not 'timeline<TAB>LSN<TAB>reason'"):
        parse_history(2, "1 nonsense\n")


def test_a_divergent_old_timeline_segment_cannot_hide_a_missing_new_one() -> None:
    # Promoted at segment 6; the old primary went on writing 6..9 on timeline 1 (divergent).
    # Timeline 2 lacks segment 7: recovery past it is impossible, whatever timeline 1 holds.
    names = [seg(1, n) + ".gz" for n in range(4, 10)] + [seg(2, 6) + ".gz", seg(2, 8) + ".gz"]
    chain = continuity(
        archived(*names, "00000002.history.gz"), Segment(1, 4), histories(tl2=HISTORY_2_AT_6)
    )
    assert not chain.ok
    assert chain.missing == (Segment(2, 7),)
    assert chain.reach == Segment(2, 6)
    assert chain.divergent == tuple(Segment(1, n) for n in range(6, 10))
    assert "4 divergent segment(s)" in chain.describe()


def test_the_history_file_not_the_listing_says_where_the_fork_is() -> None:
    # Timeline 2 began at segment 6, but its segment 6 never reached the archive.
    names = [seg(1, 4) + ".gz", seg(1, 5) + ".gz", seg(2, 7) + ".gz"]
    read = continuity(
        archived(*names, "00000002.history.gz"), Segment(1, 4), histories(tl2=HISTORY_2_AT_6)
    )
    assert read.missing == (Segment(2, 6),) and read.reach == Segment(1, 5)


def test_a_base_backup_on_the_old_timeline_after_the_fork_follows_its_own_branch() -> None:
    # A base taken from the old primary after the fork is not on timeline 2's path.
    names = [seg(1, n) + ".gz" for n in range(4, 10)] + [seg(2, n) + ".gz" for n in range(6, 9)]
    chain = continuity(
        archived(*names, "00000002.history.gz"), Segment(1, 7), histories(tl2=HISTORY_2_AT_6)
    )
    assert chain.ok and chain.newest == Segment(1, 9)
    assert set(chain.divergent) == {Segment(2, 7), Segment(2, 8)}


@given(
    fork=st.integers(2, 30),
    end=st.integers(31, 45),
    old=st.sets(st.integers(0, 45)),
    dropped=st.one_of(st.none(), st.integers(0, 45)),
)
def test_only_the_owning_timeline_counts_at_every_position(
    fork: int, end: int, old: set[int], dropped: int | None
) -> None:
    """Whatever the old timeline holds after the fork, the chain is whole exactly when the new
    timeline holds every position it owns."""
    owned = [Segment(1, n) for n in range(0, fork)] + [Segment(2, n) for n in range(fork, end)]
    kept = [s for s in owned if s.number != dropped]
    extra = [Segment(1, n) for n in old if n >= fork]
    files = archived(*(s.name() + ".gz" for s in kept + extra), "00000002.history.gz")
    history = {2: parse_history(2, f"1\t{format_lsn(fork * DEFAULT_SEGMENT_SIZE)}\tpromoted\n")}
    chain = continuity(files, Segment(1, 0), history)
    lost = dropped is not None and dropped < end - 1  # the newest one missing is no gap
    assert chain.ok is (not lost)
    if lost:
        assert chain.missing == (Segment(1 if dropped < fork else 2, dropped),)
    assert all(s.timeline == 1 and s.number >= fork for s in chain.divergent)


def test_a_new_timelines_first_segment_may_carry_its_parents_pages() -> None:
    # On promotion PostgreSQL starts timeline 2 with a copy of timeline 1's segment up to the
    # switch point: its first page header still says timeline 1.
    data = wal_segment(Segment(1, 6))
    assert not check_segment(data, Segment(2, 6), system_identifier=SYSTEM_IDENTIFIER).ok
    forked = check_segment(data, Segment(2, 6), system_identifier=SYSTEM_IDENTIFIER, parent=1)
    assert forked.ok, forked.detail
    # Only the parent: any other timeline is still a segment under the wrong name.
    other = wal_segment(Segment(3, 6))
    assert not check_segment(other, Segment(2, 6), system_identifier=SYSTEM_IDENTIFIER, parent=1).ok
