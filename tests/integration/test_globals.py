"""A restored service works: the application's role (LOGIN, with a password) reads what it owns
and what it was granted after a DR restore, a point-in-time restore and the drill, connected AS
that role; and a backup whose globals object is lost fails its integrity check."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from include.backup_dr.catalogue import INTEGRITY_NAME, MANIFEST_NAME, BackupId
from local.sampledb import (
    APP_DATABASE,
    APP_GRANTED,
    APP_OWNS,
    APP_PASSWORD,
    APP_ROLE,
    READERS_GRANTED,
    READERS_ROLE,
)
from tests.integration.helpers import back_up, sql
from tests.stack import run_dag

pytestmark = pytest.mark.integration
WINDOW = datetime(2026, 11, 26, 0, 30, tzinfo=UTC)
GLOBALS = "data.globals.json"


def _fresh_sandbox() -> None:
    """The sandbox server as a new DR site: no databases but postgres, no application roles
    (an earlier restore may have left them, with or without a password)."""
    for (name,) in sql(
        "postgres",
        "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'",
        server="sandbox",
    ):
        sql("postgres", f'DROP DATABASE "{name}" WITH (FORCE)', server="sandbox")
    roles = [
        name
        for (name,) in sql(
            "postgres",
            f"SELECT rolname FROM pg_roles WHERE rolname IN ('{APP_ROLE}', '{READERS_ROLE}')",
            server="sandbox",
        )
    ]
    if roles:
        sql("postgres", f"DROP OWNED BY {', '.join(roles)}", server="sandbox")
        sql("postgres", f"DROP ROLE {', '.join(roles)}", server="sandbox")


@pytest.fixture
def sandbox(stack) -> Iterator[None]:
    _fresh_sandbox()
    yield
    _fresh_sandbox()


def _connect_as_app(database: str, server: str, *, socket: bool = False) -> psycopg.Connection:
    """AS the application role: over TCP with its production password, or over the server's
    Unix socket (trust), where a role restored without a password can still log in."""
    from local.config import HOST
    from local.pg import get_server

    where = get_server(server)  # type: ignore[arg-type]
    login = f"port={where.port} user={APP_ROLE} dbname={database}"
    if socket:
        return psycopg.connect(f"host={where.data_dir} {login}", autocommit=True)
    return psycopg.connect(f"host={HOST} password={APP_PASSWORD} {login}", autocommit=True)


def _what_the_app_sees(database: str, server: str, *, socket: bool = False) -> dict[str, Any]:
    with _connect_as_app(database, server, socket=socket) as conn:
        seen: dict[str, Any] = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in (*APP_OWNS, *APP_GRANTED, *READERS_GRANTED)
        }
        for setting in ("backup_dr.environment", "search_path", "statement_timeout"):
            seen[setting] = conn.execute(f"SHOW {setting}").fetchone()[0]  # type: ignore[index]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM plans")  # never granted: privileges are exact
    return seen


def _security(database: str, server: str) -> dict[str, Any]:
    """Table owners, table grants and the database's ACL and owner, as names."""
    owners = sql(
        database,
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        server=server,
    )
    grants = sql(
        database,
        "SELECT table_name, grantee, privilege_type FROM information_schema.table_privileges "
        "WHERE table_schema = 'public' AND grantee NOT IN ('postgres') ORDER BY 1, 2, 3",
        server=server,
    )
    acl = sql(
        "postgres",
        f"SELECT pg_get_userbyid(d.datdba), a.grantee::regrole::text, a.privilege_type "
        f"FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = '{database}' "
        "ORDER BY 2, 3",
        server=server,
    )
    return {"owners": owners, "grants": grants, "database_acl": acl}


def _backed_up(stores: Any, target: str, window: datetime) -> BackupId:
    """One backup through the tier's own steps: snapshot, copy, integrity check."""
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import from_ref

    run = {"dag_id": "platform_backup_daily", "run_id": f"globals-{window:%Y%m%d%H%M}"}
    return from_ref(back_up(load_policy(), stores, target, "daily", window, run))


def test_a_backup_keeps_the_globals_encrypted_beside_it_in_both_regions(stores) -> None:
    backup = _backed_up(stores, "platform_core", WINDOW)
    for store in stores:
        entry = store.manifest(backup).source["globals"]
        assert entry["key"] == backup.key(GLOBALS) and len(entry["sha256"]) == 64
        assert entry["role_passwords"].startswith("kept: the server's SCRAM-SHA-256")
        head = store.head(entry["key"])
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == store.kms_key_arn
        checks = {c["name"]: c for c in store.get_json(backup.key(INTEGRITY_NAME))["checks"]}
        assert checks["globals"]["ok"] and checks["globals encrypted"]["ok"]
        assert "the restore can read it" in checks["globals"]["detail"]


