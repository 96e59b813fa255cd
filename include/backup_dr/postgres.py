"""How backup_dr reaches PostgreSQL: one path for every engine, restore and check.

An Airflow connection (host, port, login, password and its libpq extras) becomes a
`PgConnectionInfo`. The password and the extras travel as PG* environment variables to the
client tools (pg_dump, pg_restore, pg_basebackup, found by `pg_tool`) and as libpq keywords to
psycopg2 and SQLAlchemy, never on a command line or in a log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where the PostgreSQL client tools live when not on PATH (the local stack points it at PostgreSQL 16).
PG_BIN_ENV = "BACKUP_PG_BIN_DIR"


class SnapshotError(RuntimeError):
    """The source could not be snapshotted; the message says which target and why."""


def pg_tool(name: str) -> str:
    """Path of a PostgreSQL client tool: $BACKUP_PG_BIN_DIR first, then PATH."""
    bin_dir = os.environ.get(PG_BIN_ENV)
    candidate = Path(bin_dir, name) if bin_dir else None
    if candidate is not None and candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SnapshotError(f"{name} not found on PATH (or in ${PG_BIN_ENV})")
    return found


def tool_version(name: str) -> str:
    tool = pg_tool(name)
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SnapshotError(f"{tool} --version failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip()


def require_client_for(name: str, server_version_num: int, where: str) -> None:
    """Refuse a client tool older than the server: pg_dump and pg_basebackup cannot back up
    a newer major version. Checked when a backup starts, before anything is uploaded."""
    version = tool_version(name)
    match = re.search(r"\(PostgreSQL\) (\d+)", version)
    client = int(match[1]) if match else 0
    server = server_version_num // 10000
    if client < server:
        raise SnapshotError(
            f"{name} {client or version!r} cannot back up {where}, which runs PostgreSQL "
            f"{server}: install postgresql-client-{server} (or newer) on the workers, or point "
            f"${PG_BIN_ENV} at its bin directory (now {pg_tool(name)})"
        )


#: libpq connection keywords an Airflow connection's extras may set, with the environment
#: variable that carries each to pg_dump, pg_restore and pg_basebackup. Environment, not argv:
#: argv is world-readable (ps) and ends up in logs. psycopg2 and SQLAlchemy get the keywords.
LIBPQ_ENV: dict[str, str] = {
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "hostaddr": "PGHOSTADDR",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslcompression": "PGSSLCOMPRESSION",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH",
    "channel_binding": "PGCHANNELBINDING",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "service": "PGSERVICE",
}
#: The connection's own fields; an extra may not override them behind the UI's back.
_IDENTITY_KEYWORDS = frozenset({"host", "port", "user", "dbname", "password"})
#: Extras PostgresHook itself does not hand to libpq (cursor type, AWS/Azure lookups, ...).
_HOOK_ONLY_EXTRAS = frozenset(
    {"iam", "redshift", "redshift-serverless", "cursor", "cluster-identifier", "workgroup-name"}
    | {"aws_conn_id", "sqlalchemy_scheme", "sqlalchemy_query", "azure_conn_id"}
)


def libpq_env_from_extras(conn_id: str, extras: dict[str, Any]) -> dict[str, str]:
    """The connection's libpq extras as PG* environment variables.

    Refuses, naming the connection, what could not reach every client the same way: a keyword
    with no environment variable (keepalives, sslpassword, ...) would have to go on the command
    line, and IAM/Redshift/Azure token logins are not something backup_dr fetches.
    """
    env: dict[str, str] = {}
    for keyword, value in extras.items():
        if keyword in {"iam", "redshift", "redshift-serverless"} and value:
            raise SnapshotError(
                f"Airflow connection {conn_id}: extra {keyword!r} (token login) is not supported "
                "by backup_dr; use a password or a client certificate (sslcert/sslkey)"
            )
        if keyword in _HOOK_ONLY_EXTRAS:
            continue
        if keyword in _IDENTITY_KEYWORDS:
            raise SnapshotError(
                f"Airflow connection {conn_id}: extra {keyword!r} would override the connection's "
                "own field; set it in the connection's field instead"
            )
        if keyword not in LIBPQ_ENV:
            raise SnapshotError(
                f"Airflow connection {conn_id}: extra {keyword!r} cannot reach pg_dump, "
                "pg_restore and pg_basebackup without putting it on the command line; "
                f"supported extras: {', '.join(sorted(set(LIBPQ_ENV) - _IDENTITY_KEYWORDS))}"
            )
        env[LIBPQ_ENV[keyword]] = str(int(value)) if isinstance(value, bool) else str(value)
    return env


@dataclass
class PgConnectionInfo:
    """Enough to reach one database. `env` holds the password and the connection's libpq extras
    as PG* variables (the one place every client reads them from); the rest is safe to log."""

    host: str
    port: int
    user: str
    database: str
    env: dict[str, str] = field(repr=False, default_factory=dict)
    conn_id: str = ""

    @classmethod
    def from_airflow(cls, conn_id: str, database: str) -> PgConnectionInfo:
        """The Airflow connection with its extras (sslmode, sslrootcert, options, ...), which
        PostgresHook would hand to libpq: here they reach psycopg2, SQLAlchemy and the tools."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        conn = PostgresHook.get_connection(conn_id)
        env = {
            "PGPASSWORD": conn.password or "",
            "PGCONNECT_TIMEOUT": "10",
            **libpq_env_from_extras(conn_id, conn.extra_dejson),
        }
        host, port = conn.host or "127.0.0.1", int(conn.port or 5432)
        return cls(host, port, conn.login or "", database, env, conn_id)

    def libpq_keywords(self) -> dict[str, str]:
        """`env` as libpq keywords (password included), for psycopg2 and SQLAlchemy."""
        return {keyword: self.env[var] for keyword, var in LIBPQ_ENV.items() if var in self.env}

    def sqlalchemy_url(self, database: str | None = None) -> str:
        """For SQLAlchemy (Great Expectations): every part escaped, so a password holding
        URL syntax (@ : / % ...) stays one password; the extras ride as query parameters,
        which the psycopg2 dialect passes to libpq. Contains the secret: never log it."""
        from sqlalchemy.engine import URL

        query = {k: v for k, v in self.libpq_keywords().items() if k != "password"}
        return URL.create(
            "postgresql+psycopg2",
            username=self.user,
            password=self.env.get("PGPASSWORD") or None,
            host=self.host,
            port=self.port,
            database=database or self.database,
            query=query,
        ).render_as_string(hide_password=False)

    def args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", self.database]

    def connect(self) -> Any:
        import psycopg2

        arguments: dict[str, Any] = {
            "connect_timeout": 10,
            "application_name": "backup_dr snapshot",
            **self.libpq_keywords(),
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.database,
        }
        try:
            return psycopg2.connect(**arguments)
        except psycopg2.Error as exc:
            settings = sorted(set(self.libpq_keywords()) - {"password"})
            raise SnapshotError(
                f"cannot connect to database {self} as {self.user} "
                f"(libpq settings: {', '.join(settings) or 'none'}): {str(exc).strip()}"
            ) from exc

    def __str__(self) -> str:
        where = f"{self.database} at {self.host}:{self.port}"
        return f"{where} (Airflow connection {self.conn_id})" if self.conn_id else where


def run_sql(connection: Any, sql: str) -> list[tuple]:
    """Run one statement on a connection opened for it, then close the connection: the rows,
    or none for a statement that returns none (DDL)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def database_of(conn_id: str) -> str:
    """The database an Airflow connection names (its schema), else `postgres`: where the
    continuous monitor keeps its heartbeat, and where failover and the PITR drill read it."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook.get_connection(conn_id).schema or "postgres"
