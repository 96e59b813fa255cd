"""An Airflow connection's extras (options, application_name, sslmode, ...) reach every libpq user:
psycopg2, the SQLAlchemy URL for Great Expectations, and pg_dump, proven on the real server.

The connection comes from an AIRFLOW_CONN_... variable (JSON), as a deployment's secrets backend
would hand it over, and points at the local platform server (built without SSL).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from include.backup_dr.catalogue import BackupId
from include.backup_dr.engines.pg_dump import PgDumpEngine, PgDumpSnapshot
from include.backup_dr.postgres import PgConnectionInfo, SnapshotError, pg_tool

pytestmark = pytest.mark.integration

CONN_ID = "pg_extras_test"
APP = "backup_dr_extras_test"
#: A custom setting only the options extra can set, and a zone whose offset no default has.
OPTIONS = "-c backup_dr.extras_probe=on -c TimeZone=Asia/Kathmandu"


def _platform() -> Any:
    from local.settings import read_settings

    return next(c for c in read_settings().connections if c.conn_id == "pg_platform")


@pytest.fixture
def connection(stack, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], str]:
    """Define CONN_ID (the local platform server) with the given extras; returns its id."""

    def define(extra: dict[str, Any]) -> str:
        platform = _platform()
        document = {
            "conn_type": "postgres",
            "host": platform.host,
            "port": platform.port,
            "login": platform.login,
            "password": platform.password,
            "schema": "postgres",
            "extra": extra,
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(document))
        return CONN_ID

    return define


def _observer() -> Any:
    """A plain connection (no extras) to look at the server from outside."""
    platform = _platform()
    conn = psycopg2.connect(
        host=platform.host,
        port=platform.port,
        user=platform.login,
        password=platform.password,
        dbname="postgres",
    )
    conn.autocommit = True
    return conn


def test_options_and_application_name_reach_psycopg2_sqlalchemy_and_pg_dump(
    connection, policy_file, tmp_path: Path
) -> None:
    conn_id = connection({"options": OPTIONS, "application_name": APP})
    info = PgConnectionInfo.from_airflow(conn_id, "platform_billing")
    # extras and the password travel in the child's environment, never in argv
    platform = _platform()
    assert info.args() == [
        "-h", platform.host, "-p", str(platform.port), "-U", platform.login, "-d", "platform_billing"
    ]  # fmt: skip

    # psycopg2, as every snapshot, restore and monitor connection is made
    db = info.connect()
    try:
        with db.cursor() as cursor:
            cursor.execute("SHOW backup_dr.extras_probe")  # unknown setting before the fix
            assert cursor.fetchone()[0] == "on"
            cursor.execute("SHOW TimeZone")
            assert cursor.fetchone()[0] == "Asia/Kathmandu"
            cursor.execute(
                "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
            assert cursor.fetchone()[0] == APP
    finally:
        db.close()

    # the SQLAlchemy URL handed to Great Expectations
    import sqlalchemy

    engine = sqlalchemy.create_engine(info.sqlalchemy_url())
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW backup_dr.extras_probe").scalar() == "on"
            assert conn.exec_driver_sql("SHOW application_name").scalar() == APP
    finally:
        engine.dispose()

    # pg_dump, through the engine the platform tiers use, with the server's connection swapped
    def use_extras_connection(data: dict[str, Any]) -> None:
        data["servers"][0]["conn_id"] = conn_id

    policy = policy_file(use_extras_connection)
    target = policy.subject("platform_billing", "6h")
    from include.backup_dr.stores import Stores

    observer = _observer()
    dump = tmp_path / "platform_billing.pgdump"
    try:
        backup = BackupId("platform", "platform_billing", "6h", datetime.now(UTC))
        with PgDumpEngine().open_snapshot(
            policy, target, Stores.from_policy(policy).primary, backup
        ) as snap:
            # pg_dump blocks on its full stdout pipe until read: it is on the server right now.
            seen: list[tuple[str, str]] = []
            deadline = time.monotonic() + 15
            while not seen and time.monotonic() < deadline:
                with observer.cursor() as cursor:
                    cursor.execute(
                        "SELECT application_name, query FROM pg_stat_activity "
                        "WHERE query LIKE 'COPY %%TO stdout%%' AND pid <> pg_backend_pid()"
                    )
                    seen = cursor.fetchall()
                time.sleep(0.05)
            assert seen, "pg_dump's COPY never showed in pg_stat_activity"
            assert {name for name, _ in seen} == {APP}, seen  # was "pg_dump" before the fix
            with dump.open("wb") as out:
                while chunk := snap.stream.read(1 << 20):
                    out.write(chunk)
            snap.finish()
    finally:
        observer.close()
    # Timestamps in the dump were rendered in the options' TimeZone (+05:45), not the server's.
    data = subprocess.run(
        [pg_tool("pg_restore"), "--data-only", "-t", "accounts", "-f", "-", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "+05:45" in data


def test_sslmode_require_is_honoured_and_the_error_names_the_connection(connection) -> None:
    conn_id = connection({"sslmode": "require"})
    info = PgConnectionInfo.from_airflow(conn_id, "platform_billing")

    with pytest.raises(SnapshotError, match=rf"(?s){CONN_ID}.*SSL") as raised:
        info.connect()  # connected without SSL before the fix
    assert "password" not in str(raised.value).lower()

    # the command-line tools get it too: pg_dump, started the way the engine starts it, refuses
    plain = PgConnectionInfo(info.host, info.port, info.user, info.database, {})
    plain.env["PGPASSWORD"] = _platform().password or ""
    exporter = plain.connect()
    try:
        exporter.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with exporter.cursor() as cursor:
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot_id = cursor.fetchone()[0]
        snap = PgDumpSnapshot(info, exporter, snapshot_id)
        try:
            snap.stream.read()
            with pytest.raises(SnapshotError, match=rf"(?s)pg_dump of .*{CONN_ID}.*(ssl|SSL)"):
                snap.finish()
        finally:
            snap.close()
    finally:
        exporter.close()
    assert "PGSSLMODE" not in os.environ  # it reached pg_dump through the child's environment only
