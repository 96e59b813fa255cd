"""Restore drills and disaster-recovery restores, for real: sandbox server, GX, evidence."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.backup_dr.catalogue import BackupId
from include.backup_dr.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from include.backup_dr.restore.database import guard_sandbox
from include.backup_dr.restore.errors import RestoreRefused, TamperedBackup
from include.backup_dr.restore.select import Selection
from tests.integration.helpers import evidence, sandbox_databases, sql
from tests.stack import continuous_without_production, mail_text, run_dag, wait_for_mail

pytestmark = pytest.mark.integration
WINDOW = datetime(2026, 11, 24, 0, 30, tzinfo=UTC)


@pytest.fixture
def backed_up(stores) -> Iterator[None]:
    """Both production databases backed up, copied and verified for WINDOW."""
    assert run_dag("platform_backup_daily", WINDOW).state == "success"
    yield
    for name in sandbox_databases():
        sql("postgres", f'DROP DATABASE "{name}" WITH (FORCE)', server="sandbox")


def test_clean_backup_restores_and_every_expectation_passes(backed_up, stores, policy_file) -> None:
    policy_file(continuous_without_production)  # the PITR drill: tests/integration/test_pitr.py
    assert run_dag("media_backup_daily", WINDOW).state == "success"
    run = run_dag("restore_verification", WINDOW, {"tier": "daily", "region": "secondary"})
    assert run.state == "success"
    for store in stores:  # every production target is drilled: media too
        (record,) = evidence(store, "restore_verification", "media_documents")
        assert record["outcome"] == "passed", record["problems"]
        assert record["steps"]["objects"] > 0 and record["projection"]["within_rto"] is True
        assert [r["success"] for r in record["validation"]["results"]] == [True, True]
    for target in ("platform_core", "platform_billing"):
        for store in stores:
            (record,) = evidence(store, "restore_verification", target)
            assert record["outcome"] == "passed", record["problems"]
            assert record["backup"]["region"] == "eu-central-1"
            assert record["backup"]["window"] == WINDOW.isoformat()
            assert "newest of 1 verified backups" in record["selection_reason"]
            assert record["steps"]["timings"]["pg_restore"] > 0
            assert record["projection"]["within_rto"] is True
            results = record["validation"]["results"]
            assert results and all(r["success"] for r in results)
            suites = {r["suite"] for r in results}
            assert any("manifest" in s for s in suites) and any("business" in s for s in suites)
            page = [o.key for o in store.list_objects(f"evidence/restore_verification/{target}/")]
            assert any(key.endswith("report.md") for key in page)
    assert sandbox_databases() == []
    # The estate rehearsal: one record for the whole drill, its wall time against the RTO.
    for store in stores:
        (key,) = [o.key for o in store.list_objects("evidence/estate/restore_verification/")]
        estate = store.get_json(key)
        assert {t["target"] for t in estate["targets"]} == {
            "platform_core",
            "platform_billing",
            "media_documents",
        }
        assert estate["outcome"] == "passed" and estate["within_rto"] is True
        assert estate["wall_seconds"] > 0 and estate["rto_seconds"] == 4 * 3600


def test_tampered_backup_is_caught_by_the_checksum_before_restore(backed_up, stores) -> None:
    from include.backup_dr.drill import dumps as drill
    from include.backup_dr.stores import Stores

    policy = load_policy()
    backup = BackupId("platform", "platform_billing", "daily", WINDOW)
    key = stores.secondary.manifest(backup).artifact.key
    body = stores.secondary.open(key).read()
    stores.secondary.put_bytes(key, body[:-1] + bytes([body[-1] ^ 1]), "application/octet-stream")

    sql("postgres", "CREATE DATABASE tamper_probe", server="sandbox")
    selection = Selection(backup, "eu-central-1", "test")
    with pytest.raises(TamperedBackup, match="not restored"):
        drill.restore_into(
            policy, Stores.from_policy(policy), selection, "pg_sandbox", "tamper_probe", 2
        )
    tables = sql(
        "tamper_probe",
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        server="sandbox",
    )
    assert tables == [(0,)]  # pg_restore never ran

    run = run_dag("restore_verification", WINDOW, {"target": "platform_billing"})
    assert run.state == "failed"
    (record,) = evidence(stores.primary, "restore_verification", "platform_billing")
    assert record["outcome"] == "failed"
    assert "the restore did not complete" in record["problems"][0]
    assert sandbox_databases() == ["tamper_probe"]


@pytest.fixture
def bad_user() -> Iterator[None]:
    """A row that breaks a business rule (not a database constraint) in the production data."""
    sql(
        "platform_core",
        "INSERT INTO users (id, tenant_id, email, full_name, role, created_at) "
        "SELECT 999999999, min(id), 'not-an-email', 'Bad Row', 'member', now() FROM tenants",
    )
    yield
    sql("platform_core", "DELETE FROM users WHERE id = 999999999")


def test_failing_business_rule_fails_the_run_alerts_and_drops_the_sandbox(
    bad_user, backed_up, stores, smtp_sink
) -> None:
    run = run_dag("restore_verification", WINDOW, {"target": "platform_core"})
    assert run.state == "failed"
    (record,) = evidence(stores.secondary, "restore_verification", "platform_core")
    failed = [r for r in record["validation"]["results"] if not r["success"]]
    assert [r["expectation"] for r in failed] == ["expect_column_values_to_match_regex"]
    assert "not-an-email" in failed[0]["observed"]
    mails = wait_for_mail(smtp_sink)
    text = "\n".join(m["Subject"] + "\n" + mail_text(m) for m in mails)
    assert "restore_verification" in text and "platform_core" in text
    assert "expect_column_values_to_match_regex" in text
    assert sandbox_databases() == []


def test_dr_restore_rejected_touches_nothing(backed_up, stores) -> None:
    """On-call rejects the plan under Required Actions: nothing is restored or recorded."""
    conf = {"targets": ["platform_core"], "connection": "pg_sandbox"}
    run = run_dag("dr_restore", WINDOW, conf, approve=False)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["approve"] == "success" and states["pg_sandbox.restore"] == "skipped"
    assert sandbox_databases() == []
    assert evidence(stores.primary, "dr_restore", "platform_core") == []


def test_dr_restore_dry_run_shows_the_plan_and_restores_nothing(backed_up) -> None:
    """dry_run: the plan (each target, its backup and region, what is set aside, the projected
    time against the RTO) and nothing else: no approval is asked, nothing restored."""
    conf = {"targets": ["platform_billing", "platform_core"], "dry_run": True}
    run = run_dag("dr_restore", WINDOW, conf)
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["plan"] == "success" and states["approve"] == "skipped"
    plan = next(ti for ti in run.get_task_instances() if ti.task_id == "plan").xcom_pull(
        task_ids="plan"
    )
    assert [u["name"] for u in plan["units"]] == ["platform_core", "platform_billing"]
    core = plan["units"][0]
    assert core["source"].startswith("platform_core/daily ") and "eu-central-1" in core["source"]
    assert core["set_aside"] == ["creates platform_core"]
    assert "Projected wall time" in plan["markdown"] and "RTO" in plan["markdown"]
    assert sandbox_databases() == []


def test_dr_restore_refuses_a_non_empty_target(backed_up) -> None:
    sql("postgres", "CREATE DATABASE platform_core", server="sandbox")
    sql("platform_core", "CREATE TABLE precious (id int)", server="sandbox")
    conf = {"targets": ["platform_core"], "connection": "pg_sandbox"}
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "failed"
    assert sql(
        "platform_core",
        "SELECT count(*) FROM pg_tables WHERE tablename = 'precious'",
        server="sandbox",
    ) == [(1,)]


def test_dr_restore_restores_two_targets_in_priority_order(backed_up, stores) -> None:
    conf = {
        "targets": ["platform_billing", "platform_core"],
        "connection": "pg_sandbox",
    }
    run = run_dag("dr_restore", WINDOW, conf, approve=True)
    assert run.state == "success"
    # Map index order is priority order (the scheduler starts them in that order; dag.test()
    # runs them in no particular order, see test_dr_restore_under_the_scheduler...).
    mapped = {
        ti.map_index: ti.rendered_map_index
        for ti in run.get_task_instances()
        if ti.task_id == "pg_sandbox.restore"
    }
    assert mapped == {0: "platform_core", 1: "platform_billing"}
    core = evidence(stores.primary, "dr_restore", "platform_core")[0]
    billing = evidence(stores.primary, "dr_restore", "platform_billing")[0]
    assert core["run"]["approved_by"] == billing["run"]["approved_by"] == "oncall-test"
    (estate,) = [
        stores.secondary.get_json(o.key)
        for o in stores.secondary.list_objects("evidence/estate/dr_restore/")
    ]
    assert {t["target"] for t in estate["targets"]} == {"platform_core", "platform_billing"}
    assert estate["outcome"] == "passed" and estate["within_rto"] is True
    assert estate["run"]["approved_by"] == "oncall-test"
    assert core["outcome"] == billing["outcome"] == "passed"
    restored = sql("platform_core", "SELECT count(*) FROM tenants", server="sandbox")
    assert restored == sql("platform_core", "SELECT count(*) FROM tenants")


def test_sandbox_guard_refuses_production_connections(stack, policy_file, monkeypatch) -> None:
    with pytest.raises(PolicyError, match="is a production server's connection"):
        policy_file(lambda d: d["restore_verification"].update(sandbox_conn_id="pg_platform"))
    policy = load_policy(DEFAULT_POLICY_PATH)
    with pytest.raises(RestoreRefused, match="production server's connection"):
        guard_sandbox(policy, "pg_platform")
    # Another name for the production server is refused too.
    production = json.loads(os.environ["AIRFLOW_CONN_PG_PLATFORM"])
    monkeypatch.setenv("AIRFLOW_CONN_PG_ALIAS", json.dumps(production))
    with pytest.raises(RestoreRefused, match="is production server platform_primary"):
        guard_sandbox(policy, "pg_alias")
    assert guard_sandbox(policy, "pg_sandbox").port == int(os.environ["BACKUP_PG_SANDBOX_PORT"])


def test_validation_connects_with_a_password_full_of_url_characters(
    backed_up, stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password with @ : / % must reach Great Expectations intact (it is URL syntax)."""
    from include.backup_dr.drill import dumps as drill
    from include.backup_dr.restore.database import validate_restored
    from include.backup_dr.restore.select import select_backup
    from local.config import HOST, Ports

    password = "p@ss:w/rd%40#?"
    sql("postgres", "DROP ROLE IF EXISTS drill_reader", server="sandbox")
    sql(
        "postgres",
        f"CREATE ROLE drill_reader LOGIN SUPERUSER PASSWORD '{password}'",
        server="sandbox",
    )
    conn = {
        "conn_type": "postgres",
        "host": HOST,
        "port": Ports.from_env().pg_sandbox,
        "login": "drill_reader",
        "password": password,
        "schema": "postgres",
    }
    monkeypatch.setenv("AIRFLOW_CONN_PG_SANDBOX_ODD", json.dumps(conn))
    policy = load_policy()
    selection = select_backup(policy, stores.secondary, "platform_billing", "daily", WINDOW)
    sql("postgres", "CREATE DATABASE drill_odd_password", server="sandbox")
    try:
        drill.restore_into(policy, stores, selection, "pg_sandbox", "drill_odd_password", 2)
        result = validate_restored(stores, selection, "pg_sandbox_odd", "drill_odd_password")
        assert result.ok, [r.observed for r in result.failures()]
    finally:
        sql("postgres", "DROP DATABASE IF EXISTS drill_odd_password WITH (FORCE)", server="sandbox")
        sql("postgres", "DROP ROLE IF EXISTS drill_reader", server="sandbox")