def test_dr_restore_brings_the_application_back_as_production_had_it(stores, sandbox) -> None:
    _backed_up(stores, "platform_core", WINDOW)
    production = _what_the_app_sees(APP_DATABASE, "platform")
    conf = {"targets": [APP_DATABASE], "connection": "pg_sandbox"}
    assert run_dag("dr_restore", WINDOW, conf, approve=True).state == "success"

    # AS the application, with its production password (kept as a SCRAM verifier).
    assert _what_the_app_sees(APP_DATABASE, "sandbox") == production
    assert _security(APP_DATABASE, "sandbox") == _security(APP_DATABASE, "platform")
    # The admin's own role was not touched: its password is still the sandbox's.
    assert sql("postgres", "SELECT 1", server="sandbox") == [(1,)]


def test_the_drill_restores_the_roles_without_their_passwords(stores, sandbox) -> None:
    from include.backup_dr.drill import dumps as drill
    from include.backup_dr.policy import load_policy
    from include.backup_dr.restore.select import select_backup

    _backed_up(stores, "platform_core", WINDOW)
    production = _what_the_app_sees(APP_DATABASE, "platform")
    policy = load_policy()
    selection = select_backup(policy, stores.secondary, APP_DATABASE, "daily", WINDOW)
    sql("postgres", "CREATE DATABASE drill_globals", server="sandbox")
    drill.restore_into(policy, stores, selection, "pg_sandbox", "drill_globals", 2)

    assert _what_the_app_sees("drill_globals", "sandbox", socket=True) == production
    assert _security("drill_globals", "sandbox") == _security(APP_DATABASE, "platform")
    # No production credential works in the sandbox.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect_as_app("drill_globals", "sandbox")
    (verifier,) = sql(
        "postgres",
        f"SELECT rolpassword FROM pg_authid WHERE rolname = '{APP_ROLE}'",
        server="sandbox",
    )[0]
    assert verifier is None


