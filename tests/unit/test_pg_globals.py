"""The pure parts of pg_globals: reading pg_dumpall's SQL, planning what a destination gets
(passwords stripped in a sandbox, the admin and bootstrap roles never touched, CREATE ROLE
idempotent), and rendering the database's owner, ACL and settings."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.catalogue import BackupId, RegionListing, StoredObject, build_catalogue
from include.backup_dr.pg_globals import (
    OBJECT_NAME,
    DatabaseFacts,
    Destination,
    Globals,
    Grant,
    Kind,
    database_statements,
    parse_globals,
    plan_roles,
    redacted,
    setting_clause,
    split_guc_list,
    split_statements,
    without_password,
)

SCRAM = "SCRAM-SHA-256$4096:nQ5uRB7L8g/UIgr49MYhOA==$vV0Rugs2qSbm=:SJS3iHbywQ7iZejl0xz5dT="

#: As PostgreSQL 16's pg_dumpall --globals-only writes it (taken from a real run, plus a
#: parameter grant by another grantor, which it wraps in SET SESSION AUTHORIZATION).
DUMPALL = f"""--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD '{SCRAM}';
CREATE ROLE "App Role";
ALTER ROLE "App Role" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 PASSWORD '{SCRAM}' VALID UNTIL 'infinity';
COMMENT ON ROLE "App Role" IS 'multi
line; -- with ''quote''';
CREATE ROLE readers;
ALTER ROLE readers WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE ops;
ALTER ROLE ops WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'md5c4ca4238a0b923820dcc509a6f75849b';

--
-- User Configurations
--

ALTER ROLE "App Role" SET search_path TO 'app', '$user', 'public';
ALTER ROLE ops SET "backup_dr.probe" TO 'on';
ALTER ROLE postgres SET work_mem TO '64MB';

--
-- Role memberships
--

GRANT readers TO "App Role" WITH INHERIT TRUE GRANTED BY postgres;
GRANT readers TO ops WITH ADMIN OPTION, INHERIT TRUE GRANTED BY postgres;
GRANT readers TO postgres WITH INHERIT TRUE GRANTED BY postgres;

SET SESSION AUTHORIZATION ops;
GRANT SET ON PARAMETER work_mem TO "App Role";
RESET SESSION AUTHORIZATION;
GRANT ALTER SYSTEM ON PARAMETER work_mem TO postgres;

--
-- PostgreSQL database cluster dump complete
--
"""

FRESH = Destination(
    admin="postgres",
    bootstrap="postgres",
    roles=frozenset({"postgres", "pg_read_all_data"}),
    memberships=frozenset(),
    settings=frozenset(),
)


def _creates(statements: tuple[str, ...]) -> list[str]:
    return [s for s in statements if s.startswith("CREATE ROLE")]


def test_statements_split_outside_quotes_and_comments() -> None:
    statements = split_statements(DUMPALL)
    comment = next(s for s in statements if s.startswith("COMMENT"))
    assert comment == "COMMENT ON ROLE \"App Role\" IS 'multi\nline; -- with ''quote'''"
    assert not any(s.startswith("--") for s in statements)
    kinds = [s.kind for s in parse_globals(DUMPALL)]
    assert kinds.count(Kind.CREATE) == 4 and kinds.count(Kind.MEMBERSHIP) == 3
    assert kinds.count(Kind.PARAMETER) == 2 and kinds.count(Kind.SESSION) == 5


def test_an_unterminated_statement_or_an_unknown_one_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match="end inside a statement"):
        split_statements("CREATE ROLE a;\nCREATE ROLE b")
    with pytest.raises(ValueError, match="not a statement the globals hold") as refused:
        parse_globals(f"DROP ROLE a; ALTER ROLE x PASSWORD '{SCRAM}' RENAME TO y;")
    assert "DROP ROLE a" in str(refused.value)
    with pytest.raises(ValueError, match=r"PASSWORD '\*\*\*'") as refused:
        parse_globals(f"CREATE ROLE x PASSWORD '{SCRAM}';")
    assert "SCRAM" not in str(refused.value)


