"""backup_compliance and `python -m include.backup_dr check` against the real stack: green after
a real backup and drill, red (one page, and no second one) when the tier's newest verified
backup is made stale, a "resolved" mail when it is fresh again; the CLI's Nagios exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.helpers import LEAN_IDS as IDS
from tests.integration.helpers import LEAN_TARGET as TARGET
from tests.integration.helpers import age_manifests, lean_policy, mail_texts
from tests.stack import REPO, run_dag

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "include.backup_dr", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _compliance(stores: Any) -> tuple[str, dict[str, Any]]:
    """Run the DAG for real; its state and the evidence record it left (the same in both
    regions)."""
    before = {o.key for o in stores.primary.list_objects("evidence/compliance/")}
    run = run_dag("backup_compliance", datetime.now(UTC).replace(microsecond=0))
    [key] = {o.key for o in stores.primary.list_objects("evidence/compliance/")} - before
    document = stores.primary.get_json(key)
    assert stores.secondary.get_json(key) == document
    return run.state, document


def _statuses(document: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in document["checks"]}


def test_green_then_stale_pages_once_then_resolves(policy_file, stores, smtp_sink) -> None:
    policy_file(lean_policy)
    now = datetime.now(UTC)
    window = now.replace(hour=now.hour - now.hour % 6, minute=0, second=0, microsecond=0)
    assert run_dag("platform_backup_6h", window).state == "success"
    assert run_dag("restore_verification", now).state == "success"

    # The command line, without Airflow running: every check green, exit 0.
    nagios = _cli("check", "--nagios")
    assert nagios.returncode == 0, nagios.stdout + nagios.stderr
    assert nagios.stdout.startswith("BACKUP_DR OK - 0 critical, 0 unknown, 0 warning")
    assert len(nagios.stdout.splitlines()) == 1
    report = _cli("policy", "report")
    assert report.returncode == 0, report.stderr
    assert "MEASURED" in report.stdout.splitlines()[2]
    assert "OK (2/2 ok)" in report.stdout and "NOT MET" in report.stdout

    state, document = _compliance(stores)
    assert state == "success", _statuses(document)
    assert document["status"] == "OK" and document["alerts"] == []
    assert set(_statuses(document).values()) == {"OK"}
    assert {
        f"restore_drill:{TARGET}",
        f"projected_rto:{TARGET}",
        "projected_rto:all targets",
        *IDS,
    } == set(_statuses(document))
    assert mail_texts(smtp_sink) == []

    # The newest verified 6h backup is 9 h old: past 6 h + 2 h grace, in both regions.
    age_manifests(stores, window, timedelta(hours=9))
    table = _cli("check")
    assert table.returncode == 2, table.stdout + table.stderr
    assert all(f"CRITICAL  {i}" in table.stdout for i in IDS), table.stdout

    state, document = _compliance(stores)
    assert state == "failed"  # red at a glance in the grid
    assert {i: s for i, s in _statuses(document).items() if s != "OK"} == dict.fromkeys(
        IDS, "CRITICAL"
    )
    [page] = mail_texts(smtp_sink)
    assert "backup_compliance: 2 check(s) red" in page
    assert all(i in page for i in IDS) and "9h" in page and document["key"] in page

    state, document = _compliance(stores)  # still stale: no second page
    assert state == "failed" and document["alerts"] == []
    assert len(mail_texts(smtp_sink)) == 1

    age_manifests(stores, window, -timedelta(hours=9))  # fresh again
    state, document = _compliance(stores)
    assert state == "success"
    mails = mail_texts(smtp_sink)
    assert len(mails) == 2
    [resolved] = [m for m in mails if m.startswith("[backup] RESOLVED: backup_compliance")]
    assert "2 check(s) green again" in resolved and all(i in resolved for i in IDS)


def test_cli_says_unknown_when_no_region_answers(policy_file, stack) -> None:
    import json

    policy_file(lean_policy)
    dead = {}
    for conn_id in ("s3_primary", "s3_secondary"):
        name = f"AIRFLOW_CONN_{conn_id.upper()}"
        conn = json.loads(os.environ[name])
        conn["extra"]["endpoint_url"] = "http://127.0.0.1:9"  # discard port: refused
        dead[name] = json.dumps(conn)
    result = _cli("check", "--nagios", env=dead)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("BACKUP_DR UNKNOWN - cannot read the store")


def test_rehash_history_is_read_incrementally_and_a_late_record_still_counts(stores) -> None:
    """Integrity records are named after their check's start, so a long check's record lands
    after later ones: the cached read must still pick it up (and count only passed samples)."""
    import uuid

    from include.backup_dr.engines.media import rehash_bucket
    from include.backup_dr.monitor.facts import read_rehash

    store = stores.primary
    prefix = "evidence/integrity/media/media_documents/"
    now = datetime.now(UTC)

    def record(checked_at: datetime, ok: bool) -> str:
        key = f"{prefix}{checked_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.json"
        checks = [{"name": "sample_rehash", "ok": ok, "detail": "..."}]
        store.put_json(key, {"checked_at": checked_at.isoformat(), "ok": ok, "checks": checks})
        return key

    early, middle, late = now - timedelta(days=3), now - timedelta(days=2), now - timedelta(hours=2)
    record(early, True)
    record(middle, True)
    record(now - timedelta(hours=1), False)  # a mismatch: its bucket is not covered
    facts, cache = read_rehash(store, "media", "media_documents", now, None, None)
    assert facts.error is None and facts.since is not None
    assert set(facts.passed) == {rehash_bucket(early), rehash_bucket(middle)}
    assert abs((facts.since - early).total_seconds()) < 1
    assert facts.blobs_per_bucket is None  # no snapshot to count blobs from
    assert rehash_bucket(late) not in facts.passed

    late_key = record(late, True)  # began before the failed one, written after the read
    facts, cache = read_rehash(store, "media", "media_documents", now, cache, None)
    assert rehash_bucket(late) in facts.passed
    # Only the look-back's keys are remembered (the 3-day-old one is past it): bounded state.
    assert late_key in cache["read"] and len(cache["read"]) == 3
    assert abs((facts.since - early).total_seconds()) < 1  # the history start is kept


def test_a_backup_of_a_run_triggered_by_hand_is_the_tiers_restore_point(
    policy_file, stores
) -> None:
    """A run triggered by hand fills a window with microseconds (its logical date), while the
    backup's keys name the window to the second: `check` reads that backup as its tier's
    newest restore point, instead of failing on it as UNKNOWN."""
    from include.backup_dr.monitor.record import check, read_state
    from tests.integration.helpers import back_up

    policy = policy_file(lean_policy)
    by_hand = datetime.now(UTC).replace(microsecond=404957)
    back_up(policy, stores, TARGET, "6h", by_hand, {"run_id": f"manual__{by_hand.isoformat()}"})

    checks, _ = check(policy, list(stores), datetime.now(UTC), read_state(list(stores)))
    for region in policy.iter_regions():
        (age,) = [c for c in checks if c.id == f"backup_age:{TARGET}/6h@{region.name}"]
        assert age.status.name == "OK", age
        assert f"window {by_hand:%Y-%m-%d %H:%M}, taken " in age.detail, age.detail
