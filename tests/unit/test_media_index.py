"""The media engine's pure parts: the earlier-listing index and the replication lag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.engines.media import Entry, ListingIndex
from include.backup_dr.replication import measure_lag

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
keys = st.text(alphabet="ab/-.é0", min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, st.integers(0, 10**9)), st.lists(keys, max_size=20))
def test_index_finds_every_earlier_entry_and_counts_the_unseen(earlier, looked_up) -> None:
    entries = [Entry(k, "v1", f"etag-{k}", size, "ab" * 32) for k, size in earlier.items()]
    index = ListingIndex(entries)
    try:
        for key in looked_up:
            found = index.get(key)
            assert (found is None) == (key not in earlier)
            if found is not None:
                assert found == Entry(key, "v1", f"etag-{key}", earlier[key], "ab" * 32)
        assert index.unseen() == len(set(earlier) - set(looked_up))
    finally:
        index.close()


def test_lag_is_the_age_of_the_oldest_missing_change() -> None:
    assert measure_lag(NOW, None) == timedelta(0)
    assert measure_lag(NOW, NOW - timedelta(hours=3)) == timedelta(hours=3)
    # A clock a little ahead at the source never makes the lag negative.
    assert measure_lag(NOW, NOW + timedelta(seconds=2)) == timedelta(0)
