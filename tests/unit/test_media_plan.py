"""Media blob garbage collection and listings: pure rules that must always hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.engines.media.listing import Entry, parse_listing
from include.backup_dr.engines.media.plan import BlobState, blob_action, plan_copy, plan_gc
from include.backup_dr.engines.media.sweep import _scratch_db, _StoredSet

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
    plan = list(plan_gc(referenced, blobs.items(), NOW, GRACE))
    assert [sha for sha, _, _ in plan] == list(blobs)  # one verdict per blob, as listed
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
    plan = {sha: (d, reason) for sha, d, reason in plan_gc({"cc"}, blobs.items(), NOW, GRACE)}
    assert plan["aa"][0] is True
    assert plan["bb"] == (False, "unreferenced but within grace: a snapshot may be writing")
    assert plan["cc"] == (False, "referenced by a kept snapshot")


@settings(max_examples=100, deadline=None)
@given(st.lists(shas, max_size=40), st.lists(shas, max_size=20))
def test_marks_on_disk_behave_as_a_set(added, looked_up) -> None:
    """GC keeps its marks in a scratch SQLite file, not in memory; plan_gc reads them the same."""
    with _scratch_db("test-marks-") as db:
        marked = _StoredSet(db, "marked")
        marked.update(added[::2])
        for sha in added[1::2]:
            marked.add(sha)
        assert len(marked) == len(set(added))
        for sha in looked_up + added:
            assert (sha in marked) == (sha in set(added))
        blobs = [(sha, NOW - 2 * GRACE) for sha in looked_up]
        assert list(plan_gc(marked, blobs, NOW, GRACE)) == list(
            plan_gc(set(added), blobs, NOW, GRACE)
        )


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


#: One step of a history: a snapshot into the primary region or a copy of one into the
#: secondary (the blobs it refers to, the hours it runs, always under half the grace, and whether
#: a prune of that region runs meanwhile from a listing taken before it started), a prune of both
#: regions after some hours, or a wait.
#: Few blob names, so that histories meet the same content again (what the race needs).
contents = st.sampled_from(["aaaa0000", "bbbb1111", "cccc2222", "dddd3333"])
steps = st.one_of(
    st.tuples(
        st.sampled_from(["snapshot", "copy"]),
        st.sets(contents, max_size=3),
        st.integers(0, 2),
        st.booleans(),
    ),
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
    for sha, delete, _ in plan_gc(referenced, listed.items(), now, GRACE):
        if delete:
            versions[sha] = [w for w in versions.get(sha, []) if w >= now - GRACE]
    return kept


def _listing(versions):
    return {sha: max(written) for sha, written in versions.items() if written}


def _store(versions, blobs, now, path):
    """Write what the snapshot (one HEAD per blob) or copy_contents (one listing) decides."""
    found = {sha: BlobState(1, written) for sha, written in _listing(versions).items()}
    if path == "snapshot":  # MediaSnapshot._new_entry
        actions = {sha: blob_action(found.get(sha), sha, 1, now, GRACE) for sha in blobs}
    else:  # MediaEngine.copy_contents
        actions = plan_copy(dict.fromkeys(blobs, 1), found, now, GRACE)
    for sha, action in actions.items():
        if action != "keep":  # a copy or a refresh: a fresh version
            versions.setdefault(sha, []).append(now)


@settings(max_examples=500, deadline=None)
@given(st.lists(steps, max_size=30))
def test_random_histories_never_lose_a_blob_a_kept_or_running_snapshot_refers_to(
    history,
) -> None:
    now = NOW
    regions = {"snapshot": ({}, []), "copy": ({}, [])}  # primary, secondary: versions and kept
    kept: dict[str, list[tuple[datetime, set[str]]]] = {"snapshot": [], "copy": []}
    for step in history:
        if step[0] == "wait":
            now += timedelta(hours=step[1])
        elif step[0] == "prune":
            now += timedelta(hours=step[1])
            for path, (versions, _) in regions.items():
                kept[path] = _prune(kept[path], versions, _listing(versions), now)
        else:
            path, blobs, hours, raced = step
            versions = regions[path][0]
            stale = _listing(versions)
            _store(versions, blobs, now, path)
            finish = now + timedelta(hours=hours)
            if raced:
                kept[path] = _prune(kept[path], versions, stale, finish)
            for sha in blobs:
                assert versions.get(sha), f"blob {sha} of a running {path} was swept"
            kept[path].append((now, set(blobs)))
            now = finish
        for path, (versions, _) in regions.items():
            for _, blobs in kept[path]:
                for sha in blobs:
                    assert versions.get(sha), f"blob {sha} of a kept {path} was swept"
