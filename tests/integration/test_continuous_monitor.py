"""platform_continuous_monitor against the real stack: measured lag, evidence in both regions,
one page when the standby goes, one "resolved" when it is back, and a real DAG run."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.helpers import mail_texts
from tests.stack import REPO, primary_setting, run_dag

pytestmark = pytest.mark.integration

SERVER = "platform_primary"
PREFIX = f"evidence/continuous_monitor/{SERVER}/"


def _measure(stores: Any, seconds: float, run_id: str) -> dict[str, Any]:
    from include.backup_dr.monitor.continuous import measure
    from include.backup_dr.policy import load_policy

    run = {"dag_id": "platform_continuous_monitor", "run_id": run_id}
    return measure(load_policy(), stores, SERVER, seconds, run)


def _standby_service() -> Any:
    from local import pg, stack

    return next(svc for svc in stack.services(["pg"]) if svc.name == pg.STANDBY.part)


def _streaming_from_slot(timeout: float = 60.0) -> bool:
    from local import pg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pg.PLATFORM.connect() as conn:
            row = conn.execute(
                "SELECT s.active, r.state FROM pg_replication_slots s "
                "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid "
                "WHERE s.slot_name = 'backup_dr_standby'"
            ).fetchone()
        if row == (True, "streaming"):
            return True
        time.sleep(0.5)
    return False


def test_lag_is_measured_under_a_second_and_evidence_lands_in_both_regions(stores) -> None:
    from local import pg

    assert _streaming_from_slot()
    _measure(stores, 1, "creates-the-table")
    with pg.PLATFORM.connect() as conn:  # a heartbeat from before the recovery window
        conn.execute(
            "INSERT INTO backup_dr.heartbeat (seq, written_at, run_id) "
            "VALUES (0, now() - interval '9 days', 'ancient') ON CONFLICT DO NOTHING"
        )
    doc = _measure(stores, 4, "lag-test")
    assert doc["heartbeats_trimmed"] >= 1
    with pg.PLATFORM.connect() as conn:
        assert (
            conn.execute("SELECT count(*) FROM backup_dr.heartbeat WHERE seq = 0").fetchone()[0]
            == 0
        )

    assert doc["schema"] == "backup-dr/continuous-monitor/v1"
    assert doc["stats"]["count"] == len(doc["samples"]) >= 4
    assert doc["stats"]["p99_ms"] < 1000, doc["stats"]
    assert doc["stats"]["p50_ms"] <= doc["stats"]["p99_ms"] <= doc["stats"]["max_ms"]
    assert doc["over_rpo"] == {"count": 0, "max_consecutive": 0}
    assert doc["rpo_seconds"] == 1
    assert doc["conditions"] == {"lag": False, "archive_failing": False, "standby_gone": False}
    assert doc["alerts"] == []
    # Heartbeats on a 1 s grid, timestamped by the database (the PITR drill's recovery points).
    written = [datetime.fromisoformat(s["written_at"]) for s in doc["samples"]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(written)]
    assert all(0.5 < gap < 1.5 for gap in gaps), gaps  # 1 s apart, give or take a busy CPU
    assert all(s["status"] == "visible" for s in doc["samples"])
    assert doc["replication"]["state"] == "streaming"
    assert doc["slot"]["active"] and doc["slot"]["retained_bytes"] >= 0
    assert doc["archiver"]["failed_count"] >= 0 and doc["archiver"]["ready_files"] >= 0
    assert doc["archive_age_seconds"] is not None
    assert len(doc["end_segment"]) == 24 and doc["end_lsn"] and doc["timeline"] >= 1

    key = doc["key"]
    assert key.startswith(PREFIX) and key.endswith(".json")
    for store in stores:
        stored = store.get_json(key)
        assert stored is not None, store.region.name
        assert stored["samples"] == doc["samples"]
        assert stored["end_segment"] == doc["end_segment"]
    # A second run leaves a second record, never overwriting the first.
    again = _measure(stores, 1, "lag-test-2")
    assert again["key"] != key
    assert len(list(stores.secondary.list_objects(PREFIX))) == 3


def test_stopped_standby_pages_once_and_resolves_once(stores, smtp_sink) -> None:
    from local import stack

    assert _streaming_from_slot()
    standby = _standby_service()
    standby.stop()
    try:
        runs = [_measure(stores, 2, "standby-down-1")]
        if not runs[0]["conditions"]["standby_gone"]:
            runs.append(_measure(stores, 2, "standby-down-2"))
        assert runs[-1]["conditions"]["standby_gone"], "not alerted within 2 runs"
        assert [a["kind"] for a in runs[-1]["alerts"]] == ["breach"]
        mails = mail_texts(smtp_sink)
        assert len(mails) == 1, mails
        assert "standby_gone" in mails[0] and SERVER in mails[0]
        assert "platform_continuous_monitor" in mails[0] and "RPO: 1s" in mails[0]
        # The heartbeat still ran and the evidence was written, standby or not.
        down = runs[-1]
        assert down["samples"] and all(s["status"] == "unmeasured" for s in down["samples"])
        assert down["standby"]["reachable"] is False and down["replication"] is None
        assert stores.secondary.get_json(down["key"])["conditions"]["standby_gone"]

        still_down = _measure(stores, 1, "standby-down-3")
        assert still_down["conditions"]["standby_gone"] and still_down["alerts"] == []
        assert len(mail_texts(smtp_sink)) == 1
    finally:
        stack.up_one(standby)

    assert _streaming_from_slot(), "the standby did not resume streaming from its slot"
    back = _measure(stores, 2, "standby-back")
    assert back["conditions"] == {"lag": False, "archive_failing": False, "standby_gone": False}
    assert [(a["kind"], a["condition"]) for a in back["alerts"]] == [("resolved", "standby_gone")]
    assert all(s["status"] == "visible" for s in back["samples"])
    mails = mail_texts(smtp_sink)
    assert len(mails) == 2, mails
    [resolved] = [mail for mail in mails if "RESOLVED" in mail]
    assert "standby_gone" in resolved and SERVER in resolved
    assert _measure(stores, 1, "standby-still-back")["alerts"] == []


def test_monitor_dag_runs_for_real(stores) -> None:
    assert _streaming_from_slot()
    logical_date = datetime.now(UTC).replace(second=0, microsecond=0)
    run = run_dag("platform_continuous_monitor", logical_date, conf={"duration_seconds": 3})
    assert run.state == "success"
    for store in stores:
        [record] = list(store.list_objects(PREFIX))
        doc = store.get_json(record.key)
        assert doc["run"]["run_id"] == run.run_id and len(doc["samples"]) == 3


def test_archive_timeout_unlike_the_policy_turns_server_config_red(stores) -> None:
    """The server's settings are compared with the policy, not assumed: archive_timeout set to
    10 minutes by a DBA (the policy says 60 s) is red in the monitor's record and in compliance,
    which names what it costs; the server is put back whatever happens."""
    from include.backup_dr.monitor.checks.result import Status
    from include.backup_dr.monitor.compliance import evaluate
    from include.backup_dr.monitor.facts import read_facts
    from include.backup_dr.policy import load_policy

    assert _streaming_from_slot()
    as_policy = _measure(stores, 1, "config-as-policy")
    assert as_policy["settings"]["archive_timeout"] == "60"
    assert as_policy["server_config"] == {"status": "OK", "problems": []}
    # Records are keyed to the second and compliance reads the newest key: the changed
    # server's record must not share the as-policy record's second.
    time.sleep(1.1)
    with primary_setting("archive_timeout", "600"):
        changed = _measure(stores, 1, "config-changed")
    assert changed["settings"]["archive_timeout"] == "600"
    assert changed["server_config"]["status"] == "CRITICAL", changed["server_config"]

    policy, now = load_policy(), datetime.now(UTC)
    facts, _ = read_facts(policy, stores, now, {})
    checks = {c.id: c for c in evaluate(policy, facts, now)}
    check = checks[f"server_config:{SERVER}"]
    assert check.status is Status.CRITICAL, check
    assert "archive_timeout=10m" in check.measured and "archive_timeout 1m" in check.limit
    assert "losing primary and standby together loses up to 10m" in check.detail
    # The `check` CLI shows it too (and exits CRITICAL).
    cli = subprocess.run(
        [sys.executable, "-m", "include.backup_dr", "check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 2, cli.stdout + cli.stderr
    [line] = [row for row in cli.stdout.splitlines() if f"server_config:{SERVER}" in row]
    assert line.startswith("CRITICAL") and "archive_timeout=10m" in line
