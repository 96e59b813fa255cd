"""Point-in-time recovery against the real stack: a base backup through the continuous tier's
engine, WAL archived by the platform server to both regions, heartbeats from the monitor, then
the drill (to a random recorded second, proved), refusals, the sandbox guard and dr_restore."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import sql
from tests.stack import run_dag

pytestmark = pytest.mark.integration
SERVER = "platform_primary"


@pytest.fixture
def pitr_env(stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A scratch directory the throwaway server's OS user can traverse, checked empty after
    (the stack fixture already set BACKUP_PG_OS_USER, as for Airflow)."""
    scratch = Path(tempfile.mkdtemp(prefix="pitr-test-", dir="/tmp"))
    scratch.chmod(0o711)
    monkeypatch.setenv("BACKUP_PITR_SCRATCH_DIR", str(scratch))
    yield scratch
    leftovers = list(scratch.iterdir())
    shutil.rmtree(scratch, ignore_errors=True)
    assert leftovers == [], f"a throwaway server was left behind: {leftovers}"


def _base_backup(stores: Any) -> dict[str, Any]:
    """One base backup of the server, copied and verified in both regions (the tier's steps)."""
    from include.backup_dr.backup import steps
    from include.backup_dr.policy import load_policy

    policy = load_policy()
    window = datetime.now(UTC).replace(microsecond=0)
    run = {"dag_id": "platform_backup_continuous", "run_id": f"pitr-test-{window:%H%M%S}"}
    ref = steps.take_snapshot(policy, stores, SERVER, "continuous", window, run)
    steps.copy_to_secondary(policy, stores, ref)
    steps.check_integrity(policy, stores, ref)
    return ref


def _archive_now(timeout: float = 60.0) -> str:
    """Close the current WAL segment and wait until the server has archived it (both regions)."""
    (segment,) = sql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (archived,) = sql("postgres", "SELECT last_archived_wal FROM pg_stat_archiver")[0]
        if archived is not None and archived >= segment:
            return segment
        time.sleep(0.3)
    raise AssertionError(f"WAL segment {segment} was not archived within {timeout} s")


def _heartbeats(stores: Any, seconds: float) -> dict[str, Any]:
    """A monitor run: a heartbeat a second, evidence (samples, end_segment) in both regions."""
    from include.backup_dr.monitor.continuous import measure
    from include.backup_dr.policy import load_policy

    run = {"dag_id": "platform_continuous_monitor", "run_id": "pitr-test"}
    return measure(load_policy(), stores, SERVER, seconds, run)


def _evidence(store: Any, kind: str, target: str) -> list[dict[str, Any]]:
    keys = sorted(
        o.key for o in store.list_objects(f"evidence/{kind}/{target}/") if o.key.endswith(".json")
    )
    return [store.get_json(key) for key in keys]


def test_pitr_drill_recovers_a_random_second_and_proves_it_from_the_secondary(
    stores, pitr_env
) -> None:
    _base_backup(stores)
    monitor = _heartbeats(stores, 6)
    _archive_now()

    run = run_dag("restore_verification", datetime.now(UTC), {"target": SERVER})
    assert run.state == "success"
    records = {
        store.region.name: _evidence(store, "restore_verification", SERVER) for store in stores
    }
    assert all(len(found) == 1 for found in records.values()), records
    record = records["eu-central-1"][0]
    assert record == records["eu-west-1"][0]
    assert record["outcome"] == "passed", record["problems"]
    assert record["backup"]["region"] == "eu-central-1"  # the DR path
    assert "the DR path" in record["selection_reason"]

    sample, proof = record["heartbeat_sample"], record["proof"]
    assert sample["seq"] in {s["seq"] for s in monitor["samples"]}
    target = datetime.fromisoformat(record["target_time"])
    assert target == datetime.fromisoformat(sample["written_at"]) + timedelta(milliseconds=500)
    assert proof["ok"] and proof["seq_present"] and proof["heartbeats_after_target"] == 0
    assert proof["newest_restored_seq"] == sample["seq"]
    assert 0 <= proof["seconds_between_newest_and_target"] < 1

    steps = record["steps"]
    assert set(steps["timings"]) == {"download", "extract + SHA-256 check", "WAL replay to promote"}
    assert steps["listen_addresses"] == ""  # the throwaway server had no TCP port at all
    assert steps["restored_bytes"] > steps["archive_bytes"] / 2
    assert record["projection"]["within_rto"] is True
    validation = record["validation"]
    assert validation["ok"] and set(validation["databases"]) == {
        "platform_core",
        "platform_billing",
    }
    assert any("business rules (platform_core)" in suite for suite in validation["suites"])
    assert not any(
        r["expectation"] == "expect_table_row_count_to_equal" for r in validation["results"]
    )
    keys = [
        o.key for o in stores.secondary.list_objects(f"evidence/restore_verification/{SERVER}/")
    ]
    markdown = stores.secondary.open(next(k for k in keys if k.endswith("/report.md"))).read()
    assert "1-second granularity proven: yes" in markdown.decode()
    for store in stores:  # the promoted copy (timeline 2) never archived into the live bucket
        assert not [o.key for o in store.list_objects(f"wal/{SERVER}/") if "/00000002" in o.key]
    print("PITR timings:", json.dumps(steps["timings"]), "bytes", steps["archive_bytes"])


