"""Media blob garbage collection and listings: pure rules that must always hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.engines.media import Entry, needs_refresh, parse_listing, plan_gc

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


#: One step of a history: a snapshot (the blobs it refers to, the hours it runs, always under
#: half the grace, and whether a prune runs meanwhile from a listing taken before it started),
#: a prune after some hours, or a wait.
steps = st.one_of(
    st.tuples(st.just("snapshot"), st.sets(shas, max_size=5), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("prune"), st.integers(1, 72)),
    st.tuples(st.just("wait"), st.integers(1, 72)),
)
RETENTION = timedelta(days=2)


def _prune(kept, versions, listed, now):
    """Retention (the newest snapshot is always kept), then GC as collect_garbage runs it: plan
    from a listing that may be stale, delete only versions older than the grace that exist."""
    newest = max((t for t, _ in kept), default=None)
    kept = [(t, s) for t, s in kept if now - t <= RETENTION or t == newest]
    referenced = {sha for _, blobs in kept for sha in blobs}
    for sha, delete, _ in plan_gc(referenced, listed, now, GRACE):
        if delete:
            versions[sha] = [w for w in versions.get(sha, []) if w >= now - GRACE]
    return kept


def _listing(versions):
    return {sha: max(written) for sha, written in versions.items() if written}


@settings(max_examples=500, deadline=None)
@given(st.lists(steps, max_size=30))
def test_random_histories_never_lose_a_blob_a_kept_or_running_snapshot_refers_to(
    history,
) -> None:
    now = NOW
    versions: dict[str, list[datetime]] = {}  # blob -> when each of its versions was written
    kept: list[tuple[datetime, set[str]]] = []
    for step in history:
        if step[0] == "wait":
            now += timedelta(hours=step[1])
        elif step[0] == "prune":
            now += timedelta(hours=step[1])
            kept = _prune(kept, versions, _listing(versions), now)
        else:
            _, blobs, hours, raced = step
            stale = _listing(versions)
            for sha in blobs:  # MediaSnapshot._new_entry: copy, or refresh what is old
                if not versions.get(sha):
                    versions[sha] = [now]
                elif needs_refresh(max(versions[sha]), now, GRACE):
                    versions[sha].append(now)
            finish = now + timedelta(hours=hours)
            if raced:
                kept = _prune(kept, versions, stale, finish)
            for sha in blobs:
                assert versions.get(sha), f"blob {sha} of a running snapshot was swept"
            kept.append((now, set(blobs)))
            now = finish
        for _, blobs in kept:
            for sha in blobs:
                assert versions.get(sha), f"blob {sha} of a kept snapshot was swept"