def _precious_destination() -> None:
    """A destination database holding data nobody may lose: the one production had."""
    sql("postgres", "CREATE DATABASE platform_core", server="sandbox")
    sql("platform_core", "CREATE TABLE precious (id int)", server="sandbox")
    sql("platform_core", "INSERT INTO precious VALUES (42)", server="sandbox")


def _precious_rows(database: str = "platform_core") -> list[tuple]:
    return sql(database, "SELECT id FROM precious", server="sandbox")


def _break_backup(stores, target: str, how: str) -> None:
    """The secondary's copy of `target`'s WINDOW dump: one bit flipped, or gone."""
    key = stores.secondary.manifest(BackupId("platform", target, "daily", WINDOW)).artifact.key
    if how == "missing":
        stores.secondary.delete_all_versions(key)
        return
    body = stores.secondary.open(key).read()
    stores.secondary.put_bytes(key, body[:-1] + bytes([body[-1] ^ 1]), "application/octet-stream")


@pytest.mark.parametrize("how", ["tampered", "missing"])
def test_dr_restore_overwrite_with_a_bad_backup_leaves_the_destination_untouched(
    backed_up, stores, how: str
) -> None:
    """The fault: overwrite=true dropped the destination before the backup was proven."""
    _precious_destination()
    _break_backup(stores, "platform_core", how)
    conf = {
        "targets": ["platform_core"],
        "connection": "pg_sandbox",
        "overwrite": True,
    }
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "failed"
    assert _precious_rows() == [(42,)]
    assert sandbox_databases() == ["platform_core"]  # no half-restored database left behind
    (record,) = evidence(stores.primary, "dr_restore", "platform_core")
    assert record["outcome"] == "failed"
    assert "destination was not touched" in " ".join(record["problems"])


