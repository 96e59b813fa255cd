"""A real lease loss: the process holding a prune's lease is frozen (SIGSTOP) past its TTL,
another task takes the lease over, then the frozen one is thawed (SIGCONT) and goes on.

The holder is a process of its own running the real prune step inside its critical section,
as a worker does; it is frozen after taking the lease and before its first write, the way
the OS or a VM pause can freeze a worker at any instant. Thawed, it must stop with
LeaseLostError before writing or deleting anything. Judged by the store itself, not by the
lease's log: the expired backup it would have deleted is still committed and verified in both
regions, and no prune evidence exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.backup_dr.lease import Holder, Lease, critical_section, lease_key
from include.backup_dr.policy import load_policy
from tests.faults.harness import commit, committed, lost
from tests.stack import REPO

pytestmark = pytest.mark.integration
TARGET, TIER = "platform_core", "weekly"
SUBJECT = f"platform/{TARGET}/{TIER}"
#: The lease's TTL in both processes (a minute in production): how long the holder is frozen
#: before the other task may take over.
TTL_SECONDS = 2.0
#: The holder: takes the lease as a step does, says so, waits for its cue, then prunes.
HOLDER = f"""
import os, sys
from datetime import timedelta
from include.backup_dr.lease import Holder, critical_section
from include.backup_dr.backup.steps import Stores, prune
from include.backup_dr.policy import load_policy

policy = load_policy()
stores = Stores.from_policy(policy)
me = Holder("platform_backup_weekly", "scheduled__frozen", "platform_primary.prune", 0, 1,
            "worker-1", os.getpid())
with critical_section(stores.primary, {SUBJECT!r}, me, max_wait=timedelta(seconds=30),
                      ttl=timedelta(seconds={TTL_SECONDS}), poll=(0.05, 0.2)):
    print("inside", flush=True)
    sys.stdin.readline()  # frozen here: the lease taken, nothing written yet
    print("pruned", prune(policy, stores, {TARGET!r}, {TIER!r}), flush=True)
"""


def _wait_for_line(output: Path, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while line not in output.read_text().splitlines():
        assert time.monotonic() < deadline, f"the holder never said {line!r}"
        time.sleep(0.05)


def test_a_holder_frozen_past_its_ttl_stops_before_any_write_when_thawed(stores, tmp_path) -> None:
    policy = load_policy()
    now = datetime.now(UTC).replace(microsecond=0)
    expired, recent = now - timedelta(weeks=6), now - timedelta(days=1)
    for window in (expired, recent):
        commit(policy, stores, TARGET, TIER, window)
    before = committed(stores, f"platform/{TARGET}/{TIER}/")
    assert {backup.window for backup, _ in before} == {expired, recent}

    output = tmp_path / "holder.log"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=output.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert holder.stdin is not None
    try:
        _wait_for_line(output, "inside", 120)
        frozen = Lease.from_document(stores.primary.get_json(lease_key(SUBJECT)))
        os.kill(holder.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        usurper = Holder("platform_backup_weekly", "backfill__b", "platform_primary.prune", 0, 1,
                         "worker-2", os.getpid())  # fmt: skip
        with critical_section(
            stores.primary,
            SUBJECT,
            usurper,
            max_wait=timedelta(minutes=1),
            ttl=timedelta(seconds=TTL_SECONDS),
            poll=(0.05, 0.2),
        ) as tenure:
            frozen_for = time.monotonic() - stopped_at
            os.kill(holder.pid, signal.SIGCONT)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            code = holder.wait(timeout=120)
            stored = Lease.from_document(stores.primary.get_json(lease_key(SUBJECT)))
            assert stored.token == tenure.lease.token, "the thawed holder wrote over the lease"
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait()
    assert frozen.holder.run_id == "scheduled__frozen"
    assert frozen_for >= TTL_SECONDS, "taken over before the frozen lease stood still a TTL"
    said = output.read_text()
    assert code != 0 and "LeaseLostError: lost the lease" in said, said[-3000:]
    assert "\npruned" not in said
    # The store's word: nothing of the expired backup went, and no prune left a record.
    assert committed(stores, f"platform/{TARGET}/{TIER}/") == before
    assert lost(stores, before) == []
    for store in stores:
        assert list(store.list_objects("evidence/prune/")) == [], store.region.name
