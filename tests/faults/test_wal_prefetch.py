"""Point-in-time recovery when the WAL it is served goes wrong, against the real stack: a
segment deleted from the archive after the recovery range was read, a segment whose header
lies, and the prefetcher killed mid-recovery. Each must fail the recovery clearly; none may
replay past the damage or end quietly short of what was asked.

The cluster is the stack's real server: a base backup through the tier's steps, then a few
WAL segments each holding a committed write, archived to both regions by its archive_command.
"""

from __future__ import annotations

import gzip
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from include.backup_dr import pitr
from include.backup_dr.backup import steps
from include.backup_dr.policy import load_policy
from include.backup_dr.wal_segments import archive_prefix
from tests.integration import test_pitr
from tests.integration.helpers import SERVER, base_backup, switch_wal, wait_archived

pytestmark = pytest.mark.integration
#: The throwaway servers' scratch directory, checked empty afterwards (test_pitr's fixture).
pitr_env = test_pitr.pitr_env


@dataclass
class Cluster:
    """The archive after the base backup: segment names in order, each with one commit; T
    lies between the second and the third segment's writes."""

    segments: list[str]
    target: datetime


def _cluster(stores, before: int = 2, after: int = 3) -> Cluster:
    ref = base_backup(stores)
    steps.check_integrity(load_policy(), stores, ref)
    names = [switch_wal() for _ in range(before)]
    target = datetime.now(UTC)
    time.sleep(1.1)
    names += [switch_wal() for _ in range(after)]
    wait_archived(stores.secondary, names[-1])
    return Cluster(names, target)


def _key(store, name: str) -> str:
    (key,) = [o.key for o in store.list_objects(f"{archive_prefix(SERVER)}{name[:16]}/{name}")]
    return key


def test_a_segment_deleted_after_the_range_was_read_ends_recovery_with_a_refusal(
    stores, pitr_env
) -> None:
    cluster = _cluster(stores)
    policy = load_policy()
    span = pitr.recovery_range(policy, stores.secondary, SERVER)  # read while the chain is whole
    assert pitr.check_target(span, cluster.target) == cluster.target
    lost = cluster.segments[1]  # T's stop lies after it
    stores.secondary.delete_all_versions(_key(stores.secondary, lost))

    with (
        pytest.raises(pitr.RecoveryFailed) as to_t,
        pitr.recover(policy, stores, SERVER, "secondary", cluster.target, span=span),
    ):
        pytest.fail("recovered to T across a gap")
    message = str(to_t.value)
    assert pitr.RECOVERY_ENDED in message
    assert f"{lost} refused: missing from the archive" in message and "a gap" in message

    with (
        pytest.raises(pitr.RecoveryFailed) as latest,
        pitr.recover(policy, stores, SERVER, "secondary", "latest", span=span),
    ):
        pytest.fail("'latest' ended quietly at a gap")
    message = str(latest.value)
    assert f"stopped at {lost}, which was refused" in message
    assert f"the archive goes on to {cluster.segments[-1]}" in message


def test_a_segment_whose_header_lies_is_never_served(stores, pitr_env) -> None:
    """Segment 2 is replaced by a copy of segment 3 (valid WAL, the wrong position): whole and
    decompressible, only the header check tells. PostgreSQL restores up to the one before it."""
    cluster = _cluster(stores)
    policy = load_policy()
    bad, donor = cluster.segments[1], cluster.segments[2]
    store = stores.secondary
    body = gzip.decompress(store.open(_key(store, donor)).read())
    store.put_bytes(_key(store, bad), gzip.compress(body, 1), "application/gzip")

    for target in (cluster.target, "latest"):
        with (
            pytest.raises(pitr.RecoveryFailed) as failed,
            pitr.recover(policy, stores, SERVER, "secondary", target),
        ):
            pytest.fail(f"recovered to {target} over a damaged segment")
        message = str(failed.value)
        assert f"{bad}, which was refused" in message or f"{bad} refused" in message, message
        assert "header says timeline 1 at" in message
        restored = message.split("the last WAL file PostgreSQL restored: ")[1][:24]
        assert restored < bad, message


def test_the_prefetcher_killed_mid_recovery_fails_it(stores, pitr_env, monkeypatch) -> None:
    """One segment ahead at most, so PostgreSQL soon needs one only the prefetcher could give."""
    cluster = _cluster(stores, before=2, after=4)
    monkeypatch.setenv("BACKUP_WAL_PREFETCH_DEPTH", "1")
    killed: list[int] = []
    stop = threading.Event()

    def kill_once_replay_began() -> None:
        while not stop.is_set():
            for work in pitr_env.glob("pitr-*"):
                with_log = (work / "postgres.log").exists()
                if with_log and "restored log file" in (work / "postgres.log").read_text():
                    pid = int((work / "spool" / ".pid").read_text())
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_once_replay_began, daemon=True)
    watcher.start()
    try:
        with (
            pytest.raises(pitr.RecoveryFailed) as failed,
            pitr.recover(load_policy(), stores, SERVER, "secondary", "latest"),
        ):
            pytest.fail("recovered although the prefetcher was killed")
    finally:
        stop.set()
        watcher.join()
    assert killed, "the prefetcher was never killed"
    message = str(failed.value)
    assert "killed by signal 9" in message or f"(pid {killed[0]}) is gone" in message, message
    restored = message.split("the last WAL file PostgreSQL restored: ")[1][:24]
    assert restored < cluster.segments[-1], message  # it stopped mid-way, and said so
