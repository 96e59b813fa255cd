"""Realistic sample databases on the local PostgreSQL, generated server-side.

Two schemas: ``platform`` (plans, tenants, users, projects, documents, audit_events) and
``billing`` (accounts, invoices, invoice_lines, payments), both with primary, unique and
foreign keys and CHECK-constrained enums. Rows come from generate_series with hash-derived
values: deterministic for a given size, no Python row loops, and text that compresses
about like real text (2-3x), so backup sizes and timings mean something.

Size means table + index + TOAST data; pg_database_size adds ~7.5 MB of catalogs.
A database is built under a temporary name and renamed at the end, so an interrupted
build never leaves a half-filled database under the real name.

Run: ``python -m local.sampledb --size-mb N [--db NAME] [--kind platform|billing]
[--server platform|tenants]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from psycopg import sql

from local.pg import ServerName, connect

# Deterministic pseudo-random integer in [0, 4294967291) from a row number.
_H = "(({x})::bigint * 2654435761 % 4294967291)"


def _h(x: str, salt: int = 0) -> str:
    return _H.format(x=f"{x} + {salt}" if salt else x)


# Text made of sha512 hex mapped onto letters and spaces: word-like, 4 bits per char.
_TEXT = "translate({hex}, '0123456789abcdef', 'etaoinsrhl dcu m')"


def _text(seed: str, blocks: int) -> str:
    parts = " || ".join(
        f"encode(sha512(('{chr(97 + b)}' || {seed})::text::bytea), 'hex')" for b in range(blocks)
    )
    return _TEXT.format(hex=parts)


def _ts(seed: str) -> str:
    """A timestamp in 2024-2025 derived from ``seed``."""
    return (
        f"timestamptz '2024-01-01 00:00:00+00' + ({_h(seed, 7)} % 63072000) * interval '1 second'"
    )


@dataclass(frozen=True)
class Schema:
    """DDL, constraints and fill statements of one kind of database, sized in units."""

    tables: str
    constraints: Sequence[str]
    fills: Sequence[Sequence[str]]  # groups of INSERTs; groups run concurrently
    bytes_per_unit: int  # measured on-disk bytes (with indexes) per scale unit


# ---- platform: one unit = one tenant with 8 users, 4 projects, 24 documents, 60 events ----
_USERS, _PROJECTS, _DOCS, _EVENTS = 8, 4, 24, 60

PLATFORM = Schema(
    tables="""
