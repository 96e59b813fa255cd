"""Kill -9 the primary under the load generator, then fail over with `dr_failover`, approved
through Airflow's REST API.

A throwaway primary + standby of its own (never the stack's platform server), archiving to both
test regions under a server name of its own. The load generator records every acknowledged
commit. After the failover: the acknowledged commits missing on the new primary are no more
than those acknowledged within the lag measured at the kill (none when synchronous); the new
timeline's history is in both regions; the store names the new primary; the old primary,
started again, takes no writes and archives nothing; the evidence is in both regions, with the
approver's name. Asynchronous: a standby is rebuilt and the monitor follows the new pair.
Synchronous: the policy has no rebuild command, so the run says so and the monitor's
`standby_gone` stays open.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

import psycopg
import pytest

from include.backup_dr.wal_segments import archive_prefix
from local.failover import (
    Pair,
    add_to_policy,
    heartbeat_sample,
    load_until_kill,
    missing_on,
    switch_and_archive,
)
from tests.faults.airflow_api import Approver, api_server
from tests.stack import REPO, mail_text, wait_for_mail

#: A failover that never finishes (an approval never delivered) fails the test, never CI.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

#: Ports below the kernel's ephemeral range that the stack does not use (FACTS): the pair of
#: the asynchronous case takes base..base+2, the synchronous one base+10..base+12.
BASE_PORT = int(os.environ.get("BACKUP_FAILOVER_TEST_PORT", "16710"))
RATE = 200  # commits/s, as the issue measures
#: How long the load runs before the kill, and how long each of dr_failover's waits may take.
SETTLE_S = float(os.environ.get("BACKUP_FAILOVER_SETTLE", "3"))
WAIT_S = int(os.environ.get("BACKUP_FAILOVER_WAIT", "120"))
#: How long the restarted old primary is watched for archiving.
FENCE_WATCH_S = float(os.environ.get("BACKUP_FAILOVER_FENCE_WATCH", "3"))


def _run_failover(policy, server: str, base: str, token: str):
    from airflow.dag_processing.dagbag import DagBag

    # dag.test() writes every DAG of the folder to the metadata DB: the base backup it
    # triggers exists there, as under a scheduler.
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    approver = Approver(base, token, "dr_failover", timeout=WAIT_S * 2)
    approver.start()
    run = bag.dags["dr_failover"].test(
        logical_date=datetime.now(UTC),
        run_conf={"server": server, "planned": False, "wait_seconds": WAIT_S},
    )
    approver.join(timeout=10)
    assert approver.error is None, approver.error
    return run, approver


def _segments(store, server: str, timeline: int) -> set[str]:
    prefix = f"{archive_prefix(server)}{timeline:08X}"
    return {o.key for o in store.list_objects(prefix) if ".history" not in o.key}


def _with_pair(pair: Pair, policy_file, monkeypatch, *, rebuild: bool):
    """The policy in force with the pair added, and its connections in the environment."""
    policy = policy_file(lambda data: add_to_policy(pair, data, rebuild=rebuild))
    for name, value in pair.connection_env().items():
        monkeypatch.setenv(name, value)
    return policy


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_kill_primary_fail_over_approved_through_the_api(
    mode, stores, policy_file, monkeypatch, tmp_path, smtp_sink
):
    from include.backup_dr.monitor import continuous
    from include.backup_dr.roles import current_roles

    base_port = BASE_PORT + (0 if mode == "async" else 10)
    synchronous = mode == "sync"
    pair = Pair(f"failover_{mode}", base_port, base_port + 1, synchronous=synchronous)
    try:
        pair.start()
        policy = _with_pair(pair, policy_file, monkeypatch, rebuild=not synchronous)
        server = pair.server
        run_info = {"dag_id": "test", "run_id": f"before_kill_{mode}"}

        # Under load: one short monitor run (heartbeats, evidence), then the kill.
        from local.loadgen import LoadGenerator

        with LoadGenerator(
            rate=RATE, conninfo=pair.conninfo(pair.primary_port), database="postgres"
        ):
            continuous.measure(policy, stores, server, 2, run_info)
        kill = load_until_kill(pair, RATE, SETTLE_S)
        assert len(kill.acks) > RATE * SETTLE_S * 0.5, "the load generator barely ran"

        port = int(os.environ["BACKUP_AIRFLOW_PORT"]) + 2
        with api_server(dict(os.environ), port, tmp_path) as (base, token):
            run, approver = _run_failover(policy, server, base, token)
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}

        # On-call was told the plan waits for them; the approval went through the REST API.
        asked = [m for m in wait_for_mail(smtp_sink) if "approval needed" in m["Subject"]]
        assert asked and server in mail_text(asked[0]), [m["Subject"] for m in asked]
        assert approver.response["responded_by"]["name"] == "oncall"
        assert approver.response["chosen_options"] == ["Approve"]
        assert run.state == ("failed" if synchronous else "success")  # sync: nothing rebuilt
        for step in (
            "preflight",
            "approve",
            "fence",
            "promote",
            "follow",
            "archive_timeline",
            "base_backup",
        ):
            assert states[step] == "success", states
        # Recorded either way; red when something is left to do (sync: no standby rebuilt).
        assert states["evidence"] == ("failed" if synchronous else "success"), states

        # Loss: what was acknowledged and is not on the new primary.
        missing = missing_on(pair, pair.standby_port, kill.acks)
        print(
            f"{mode}: {len(kill.acks)} acked, {len(missing)} missing, lag at kill "
            f"{kill.lag_seconds * 1000:.1f} ms ({kill.within_lag()} acked within it)"
        )
        if synchronous:
            assert missing == []
        else:
            assert len(missing) <= kill.within_lag()

        # The store follows the new primary; the history file is in both regions.
        roles = current_roles(policy, stores, server)
        assert roles.primary_conn_id == pair.standby_conn and roles.timeline == 2
        for store in stores:
            history = list(store.list_objects(f"{archive_prefix(server)}00000002.history"))
            assert history, f"no 00000002.history in {store.region.name}"

        # Evidence in both regions, with the approver and the loss.
        records = []
        for store in stores:
            keys = [o.key for o in store.list_objects(f"evidence/failover/{server}/")]
            assert len(keys) == 1, (store.region.name, keys)
            records.append(store.get_json(keys[0]))
        record = records[0]
        assert record == records[1]
        assert record["approved_by"] == "oncall" and record["timeline"] == 2
        assert record["controls"] == ["A.5.29", "A.5.30"]
        assert record["approval_to_writable_seconds"] is not None
        assert record["loss"]["seconds"] >= 0

        if synchronous:
            # No rebuild command: said so, and the monitor's standby_gone stays open.
            assert states["rebuild_standby"] == "failed"
            assert roles.standby_conn_id is None
            doc = continuous.measure(
                policy, stores, server, 1, {"dag_id": "test", "run_id": "after"}
            )
            assert doc["conditions"]["standby_gone"] is True
        else:
            assert states["rebuild_standby"] == "success"
            assert (
                roles.standby_conn_id == pair.primary_conn and roles.slot == "backup_dr_standby_tl2"
            )
            doc = continuous.measure(
                policy, stores, server, 2, {"dag_id": "test", "run_id": "after"}
            )
            assert doc["conditions"]["standby_gone"] is False, doc["standby"]

        # The old primary, started again, takes no writes and archives nothing. (What the new
        # primary archived of timeline 1 at the fork is its .partial last segment, only.)
        old = pair.primary.data_dir
        from local.failover import start

        before = {s.region.name: _segments(s, server, 1) for s in stores}
        fork = max(key for keys in before.values() for key in keys if key.endswith(".partial.gz"))
        fork_segment = fork.rsplit("/", 1)[-1][:24]
        for keys in before.values():
            assert all(k.rsplit("/", 1)[-1][:24] < fork_segment or ".partial" in k for k in keys), (
                keys
            )
        start(old, base_port + 2, pair.root / "old.log")
        try:
            with psycopg.connect(pair.conninfo(base_port + 2), autocommit=True) as conn:
                assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
                assert conn.execute("SHOW archive_mode").fetchone()[0] == "off"
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    conn.execute("INSERT INTO loadgen_orders (amount) VALUES (1)")
            time.sleep(FENCE_WATCH_S)
            after = {s.region.name: _segments(s, server, 1) for s in stores}
            assert after == before
        finally:
            pair.stop()
    finally:
        pair.remove()
        sys.stdout.flush()


def test_backups_follow_the_new_primary_and_pitr_works_across_the_fork(
    stores, policy_file, monkeypatch
):
    """A base backup on timeline 1, heartbeats before the kill, the failover's own steps, and
    heartbeats on timeline 2. Then the base backup and the dump tiers reach the new primary,
    and recovery from the secondary region to half a second after a heartbeat on each side of
    the fork finds that heartbeat and none after T."""
    from include.backup_dr.backup.steps import check_integrity, copy_to_secondary, take_snapshot
    from include.backup_dr.dr import failover_steps
    from include.backup_dr.monitor import continuous
    from include.backup_dr.pitr.heartbeat import heartbeat_proof
    from include.backup_dr.pitr.server import recover
    from include.backup_dr.pitr.window import recovery_range
    from include.backup_dr.roles import current_roles
    from include.backup_dr.stores import from_ref

    pair = Pair("failover_pitr", BASE_PORT + 20, BASE_PORT + 21)
    try:
        pair.start()
        policy = _with_pair(pair, policy_file, monkeypatch, rebuild=False)
        server, run = pair.server, {"dag_id": "test", "run_id": "pitr_fork"}
        ref = take_snapshot(policy, stores, server, "continuous", datetime.now(UTC), run)
        check_integrity(policy, stores, copy_to_secondary(policy, stores, ref))
        before = continuous.measure(policy, stores, server, 4, run)
        load_until_kill(pair, RATE, 1)
        failover_steps.fence(
            policy, list(stores), server, "pitr", planned=False, wait_seconds=WAIT_S
        )
        promoted = failover_steps.promote(policy, list(stores), server, wait_seconds=WAIT_S)
        roles = current_roles(policy, stores, server)
        failover_steps.record_new_primary(list(stores), roles, promoted, "pitr")
        failover_steps.archive_timeline(list(stores), server, 2, wait_seconds=WAIT_S)
        after = continuous.measure(policy, stores, server, 4, run)
        switch_and_archive(pair, pair.standby_port, stores, WAIT_S)

        span = recovery_range(policy, stores.secondary, server)
        proofs = {}
        for side, doc in (("before", before), ("after", after)):
            sample = heartbeat_sample(doc)
            scratch = pair.root / side[0]  # short: the throwaway server's socket lives there
            scratch.mkdir()
            with recover(
                policy, stores, server, span.region, sample.target_time, scratch, span=span
            ) as recovered:
                connection = recovered.connect("postgres")
                try:
                    proofs[side] = heartbeat_proof(connection, sample, sample.target_time)
                finally:
                    connection.close()
        assert proofs["before"]["ok"], proofs
        assert proofs["after"]["ok"], proofs

        # The backups follow the new primary (the store's roles, not the policy's connection):
        # a dump, and a base backup on timeline 2 that must verify in both regions.
        now = datetime.now(UTC)
        dump = take_snapshot(policy, stores, f"{server}_db", "daily", now, run)
        assert stores.primary.manifest(from_ref(dump)).source["port"] == pair.standby_port
        ref = take_snapshot(policy, stores, server, "continuous", now, run)
        assert stores.primary.manifest(from_ref(ref)).source["port"] == pair.standby_port
        # Its WAL begins with the fork segment, which starts with timeline 1's pages.
        checked = check_integrity(policy, stores, copy_to_secondary(policy, stores, ref))
        assert checked["verified_regions"] == ["eu-west-1", "eu-central-1"]
    finally:
        pair.remove()


def test_planned_switchover_refuses_without_planned_and_loses_nothing(
    stores, policy_file, monkeypatch
):
    """A primary that answers: preflight refuses unless planned. Planned, under load: the fence
    stops it cleanly, the standby replays all it flushed, and no acknowledged commit is lost."""
    from include.backup_dr.dr import failover, failover_steps
    from local.loadgen import LoadGenerator

    pair = Pair("failover_planned", BASE_PORT + 30, BASE_PORT + 31)
    try:
        pair.start()
        policy = _with_pair(pair, policy_file, monkeypatch, rebuild=False)
        server, both = pair.server, list(stores)
        unplanned = failover_steps.preflight(policy, both, server, planned=False)
        assert unplanned.primary_answers and unplanned.primary_flush_lsn
        assert "still answers" in (failover.refusal(unplanned) or "")
        planned = failover_steps.preflight(policy, both, server, planned=True)
        assert failover.refusal(planned) is None
        load = LoadGenerator(
            rate=RATE,
            conninfo=pair.conninfo(pair.primary_port),
            database="postgres",
            record=True,
            expect_loss=True,
        )
        with load:
            time.sleep(1)
            fenced = failover_steps.fence(
                policy, both, server, "planned", planned=True, wait_seconds=WAIT_S
            )
        assert fenced["standby_replayed_lsn"] is not None
        failover_steps.promote(policy, both, server, wait_seconds=WAIT_S)
        assert len(load.acks) > RATE * 0.5
        assert missing_on(pair, pair.standby_port, load.acks) == []
    finally:
        pair.remove()
