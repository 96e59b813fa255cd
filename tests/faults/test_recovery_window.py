"""The continuous tier's 7-day recovery window against the real S3 servers: it never shrinks
silently. A backfilled base backup does not displace the window's anchor; a permanent WAL gap
pages once, naming the hole, while the base backups after it verify and `latest` refuses to
stop at the gap; the anchor stays locked while prune keeps it; `lock_wal` works through any
archive in bounded runs; and one region down never stops the other region's locking or the
monitor's evidence there.

Base backups and WAL here are written straight into the store (`local.backups`), under a
server name of their own: the stack's real server keeps archiving its own WAL meanwhile.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.backup.gc import collect_garbage
from include.backup_dr.backup.steps import prune
from include.backup_dr.catalogue import MANIFEST_NAME, BackupId
from include.backup_dr.engines.wal import LOCKED_NAME, WalEngine, lock_archive
from include.backup_dr.pitr import TargetOutOfRange, check_target, recovery_range
from include.backup_dr.stores import Stores
from include.backup_dr.wal_segments import ARCHIVE_PREFIX, Segment, archive_prefix
from local.backups import archive_segment, commit_base_backup, wal_segment
from tests.faults.harness import alerts_sent, bring_back, kill, open_alert_path
from tests.stack import empty_store, run_dag

pytestmark = pytest.mark.integration

SERVER = "window_primary"
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


def _own_server(data: dict) -> None:
    """The stack's server under another name: its WAL prefix is this test's alone."""
    data["servers"][0]["name"] = SERVER
    for target in data["targets"]:
        if target.get("server") == "platform_primary":
            target["server"] = SERVER


def _locked(data: dict) -> None:
    _own_server(data)
    _lock_regions(data)


def _lock_regions(data: dict) -> None:
    for role in ("primary", "secondary"):
        data["regions"][role]["object_lock"] = {
            "mode": "governance",
            "margin": "1d",
            "bypass_conn_id": f"s3_{role}_break_glass",
        }


def base(day_ago: float, start: int, *, label_days_ago: float | None = None) -> tuple:
    """A base backup taken `day_ago` days ago (labelled then, unless a backfill says otherwise),
    starting and ending in segment `start`."""
    taken = NOW - day_ago * DAY
    label = NOW - (label_days_ago if label_days_ago is not None else day_ago) * DAY
    window = label.replace(second=0)
    return BackupId("platform", SERVER, "continuous", window), Segment(1, start), taken


def write(stores, bases, segments, *, body=lambda s: b"wal") -> None:
    for store in stores:
        for backup, start, taken in bases:
            commit_base_backup(store, backup, start, start, finished_at=taken)
        for number in segments:
            segment = Segment(1, number)
            archive_segment(store, SERVER, segment, body(segment))


def test_a_backfilled_base_backup_then_prune_and_gc_keep_the_7_day_window(
    stores, policy_file
) -> None:
    policy = policy_file(_own_server)
    # Daily bases 9.5 .. 0.5 days old, a WAL segment every 6 hours between them.
    daily = [base(9.5 - i, 4 * i) for i in range(10)]
    # A backfill an hour ago re-took the window of 7.2 days ago: fresh data under an old label.
    backfilled = base(1 / 24, 40, label_days_ago=7.2)
    write(stores, [*daily, backfilled], range(0, 42))
    before = {s.region.name: recovery_range(policy, s, SERVER) for s in stores}
    assert all(r.oldest <= NOW - 7 * DAY for r in before.values()), before
    time.sleep(2)  # prune deletes only what was written a whole second before its listing
    prune(policy, stores, SERVER, "continuous", now=NOW)
    collect_garbage(policy, stores, "platform")

    anchor = daily[2][0]  # taken 7.5 days ago: the newest base older than the window
    for store in stores:
        assert store.manifest(anchor) is not None, f"the anchor was pruned in {store}"
        after = recovery_range(policy, store, SERVER)
        assert after.oldest <= NOW - 7 * DAY, after.describe()
        assert after.wal_ok, after.wal_detail
        # What is older than the anchor went: prune and GC still do their job.
        assert store.manifest(daily[0][0]) is None
        assert not any(k.endswith(Segment(1, 7).name() + ".gz") for k in _keys(store))


def test_a_permanent_gap_pages_once_later_bases_verify_and_latest_does_not_stop_there(
    stores, policy_file, smtp_sink
) -> None:
    policy = policy_file(_own_server)
    # Segment 6 is lost for good in both regions. A base backup taken after segment 5 was
    # archived starts at 10: between the two lies a hole no replay can cross.
    bodies = {n: wal_segment(Segment(1, n)) for n in range(2, 15) if n != 6}
    write(stores, [base(0.5, 2)], range(2, 6), body=lambda s: bodies[s.number])
    time.sleep(2)  # S3 stamps to the second: the later base finishes after segment 5 arrived
    now = datetime.now(UTC)
    later = (
        BackupId("platform", SERVER, "continuous", now.replace(second=0, microsecond=0)),
        Segment(1, 10),
        now,
    )
    write(stores, [later], ())
    time.sleep(1.1)  # its WAL arrives after it finished, as the snapshot step makes sure
    write(stores, [], range(7, 15), body=lambda s: bodies[s.number])
    for store in stores:
        manifest = store.manifest(later[0])
        checks = {c.name: c for c in WalEngine().check_contents(store, manifest, NOW)}
        assert checks["wal_continuity"].ok, checks["wal_continuity"].detail
        assert checks["wal_segments"].ok, checks["wal_segments"].detail
        span = recovery_range(policy, store, SERVER)
        assert [b.usable for b in span.bases] == [True, True]
        assert len(span.holes) == 1, span.describe()
        assert span.bases[0].gap_at == Segment(1, 6).name()
        assert check_target(span, None) is None  # the newest base's WAL runs to the end

    from include.backup_dr.monitor import record

    open_alert_path(smtp_sink)
    first = record.run(policy, list(stores), {"dag_id": "backup_compliance", "run_id": "t1"})
    window_checks = [c for c in first["checks"] if c["kind"] == "recovery_window"]
    assert {c["status"] for c in window_checks} == {"CRITICAL"}, window_checks
    assert all("hole: no recovery to" in c["detail"] for c in window_checks)
    assert all(Segment(1, 6).name() in c["detail"] for c in window_checks)
    pages = alerts_sent(smtp_sink)
    paged = [p for p in pages if f"recovery_window:{SERVER}@eu-west-1" in p]
    assert len(paged) == 1 and Segment(1, 6).name() in paged[0], pages
    record.run(policy, list(stores), {"dag_id": "backup_compliance", "run_id": "t2"})
    assert alerts_sent(smtp_sink) == pages, "the same hole paged twice"

    # Without the later base, 'latest' would stop at the gap: refused, naming the newest second.
    for store in stores:
        store.delete_all_versions(later[0].prefix)
        span = recovery_range(policy, store, SERVER)
        with pytest.raises(TargetOutOfRange, match="'latest' would stop at a gap") as refused:
            check_target(span, None)
        assert Segment(1, 6).name() in str(refused.value)


def test_prune_keeps_the_anchor_and_its_wal_locked_while_it_keeps_them(stores, policy_file) -> None:
    policy_file(_own_server)
    daily = [base(9.5 - i, 4 * i) for i in range(10)]
    write(stores, daily, range(0, 38))  # written without locks: as if locked long ago, ended
    policy = policy_file(_locked)
    locked = Stores.from_policy(policy)
    time.sleep(2)  # prune deletes only what was written a whole second before its listing
    try:
        anchor, following = daily[2], daily[3]
        result = prune(policy, locked, SERVER, "continuous", now=NOW)
        assert {r["region"] for r in result["locks_extended"]} == {"eu-west-1", "eu-central-1"}
        hold = following[2] + 7 * DAY + DAY  # the next base's time + the window + the margin
        for store in locked:
            assert store.manifest(daily[1][0]) is None  # older than the anchor: pruned
            until = store.locked_until(anchor[0].key(MANIFEST_NAME))
            assert until is not None and until >= hold - timedelta(seconds=1), until
            for number in range(anchor[1].number, following[1].number):
                until = store.locked_until(_segment_key(number))
                assert until is not None and until >= hold - timedelta(seconds=1), number
            assert store.locked_until(_segment_key(3)) is None  # GC's to take, not held
        again = prune(policy, locked, SERVER, "continuous", now=NOW)
        assert all(r["wal_ranges"] == 0 and r["bases"] == 0 for r in again["locks_extended"])
    finally:
        _unlock_all(policy)


def test_lock_wal_works_through_5000_files_in_bounded_runs_and_never_asks_for_a_past_date(
    stores, policy_file
) -> None:
    policy = policy_file(_locked)
    store = Stores.from_policy(policy).primary
    try:
        keys = [f"{archive_prefix(SERVER)}0000000100000000/{n:024X}.gz" for n in range(5000)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: store.put_bytes(k, b"x", "application/gzip"), keys))
        store.put_bytes(f"{archive_prefix(SERVER)}00000002.history", b"1\t0/0\t\n", "text/plain")
        # Thirty days on, everything is past the 7-day window: nothing is locked, nothing fails.
        later = lock_archive(store, SERVER, "platform", now=NOW + 30 * DAY)
        assert later["locked"] == 0 and later["past_retention"] == 5001 and not later["more"]
        store.delete_all_versions(f"{ARCHIVE_PREFIX}/{SERVER}/{LOCKED_NAME}")

        runs = []
        for _ in range(50):
            runs.append(lock_archive(store, SERVER, "platform", budget=timedelta(seconds=2)))
            if not runs[-1]["more"]:
                break
        assert len(runs) > 1, "a 2 s budget cannot lock 5,000 files at once"
        assert not runs[-1]["more"]
        assert sum(r["locked"] for r in runs) == 5001
        for key in (*keys[::499], keys[-1]):
            assert store.locked_until(key) is not None, key
    finally:
        _unlock_all(policy)


def test_the_primary_region_down_never_stops_the_secondary_locking_or_the_monitor_evidence(
    stores, policy_file, smtp_sink
) -> None:
    from tests.integration.helpers import switch_wal

    policy = policy_file(_lock_regions)  # the stack's own server, whose WAL is archived live
    locked = Stores.from_policy(policy)
    name = switch_wal()
    archived = f"{archive_prefix('platform_primary')}{name[:16]}/{name}"
    deadline = time.monotonic() + 60
    while not any(o.key.startswith(archived) for o in locked.secondary.list_objects(archived)):
        assert time.monotonic() < deadline, f"{name} never reached the secondary"
        time.sleep(0.5)
    try:
        kill("s3-primary")
        run = run_dag(
            "platform_continuous_monitor", NOW + timedelta(seconds=7), {"duration_seconds": 3}
        )
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        # The primary's share fails red; the secondary's locking and evidence are done.
        assert states["lock_wal"] == "failed" and states["measure"] == "failed", states
        assert list(locked.secondary.list_objects("evidence/continuous_monitor/"))
        marker = locked.secondary.get_json(f"{ARCHIVE_PREFIX}/platform_primary/{LOCKED_NAME}")
        assert marker is not None and marker["last"] >= archived
        key = next(o.key for o in locked.secondary.list_objects(archived))
        assert locked.secondary.locked_until(key) is not None
    finally:
        bring_back()
        _unlock_all(policy)


def _segment_key(number: int) -> str:
    name = Segment(1, number).name()
    return f"{archive_prefix(SERVER)}{name[:16]}/{name}.gz"


def _keys(store) -> list[str]:
    return [o.key for o in store.list_objects(archive_prefix(SERVER))]


def _unlock_all(policy) -> None:
    """Every locked object removed through the break-glass connections (the only way to)."""
    from include.backup_dr.immutability import LockRule
    from include.backup_dr.store import ObjectStore

    for region in policy.iter_regions():
        if region.object_lock is None:
            continue
        glass = ObjectStore.for_break_glass(region, LockRule.for_region(policy, region))
        empty_store(glass)
