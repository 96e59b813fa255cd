"""The WAL prefetcher's pure parts (which files a recovery is served, in what order, how far
ahead) and the sh restore_command against a spool directory, without any service."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.pitr.wal_prefetch import (
    EXIT_FAILED,
    FAILED_NAME,
    PID_NAME,
    ArchivePlan,
    Fetch,
    Refusal,
    SpoolState,
    check_file,
    plan_archive,
    restore_script,
    schedule,
)
from include.backup_dr.wal_segments import (
    DEFAULT_SEGMENT_SIZE,
    Segment,
    classify,
    continuity,
    parse_history,
)
from local.backups import SYSTEM_IDENTIFIER, wal_segment

PREFIX = "wal/p/wals/"


def seg(timeline: int, number: int) -> str:
    return Segment(timeline, number).name()


def listing(*names: str):
    return [classify(f"{PREFIX}{name[:16]}/{name}", 100) for name in names]


def plan_of(files, start: Segment, histories=None) -> ArchivePlan:
    return plan_archive(
        files,
        start,
        histories or {},
        segment_size=DEFAULT_SEGMENT_SIZE,
        system_identifier=SYSTEM_IDENTIFIER,
        major_version=16,
    )


def test_a_whole_chain_is_served_in_replay_order_from_the_base_backups_start() -> None:
    plan = plan_of(listing(*(seg(1, n) + ".gz" for n in range(2, 9))), Segment(1, 4))
    assert plan.order == tuple(seg(1, n) for n in range(4, 9))
    assert plan.gaps == ()
    assert plan.newest == seg(1, 8)
    answer = plan.answer(seg(1, 5))
    assert isinstance(answer, Fetch) and answer.key.endswith(seg(1, 5) + ".gz")
    # Past the end, before the start, and history files never archived: not in the archive.
    for name in (seg(1, 9), seg(1, 3), "00000002.history"):
        assert plan.answer(name) == Refusal("missing", "not in the archive")


def test_a_gap_inside_the_span_is_refused_not_reported_missing() -> None:
    plan = plan_of(listing(*(seg(1, n) for n in (4, 5, 7, 8))), Segment(1, 4))
    assert plan.gaps == (seg(1, 6),)
    answer = plan.answer(seg(1, 6))
    assert isinstance(answer, Refusal) and answer.kind == "refused"
    assert "a gap" in answer.reason and seg(1, 8) in answer.reason
    assert plan.order == (seg(1, 4), seg(1, 5), seg(1, 7), seg(1, 8))


def test_across_a_switch_each_position_comes_from_its_owner_and_divergent_wal_never() -> None:
    """Timeline 2 forked inside segment 6: from 6 on it owns every position; timeline 1's
    segments 6 and 7 (written after the fork) and its .partial are never served."""
    history = parse_history(2, "1\t0/6000100\tno recovery target specified\n")
    files = listing(
        *(seg(1, n) + ".gz" for n in range(3, 8)),
        seg(1, 8) + ".partial.gz",
        *(seg(2, n) + ".gz" for n in range(6, 10)),
    )
    files += [classify(f"{PREFIX}00000002.history.gz", 50)]
    plan = plan_of(files, Segment(1, 4), {2: history})
    assert plan.order == (seg(1, 4), seg(1, 5), *(seg(2, n) for n in range(6, 10)))
    first_of_2 = plan.answer(seg(2, 6))
    assert isinstance(first_of_2, Fetch) and first_of_2.parent == 1  # begins with 1's pages
    later = plan.answer(seg(2, 7))
    assert isinstance(later, Fetch) and later.parent is None
    assert isinstance(plan.answer(seg(1, 6)), Refusal)
    history_fetch = plan.answer("00000002.history")
    assert isinstance(history_fetch, Fetch) and history_fetch.key.endswith(".history.gz")


@given(
    present=st.sets(st.integers(0, 40), max_size=30),
    start=st.integers(0, 20),
    switch=st.one_of(st.none(), st.integers(1, 40)),
)
def test_the_plan_serves_exactly_what_continuity_counts_and_names_its_gaps(
    present: set[int], start: int, switch: int | None
) -> None:
    """Whatever the listing (with or without a switch to timeline 2 at some position), the
    positions served and refused as gaps are those `wal.continuity` counts present and
    missing: the recovery and the integrity check read the archive by one rule."""
    names = [seg(1, n) for n in present]
    histories = {}
    if switch is not None:
        names += [seg(2, n) for n in present if n >= switch]
        histories = {2: parse_history(2, f"1\t0/{Segment(1, switch).start_lsn():X}\tr\n")}
    files = listing(*names)
    plan = plan_of(files, Segment(1, start), histories)
    chain = continuity(files, Segment(1, start), histories)
    assert set(plan.gaps) == {s.name() for s in chain.missing}
    served = [Segment.parse(name) for name in plan.order]
    assert [s.number for s in served] == sorted(s.number for s in served)
    if chain.newest is None:
        assert plan.order == () and plan.gaps == ()
    else:
        assert served[-1].number == chain.newest.number
        numbers = {s.number for s in served} | {Segment.parse(g).number for g in plan.gaps}
        assert numbers == set(range(start, chain.newest.number + 1))


def test_the_plan_survives_its_trip_through_a_file() -> None:
    history = parse_history(2, "1\t0/6000100\treason\n")
    files = [*listing(seg(1, 5), seg(2, 6), seg(2, 8)), classify(f"{PREFIX}00000002.history", 1)]
    plan = plan_of(files, Segment(1, 5), {2: history})
    again = ArchivePlan.from_json(plan.to_json())
    assert again == plan
    assert again.answer(seg(2, 7)) == plan.answer(seg(2, 7))


@given(
    total=st.integers(0, 40),
    depth=st.integers(1, 8),
    steps=st.lists(st.sampled_from(["finish", "consume", "tick"]), max_size=200),
)
def test_prefetch_stays_within_its_depth_and_fetches_each_segment_once_in_order(
    total: int, depth: int, steps: list[str]
) -> None:
    """A simulated recovery: fetches finish and PostgreSQL consumes in any interleaving; the
    schedule never has more than `depth` ready or in flight, starts fetches in replay order,
    and starts none twice."""
    order = [seg(1, n) for n in range(total)]
    cursor, done, in_flight, ready, started = 0, set(), [], [], []
    consumed = 0
    for step in [*steps, *["finish", "consume", "tick"] * (total + 1)]:
        picked, cursor = schedule(order, cursor, done, {*ready, *in_flight}, depth)
        in_flight += picked
        started += picked
        assert len(ready) + len(in_flight) <= depth
        if step == "finish" and in_flight:
            name = in_flight.pop(0)
            done.add(name)
            ready.append(name)
        elif step == "consume" and consumed < total and order[consumed] in ready:
            ready.remove(order[consumed])
            consumed += 1
    assert started == order  # each once, in order
    assert consumed == total


def test_spool_state_counts_only_what_postgresql_has_yet_to_reach() -> None:
    state = SpoolState.of(
        [
            seg(1, 3),  # re-fetched for a request served meanwhile: behind the frontier
            seg(1, 5),
            seg(1, 6),
            f"{seg(1, 7)}.wanted",
            f"{seg(1, 9)}.missing",
            f"{seg(1, 8)}.refused",
            "00000002.history",
            f".{seg(1, 7)}.tmp",
            PID_NAME,
        ]
    )
    assert state.ready == {seg(1, 3), seg(1, 5), seg(1, 6), "00000002.history"}
    assert state.wanted == {seg(1, 7)}
    index = {seg(1, n): n for n in range(10)}
    assert state.ahead(index, frontier=4) == {seg(1, 5), seg(1, 6)}


def test_only_a_segment_whose_header_matches_its_name_is_published() -> None:
    good = Fetch(seg(1, 5), "k", Segment(1, 5))
    plan = plan_of(listing(seg(1, 5)), Segment(1, 5))
    raw, detail = check_file(good, wal_segment(Segment(1, 5)), plan)
    assert raw is not None and len(raw) == DEFAULT_SEGMENT_SIZE, detail
    for body, why in (
        (wal_segment(Segment(1, 6)), "the name says timeline 1 at 0/5000000"),
        (wal_segment(Segment(1, 5), system_identifier=42), "from cluster 42"),
        (gzip.compress(b"short"), "bytes, a segment is"),
        (b"\x1f\x8b" + b"not gzip at all", "does not decompress"),
        (b"\xfd7zXZ\x00 an xz stream", "only gzip is read here"),
    ):
        raw, detail = check_file(good, body, plan)
        assert raw is None and why in detail, detail


def test_a_history_file_must_parse_to_be_served() -> None:
    item = Fetch("00000002.history", "k")
    plan = plan_of([], Segment(1, 1))
    text = b"1\t0/6000100\tno recovery target specified\n"
    assert check_file(item, gzip.compress(text), plan) == (text, "history file parses")
    raw, detail = check_file(item, b"garbage here\n", plan)
    assert raw is None and "not a timeline history file" in detail


# ---- the sh restore_command, against a spool directory -----------------------------------------


@pytest.fixture
def restore(tmp_path: Path):
    spool = tmp_path / "spool"
    spool.mkdir()
    command = restore_script(tmp_path / "restore-wal.sh", spool, wait_seconds=1)
    target = str(tmp_path / "pg_wal" / "RECOVERYXLOG")

    def call(name: str, pid: int | None = os.getpid()) -> subprocess.CompletedProcess[str]:
        """As PostgreSQL runs it: system(), i.e. sh -c with %f and %p replaced."""
        if pid is not None:
            (spool / PID_NAME).write_text(str(pid))
        return subprocess.run(
            ["sh", "-c", command.replace("%f", name).replace("%p", target)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    (tmp_path / "pg_wal").mkdir()
    return spool, call


def test_the_restore_command_moves_a_ready_file_into_place(restore, tmp_path: Path) -> None:
    spool, call = restore
    (spool / seg(1, 5)).write_bytes(b"segment")
    done = call(seg(1, 5))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"segment"
    assert list(spool.iterdir()) == [spool / PID_NAME]  # consumed: the spool stays bounded


def test_the_restore_command_ends_recovery_on_missing_and_refused_files(restore) -> None:
    spool, call = restore
    (spool / f"{seg(1, 9)}.missing").write_text("not in the archive")
    (spool / f"{seg(1, 6)}.refused").write_text("header says timeline 1 at 0/0")
    missing = call(seg(1, 9))
    assert (missing.returncode, missing.stderr) == (1, "")
    refused = call(seg(1, 6))
    assert refused.returncode == 1
    assert f"refused {seg(1, 6)}: header says timeline 1 at 0/0" in refused.stderr


def test_the_restore_command_fails_recovery_when_the_prefetcher_cannot_serve(restore) -> None:
    spool, call = restore
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = call(seg(1, 5), pid=dead.pid)
    assert gone.returncode == EXIT_FAILED and "is gone" in gone.stderr
    assert (spool / f"{seg(1, 5)}.wanted").exists() is False
    (spool / PID_NAME).unlink()
    never = call(seg(1, 5), pid=None)
    assert never.returncode == EXIT_FAILED and "(pid none) is gone" in never.stderr
    slow = call(seg(1, 5))  # alive, but never answers: a bounded wait, then failure
    assert slow.returncode == EXIT_FAILED and "within 1 s" in slow.stderr
    assert (spool / f"{seg(1, 5)}.wanted").exists()  # it did ask
    (spool / FAILED_NAME).write_text("StoreError: listing failed")
    failed = call(seg(1, 5))
    assert failed.returncode == EXIT_FAILED
    assert "prefetch failed: StoreError: listing failed" in failed.stderr
