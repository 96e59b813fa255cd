"""The restore-validation suites as plain data: the manifest suite, the rule files and their errors.

No database: the GX calls are exercised by tests/integration/test_validation.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from include.backup_dr.restore.validation import (
    EXPECTATIONS_DIR,
    ExpectationResult,
    ValidationResult,
    business_suite,
    load_business_rules,
    manifest_expectations,
)

REPO = Path(__file__).resolve().parents[2]

TABLES = {
    "public.users": {
        "rows": 12000,
        "primary_key": ["id"],
        "foreign_keys": [
            {"columns": ["tenant_id"], "references": "public.tenants", "referenced_columns": ["id"]}
        ],
    },
    "public.memberships": {
        "rows": 7,
        "primary_key": ["tenant_id", "user_id"],
        "foreign_keys": [
            {
                "columns": ["tenant_id", "user_id"],
                "references": "public.users",
                "referenced_columns": ["tenant_id", "id"],
            }
        ],
    },
    "audit.log": {"rows": 0, "primary_key": [], "foreign_keys": []},
}


def _types(planned, table: str) -> list[str]:
    return [p.expectation for p in planned if p.table == table]


def test_manifest_suite_covers_counts_keys_and_references() -> None:
    planned = manifest_expectations(TABLES)
    assert {p.suite for p in planned} == {"manifest"}
    assert [p.table for p in planned] == sorted(p.table for p in planned)  # stable, by name
    assert _types(planned, "public.users") == [
        "expect_table_row_count_to_equal",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
        "unexpected_rows_expectation",
    ]
    assert _types(planned, "public.memberships") == [
        "expect_table_row_count_to_equal",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_not_be_null",
        "expect_compound_columns_to_be_unique",
        "unexpected_rows_expectation",
    ]
    assert _types(planned, "audit.log") == ["expect_table_row_count_to_equal"]

    by_type = {(p.table, p.expectation): p for p in planned}
    assert by_type["public.users", "expect_table_row_count_to_equal"].kwargs == {"value": 12000}
    assert by_type["public.memberships", "expect_compound_columns_to_be_unique"].kwargs == {
        "column_list": ["tenant_id", "user_id"]
    }
    fk = by_type["public.memberships", "unexpected_rows_expectation"]
    query = fk.kwargs["unexpected_rows_query"]
    assert "FROM {batch} AS child LEFT JOIN" in query
    assert '"public"."users" AS parent' in query
    assert 'child."tenant_id" = parent."tenant_id" AND child."user_id" = parent."id"' in query
    assert 'child."tenant_id" IS NOT NULL AND child."user_id" IS NOT NULL' in query
    assert fk.needs == ("public.users",)
    assert "public.users" in fk.description and "orphan" in fk.description
    # Everything is plain data an evidence record can hold.
    json.dumps([p.kwargs for p in planned])


def test_manifest_suite_builds_real_gx_expectations() -> None:
    for index, planned in enumerate(manifest_expectations(TABLES)):
        expectation = planned.build(index)
        assert expectation.expectation_type == planned.expectation
        assert expectation.meta == {"index": index}
        assert expectation.description == planned.description


def test_manifest_facts_may_be_partial() -> None:
    planned = manifest_expectations({"public.t": {"primary_key": ["id"]}, "public.u": {}})
    assert _types(planned, "public.t") == [
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
    ]
    assert _types(planned, "public.u") == []


def test_shipped_rule_files_load() -> None:
    core = load_business_rules("platform_core")
    assert {r.suite for r in core} == {business_suite("platform_core")}
    assert 3 <= len(core) <= 4
    email = [r for r in core if r.expectation == "expect_column_values_to_match_regex"]
    assert email and email[0].table == "public.users" and email[0].kwargs["column"] == "email"
    plans = [r for r in core if "plans" in json.dumps(r.kwargs)]
    assert plans, "a rule checks that every tenant has a plan in the allowed set"
    assert len(load_business_rules("platform_billing")) == 2
    assert all(r.description for r in core)
    for path in EXPECTATIONS_DIR.glob("*.yaml"):
        assert path.read_text().startswith("#"), f"{path} documents its format in a header"
        load_business_rules(path.stem)


def test_no_rule_file_means_no_rules(tmp_path: Path) -> None:
    assert load_business_rules("uat_core", tmp_path) == []


GOOD = """\
  - table: public.users
    expectation: expect_column_values_to_not_be_null
    kwargs: {column: email}
    description: every user can be reached
