"""Restore validation with real Great Expectations against a real, throw-away PostgreSQL.

The server is this module's own (the pgserver wheel's binaries on 127.0.0.1, trust auth, port
17900 or VALIDATION_TEST_PG_PORT), not the session stack: these tests need nothing else.
Each scenario gets its own copy of a small clean database (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from include.backup_dr.restore.validation import (
    EXPECTATIONS_DIR,
    ValidationResult,
    load_business_rules,
    validate_database,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pgserver's import makes platformdirs warn
    import pgserver
    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("VALIDATION_TEST_PG_PORT", "17900"))
PG_BIN = Path(pgserver.__file__).parent / "pginstall" / "bin"
OS_USER = "pgserver" if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root

SHOP_SQL = """
CREATE TABLE plans (id smallint PRIMARY KEY, code text NOT NULL);
CREATE TABLE tenants (
    id bigint PRIMARY KEY, plan_id smallint NOT NULL REFERENCES plans (id), slug text NOT NULL
);
-- users.tenant_id has no constraint on purpose: a restore that lost it, so orphans can exist.
CREATE TABLE users (id bigint PRIMARY KEY, tenant_id bigint NOT NULL, email text NOT NULL);
CREATE TABLE memberships (
    tenant_id bigint NOT NULL REFERENCES tenants (id), user_id bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
INSERT INTO plans VALUES (1, 'free'), (2, 'starter'), (3, 'pro'), (4, 'enterprise');
INSERT INTO tenants SELECT t, 1 + t % 4, 'tenant-' || t FROM generate_series(1, 200) AS t;
INSERT INTO users SELECT u, 1 + u % 200, 'user' || u || '@example.org'
    FROM generate_series(1, 2000) AS u;
INSERT INTO memberships SELECT 1 + u % 200, u FROM generate_series(1, 2000) AS u;
"""


def shop_manifest(**rows: int) -> dict[str, dict]:
    """What the backup recorded for the shop database (``rows`` overrides counts)."""
    counts = {"plans": 4, "tenants": 200, "users": 2000, "memberships": 2000, **rows}
    fk = {"references": "public.tenants", "referenced_columns": ["id"]}
    return {
        "public.plans": {"rows": counts["plans"], "primary_key": ["id"], "foreign_keys": []},
        "public.tenants": {
            "rows": counts["tenants"],
            "primary_key": ["id"],
            "foreign_keys": [
                {"columns": ["plan_id"], "references": "public.plans", "referenced_columns": ["id"]}
            ],
        },
        "public.users": {
            "rows": counts["users"],
            "primary_key": ["id"],
            "foreign_keys": [{"columns": ["tenant_id"], **fk}],
        },
        "public.memberships": {
            "rows": counts["memberships"],
            "primary_key": ["tenant_id", "user_id"],
            "foreign_keys": [{"columns": ["tenant_id"], **fk}],
        },
    }


class Server:
    """The module's PostgreSQL: make databases, run SQL, hand out SQLAlchemy URLs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._copies = 0

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg2://postgres:postgres@127.0.0.1:{self.port}/{dbname}"

    def create(self, dbname: str, sql: str, template: str = "template1") -> None:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{template}"')
        if sql:
            with self.connect(dbname) as conn:
                conn.execute(sql)

    def copy(self, template: str, sql: str = "") -> str:
        """A fresh copy of ``template`` with ``sql`` applied; returns its URL."""
        self._copies += 1
        dbname = f"{template}_{self._copies}"
        self.create(dbname, sql, template)
        return self.url(dbname)


def _pg(argv: list[str], cwd: Path) -> None:
    """Run a server tool as the data directory's owner; output to a file, never a pipe."""
    with (cwd.parent / "tools.log").open("ab") as log:  # beside the data dir: initdb wants it empty
        subprocess.run(argv, user=OS_USER, cwd=cwd, stdout=log, stderr=log, check=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("validation-pg")
    data = base / "data"
    data.mkdir()
    if OS_USER is not None:
        entry = ensure_user_exists(OS_USER)
        ensure_prefix_permissions(data)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(PG_BIN, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(PG_BIN.parent / "lib", readable)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    _pg([*initdb, "--encoding=UTF8", "--locale=C"], data)
    options = f"-h 127.0.0.1 -p {PORT} -k {data} -c fsync=off"
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log")]
    try:
        _pg([*ctl, "-o", options, "-w", "-t", "60", "start"], data)
    except subprocess.CalledProcessError:
        log = (data / "server.log").read_text() if (data / "server.log").exists() else ""
        pytest.fail(
            f"PostgreSQL did not start on port {PORT} (set VALIDATION_TEST_PG_PORT):\n{log}"
        )
    try:
        srv = Server(PORT)
        srv.create("shop", SHOP_SQL)
        yield srv
    finally:
        _pg([*ctl, "-m", "immediate", "-w", "stop"], data)
        shutil.rmtree(base, ignore_errors=True)


def _by(report: ValidationResult, table: str, expectation: str) -> list:
    return [r for r in report.results if r.table == table and r.expectation == expectation]


def test_clean_database_passes_with_a_result_per_expectation(
    server: Server, tmp_path: Path
) -> None:
    url = server.copy("shop")
    report = validate_database(url, "shop", shop_manifest(), rules_dir=tmp_path)

    assert report.ok, report.failures()
    assert _sessions(server, url.rsplit("/", 1)[1]) == 0  # so the drill can drop it at once
    # 4 row counts, 5 not-null (one per key column), 3 unique + 1 compound, 3 foreign keys.
    assert len(report.results) == 16
    assert {r.suite for r in report.results} == {"manifest"}
    (count,) = _by(report, "public.users", "expect_table_row_count_to_equal")
    assert count.observed == "2000 rows" and count.kwargs == {"value": 2000}
    (compound,) = _by(report, "public.memberships", "expect_compound_columns_to_be_unique")
    assert compound.success and compound.observed == "0 unexpected of 2000 rows"
    (fk,) = _by(report, "public.users", "unexpected_rows_expectation")
    assert fk.observed == "0 unexpected rows" and "public.tenants" in fk.description
    assert 0 < report.seconds < 60
    document = json.loads(json.dumps(report.to_document()))
    assert (document["ok"], document["passed"], document["failed"]) == (True, 16, 0)
    # An ephemeral context: GX wrote no project folder here or in the repository.
    assert not (REPO / "gx").exists() and not (Path.cwd() / "gx").exists()


def test_wrong_row_count_fails_that_result(server: Server, tmp_path: Path) -> None:
    tables = shop_manifest(users=2001)
    report = validate_database(server.copy("shop"), "shop", tables, rules_dir=tmp_path)

    assert not report.ok
    (failure,) = report.failures()
    assert (failure.table, failure.expectation) == (
        "public.users",
        "expect_table_row_count_to_equal",
    )
    assert failure.observed == "2000 rows (expected 2001)"


def test_orphan_foreign_key_fails_and_shows_the_orphan(server: Server, tmp_path: Path) -> None:
    url = server.copy("shop", "INSERT INTO users VALUES (9999, 424242, 'lost@example.org')")
    report = validate_database(url, "shop", shop_manifest(users=2001), rules_dir=tmp_path)

    (failure,) = report.failures()
    assert (failure.table, failure.expectation) == ("public.users", "unexpected_rows_expectation")
    assert failure.observed == '1 unexpected row: [{"tenant_id": 424242}]'
    assert failure.kwargs["unexpected_rows_query"].startswith('SELECT child."tenant_id"')


def test_missing_table_is_a_failed_result_not_an_exception(server: Server, tmp_path: Path) -> None:
    tables = shop_manifest()
    tables["public.invoices"] = {"rows": 5, "primary_key": ["id"], "foreign_keys": []}
    tables["public.memberships"]["foreign_keys"].append(
        {"columns": ["user_id"], "references": "public.people", "referenced_columns": ["id"]}
    )
    report = validate_database(server.copy("shop"), "shop", tables, rules_dir=tmp_path)

    failures = report.failures()
    assert {(f.table, f.expectation) for f in failures} == {
        ("public.invoices", "expect_table_row_count_to_equal"),
        ("public.invoices", "expect_column_values_to_not_be_null"),
        ("public.invoices", "expect_column_values_to_be_unique"),
        ("public.memberships", "unexpected_rows_expectation"),
    }
    assert all(
        f.observed == "table missing from the restored database"
        for f in failures
        if f.table == "public.invoices"
    )
    (people,) = [f for f in failures if f.table == "public.memberships"]
    assert people.observed == "referenced table public.people is missing"
    assert len(report.results) - len(failures) == 16  # the rest still ran, and passed


RULES = """\
# test rules for the shop database
expectations:
  - table: public.users
    expectation: expect_column_values_to_match_regex
    kwargs: {column: email, regex: '^[^@\\s]+@[^@\\s]+$'}
    description: every user has a plausible email address
  - table: public.tenants
    expectation: unexpected_rows_expectation
    kwargs:
      unexpected_rows_query: >-
        SELECT t.id, p.code FROM {batch} AS t JOIN public.plans AS p ON p.id = t.plan_id
        WHERE p.code NOT IN ('free', 'starter', 'pro', 'enterprise')
    description: every tenant has a plan in the allowed set
  - table: public.plans
    expectation: expect_column_values_to_be_in_set
    kwargs: {column: code, value_set: [free, starter, pro, enterprise]}
    description: only the plans we sell
"""


def test_business_rules_from_a_file_fail_and_show_the_bad_value(
    server: Server, tmp_path: Path
) -> None:
    (tmp_path / "shop.yaml").write_text(RULES)
    url = server.copy(
        "shop",
        "INSERT INTO users VALUES (5001, 1, 'not-an-email'), (5002, 2, 'also bad@x');"
        "INSERT INTO plans VALUES (9, 'legacy'); INSERT INTO tenants VALUES (201, 9, 'old');",
    )
    report = validate_database(
        url, "shop", shop_manifest(users=2002, plans=5, tenants=201), rules_dir=tmp_path
    )

    rules = [r for r in report.results if r.suite == "business rules (shop)"]
    assert [r.expectation for r in rules] == [
        "expect_column_values_to_match_regex",
        "unexpected_rows_expectation",
        "expect_column_values_to_be_in_set",
    ]
    assert [f.table for f in report.failures()] == [
        "public.users",
        "public.tenants",
        "public.plans",
    ]
    email, plan, code = rules
    assert email.observed.startswith("2 unexpected of 2002 rows: [")
    assert '"not-an-email"' in email.observed and '"also bad@x"' in email.observed
    assert email.description == "every user has a plausible email address"
    assert email.kwargs == {"column": "email", "regex": r"^[^@\s]+@[^@\s]+$"}
    assert plan.observed == '1 unexpected row: [{"id": 201, "code": "legacy"}]'
    assert code.observed == '1 unexpected of 5 rows: ["legacy"]'
    assert all(r.success for r in report.results if r.suite == "manifest")


def test_a_rule_that_errors_is_a_failed_result(server: Server, tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text(
        "expectations:\n"
        "  - table: public.users\n"
        "    expectation: expect_column_values_to_not_be_null\n"
        "    kwargs: {column: phone}\n"
        "    description: every user has a phone number\n"
        "  - table: public.users\n"
        "    expectation: unexpected_rows_expectation\n"
        "    kwargs: {unexpected_rows_query: 'SELECT * FROM {batch} AS u JOIN nowhere AS n"
        " ON n.id = u.id'}\n"
        "    description: joins a table that does not exist\n"
    )
    report = validate_database(server.copy("shop"), "shop", shop_manifest(), rules_dir=tmp_path)

    phone, nowhere = report.failures()
    assert phone.observed == 'error: The column "phone" in BatchData does not exist.'
    assert nowhere.observed.startswith("error: ") and '"nowhere" does not exist' in nowhere.observed
    assert len(report.results) == 18  # the table's other expectations still ran and passed


# ---- the shipped rule files, on the project's own sample schemas ---------------------------


def _sample(server: Server, kind: str, units: int) -> str:
    """A small local.sampledb database of ``kind``; returns its name."""
    from local.sampledb import SCHEMAS

    schema, dbname = SCHEMAS[kind], f"sample_{kind}"
    server.create(dbname, schema.tables)
    with server.connect(dbname) as conn:
        for group in schema.fills:
            for statement in group:
                conn.execute(statement.replace("{units}", str(units)))
        for statement in schema.constraints:
            conn.execute(statement)
    return dbname


_KEYS = """
SELECT con.contype::text, n.nspname || '.' || c.relname,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(num, i)
             JOIN pg_attribute AS a ON a.attrelid = con.conrelid AND a.attnum = k.num
             ORDER BY k.i),
       rn.nspname || '.' || rc.relname,
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(num, i)
             JOIN pg_attribute AS a ON a.attrelid = con.confrelid AND a.attnum = k.num
             ORDER BY k.i)
FROM pg_constraint AS con
JOIN pg_class AS c ON c.oid = con.conrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_class AS rc ON rc.oid = con.confrelid
LEFT JOIN pg_namespace AS rn ON rn.oid = rc.relnamespace
WHERE con.contype IN ('p', 'f') AND n.nspname = 'public'
ORDER BY 1 DESC, 2
"""


def _facts(server: Server, dbname: str) -> dict[str, dict]:
    """What a manifest records: exact counts and keys, read from the catalog."""
    tables: dict[str, dict] = {}
    with server.connect(dbname) as conn:
        names = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
        ).fetchall()
        for (name,) in names:
            (rows,) = conn.execute(f'SELECT count(*) FROM public."{name}"').fetchone()
            tables[f"public.{name}"] = {"rows": rows, "primary_key": [], "foreign_keys": []}
        for kind, table, columns, references, referenced in conn.execute(_KEYS).fetchall():
            if kind == "p":
                tables[table]["primary_key"] = columns
            else:
                tables[table]["foreign_keys"].append(
                    {"columns": columns, "references": references, "referenced_columns": referenced}
                )
    return tables


def test_shipped_rules_pass_on_clean_sample_databases(server: Server) -> None:
    for kind, target in (("platform", "platform_core"), ("billing", "platform_billing")):
        dbname = _sample(server, kind, units=40)
        report = validate_database(server.url(dbname), target, _facts(server, dbname))
        assert report.ok, report.failures()
        rules = [r for r in report.results if r.suite == f"business rules ({target})"]
        assert len(rules) == len(load_business_rules(target, EXPECTATIONS_DIR))
        # The manifest suite covers every table with its count, keys and references.
        assert {r.expectation for r in report.results} >= {
            "expect_table_row_count_to_equal",
            "expect_column_values_to_not_be_null",
            "expect_column_values_to_be_unique",
            "unexpected_rows_expectation",
        }


def test_shipped_platform_rules_catch_bad_rows(server: Server) -> None:
    if "sample_platform" not in _databases(server):
        _sample(server, "platform", units=40)
    url = server.copy(
        "sample_platform",
        "INSERT INTO users VALUES (100001, 1, 'not-an-email', 'Bad Address', 'member', now(), NULL);"
        "INSERT INTO tenants VALUES (100001, 'no-owner', 'No Owner', 1, 'active', now());",
    )
    dbname = url.rsplit("/", 1)[1]
    report = validate_database(url, "platform_core", _facts(server, dbname))

    failures = {(f.table, f.expectation): f for f in report.failures()}
    assert set(failures) == {
        ("public.users", "expect_column_values_to_match_regex"),
        ("public.tenants", "unexpected_rows_expectation"),
    }
    assert (
        '"not-an-email"' in failures["public.users", "expect_column_values_to_match_regex"].observed
    )
    owner = failures["public.tenants", "unexpected_rows_expectation"]
    assert owner.observed == '1 unexpected row: [{"id": 100001, "slug": "no-owner"}]'
    assert "owner" in owner.description


def _databases(server: Server) -> set[str]:
    with server.connect() as conn:
        return {name for (name,) in conn.execute("SELECT datname FROM pg_database").fetchall()}


def _sessions(server: Server, dbname: str) -> int:
    with server.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        return conn.execute(query, (dbname,)).fetchone()[0]