CREATE TABLE plans (
    id smallint NOT NULL,
    code text NOT NULL CHECK (code IN ('free', 'starter', 'pro', 'enterprise')),
    monthly_price_cents integer NOT NULL CHECK (monthly_price_cents >= 0),
    max_users integer NOT NULL
);
CREATE TABLE tenants (
    id bigint NOT NULL,
    slug text NOT NULL,
    name text NOT NULL,
    plan_id smallint NOT NULL,
    status text NOT NULL CHECK (status IN ('active', 'suspended', 'closed')),
    created_at timestamptz NOT NULL
);
CREATE TABLE users (
    id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    email text NOT NULL,
    full_name text NOT NULL,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz NOT NULL,
    last_login_at timestamptz
);
CREATE TABLE projects (
    id bigint NOT NULL,
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    archived boolean NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE documents (
    id bigint NOT NULL,
    project_id bigint NOT NULL,
    author_id bigint NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    version integer NOT NULL CHECK (version > 0),
    updated_at timestamptz NOT NULL
);
CREATE TABLE audit_events (
    id bigint NOT NULL,
    user_id bigint NOT NULL,
    action text NOT NULL,
    payload jsonb NOT NULL,
    occurred_at timestamptz NOT NULL
);
""",
    constraints=(
        "ALTER TABLE plans ADD PRIMARY KEY (id), ADD UNIQUE (code)",
        "ALTER TABLE tenants ADD PRIMARY KEY (id), ADD UNIQUE (slug)",
        "ALTER TABLE users ADD PRIMARY KEY (id), ADD UNIQUE (email)",
        "ALTER TABLE projects ADD PRIMARY KEY (id)",
        "ALTER TABLE documents ADD PRIMARY KEY (id)",
        "ALTER TABLE audit_events ADD PRIMARY KEY (id)",
        "ALTER TABLE tenants ADD FOREIGN KEY (plan_id) REFERENCES plans (id)",
        "ALTER TABLE users ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id)",
        "ALTER TABLE projects ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id)",
        "ALTER TABLE documents ADD FOREIGN KEY (project_id) REFERENCES projects (id)",
        "ALTER TABLE documents ADD FOREIGN KEY (author_id) REFERENCES users (id)",
        "ALTER TABLE audit_events ADD FOREIGN KEY (user_id) REFERENCES users (id)",
        "CREATE INDEX ON users (tenant_id)",
        "CREATE INDEX ON projects (tenant_id)",
        "CREATE INDEX ON documents (project_id)",
        "CREATE INDEX ON documents (author_id)",
        "CREATE INDEX ON audit_events (user_id, occurred_at)",
    ),
    fills=(
        (
            """INSERT INTO plans VALUES
                (1, 'free', 0, 3), (2, 'starter', 2900, 10),
                (3, 'pro', 9900, 50), (4, 'enterprise', 49900, 1000)""",
            f"""INSERT INTO tenants
                SELECT t, 'tenant-' || t, initcap(left({_text("t", 1)}, 12 + t % 20)),
                       1 + {_h("t")} % 4,
                       (ARRAY['active', 'active', 'active', 'suspended', 'closed'])[1 + {_h("t", 1)} % 5],
                       {_ts("t")}
                FROM generate_series(1, {{units}}) AS t""",
            f"""INSERT INTO users
                SELECT u, (u - 1) / {_USERS} + 1, 'user' || u || '@tenant-' || ((u - 1) / {_USERS} + 1) || '.example',
                       initcap(left({_text("u", 1)}, 8 + u % 16)),
                       CASE WHEN u % {_USERS} = 1 THEN 'owner'
                            ELSE (ARRAY['admin', 'member', 'member', 'viewer'])[1 + {_h("u")} % 4] END,
                       {_ts("u")},
                       CASE WHEN u % 7 = 0 THEN NULL ELSE {_ts("u + 1")} END
                FROM generate_series(1, {{units}} * {_USERS}) AS u""",
            f"""INSERT INTO projects
                SELECT p, (p - 1) / {_PROJECTS} + 1, initcap(left({_text("p", 1)}, 10 + p % 30)),
                       p % 11 = 0, {_ts("p")}
                FROM generate_series(1, {{units}} * {_PROJECTS}) AS p""",
        ),
        (
            # A document's author is a user of the tenant that owns its project.
            f"""INSERT INTO documents
                SELECT d, p, (p - 1) / {_PROJECTS} * {_USERS} + 1 + {_h("d", 3)} % {_USERS},
                       initcap(left({_text("d", 1)}, 16 + d % 48)),
                       left({_text("d", 8)}, 256 + ({_h("d", 5)} % 768)::int),
                       1 + {_h("d", 6)} % 9, {_ts("d")}
                FROM (SELECT d, 1 + {_h("d")} % ({{units}} * {_PROJECTS}) AS p
                      FROM generate_series(1, {{units}} * {_DOCS}) AS d) AS g""",
        ),
        (
            f"""INSERT INTO audit_events
                SELECT e, 1 + {_h("e")} % ({{units}} * {_USERS}),
                       (ARRAY['login', 'logout', 'document.create', 'document.update',
                              'document.delete', 'project.create', 'user.invite',
                              'settings.change'])[1 + {_h("e", 1)} % 8],
                       jsonb_build_object(
                           'request_id', md5(e::text),
                           'ip', '198.51.100.' || {_h("e", 2)} % 250,
                           'user_agent', (ARRAY['Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0',
                                                'Mozilla/5.0 (Macintosh) Safari/17.4',
                                                'backup-cli/2.3 python-requests/2.32'])[1 + {_h("e", 3)} % 3],
                           'changes', jsonb_build_object(
                               'field', (ARRAY['title', 'body', 'plan', 'role', 'name'])[1 + {_h("e", 4)} % 5],
                               'from', left({_text("e", 1)}, 8 + e % 24),
                               'to', left({_text("e + 1", 1)}, 8 + e % 24))),
                       {_ts("e")}
                FROM generate_series(1, {{units}} * {_EVENTS}) AS e""",
        ),
    ),
    bytes_per_unit=44_000,
)

# ---- billing: one unit = one account with 12 invoices of 3 lines and 10 payments ----
_INVOICES, _LINES = 12, 3

BILLING = Schema(
    tables="""
CREATE TABLE accounts (
    id bigint NOT NULL,
    tenant_ref bigint NOT NULL,
    currency char(3) NOT NULL CHECK (currency IN ('EUR', 'USD', 'GBP')),
    billing_email text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE invoices (
    id bigint NOT NULL,
    account_id bigint NOT NULL,
    number text NOT NULL,
    period_start date NOT NULL,
    period_end date NOT NULL,
    status text NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'void')),
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    issued_at timestamptz NOT NULL,
    CHECK (period_end > period_start)
);
CREATE TABLE invoice_lines (
    id bigint NOT NULL,
    invoice_id bigint NOT NULL,
    description text NOT NULL,
    quantity integer NOT NULL CHECK (quantity > 0),
    unit_price_cents integer NOT NULL CHECK (unit_price_cents >= 0)
);
CREATE TABLE payments (
    id bigint NOT NULL,
    invoice_id bigint NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    method text NOT NULL CHECK (method IN ('card', 'sepa', 'wire')),
    reference text NOT NULL,
    paid_at timestamptz NOT NULL
);
""",
    constraints=(
        "ALTER TABLE accounts ADD PRIMARY KEY (id), ADD UNIQUE (tenant_ref)",
        "ALTER TABLE invoices ADD PRIMARY KEY (id), ADD UNIQUE (number)",
        "ALTER TABLE invoice_lines ADD PRIMARY KEY (id)",
        "ALTER TABLE payments ADD PRIMARY KEY (id), ADD UNIQUE (reference)",
        "ALTER TABLE invoices ADD FOREIGN KEY (account_id) REFERENCES accounts (id)",
        "ALTER TABLE invoice_lines ADD FOREIGN KEY (invoice_id) REFERENCES invoices (id)",
        "ALTER TABLE payments ADD FOREIGN KEY (invoice_id) REFERENCES invoices (id)",
        "CREATE INDEX ON invoices (account_id, period_start)",
        "CREATE INDEX ON invoice_lines (invoice_id)",
        "CREATE INDEX ON payments (invoice_id)",
    ),
    fills=(
        (
            f"""INSERT INTO accounts
                SELECT a, a, (ARRAY['EUR', 'EUR', 'USD', 'GBP'])[1 + {_h("a")} % 4],
                       'billing@tenant-' || a || '.example', {_ts("a")}
                FROM generate_series(1, {{units}}) AS a""",
            f"""INSERT INTO invoice_lines
                SELECT l, (l - 1) / {_LINES} + 1,
                       (ARRAY['Platform subscription', 'Extra seats', 'Storage overage',
                              'Support plan', 'API calls'])[1 + {_h("l")} % 5]
                           || ' - ' || left({_text("l", 1)}, 12 + l % 40),
                       1 + {_h("l", 1)} % 20, 100 + {_h("l", 2)} % 49900
                FROM generate_series(1, {{units}} * {_INVOICES} * {_LINES}) AS l""",
            # Totals are the sums of the lines; a month per invoice from January 2024.
            f"""INSERT INTO invoices
                SELECT i, (i - 1) / {_INVOICES} + 1, 'INV-' || lpad(i::text, 9, '0'),
                       date '2024-01-01' + ((i - 1) % {_INVOICES}) * interval '1 month',
                       date '2024-02-01' + ((i - 1) % {_INVOICES}) * interval '1 month',
                       (ARRAY['paid', 'paid', 'paid', 'open', 'void', 'draft'])[1 + {_h("i")} % 6],
                       t.total,
                       timestamptz '2024-02-01 06:00:00+00' + ((i - 1) % {_INVOICES}) * interval '1 month'
                FROM (SELECT invoice_id AS i, sum(quantity::bigint * unit_price_cents) AS total
                      FROM invoice_lines GROUP BY invoice_id) AS t""",
            f"""INSERT INTO payments
                SELECT row_number() OVER (ORDER BY id), id, total_cents,
                       (ARRAY['card', 'sepa', 'wire'])[1 + {_h("id", 1)} % 3],
                       'PAY-' || md5('pay' || id), issued_at + ({_h("id", 2)} % 1209600) * interval '1 second'
                FROM invoices WHERE status = 'paid'""",
        ),
    ),
    bytes_per_unit=8_800,
)

SCHEMAS = {"platform": PLATFORM, "billing": BILLING}


def _run_group(dbname: str, statements: Sequence[str], units: int, server: ServerName) -> None:
    with connect(dbname, server=server) as conn:
        conn.execute("SET synchronous_commit = off")
        for statement in statements:
            conn.execute(statement.replace("{units}", str(units)))


def create(
    dbname: str,
    size_mb: float,
    kind: str = "platform",
    log: Callable[[str], None] = print,
    *,
    server: ServerName = "platform",
) -> None:
    """Drop ``dbname`` on ``server`` if it exists and build it with about ``size_mb`` MB of data."""
    schema = SCHEMAS[kind]
    units = max(1, round(size_mb * 1024 * 1024 / schema.bytes_per_unit))
    building = f"{dbname}__building"
    started = time.monotonic()
    with connect(server=server) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(building))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
    with connect(building, server=server) as conn:
        conn.execute(schema.tables)
    # Independent groups (e.g. documents and audit events) load on separate connections.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(_run_group, building, g, units, server) for g in schema.fills]:
            future.result()
    with connect(building, server=server) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        for statement in schema.constraints:
            conn.execute(statement)
        conn.execute("VACUUM (ANALYZE)")
        data_bytes = conn.execute(
            "SELECT sum(pg_total_relation_size(oid)) FROM pg_class "
            "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
        ).fetchone()[0]
    _replace_database(building, dbname, server)
    log(
        f"{dbname}: {kind} schema, {units} units, {data_bytes / 2**20:.1f} MB of data "
        f"in {time.monotonic() - started:.1f}s"
    )


def _replace_database(building: str, dbname: str, server: ServerName) -> None:
    """Swap the finished build in; autovacuum may be visiting it, so evict and retry."""
    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(building), sql.Identifier(dbname)
    )
    with connect(server=server) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        for attempt in range(10):
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (building,),
            )
            try:
                admin.execute(rename)
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.2 * (attempt + 1))
        admin.execute(rename)


def exists(dbname: str, *, server: ServerName = "platform") -> bool:
    with connect(server=server) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    return row is not None


# What `local.stack up` creates when missing: (name, MB, kind).
DEFAULT_DATABASES = (
    ("platform_core", 30, "platform"),
    ("platform_billing", 3, "billing"),
    ("uat_core", 3, "platform"),
)


#: The application's roles in production, on platform_core: restore tests connect as APP_ROLE
#: after a restore and read what it owns, what it was granted, and what READERS_ROLE grants it.
APP_DATABASE = "platform_core"
APP_ROLE = "platform_app"
APP_PASSWORD = "platform-app-local"  # noqa: S105 (throw-away local stack)
READERS_ROLE = "platform_readers"
APP_OWNS = ("documents", "audit_events")
APP_GRANTED = ("users",)  # SELECT, to the role itself
READERS_GRANTED = ("tenants", "projects")  # SELECT, through membership of READERS_ROLE


def ensure_app_roles() -> None:
    """Roles, grants, owners and settings as a real application has them (a LOGIN role with a
    password, a group role, CONNECT only for the application, database and role settings),
    none of which pg_dump keeps. Idempotent: each `stack up` brings them up to date."""
    role, readers = sql.Identifier(APP_ROLE), sql.Identifier(READERS_ROLE)
    database = sql.Identifier(APP_DATABASE)
    with connect() as admin:
        for name, login in ((READERS_ROLE, "NOLOGIN"), (APP_ROLE, "LOGIN")):
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                continue
            admin.execute(sql.SQL("CREATE ROLE {} " + login).format(sql.Identifier(name)))
        statements = (
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(APP_PASSWORD)),
            sql.SQL("ALTER ROLE {} SET statement_timeout = '5min'").format(role),
            sql.SQL("GRANT {} TO {}").format(readers, role),
            sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(database),
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role),
            sql.SQL("ALTER DATABASE {} SET backup_dr.environment = 'production'").format(database),
            sql.SQL('ALTER ROLE {} IN DATABASE {} SET search_path = public, "$user"').format(
                role, database
            ),
        )
        for statement in statements:
            admin.execute(statement)
    with connect(APP_DATABASE) as conn:
        for table in APP_OWNS:
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), role))
        for table in APP_GRANTED:
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), role))
        for table in READERS_GRANTED:
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), readers))


def ensure_defaults(log: Callable[[str], None] = print) -> None:
    for dbname, size_mb, kind in DEFAULT_DATABASES:
        if not exists(dbname):
            create(dbname, size_mb, kind, log)
    ensure_app_roles()


def main() -> None:
    parser = argparse.ArgumentParser(description="(Re)create a sample database on the local server")
    parser.add_argument("--size-mb", type=float, default=30, help="approximate data size (30)")
    parser.add_argument("--db", default="platform_core", help="database name (platform_core)")
    parser.add_argument("--kind", choices=sorted(SCHEMAS), default="platform")
    parser.add_argument("--server", choices=["platform", "tenants"], default="platform")
    args = parser.parse_args()
    create(args.db, args.size_mb, args.kind, server=args.server)


if __name__ == "__main__":
    main()
