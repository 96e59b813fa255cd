"""Controls for the fault suite's own instruments: a comparison that cannot see a difference,
or a table row that outlives a crash, would let every fault test pass while proving nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.backup_dr.catalogue import BackupId
from tests.faults import harness
from tests.faults.harness import TARGET, WINDOW, commit, content_lost, only_targets, row_checksums

pytestmark = pytest.mark.integration


def test_content_comparison_sees_one_changed_row(stores, policy_file) -> None:
    from local.pg import connect

    policy = policy_file(only_targets(TARGET))
    baseline = row_checksums(TARGET)
    assert baseline and all(" rows, md5 " in v for v in baseline.values()), baseline
    commit(policy, stores, TARGET, "daily", WINDOW)
    backup = BackupId("platform", TARGET, "daily", WINDOW)
    region = stores.secondary.region.name
    assert content_lost(stores, baseline, [backup], region) == []
    table = sorted(baseline)[0]
    with connect(TARGET) as conn:  # one row, changed and changed back: same count, other text
        conn.execute("BEGIN")
        conn.execute(f"UPDATE {table} SET {_first_text_column(conn, table)} = 'x' || ctid::text")
        changed = harness.checksums_on(conn)
        conn.execute("ROLLBACK")
    assert changed[table] != baseline[table]
    (problem,) = content_lost(stores, changed, [backup], region)
    assert table in problem and baseline[table] in problem


def _first_text_column(conn, table: str) -> str:
    schema, name = table.split(".")
    (column,) = conn.execute(
        "SELECT quote_ident(column_name) FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = %s AND data_type IN ('text', 'character varying') "
        "ORDER BY ordinal_position LIMIT 1",
        (schema.strip('"'), name.strip('"')),
    ).fetchone()
    return column


def test_a_fault_tests_row_is_cleared_when_it_starts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(harness, "ARTIFACT", tmp_path / "faults.json")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/faults/test_x.py::test_y (call)")
    harness.record(
        "a fault",
        injected_when="now",
        lost=["a@eu-west-1 public.t: source 1 rows, restored 0 rows"],
        alert="none",
        recovery_seconds=1.0,
        clean_run_seconds=2.0,
    )
    harness.record(
        "another", injected_when="now", lost=[], alert="", recovery_seconds=1, clean_run_seconds=1
    )
    rows = json.loads(harness.ARTIFACT.read_text())
    assert rows["a fault"]["lost"] == ["a@eu-west-1 public.t: source 1 rows, restored 0 rows"]
    assert rows["a fault"]["test"] == "tests/faults/test_x.py::test_y"
    harness.clear_rows("tests/faults/test_x.py::test_other")
    assert set(json.loads(harness.ARTIFACT.read_text())) == {"a fault", "another"}
    harness.clear_rows("tests/faults/test_x.py::test_y")
    assert json.loads(harness.ARTIFACT.read_text()) == {}