def test_pitr_replays_wal_through_the_prefetcher_without_barman(
    stores, pitr_env, monkeypatch, tmp_path
) -> None:
    """No barman-cloud-wal-restore anywhere (not on PATH, BACKUP_WAL_TOOLS_BIN empty): the
    recovery still replays the archive's WAL to T, served by the prefetcher and the sh
    restore_command, and ends on the heartbeat just before T."""
    from include.backup_dr import pitr
    from include.backup_dr.policy import load_policy
    from include.backup_dr.postgres import database_of

    empty = tmp_path / "no-wal-tools"
    empty.mkdir()
    monkeypatch.setenv("BACKUP_WAL_TOOLS_BIN", str(empty))
    path = os.environ["PATH"].split(os.pathsep)
    monkeypatch.setenv(
        "PATH",
        os.pathsep.join(d for d in path if d and not Path(d, "barman-cloud-wal-restore").exists()),
    )
    assert shutil.which("barman-cloud-wal-restore") is None
    _base_backup(stores)
    monitor = _heartbeats(stores, 3)
    _archive_now()
    sample = monitor["samples"][1]
    target = datetime.fromisoformat(sample["written_at"]) + timedelta(milliseconds=500)
    policy = load_policy()
    database = database_of(policy.server(SERVER).conn_id)
    with pitr.recover(policy, stores, SERVER, "secondary", target) as recovered:
        assert recovered.wal_files >= 1
        ((newest, after),) = recovered.query(
            database,
            "SELECT max(seq), count(*) FILTER (WHERE written_at > "
            f"'{target.isoformat()}') FROM backup_dr.heartbeat",
        )
    assert (newest, after) == (sample["seq"], 0)


def test_out_of_range_is_refused_and_dr_restore_recovers_a_database_at_t(stores, pitr_env) -> None:
    from include.backup_dr.dr.request import DrRequest, make_plan
    from include.backup_dr.pitr import (
        TargetOutOfRange,
    )
    from include.backup_dr.policy import load_policy

    ref = _base_backup(stores)
    (tenant, original) = sql("platform_core", "SELECT id, name FROM tenants ORDER BY id LIMIT 1")[0]
    try:
        sql("platform_core", f"UPDATE tenants SET name = 'pitr before' WHERE id = {tenant}")
        (before_at,) = sql("postgres", "SELECT clock_timestamp()")[0]
        time.sleep(1.2)
        sql("platform_core", f"UPDATE tenants SET name = 'pitr after' WHERE id = {tenant}")
        _archive_now()
        target = before_at + timedelta(milliseconds=500)

        policy = load_policy()
        conf = {
            "targets": ["platform_core"],
            "connection": "pg_sandbox",
            "region": "secondary",
        }
        window_start = datetime.fromisoformat(ref["window"])
        for when, why in (
            (datetime.now(UTC) + timedelta(hours=1), "is in the future"),
            (window_start - timedelta(days=3), "older than the recovery window"),
        ):
            with pytest.raises(TargetOutOfRange, match=why) as refused:
                request = DrRequest.from_params(policy, {**conf, "target_time": when.isoformat()})
                make_plan(policy, stores, request, datetime.now(UTC))
            assert "eu-central-1 can recover platform_primary to any time after" in str(
                refused.value
            )
            assert "nothing restored" in str(refused.value)
        assert list(pitr_env.iterdir()) == []  # nothing was downloaded
        assert sql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'platform_core'",
            server="sandbox",
        ) == [(0,)]

        result = run_dag(
            "dr_restore",
            datetime.now(UTC),
            {**conf, "target_time": target.isoformat()},
            approve=True,
        )
        assert result.state == "success"
        restored = sql(
            "platform_core", f"SELECT name FROM tenants WHERE id = {tenant}", server="sandbox"
        )
        assert restored == [("pitr before",)]
        (record,) = _evidence(stores.secondary, "dr_restore", "platform_core")
        assert record["outcome"] == "passed", record["problems"]
        assert record["backup"]["tier"] == "continuous"
        assert record["steps"]["target_time"] == target.isoformat()
        assert {"WAL replay to promote", "pg_dump from the recovered server", "pg_restore"} <= set(
            record["steps"]["timings"]
        )
        rows = {r["table"]: r for r in record["validation"]["results"]}
        assert rows["public.tenants"]["success"]

    finally:
        sql("platform_core", f"UPDATE tenants SET name = '{original}' WHERE id = {tenant}")
        sql("postgres", "DROP DATABASE IF EXISTS platform_core WITH (FORCE)", server="sandbox")


