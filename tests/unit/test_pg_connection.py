"""How an Airflow connection's extras become libpq settings for every client (no server needed;
the server-side proof is tests/integration/test_connection_extras.py)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.engine import make_url

from include.backup_dr.postgres import (
    PgConnectionInfo,
    SnapshotError,
    libpq_env_from_extras,
)


def test_extras_become_pg_environment_variables() -> None:
    env = libpq_env_from_extras(
        "pg_x",
        {
            "sslmode": "verify-full",
            "sslrootcert": "/etc/ssl/rds.pem",
            "options": "-c statement_timeout=5s",
            "connect_timeout": 3,
            "sslsni": True,
            "cursor": "dictcursor",  # PostgresHook's own, not libpq's
            "sqlalchemy_scheme": "postgresql",
        },
    )
    assert env == {
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": "/etc/ssl/rds.pem",
        "PGOPTIONS": "-c statement_timeout=5s",
        "PGCONNECT_TIMEOUT": "3",
        "PGSSLSNI": "1",
    }


@pytest.mark.parametrize(
    ("extras", "message"),
    [
        ({"keepalives": 1}, "'keepalives' cannot reach pg_dump"),
        ({"sslpassword": "s3cret"}, "'sslpassword' cannot reach pg_dump"),
        ({"host": "elsewhere"}, "would override the connection's own field"),
        ({"iam": True}, "token login"),
    ],
)
def test_extras_that_cannot_reach_every_client_are_refused_by_name(
    extras: dict[str, object], message: str
) -> None:
    with pytest.raises(SnapshotError, match=f"Airflow connection pg_x: .*{message}") as raised:
        libpq_env_from_extras("pg_x", extras)
    assert "s3cret" not in str(raised.value)


def test_from_airflow_keeps_extras_out_of_argv_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    document = {
        "conn_type": "postgres",
        "host": "db.internal",
        "port": 6432,
        "login": "backup",
        "password": "p@ss:w/rd%",
        "extra": {"sslmode": "require", "options": "-c application_name=x"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_PG_UNIT_EXTRAS", json.dumps(document))
    info = PgConnectionInfo.from_airflow("pg_unit_extras", "core")

    assert info.args() == ["-h", "db.internal", "-p", "6432", "-U", "backup", "-d", "core"]
    assert info.env["PGSSLMODE"] == "require"
    assert info.env["PGOPTIONS"] == "-c application_name=x"
    assert "p@ss" not in repr(info) and "p@ss" not in str(info)
    assert "pg_unit_extras" in str(info)
    # copies made field by field (restore, recovery) keep the extras: they live in `env`
    copy = PgConnectionInfo(info.host, info.port, info.user, "other", info.env)
    assert copy.libpq_keywords()["sslmode"] == "require"

    url = make_url(info.sqlalchemy_url())
    assert url.password == "p@ss:w/rd%"
    assert url.query == {
        "sslmode": "require",
        "options": "-c application_name=x",
        "connect_timeout": "10",
    }
