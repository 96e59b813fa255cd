"""Point-in-time recovery's pure rules: the recoverable range, the base backup, the heartbeat."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.catalogue import Artifact, BackupId, Manifest, Verification
from include.backup_dr.drill.pitr import merge_validations
from include.backup_dr.pitr import (
    RecoveryRange,
    TargetOutOfRange,
    check_target,
    choose_base,
    choose_region,
    eligible_samples,
    parse_target_time,
    summarise_range,
)
from include.backup_dr.restore.errors import RestoreRefused
from include.backup_dr.wal_segments import Segment, classify, parse_history

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
REGION = "eu-central-1"
SERVER = "platform_primary"


def seg(number: int, timeline: int = 1) -> str:
    return Segment(timeline, number).name()


def base(day: int, start: int, end: int) -> tuple[BackupId, Manifest]:
    window = T0 + timedelta(days=day)
    backup = BackupId("platform", SERVER, "continuous", window)
    manifest = Manifest(
        backup=backup,
        region=REGION,
        artifact=Artifact(backup.key("data.tar"), 100, "ab" * 32),
        engine="wal",
        started_at=window,
        finished_at=window + timedelta(minutes=1),
        source={"start_wal": seg(start), "end_wal": seg(end), "segment_size": 16 * 1024 * 1024},
        tool_versions={},
        encryption={},
    )
    return backup, manifest


def archive(numbers: range | list[int], first_at: datetime = T0) -> list:
    """Segments archived one a minute from `first_at`."""
    return [
        (
            classify(f"wal/{SERVER}/wals/{seg(n)[:16]}/{seg(n)}.gz", 10),
            first_at + timedelta(minutes=i),
        )
        for i, n in enumerate(numbers)
    ]


def span_of(bases, files, verdicts=None) -> RecoveryRange:
    verdicts = verdicts or [Verification.PASSED] * len(bases)
    return summarise_range(
        REGION, SERVER, [(b, v, m) for (b, m), v in zip(bases, verdicts, strict=True)], files
    )


def test_range_runs_from_the_oldest_verified_base_to_the_newest_contiguous_segment() -> None:
    bases = [base(0, 2, 2), base(1, 10, 10)]
    span = span_of(bases, archive(range(2, 15)))
    assert span.oldest == T0 + timedelta(minutes=1)  # the first base backup's end
    assert span.newest == T0 + timedelta(minutes=12)  # segment 14 was the 13th archived
    assert span.newest_segment == seg(14)
    assert span.wal_ok and "no gap" in span.wal_detail
    assert span.problems() == []


def test_a_gap_stops_the_range_and_is_a_problem_of_the_region() -> None:
    bases = [base(0, 2, 2)]
    span = span_of(bases, archive([2, 3, 4, 6, 7]))
    assert span.newest == T0 + timedelta(minutes=2)  # segment 4: 5 is missing
    assert not span.wal_ok and seg(5) in span.wal_detail
    assert any("not continuous" in p for p in span.problems())


def test_unverified_or_unarchived_bases_do_not_count() -> None:
    bases = [base(0, 2, 3), base(1, 10, 10)]
    # The first base's end segment 3 is missing; the second failed its check.
    span = span_of(bases, archive([2, 10, 11]), [Verification.PASSED, Verification.FAILED])
    assert span.oldest is None and span.newest is None
    problems = " ".join(span.problems())
    assert "failed its integrity check" in problems and "no verified base backup" in problems


def test_out_of_range_times_are_refused_naming_the_range() -> None:
    span = span_of([base(0, 2, 2)], archive(range(2, 10)))
    now = T0 + timedelta(hours=1)
    with pytest.raises(TargetOutOfRange, match="older than the recovery window") as old:
        check_target(span, T0, now)
    message = str(old.value)
    assert span.oldest.isoformat() in message and span.newest.isoformat() in message
    assert "nothing restored" in message and REGION in message
    with pytest.raises(TargetOutOfRange, match="is in the future"):
        check_target(span, now + timedelta(seconds=5), now)
    with pytest.raises(TargetOutOfRange, match="after the newest archived WAL"):
        check_target(span, span.newest + timedelta(seconds=1), now)
    inside = T0 + timedelta(minutes=3)
    assert check_target(span, inside, now) == inside
    assert check_target(span, None, now) is None  # latest
    empty = span_of([], archive(range(2, 4)))
    with pytest.raises(TargetOutOfRange, match="no base backup"):
        check_target(empty, None, now)
    assert issubclass(TargetOutOfRange, RestoreRefused)


def test_the_newest_base_finished_before_the_target_is_chosen() -> None:
    bases = [base(0, 2, 2), base(0, 5, 5)]  # the second finishes at the same minute + 0
    bases[1] = (bases[1][0], _finished(bases[1][1], T0 + timedelta(minutes=4)))
    span = span_of(bases, archive(range(2, 12)))
    assert choose_base(span, T0 + timedelta(minutes=3)).start_segment == Segment(1, 2)
    assert choose_base(span, T0 + timedelta(minutes=5)).start_segment == Segment(1, 5)
    assert choose_base(span, None).start_segment == Segment(1, 5)


def _finished(manifest: Manifest, when: datetime) -> Manifest:
    return dataclasses.replace(manifest, finished_at=when)


def test_target_time_parsing() -> None:
    assert parse_target_time("latest") is None and parse_target_time(" LATEST ") is None
    assert parse_target_time("2026-11-20T03:04:05Z") == datetime(2026, 11, 20, 3, 4, 5, tzinfo=UTC)
    assert parse_target_time("2026-11-20T03:04:05").tzinfo == UTC  # naive means UTC
    with pytest.raises(RestoreRefused, match="neither an ISO 8601 time nor 'latest'"):
        parse_target_time("yesterday")


def test_the_drill_region_unless_its_newest_evidence_failed() -> None:
    good = span_of([base(0, 2, 2)], archive(range(2, 6)))
    bad = span_of(
        [base(0, 2, 2), base(1, 3, 3)],
        archive(range(2, 6)),
        [Verification.PASSED, Verification.FAILED],
    )
    bad = dataclasses.replace(bad, region="eu-west-1")
    chosen, why = choose_region(good, bad, "the DR path")
    assert chosen is good and "the DR path" in why
    chosen, why = choose_region(bad, good, "the DR path")
    assert chosen is good
    assert "instead of eu-west-1" in why and "failed its integrity check" in why


def heartbeats(start: datetime, count: int) -> list[dict]:
    return [
        {"seq": 100 + i, "written_at": (start + timedelta(seconds=i)).isoformat(), "lag_ms": 2}
        for i in range(count)
    ]


def test_samples_need_archived_wal_a_following_heartbeat_and_the_range() -> None:
    span = span_of([base(0, 2, 2)], archive(range(2, 10)))  # newest: T0 + 7 min, segment 9
    inside = T0 + timedelta(minutes=3)
    record = {"samples": heartbeats(inside, 5), "end_segment": seg(9)}
    samples = eligible_samples(record, "k", span)
    assert [s.seq for s in samples] == [100, 101, 102, 103]  # the last has no successor
    assert samples[0].target_time == inside + timedelta(milliseconds=500)
    assert all(s.next_written_at > s.target_time for s in samples)
    # WAL of the run not archived yet: nothing.
    assert eligible_samples({**record, "end_segment": seg(10)}, "k", span) == []
    # Before the first base backup ended, or after the newest archived WAL: nothing.
    early = {"samples": heartbeats(T0, 3), "end_segment": seg(3)}
    assert eligible_samples(early, "k", span) == []
    late = {"samples": heartbeats(span.newest, 3), "end_segment": seg(9)}
    assert eligible_samples(late, "k", span) == []
    # Two heartbeats within half a second: aiming between them proves nothing.
    close = [
        {"seq": 1, "written_at": inside.isoformat()},
        {"seq": 2, "written_at": (inside + timedelta(milliseconds=300)).isoformat()},
    ]
    assert eligible_samples({"samples": close, "end_segment": seg(4)}, "k", span) == []
    chosen = random.Random(7).choice(samples)
    assert chosen in samples


def test_validations_of_several_databases_merge_and_name_their_database() -> None:
    one = {
        "ok": True,
        "seconds": 1.0,
        "evaluated": 1,
        "failed": 0,
        "results": [{"suite": "manifest", "success": True}],
    }
    two = {
        "ok": False,
        "seconds": 2.0,
        "evaluated": 1,
        "failed": 1,
        "results": [{"suite": "business rules (b)", "success": False}],
    }
    merged = merge_validations({"a": one, "b": two})
    assert not merged["ok"] and merged["evaluated"] == 2 and merged["failed"] == 1
    assert merged["suites"] == ["business rules (b) [b]", "manifest [a]"]
    assert merged["seconds"] == 3.0


def test_a_permanent_gap_leaves_a_hole_and_later_bases_stay_usable() -> None:
    # Segment 6 is lost for good; a base backup taken after the gap starts at 10.
    bases = [base(0, 2, 2), base(0, 10, 10)]
    bases[1] = (bases[1][0], _finished(bases[1][1], T0 + timedelta(minutes=8)))
    span = span_of(bases, archive([2, 3, 4, 5, 7, 8, 9, 10, 11, 12]))
    assert [b.usable for b in span.bases] == [True, True]
    assert span.intervals == (
        (T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)),  # up to segment 5
        (T0 + timedelta(minutes=8), T0 + timedelta(minutes=9)),  # from the second base on
    )
    assert span.holes == [(T0 + timedelta(minutes=3), T0 + timedelta(minutes=8))]
    assert not span.wal_ok and "1 hole(s)" in span.wal_detail
    assert "NOT to" in span.describe() and "a hole" in span.describe()
    now = T0 + timedelta(hours=1)
    with pytest.raises(TargetOutOfRange, match="falls in a hole"):
        check_target(span, T0 + timedelta(minutes=5), now)
    inside = T0 + timedelta(minutes=2)
    assert check_target(span, inside, now) == inside
    assert choose_base(span, inside).start_segment == Segment(1, 2)
    assert check_target(span, None, now) is None  # the newest base's WAL runs to the end
    assert choose_base(span, None).start_segment == Segment(1, 10)


def test_latest_refuses_to_stop_silently_at_a_gap() -> None:
    span = span_of([base(0, 2, 2)], archive([2, 3, 4, 6, 7]))
    with pytest.raises(TargetOutOfRange, match="'latest' would stop at a gap") as refused:
        check_target(span, None, T0 + timedelta(hours=1))
    message = str(refused.value)
    assert seg(5) in message and span.newest.isoformat() in message
    assert "nothing restored" in message


def test_recovery_reaches_both_sides_of_a_failover() -> None:
    # Promoted at segment 6 (timeline 2); the old primary's 6 and 7 are divergent.
    files = archive(range(2, 8))
    files += [
        (
            classify(f"wal/{SERVER}/wals/{seg(n, 2)[:16]}/{seg(n, 2)}.gz", 10),
            T0 + timedelta(minutes=n + 1),
        )
        for n in range(6, 10)
    ]
    files.append((classify(f"wal/{SERVER}/wals/00000002.history.gz", 10), T0))
    history = {2: parse_history(2, "1\t0/6000000\tno recovery target specified\n")}
    bases = [base(0, 2, 2)]
    span = summarise_range(
        REGION, SERVER, [(b, Verification.PASSED, m) for b, m in bases], files, history
    )
    assert span.wal_ok, span.wal_detail
    assert span.bases[0].chain_end == seg(9, 2)
    assert span.covers(T0 + timedelta(minutes=3)) and span.covers(T0 + timedelta(minutes=9))
    assert span.newest == T0 + timedelta(minutes=10)


def test_a_base_whose_wal_so_far_ends_before_it_committed_still_recovers_to_its_end() -> None:
    # The snapshot commits once its end segment is archived: that segment is older than the
    # manifest. Until more WAL arrives, the base recovers to its own end, and 'latest' works.
    fresh = base(0, 5, 5)
    fresh = (fresh[0], _finished(fresh[1], T0 + timedelta(minutes=30)))
    span = span_of([fresh], archive([5], T0 + timedelta(minutes=29)))
    assert span.oldest == span.newest == T0 + timedelta(minutes=29)
    assert span.holes == [] and span.wal_ok
    assert check_target(span, None, T0 + timedelta(hours=1)) is None
    assert choose_base(span, None).start_segment == Segment(1, 5)
