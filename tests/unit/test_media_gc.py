"""Media blob garbage collection and listings: pure rules that must always hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.engines.media import Entry, parse_listing, plan_gc

NOW = datetime(2026, 11, 27, tzinfo=UTC)
GRACE = timedelta(hours=6)
shas = st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(shas, st.integers(0, 30 * 24).map(lambda h: NOW - timedelta(hours=h))),
    st.lists(st.lists(shas, max_size=10), max_size=6),
)
def test_gc_never_removes_a_blob_a_kept_snapshot_references(blobs, snapshots) -> None:
    referenced = {sha for snapshot in snapshots for sha in snapshot}
    plan = plan_gc(referenced, blobs, NOW, GRACE)
    assert {sha for sha, _, _ in plan} == set(blobs)
    for sha, delete, reason in plan:
        assert reason
        if delete:
            assert sha not in referenced
            assert NOW - blobs[sha] > GRACE


def test_gc_sweeps_only_old_unreferenced_blobs() -> None:
    blobs = {
        "aa": NOW - timedelta(days=2),
        "bb": NOW - timedelta(hours=1),
        "cc": NOW - timedelta(days=9),
    }
    plan = {sha: (delete, reason) for sha, delete, reason in plan_gc({"cc"}, blobs, NOW, GRACE)}
    assert plan["aa"][0] is True
    assert plan["bb"] == (False, "unreferenced but within grace: a snapshot may be writing")
    assert plan["cc"] == (False, "referenced by a kept snapshot")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.builds(Entry, st.text(min_size=1), st.text(), st.text(), st.integers(0, 10**12), shas)
    ),
    st.integers(1, 50),
)
def test_listing_round_trips_across_any_chunking(entries, chunk) -> None:
    data = b"".join(entry.line() for entry in entries)
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    assert list(parse_listing(chunks)) == entries
