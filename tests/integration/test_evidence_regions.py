"""Evidence writers against the real store with one region failing: each keeps its record in
the region that answers, names the one that did not, and acts on it (include/backup_dr/evidence.py's
one failure rule)."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta

import pytest

from include.backup_dr.audit.join import build_report
from include.backup_dr.audit.reader import write_evidence as write_audit
from include.backup_dr.backup.steps import check_integrity, copy_to_secondary, prune, take_snapshot
from include.backup_dr.catalogue import BackupId
from include.backup_dr.drill.pitr import write_evidence as write_pitr_drill
from include.backup_dr.store import StoreError
from include.backup_dr.stores import Stores

pytestmark = pytest.mark.integration

TARGET, TIER = "platform_billing", "daily"


@pytest.fixture
def secondary_down(stores, policy_file, monkeypatch):
    """The policy with the secondary region's S3 endpoint down (nothing listens on port 9)."""
    broken = {"conn_type": "aws", "login": "x", "password": "y"}
    broken["extra"] = {"endpoint_url": "http://127.0.0.1:9"}
    monkeypatch.setenv("AIRFLOW_CONN_S3_DOWN", json.dumps(broken))
    return policy_file(lambda d: d["regions"]["secondary"].update(conn_id="s3_down"))


def test_a_pitr_drill_record_is_kept_in_the_region_that_answers(stores, secondary_down) -> None:
    down = Stores.from_policy(secondary_down).secondary
    document = {
        "kind": "restore_verification",
        "target": "platform_primary",
        "backup": {"target": "platform_primary", "tier": "continuous", "window": "-"},
        "selection_reason": "test",
        "restored_into": "nowhere",
        "recorded_at": datetime.now(UTC).isoformat(),
        "run": {"run_id": "manual"},
        "outcome": "passed",
        "problems": [],
    }
    document["backup"]["region"] = stores.primary.region.name
    written = write_pitr_drill([down, stores.primary], document)  # the region down comes first
    assert written["evidence_missing_in"] == [down.region.name]
    prefix = written["evidence_prefix"]
    assert stores.primary.get_json(f"{prefix}/report.json")["target"] == "platform_primary"
    assert stores.primary.head(f"{prefix}/report.md")


def test_an_audit_report_is_kept_in_the_region_that_answers(stores, secondary_down) -> None:
    down = Stores.from_policy(secondary_down).secondary
    report = build_report(
        secondary_down, [], date(2026, 11, 1), date(2026, 11, 3), datetime.now(UTC)
    )
    prefix = write_audit(report, [down, stores.primary])
    assert prefix.startswith("evidence/audit/20261101-20261103/")
    for name in ("report.md", "report.html"):
        assert stores.primary.head(prefix + name)
    with pytest.raises(StoreError, match="any region"):
        write_audit(report, [down])


def test_a_prune_plan_held_by_one_region_is_enough_to_prune(stores, policy_file, monkeypatch):
    policy = policy_file()
    old = datetime(2026, 10, 1, 0, 30, tzinfo=UTC)
    for window in (old, old + timedelta(days=20)):
        ref = take_snapshot(policy, stores, TARGET, TIER, window, {})
        copy_to_secondary(policy, stores, ref)
        check_integrity(policy, stores, ref)
    refused = stores.secondary.put_bytes

    def refuse_evidence(key: str, *args, **kwargs) -> None:
        if key.startswith("evidence/"):
            raise StoreError(f"writing {key} in {stores.secondary.region.name} failed: denied")
        refused(key, *args, **kwargs)

    monkeypatch.setattr(stores.secondary, "put_bytes", refuse_evidence)
    time.sleep(2)  # S3 times versions to the second; prune spares what it may not have seen
    result = prune(policy, stores, TARGET, TIER, now=old + timedelta(days=20, minutes=30))
    assert result["deleted"] == 2  # the expired window, in both regions
    assert result["evidence_missing_in"] == [stores.secondary.region.name]
    assert stores.primary.get_json(result["evidence"])["executed"] is True
    assert stores.secondary.get_json(result["evidence"]) is None
    for store in stores:
        assert store.manifest(BackupId("platform", TARGET, TIER, old)) is None
