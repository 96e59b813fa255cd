"""The local estate for real: two production servers holding 12+ databases with rows, reached
through the policy's own Airflow connections, the tenants server streaming to its standby."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.backup_dr.policy import load_policy
from include.backup_dr.postgres import PgConnectionInfo
from local import estate, pg

pytestmark = pytest.mark.integration

_TABLES = """
SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
"""


def _row_counts(info: PgConnectionInfo) -> dict[str, int]:
    conn = info.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(_TABLES)
            tables = [row[0] for row in cur.fetchall()]
            counts = {}
            for table in tables:
                cur.execute(f"SELECT count(*) FROM {table}")  # names quoted by quote_ident
                counts[table] = cur.fetchone()[0]
        return counts
    finally:
        conn.close()


def test_estate_databases_exist_on_both_servers_and_hold_rows(stack, tmp_path: Path) -> None:
    made: list[str] = []
    policy = load_policy(estate.ensure_estate(tmp_path / "estate.yaml", log=made.append))
    databases = [t for t in policy.targets if t.is_production and t.database is not None]
    assert len(databases) >= 12
    assert {t.server for t in databases} == {"platform_primary", estate.SERVER}
    for target in databases:
        conn_id = policy.server(target.server).conn_id
        counts = _row_counts(PgConnectionInfo.from_airflow(conn_id, target.database))
        assert counts, f"{target.name}: no tables through {conn_id}"
        assert all(counts.values()), f"{target.name}: empty tables {counts}"

    with pg.TENANTS.connect() as conn:
        streaming = conn.execute(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        ).fetchone()[0]
    assert streaming == 1  # the standby the policy names (pg_tenants_standby)

    again: list[str] = []
    estate.ensure_estate(tmp_path / "estate.yaml", log=again.append)
    assert again == []  # idempotent: existing databases are kept, not rebuilt


def test_estate_pool_is_in_airflow(stack) -> None:
    from airflow.models import Pool

    pool = Pool.get_pool(estate.DUMP_POOL)
    assert pool is not None and pool.slots == 2
