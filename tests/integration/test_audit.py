"""The audit report against the real stores: real backups of two of three daily windows (one
by a backfill run, both taken weeks after their windows), a prune that deletes an expired one,
then the report, its evidence in both regions, and `python -m include.backup_dr audit --out`
as a user runs it. Then, under Object Lock: a deletion the store refuses, a break-glass
deletion, and the lock coverage sample, as the report lists them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from include.backup_dr.audit import build_audit, write_evidence
from include.backup_dr.backup.break_glass import delete_locked_backup
from include.backup_dr.backup.steps import prune
from include.backup_dr.catalogue import BackupId
from tests.integration.helpers import HELD, back_up
from tests.stack import REPO

pytestmark = pytest.mark.integration

TARGET, TIER = "platform_billing", "daily"
DAYS = [datetime(2026, 11, day, 0, 30, tzinfo=UTC) for day in (1, 2, 3)]
EXPIRED = datetime(2026, 10, 20, 0, 30, tzinfo=UTC)  # before the period: pruned on the 3rd


def _backup(policy, stores, window: datetime, run_id: str) -> None:
    back_up(policy, stores, TARGET, TIER, window, {"run_id": run_id})


def test_report_lists_the_missed_window_backfills_and_prune_reasons(
    stores, policy_file, tmp_path: Path
) -> None:
    policy = policy_file()
    _backup(policy, stores, EXPIRED, f"scheduled__{EXPIRED.isoformat()}")
    _backup(policy, stores, DAYS[0], f"scheduled__{DAYS[0].isoformat()}")
    # DAYS[1] is never backed up; DAYS[2] comes from a backfill run.
    _backup(policy, stores, DAYS[2], "backfill__2026-11-05T09:00:00+00:00")
    result = prune(policy, stores, TARGET, TIER, now=DAYS[2] + timedelta(minutes=30))
    assert result["deleted"] == 2  # the expired window, in both regions

    report = build_audit(policy, stores, date(2026, 11, 1), date(2026, 11, 3))
    row = next(w for w in report.windows if (w.subject, w.tier) == (TARGET, TIER))
    assert row.expected == tuple(DAYS)
    assert row.backed_up == (DAYS[0], DAYS[2])
    assert [(m.window, m.why) for m in row.missed] == [(DAYS[1], "no backup in any region")]
    # Both are filled late: DAYS[0] is taken now, weeks after its window (a scheduled run id).
    late = {b.window: b.how for b in row.backfilled}
    assert late[DAYS[2]] == "backfill run backfill__2026-11-05T09:00:00+00:00"
    assert late[DAYS[0]].startswith("taken ") and late[DAYS[0]].endswith(" after its window")
    integrity = {r.region: r for r in report.integrity if (r.subject, r.tier) == (TARGET, TIER)}
    assert {r: (i.passed, i.failed) for r, i in integrity.items()} == {
        "eu-west-1": (2, 0),
        "eu-central-1": (2, 0),
    }
    plan = next(p for p in report.prune if (p.subject, p.tier) == (TARGET, TIER))
    assert sorted(d.subject for d in plan.deletions) == [
        f"{TARGET}/{TIER}/20261020T003000Z@eu-central-1",
        f"{TARGET}/{TIER}/20261020T003000Z@eu-west-1",
    ]
    assert all(d.reason.startswith("expired") for d in plan.deletions)

    page = report.markdown()
    assert (
        f"| {TARGET} | {TIER} | `30 0 * * *` | 3 | 2 | 2 own reads | 1 | 2 | "
        "2026-10-20 (first evidence) |"
    ) in page
    assert f"| {TARGET} | {TIER} | 2026-11-02 00:30 UTC | no backup in any region |" in page
    assert plan.deletions[0].reason in page
    assert "platform_core: no evidence of a restore drill" in page  # nothing drilled it

    prefix = write_evidence(report, stores)
    for store in stores:
        for name, text in (
            ("report.md", "| no backup in any region |"),
            ("report.html", "<td>no backup in any region</td>"),
        ):
            body = store.client.get_object(Bucket=store.bucket, Key=prefix + name)["Body"]
            assert text in body.read().decode(), (store.region.name, name)

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "include.backup_dr",
            "audit",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-03",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    markdown = (tmp_path / "audit-20261101-20261103.md").read_text()
    html = (tmp_path / "audit-20261101-20261103.html").read_text()
    assert markdown.strip() == done.stdout.strip()
    assert f"| {TARGET} | {TIER} | 2026-11-02 00:30 UTC | no backup in any region |" in markdown
    assert "<td>2026-11-02 00:30 UTC</td><td>no backup in any region</td>" in html


def test_report_lists_refused_and_break_glass_deletions_and_samples_the_locks(
    locked,
) -> None:
    policy, stores = locked
    now = datetime.now(UTC).replace(microsecond=0)
    _backup(policy, stores, now - timedelta(hours=1), "scheduled__newest")
    _backup(policy, stores, now - timedelta(days=1), "scheduled__expired")
    expired = BackupId("platform", TARGET, TIER, now - timedelta(days=1))
    time.sleep(2)  # S3 times versions to the second; prune spares what it may not have seen
    # Planned a second after the lock the policy expects, while the store still holds it.
    planned = expired.window + HELD + timedelta(seconds=1)
    result = prune(policy, stores, TARGET, TIER, now=planned)
    assert (result["planned_deletions"], result["refused"]) == (2, 2)
    glass = delete_locked_backup(
        policy, expired, "secondary", reason="test data leaked into a backup", operator="sre"
    )

    report = build_audit(policy, stores, now.date() - timedelta(days=1), planned.date())
    row = next(p for p in report.prune if (p.subject, p.tier) == (TARGET, TIER))
    assert row.deletions == ()
    assert sorted(r.subject for r in row.refused) == [
        f"{expired}@eu-central-1",
        f"{expired}@eu-west-1",
    ]
    page = report.markdown()
    assert "### Refused deletions" in page and "| deletions refused by the store | 2 |" in page
    assert f"| A.8.10 | {TARGET}/{TIER}: deletion of {expired}@eu-west-1 refused" in page
    assert (
        f"| {expired} | eu-central-1 | sre | sre | test data leaked into a backup | deleted |"
    ) in page
    assert glass["outcome"] == "deleted"
    # Two backups sampled in the primary, one left in the secondary: manifest and artifact each;
    # and each region's two integrity records.
    samples = {(s.region, s.key): s for s in report.lock_samples}
    assert {region for region, _ in samples} == {"eu-west-1", "eu-central-1"}
    assert sum(not key.startswith("evidence/") for _, key in samples) == 6
    assert sum(key.startswith("evidence/integrity/") for _, key in samples) == 4
    assert all(s.covered for s in samples.values())
    assert "| sampled objects locked as long as needed | 10 of 10 |" in page


def test_report_lists_dr_restores_from_the_records_dr_restore_writes(stores, policy_file) -> None:
    """The writers dr_restore uses (one record per target, one for the run), read back."""
    from include.backup_dr.restore.record import record_estate, record_restore

    policy = policy_file()
    began = datetime.now(UTC).replace(microsecond=0)
    ref = {
        "category": "platform",
        "target": TARGET,
        "tier": TIER,
        "window": DAYS[0].isoformat(),
        "region": "eu-central-1",
        "reason": "newest verified in the DR region",
        "destination": "pg_platform_dr/platform_billing",
    }
    restored = {
        "timings": {"download": 2.0, "pg_restore": 8.0},
        "restored_bytes": 10_000_000,
        "age_seconds": 7 * 3600.0,  # over the 6 h RPO of a dump
        "started_at": began.isoformat(),
        "seconds_since_run_start": 12.0,
    }
    run = {"run_id": "manual__dr", "approved_by": "oncall"}
    target = record_restore(
        policy, stores, ref, restored, {"ok": True, "results": []}, run, kind="dr_restore"
    )
    record_estate(policy, stores, "dr_restore", run, [target], began)

    audit = build_audit(policy, stores, began.date(), began.date())
    (restore,) = audit.dr_restores
    assert restore.drill is not None and restore.drill.rpo_seconds == 7 * 3600.0
    assert (restore.within_rto, restore.within_rpo) == (True, False)
    (estate,) = audit.restore_runs
    assert estate.outcome == "passed" and estate.targets == (TARGET,)
    page = audit.markdown()
    assert "## DR restores" in page and "4h: within | passed |" in page
    assert f"| A.5.29, A.5.30 | {TARGET}: DR restore of " in page
    assert "over the RPO of 6h" in page