def test_sandbox_guard_refuses_any_production_host_or_port(stack, monkeypatch) -> None:
    from include.backup_dr.policy import load_policy
    from include.backup_dr.restore.database import guard_sandbox
    from include.backup_dr.restore.errors import RestoreRefused

    policy = load_policy()
    for conn_id in ("pg_platform", "pg_platform_standby"):
        with pytest.raises(RestoreRefused, match="production server's connection"):
            guard_sandbox(policy, conn_id)
    for name in ("PG_PLATFORM", "PG_PLATFORM_STANDBY"):
        production = json.loads(os.environ[f"AIRFLOW_CONN_{name}"])
        # The same server under another name for the same address is refused too.
        monkeypatch.setenv("AIRFLOW_CONN_PG_ALIAS", json.dumps({**production, "host": "localhost"}))
        with pytest.raises(RestoreRefused, match="is production server platform_primary"):
            guard_sandbox(policy, "pg_alias")
    assert guard_sandbox(policy, "pg_sandbox").port == int(os.environ["BACKUP_PG_SANDBOX_PORT"])


def test_tampered_base_backup_is_refused_and_no_server_starts(stores, pitr_env) -> None:
    """Bit rot in the secondary's base backup (same size): the recovery refuses it before any
    server starts, names the region, and leaves no throwaway server behind."""
    from include.backup_dr import pitr
    from include.backup_dr.policy import load_policy
    from include.backup_dr.restore.errors import TamperedBackup
    from include.backup_dr.stores import from_ref

    ref = _base_backup(stores)
    _heartbeats(stores, 2)
    _archive_now()
    manifest = stores.secondary.manifest(from_ref(ref))
    body = bytearray(stores.secondary.open(manifest.artifact.key).read())
    body[len(body) // 2] ^= 0xFF
    stores.secondary.put_bytes(manifest.artifact.key, bytes(body), "application/octet-stream")

    with (
        pytest.raises(TamperedBackup, match=r"eu-central-1.*not restored"),
        pitr.recover(load_policy(), stores, SERVER, "secondary", "latest"),
    ):
        pytest.fail("a tampered base backup was recovered")


def test_dr_restore_at_t_swaps_in_keeps_the_old_database_and_survives_a_bad_base_backup(
    stores, pitr_env
) -> None:
    """Point-in-time dr_restore with overwrite: the old destination is renamed aside, never
    dropped; then a rotten base backup fails that target with an evidence record and leaves
    the destination as it was."""
    from include.backup_dr.stores import from_ref

    ref = _base_backup(stores)
    _archive_now()
    conf = {
        "targets": ["platform_core"],
        "connection": "pg_sandbox",
        "overwrite": True,
        "region": "secondary",
        "target_time": "latest",
    }
    try:
        sql("postgres", "CREATE DATABASE platform_core", server="sandbox")
        sql("platform_core", "CREATE TABLE precious (id int)", server="sandbox")
        sql("platform_core", "INSERT INTO precious VALUES (42)", server="sandbox")
        assert run_dag("dr_restore", datetime.now(UTC), conf, approve=True).state == "success"
        tenants = sql("platform_core", "SELECT count(*) FROM tenants", server="sandbox")
        assert tenants == sql("platform_core", "SELECT count(*) FROM tenants")
        names = [
            name
            for (name,) in sql(
                "postgres", "SELECT datname FROM pg_database ORDER BY 1", server="sandbox"
            )
        ]
        (aside,) = [n for n in names if n.startswith("platform_core__before_")]
        assert not [n for n in names if "__restoring_" in n]
        assert sql(aside, "SELECT id FROM precious", server="sandbox") == [(42,)]
        (record,) = _evidence(stores.secondary, "dr_restore", "platform_core")
        assert record["outcome"] == "passed", record["problems"]
        assert record["steps"]["previous_database"] == aside

        manifest = stores.secondary.manifest(from_ref(ref))
        body = bytearray(stores.secondary.open(manifest.artifact.key).read())
        body[len(body) // 2] ^= 0xFF
        stores.secondary.put_bytes(manifest.artifact.key, bytes(body), "application/octet-stream")
        assert run_dag("dr_restore", datetime.now(UTC), conf, approve=True).state == "failed"
        assert sql("platform_core", "SELECT count(*) FROM tenants", server="sandbox") == tenants
        records = _evidence(stores.secondary, "dr_restore", "platform_core")
        assert [r["outcome"] for r in records] == ["passed", "failed"]
        assert "not restored" in " ".join(records[1]["problems"])
    finally:
        for (name,) in sql(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'platform_core%'",
            server="sandbox",
        ):
            sql("postgres", f'DROP DATABASE "{name}" WITH (FORCE)', server="sandbox")


def test_drill_without_a_base_backup_fails_and_pages(stores, smtp_sink) -> None:
    """No base backup: the yearly drill must go red and page (not skip and stay green with
    point-in-time recovery never drilled), and leave a failed record compliance sees."""
    from tests.stack import mail_text, wait_for_mail

    run = run_dag("restore_verification", datetime.now(UTC), {"target": SERVER})
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["pitr"] == "failed", states
    (record,) = _evidence(stores.secondary, "restore_verification", SERVER)
    assert record["outcome"] == "failed"
    assert "can recover platform_primary to no time at all" in record["problems"][0]
    mails = [m["Subject"] + "\n" + mail_text(m) for m in wait_for_mail(smtp_sink)]
    assert len(mails) == 1 and SERVER in mails[0] and "no time at all" in mails[0], mails