def test_a_fresh_destination_gets_every_role_but_never_its_admin() -> None:
    plan = plan_roles(DUMPALL, FRESH, passwords=True)
    assert _creates(plan.statements) == [
        'CREATE ROLE "App Role"',
        "CREATE ROLE readers",
        "CREATE ROLE ops",
    ]
    assert plan.created == ("App Role", "readers", "ops") and plan.protected == ("postgres",)
    assert "ALTER ROLE postgres" not in " ".join(plan.statements)  # attributes nor settings
    assert "TO postgres" not in " ".join(plan.statements)  # no membership, no parameter grant
    # DR keeps the verifiers, so applications log in again without new passwords.
    assert sum(SCRAM in s for s in plan.statements) == 1
    assert any("md5c4ca" in s for s in plan.statements)
    # Grantors may not exist at the destination: the applying admin grants.
    memberships = [s for s in plan.statements if s.startswith("GRANT readers")]
    assert memberships == [
        'GRANT readers TO "App Role" WITH INHERIT TRUE',
        "GRANT readers TO ops WITH ADMIN OPTION, INHERIT TRUE",
    ]
    assert plan.memberships == 2 and plan.settings == 2
    assert 'GRANT SET ON PARAMETER work_mem TO "App Role"' in plan.statements
    assert not any(s.startswith(("SET", "RESET")) for s in plan.statements)


def test_a_sandbox_gets_the_roles_without_any_password() -> None:
    plan = plan_roles(DUMPALL, FRESH, passwords=False)
    text = "\n".join(plan.statements)
    assert "PASSWORD" not in text and "SCRAM" not in text and "md5" not in text
    assert plan.passwords_stripped == 2
    app = next(s for s in plan.statements if s.startswith('ALTER ROLE "App Role" WITH'))
    assert app.endswith("CONNECTION LIMIT 5 VALID UNTIL 'infinity'")


def test_the_restore_login_and_the_bootstrap_superuser_are_never_changed() -> None:
    destination = Destination(
        admin="ops",  # the restore connects as ops, the cluster was initdb'ed by postgres
        bootstrap="postgres",
        roles=frozenset({"postgres", "ops"}),
        memberships=frozenset(),
        settings=frozenset(),
    )
    plan = plan_roles(DUMPALL, destination, passwords=True)
    assert plan.protected == ("postgres", "ops")
    text = "\n".join(plan.statements)
    assert "ALTER ROLE ops" not in text and "ALTER ROLE postgres" not in text
    assert "TO ops" not in text and "TO postgres" not in text
    assert "md5c4ca" not in text  # the admin's password stays the destination's


def test_an_existing_role_keeps_its_password_and_gets_only_what_it_lacks() -> None:
    destination = Destination(
        admin="postgres",
        bootstrap="postgres",
        roles=frozenset({"postgres", "App Role", "readers"}),
        memberships=frozenset({("readers", "App Role")}),
        settings=frozenset(),
    )
    plan = plan_roles(DUMPALL, destination, passwords=True)
    assert plan.created == ("ops",) and plan.existing == ("App Role", "readers")
    text = "\n".join(plan.statements)
    assert 'ALTER ROLE "App Role" WITH' not in text and 'COMMENT ON ROLE "App Role"' not in text
    assert SCRAM not in text
    assert 'GRANT readers TO "App Role"' not in text  # already a member
    assert "ALTER ROLE \"App Role\" SET search_path TO 'app', '$user', 'public'" in text
    assert plan.memberships == 1  # ops, which is new

    with_setting = Destination(
        **{**destination.__dict__, "settings": frozenset({("App Role", "search_path")})}
    )
    assert "search_path" not in "\n".join(
        plan_roles(DUMPALL, with_setting, passwords=True).statements
    )


def test_create_role_is_idempotent_planned_again_after_it_ran() -> None:
    first = plan_roles(DUMPALL, FRESH, passwords=True)
    after = Destination(
        admin="postgres",
        bootstrap="postgres",
        roles=FRESH.roles | set(first.created),
        memberships=frozenset({("readers", "App Role"), ("readers", "ops")}),
        settings=frozenset({("App Role", "search_path"), ("ops", "backup_dr.probe")}),
    )
    again = plan_roles(DUMPALL, after, passwords=True)
    assert again.created == () and _creates(again.statements) == []
    # What is left re-grants parameter privileges only, which is a no-op when held.
    assert all(" ON PARAMETER " in s for s in again.statements)


def test_redaction_hides_only_the_password_value() -> None:
    sql = f"ALTER ROLE \"x PASSWORD 'y'\" WITH LOGIN PASSWORD '{SCRAM}' VALID UNTIL 'infinity'"
    assert redacted(sql) == (
        "ALTER ROLE \"x PASSWORD 'y'\" WITH LOGIN PASSWORD '***' VALID UNTIL 'infinity'"
    )
    assert without_password(sql) == (
        "ALTER ROLE \"x PASSWORD 'y'\" WITH LOGIN VALID UNTIL 'infinity'"
    )
    assert redacted("ALTER ROLE a WITH PASSWORD NULL") == "ALTER ROLE a WITH PASSWORD '***'"