def test_dr_restore_swaps_in_and_keeps_the_old_database_aside(backed_up, stores) -> None:
    """overwrite=true replaces the destination only after the restore validated, and the old
    database is renamed aside, never dropped in the same run; the evidence says where it went."""
    _precious_destination()
    conf = {
        "targets": ["platform_core"],
        "connection": "pg_sandbox",
        "overwrite": True,
    }
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "success"
    restored = sql("platform_core", "SELECT count(*) FROM tenants", server="sandbox")
    assert restored == sql("platform_core", "SELECT count(*) FROM tenants")
    (aside,) = [d for d in sandbox_databases() if d.startswith("platform_core__before_")]
    assert _precious_rows(aside) == [(42,)]
    assert [d for d in sandbox_databases() if "__restoring_" in d] == []
    (record,) = evidence(stores.secondary, "dr_restore", "platform_core")
    assert record["outcome"] == "passed", record["problems"]
    assert record["steps"]["previous_database"] == aside


def test_dr_restore_one_target_failing_does_not_stop_the_next(backed_up, stores) -> None:
    """platform_core (priority 1) has a rotten backup: platform_billing is restored all the
    same, each gets its own evidence record, and the run fails at the end."""
    _break_backup(stores, "platform_core", "tampered")
    conf = {
        "targets": ["platform_billing", "platform_core"],
        "connection": "pg_sandbox",
    }
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "failed"
    (core,) = evidence(stores.primary, "dr_restore", "platform_core")
    (billing,) = evidence(stores.primary, "dr_restore", "platform_billing")
    assert core["outcome"] == "failed" and "sha256" in " ".join(core["problems"])
    assert billing["outcome"] == "passed", billing["problems"]
    assert sandbox_databases() == ["platform_billing"]
    restored = sql("platform_billing", "SELECT count(*) FROM invoices", server="sandbox")
    assert restored == sql("platform_billing", "SELECT count(*) FROM invoices")