@pytest.fixture
def pitr_scratch(stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A scratch directory the throwaway server's OS user can traverse."""
    scratch = Path(tempfile.mkdtemp(prefix="pitr-globals-", dir="/tmp"))
    scratch.chmod(0o711)
    monkeypatch.setenv("BACKUP_PITR_SCRATCH_DIR", str(scratch))
    yield scratch
    shutil.rmtree(scratch, ignore_errors=True)


def _archive_now(timeout: float = 60.0) -> None:
    """Close the current WAL segment and wait until the server has archived it."""
    (segment,) = sql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (archived,) = sql("postgres", "SELECT last_archived_wal FROM pg_stat_archiver")[0]
        if archived is not None and archived >= segment:
            return
        time.sleep(0.3)
    raise AssertionError(f"WAL segment {segment} was not archived within {timeout} s")


def test_point_in_time_restore_brings_the_roles_of_the_recovered_cluster(
    stores, sandbox, pitr_scratch
) -> None:
    from include.backup_dr.backup import steps
    from include.backup_dr.dr.dumps import restore_unit
    from include.backup_dr.dr.request import DrRequest, make_plan
    from include.backup_dr.policy import load_policy

    policy = load_policy()
    now = datetime.now(UTC).replace(microsecond=0)
    run = {"dag_id": "dr_restore", "run_id": f"globals-pitr-{now:%H%M%S}"}
    ref = steps.take_snapshot(policy, stores, "platform_primary", "continuous", now, run)
    steps.copy_to_secondary(policy, stores, ref)
    steps.check_integrity(policy, stores, ref)
    _archive_now()
    production = _what_the_app_sees(APP_DATABASE, "platform")

    conf = {
        "targets": [APP_DATABASE],
        "connection": "pg_sandbox",
        "region": "secondary",
        "target_time": "latest",
    }
    request = DrRequest.from_params(policy, conf)
    (unit,) = make_plan(policy, stores, request, now).units
    (record,) = restore_unit(policy, stores, request, unit, run, now)
    assert record["outcome"] == "passed", record["problems"]
    assert _what_the_app_sees(APP_DATABASE, "sandbox") == production
    assert _security(APP_DATABASE, "sandbox") == _security(APP_DATABASE, "platform")
    assert list(pitr_scratch.iterdir()) == []


def _break(store: Any, key: str, how: str) -> None:
    if how == "missing":
        store.delete_all_versions(key)
        return
    body = bytearray(store.open(key).read())
    body[len(body) // 2] ^= 0x01  # same size, one bit
    store.put_bytes(key, bytes(body), "application/json")


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_backup_whose_globals_are_lost_fails_its_check_and_the_last_good_one_is_kept(
    stores, how: str
) -> None:
    from include.backup_dr.backup import steps
    from include.backup_dr.backup.errors import IntegrityError
    from include.backup_dr.policy import load_policy
    from include.backup_dr.restore.download import read_globals
    from include.backup_dr.restore.select import select_backup
    from include.backup_dr.stores import from_ref

    policy = load_policy()
    now = datetime.now(UTC).replace(microsecond=0)
    good = _backed_up(stores, "platform_billing", now - timedelta(days=30))  # past retention
    run = {"dag_id": "platform_backup_daily", "run_id": "globals-lost"}
    ref = steps.take_snapshot(policy, stores, "platform_billing", "daily", now, run)
    steps.copy_to_secondary(policy, stores, ref)
    lost = from_ref(ref)
    _break(stores.secondary, lost.key(GLOBALS), how)

    with pytest.raises(IntegrityError, match="globals: FAILED"):
        steps.check_integrity(policy, stores, ref)
    assert stores.primary.get_json(lost.key(INTEGRITY_NAME))["ok"] is True
    failed = stores.secondary.get_json(lost.key(INTEGRITY_NAME))
    assert [c["name"] for c in failed["checks"] if not c["ok"]] == ["globals"]

    time.sleep(2)  # prune spares versions S3 stamped in (or just before) its listing's second
    steps.prune(policy, stores, "platform_billing", "daily")
    # The secondary keeps its last good backup, whole (archive and globals), and restores it.
    assert stores.secondary.manifest(good) is not None
    selection = select_backup(policy, stores.secondary, "platform_billing", "daily")
    assert selection.backup == good
    kept = read_globals(stores.secondary, stores.secondary.manifest(good))
    assert kept is not None and kept.database == "platform_billing"
    # The primary's copy of it expired with a newer verified one there: deleted, globals too.
    assert list(stores.primary.list_objects(good.prefix)) == []
    # Whatever prune deleted went with its globals: none is left without its backup.
    for store in stores:
        keys = {o.key for o in store.list_objects("platform/platform_billing/daily/")}
        for key in keys:
            if key.endswith(GLOBALS):
                assert key.replace(GLOBALS, MANIFEST_NAME) in keys, f"orphan {key}"


@pytest.fixture
def reader_login(stack) -> Iterator[Any]:
    """A backup user that is not a superuser (as on a managed service): no pg_authid."""
    from include.backup_dr.postgres import PgConnectionInfo
    from local.config import HOST
    from local.pg import get_server

    sql("postgres", "DROP ROLE IF EXISTS globals_reader")
    sql("postgres", "CREATE ROLE globals_reader LOGIN PASSWORD 'reader-pw'")
    sql("postgres", f"GRANT CONNECT ON DATABASE {APP_DATABASE} TO globals_reader")
    port = get_server("platform").port
    yield PgConnectionInfo(HOST, port, "globals_reader", APP_DATABASE, {"PGPASSWORD": "reader-pw"})
    sql("postgres", f"REVOKE CONNECT ON DATABASE {APP_DATABASE} FROM globals_reader")
    sql("postgres", "DROP ROLE globals_reader")


def test_without_pg_authid_the_roles_are_kept_without_passwords_and_it_says_so(
    reader_login, caplog
) -> None:
    from include.backup_dr import pg_globals

    kept = pg_globals.capture(reader_login)
    assert kept.passwords == pg_globals.PASSWORDS_UNREADABLE
    assert "PASSWORD" not in kept.roles_sql and f"CREATE ROLE {APP_ROLE};" in kept.roles_sql
    assert kept.facts.owner == "postgres"
    assert ("platform_app", 'search_path=public, "$user"') in kept.facts.role_settings
    assert "kept WITHOUT their passwords" in caplog.text


def test_a_statement_that_fails_applies_none_of_them_and_never_shows_the_password(
    sandbox, caplog
) -> None:
    from include.backup_dr import pg_globals
    from include.backup_dr.restore.database import server_info

    secret = "SCRAM-SHA-256$4096:c2VjcmV0$c2VjcmV0:c2VjcmV0"
    roles_sql = (
        f"CREATE ROLE {READERS_ROLE};\n"
        f"ALTER ROLE {READERS_ROLE} WITH NOLOGIN;\n"
        f"CREATE ROLE {APP_ROLE};\n"
        # A destination that refuses it (the limit is out of range): the whole step fails.
        f"ALTER ROLE {APP_ROLE} WITH LOGIN PASSWORD '{secret}' CONNECTION LIMIT -7;\n"
    )
    facts = pg_globals.DatabaseFacts("postgres", None, (), ())
    kept = pg_globals.Globals(APP_DATABASE, roles_sql, pg_globals.PASSWORDS_KEPT, facts)
    with pytest.raises(pg_globals.GlobalsFailed, match=r"none of .* was applied") as failed:
        pg_globals.apply_roles(kept, server_info("pg_sandbox"), passwords=True)
    assert secret not in str(failed.value) and "PASSWORD '***'" in str(failed.value)
    assert failed.value.__suppress_context__  # the driver's text is not chained in
    assert secret not in caplog.text
    assert (
        sql(
            "postgres",
            f"SELECT rolname FROM pg_roles WHERE rolname IN ('{APP_ROLE}', '{READERS_ROLE}')",
            server="sandbox",
        )
        == []
    )