def _quoted_like_postgres(element: str) -> str:
    """quote_identifier: bare when safe, else double-quoted with "" doubled."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", element):
        return element
    return '"' + element.replace('"', '""') + '"'


_ELEMENT = st.text(st.characters(exclude_characters="\x00"), max_size=12)


@given(st.lists(_ELEMENT, min_size=1, max_size=5))
def test_a_list_setting_keeps_every_element_through_its_quoting(elements: list[str]) -> None:
    """search_path as pg_db_role_setting stores it, read back element by element."""
    stored = ", ".join(_quoted_like_postgres(e) for e in elements)
    assert split_guc_list(stored) == elements
    clause = setting_clause(f"search_path={stored}")
    literals = re.findall(r"'((?:[^']|'')*)'", clause.split(" TO ", 1)[1])
    assert [v.replace("''", "'") for v in literals] == elements


@given(st.text(st.characters(exclude_characters="\x00"), max_size=40))
def test_any_other_setting_is_one_literal(value: str) -> None:
    clause = setting_clause(f"backup_dr.probe={value}")
    assert clause == '"backup_dr"."probe" TO ' + "'" + value.replace("'", "''") + "'"


def test_a_setting_without_a_name_is_refused() -> None:
    for bad in ("no equals sign", "1abc=1", "a;b=1"):
        with pytest.raises(ValueError, match="not a setting"):
            setting_clause(bad)


def test_the_database_gets_its_owner_exact_acl_and_settings_under_its_new_name() -> None:
    facts = DatabaseFacts(
        owner="App Role",
        acl=(Grant(None, "TEMPORARY", False), Grant("App Role", "CONNECT", True)),
        settings=('search_path="$user", public', "statement_timeout=5min"),
        role_settings=(("readers", "work_mem=8MB"), ("postgres", "work_mem=1GB")),
    )
    statements = database_statements(facts, "core__restoring_1", {"postgres"})
    db = '"core__restoring_1"'
    assert statements == [
        f'ALTER DATABASE {db} OWNER TO "App Role"',
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
        f'REVOKE ALL ON DATABASE {db} FROM "App Role"',
        f"GRANT TEMPORARY ON DATABASE {db} TO PUBLIC",
        f'GRANT CONNECT ON DATABASE {db} TO "App Role" WITH GRANT OPTION',
        f"ALTER DATABASE {db} SET \"search_path\" TO '$user', 'public'",
        f"ALTER DATABASE {db} SET \"statement_timeout\" TO '5min'",
        f'ALTER ROLE "readers" IN DATABASE {db} SET "work_mem" TO \'8MB\'',
    ]
    default = DatabaseFacts("postgres", None, (), ())
    assert database_statements(default, "x", ()) == ['ALTER DATABASE "x" OWNER TO "postgres"']


def test_the_kept_document_round_trips_and_refuses_what_a_restore_could_not_run() -> None:
    facts = DatabaseFacts("App Role", (Grant("App Role", "CONNECT", False),), (), ())
    kept = Globals("platform_core", DUMPALL, "kept", facts, "2026-12-06T00:00:00+00:00")
    assert Globals.from_bytes(kept.to_bytes()) == kept
    for broken in (
        b"{not json",
        b'{"schema": "something/else"}',
        kept.to_bytes().replace(b'"CONNECT"', b'"CONNECT; DROP TABLE x"'),
        kept.to_bytes().replace(b"CREATE ROLE readers", b"DROP ROLE readers"),
    ):
        with pytest.raises(ValueError):
            Globals.from_bytes(broken)


def test_a_globals_object_left_without_a_manifest_is_debris_that_prune_removes() -> None:
    """A snapshot that died after storing the globals and before its manifest: the object is
    listed as debris (its name starts with data.), so no prune ever leaves it orphaned."""
    window = datetime(2026, 12, 1, tzinfo=UTC)
    key = BackupId("platform", "platform_core", "daily", window).key(OBJECT_NAME)
    listing = RegionListing("eu-west-1", [StoredObject(key, 10, window)], {}, {})
    backups, debris = build_catalogue([listing])
    assert backups == [] and [d.key for d in debris] == [key]