"""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("expectations: [a, b", "not valid YAML"),
        ("rules: []", "'expectations' list"),
        ("expectations: []\nextra: 1", "unknown top-level key"),
        (
            "expectations:\n" + GOOD + "  - expectation: expect_column_values_to_be_unique\n"
            "    kwargs: {column: id}\n    description: ids are unique\n",
            "expectations[1]: missing key(s) ['table']",
        ),
        (
            "expectations:\n" + GOOD + "  - table: public.users\n"
            "    expectation: expect_column_values_to_be_uniq\n"
            "    kwargs: {column: id}\n    description: ids are unique\n",
            "expectations[1]: unknown expectation 'expect_column_values_to_be_uniq'"
            " (not a class in great_expectations.expectations, in snake_case);"
            " did you mean 'expect_column_values_to_be_unique'?",
        ),
        (
            "expectations:\n  - table: users\n    expectation: expect_column_values_to_be_unique\n"
            "    kwargs: {column: id}\n    description: ids\n",
            "expectations[0]: table must be 'schema.table'",
        ),
        (
            "expectations:\n  - table: public.users\n"
            "    expectation: expect_column_values_to_match_regex\n"
            "    kwargs: {colum: email, regex: '@'}\n    description: emails\n",
            "expectations[0]: invalid arguments for expect_column_values_to_match_regex",
        ),
        (
            "expectations:\n  - table: public.users\n    expectation: unexpected_rows_expectation\n"
            "    kwargs: {unexpected_rows_query: 'SELECT * FROM public.users'}\n"
            "    description: x\n",
            "expectations[0]: unexpected_rows_query must read {batch}",
        ),
        (
            "expectations:\n  - table: public.users\n    expectation: unexpected_rows_expectation\n"
            "    kwargs: {unexpected_rows_query: \"SELECT * FROM {batch} WHERE x ~ 'a{2}'\"}\n"
            "    description: x\n",
            "double literal braces",
        ),
        (
            "expectations:\n  - table: public.users\n"
            "    expectation: expect_column_values_to_be_unique\n    kwargs: {column: id}\n",
            "expectations[0]: missing key(s) ['description']",
        ),
        (
            "expectations:\n  - table: public.users\n"
            "    expectation: expect_column_values_to_be_unique\n"
            "    kwargs: {column: id, meta: {}}\n    description: x\n",
            "kwargs may not set ['meta']",
        ),
    ],
)
def test_bad_rule_files_name_the_file_and_entry(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "platform_core.yaml").write_text(body)
    with pytest.raises(ValueError) as raised:
        load_business_rules("platform_core", tmp_path)
    assert str(tmp_path / "platform_core.yaml") in str(raised.value)
    assert message in str(raised.value)


def test_report_document_counts_and_verdict() -> None:
    def result(success: bool) -> ExpectationResult:
        return ExpectationResult(
            "manifest", "public.t", "expect_table_row_count_to_equal", {"value": 1}, success,
            "1 rows", "why",
        )  # fmt: skip

    report = ValidationResult([result(True), result(False)], seconds=1.23456)
    assert not report.ok and report.failures() == [result(False)]
    document = json.loads(json.dumps(report.to_document()))
    assert (document["passed"], document["failed"], document["seconds"]) == (1, 1, 1.235)
    assert document["ok"] is False and len(document["results"]) == 2
    assert document["results"][0]["observed"] == "1 rows"
    assert ValidationResult([result(True)]).ok
    assert not ValidationResult([]).ok  # nothing checked is not a pass


#: Run in a fresh interpreter: whether GX's import loads a library depends on what the process
#: imported before, and pytest's process may already hold them.
_IMPORT_PROBE = """
import inspect, json, sys
from include.backup_dr.restore import validation

validation._gx()
inspect.stack()  # scans sys.modules, as Airflow's AWS hook does at every client creation
loaded = {name: type(sys.modules[name]) is type(sys) for name in validation.DEFERRED_IMPORTS}
from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl

entropy = float(kl.stats.entropy([0.5, 0.5], [0.9, 0.1]))
chart = kl.alt.Chart.__name__
print(json.dumps({
    "loaded_before_use": loaded,
    "kl_rule_known": "expect_column_kl_divergence_to_be_less_than" in validation._expectation_classes(),
    "entropy": entropy,
    "chart": chart,
    "loaded_after_use": [type(sys.modules[n]) is type(sys) for n in validation.DEFERRED_IMPORTS],
}))
"""


def test_gx_defers_statistics_and_charts_until_an_expectation_uses_them() -> None:
    """scipy.stats and altair (~95 MB, over the 300 MB task limit) stay unloaded through GX's
    import and a scan of sys.modules, and work for real once an expectation uses them."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["loaded_before_use"] == {"scipy.stats": False, "altair": False}
    assert probe["kl_rule_known"]
    assert probe["entropy"] == pytest.approx(0.5108, abs=1e-4)  # KL(0.5,0.5 || 0.9,0.1)
    assert probe["chart"] == "Chart"
    assert probe["loaded_after_use"] == [True, True]