def test_dr_restore_evidence_needs_no_production_server(
    backed_up, stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a disaster production is gone: the restore and its evidence must not reach for it."""
    production = json.loads(os.environ["AIRFLOW_CONN_PG_PLATFORM"])
    monkeypatch.setenv("AIRFLOW_CONN_PG_PLATFORM", json.dumps({**production, "port": 1}))
    conf = {"targets": ["platform_core"], "connection": "pg_sandbox"}
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "success"
    (record,) = evidence(stores.secondary, "dr_restore", "platform_core")
    assert record["outcome"] == "passed", record["problems"]
    assert record["projection"]["within_rto"] is True


def test_drill_projection_needs_no_production_server(
    backed_up, stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drill projects onto the largest production target from the store, not the server."""
    production = json.loads(os.environ["AIRFLOW_CONN_PG_PLATFORM"])
    monkeypatch.setenv("AIRFLOW_CONN_PG_PLATFORM", json.dumps({**production, "port": 1}))
    run = run_dag("restore_verification", WINDOW, {"target": "platform_billing"})
    assert run.state == "success"
    (record,) = evidence(stores.secondary, "restore_verification", "platform_billing")
    assert record["projection"]["largest_production_target"] == "platform_core"
    assert record["projection"]["within_rto"] is True


def test_evidence_written_in_the_same_second_is_never_overwritten(backed_up, stores) -> None:
    """Two records for one target within one second keep both (keys had 1-second resolution)."""
    import time

    from include.backup_dr.restore import record

    policy = load_policy()
    ref = {**Selection(BackupId("platform", "platform_core", "daily", WINDOW), "x", "t").to_ref()}
    time.sleep(1 - datetime.now(UTC).microsecond / 1e6)  # both land early in one second
    for attempt in ("a", "b"):
        record.record_restore(
            policy, stores, ref, None, None, {"run_id": attempt}, kind="dr_restore"
        )
    for store in stores:
        keys = sorted(o.key for o in store.list_objects("evidence/dr_restore/platform_core/"))
        assert len(keys) == 4, keys  # report.json + report.md, twice
        runs = [store.get_json(k)["run"]["run_id"] for k in keys if k.endswith(".json")]
        assert sorted(runs) == ["a", "b"]


def _pages(folder: Path, canary: str) -> list[str]:
    """Every mail in the sink but the canary, as subject + text."""
    return [
        m["Subject"] + "\n" + mail_text(m)
        for m in wait_for_mail(folder, timeout=0.1)
        if m["Subject"] != canary
    ]


def test_drill_over_the_rto_pages_exactly_once(backed_up, stores, smtp_sink, policy_file) -> None:
    """A drill whose projected restore exceeds the RTO fails and pages on-call once: the failed
    target's task pages, the estate (also over the RTO) does not page again. A canary through
    the same alert path first proves a page would arrive, so the count needs no settle sleep:
    the sink writes each mail before it accepts it, and dag.test() returns after callbacks."""
    from include.backup_dr.alerts import send_message

    policy_file(lambda data: data["objectives"].update(rto="0s"))
    canary = "[backup] canary: drill paging test"
    assert send_message(canary, "canary\n") == "smtp"
    assert [m["Subject"] for m in wait_for_mail(smtp_sink)] == [canary]

    run = run_dag("restore_verification", WINDOW, {"target": "platform_billing"})
    assert run.state == "failed"
    (record,) = evidence(stores.secondary, "restore_verification", "platform_billing")
    assert record["outcome"] == "failed" and record["projection"]["within_rto"] is False
    assert any("over the RTO of 0s" in p for p in record["problems"]), record["problems"]
    pages = _pages(smtp_sink, canary)
    assert len(pages) == 1, pages
    assert "platform_billing" in pages[0] and "over the RTO of 0s" in pages[0]
