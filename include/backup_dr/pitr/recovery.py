"""Disaster recovery at a point in time (dr_restore with ``target_time``): recover each
server's cluster to T in a throwaway server, validate it, and only then pg_dump the requested
databases from it and pg_restore them into the destination."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.backup_dr.engines.pg_dump import _KEYS_SQL, _TABLES_SQL, PgConnectionInfo, pg_tool
from include.backup_dr.pitr.server import RecoveryFailed, recover
from include.backup_dr.pitr.window import (
    _provenance,
    check_target,
    parse_target_time,
    recovery_range,
)
from include.backup_dr.policy import CONTINUOUS, Policy, Target
from include.backup_dr.restore import create_database, database_size, drop_database, pg_restore


def recover_targets(
    policy: Policy,
    stores: Any,
    targets: list[Target],
    params: dict[str, Any],
    run: dict[str, str],
    *,
    scratch_dir: Path | str | None = None,
) -> list[dict[str, Any]]:
    """dr_restore with `target_time`: per server, recover the cluster to T in a throwaway
    server, validate it, and only then pg_dump each requested database from it and pg_restore
    it into `connection` (the caller has checked confirm and overwrite)."""
    from include.backup_dr.drill import DrillFailed, report
    from include.backup_dr.validation import validate_database

    store = stores.role(params.get("region") or "secondary")
    when = params["target_time"]
    by_server: dict[str, list[Target]] = {}
    for target in targets:
        assert target.server is not None
        by_server.setdefault(target.server, []).append(target)
    spans = {server: recovery_range(policy, store, server) for server in by_server}
    for span in spans.values():  # every requested time is checked before anything is done
        check_target(span, parse_target_time(when))
    conn_id = params["connection"]
    destination = PgConnectionInfo.from_airflow(conn_id, "postgres")
    records = []
    order = 0
    for server, group in by_server.items():
        with recover(
            policy, stores, server, store.region.name, when, scratch_dir, span=spans[server]
        ) as recovered:
            at_t = {}
            for target in group:
                assert target.database is not None
                connection = recovered.connect(target.database)
                try:
                    at_t[target.name] = table_facts(connection)
                finally:
                    connection.close()
                keys = {t: {**f, "rows": None} for t, f in at_t[target.name].items()}
                checked = validate_database(recovered.url(target.database), target.name, keys)
                if not checked.ok:
                    raise DrillFailed(
                        f"{target.name} recovered to {when} fails its checks; the "
                        "destination was not touched: "
                        + "; ".join(f"{r.expectation} on {r.table}" for r in checked.failures())
                    )
            for target in group:
                order += 1
                assert target.database is not None
                started = datetime.now(UTC)
                dumped = recovered.data_dir.parent / f"{target.database}.pgdump"
                clock = time.monotonic()
                _pg_dump(recovered.info(target.database), dumped)
                dump_seconds = time.monotonic() - clock
                drop_database(destination, target.database)
                create_database(destination, target.database)
                restore_seconds = pg_restore(dumped, destination, target.database, 2)
                dumped.unlink()
                dest_info = PgConnectionInfo(
                    destination.host,
                    destination.port,
                    destination.user,
                    target.database,
                    destination.env,
                )
                url = (
                    f"postgresql+psycopg2://{dest_info.user}:"
                    f"{dest_info.env.get('PGPASSWORD', '')}@{dest_info.host}:{dest_info.port}/"
                    f"{target.database}"
                )
                validation = validate_database(url, target.name, at_t[target.name])
                restored = {
                    "timings": {
                        **recovered.timings,
                        "pg_dump from the recovered server": round(dump_seconds, 3),
                        "pg_restore": round(restore_seconds, 3),
                    },
                    "archive_bytes": recovered.archive_bytes,
                    "restored_bytes": database_size(destination, target.database),
                    "order": order,
                    "started_at": started.isoformat(),
                    "target_time": recovered.target.isoformat() if recovered.target else "latest",
                    **_provenance(recovered.base),
                }
                ref = {
                    "category": target.category,
                    "target": target.name,
                    "tier": CONTINUOUS,
                    "window": recovered.base.id.window.isoformat(),
                    "region": recovered.region,
                    "reason": f"point in time {when}: base backup {recovered.base.id}, then WAL "
                    f"from {recovered.region}; {spans[server].describe()}",
                    "destination": f"{target.database} via {conn_id}",
                }
                records.append(
                    report(
                        policy,
                        stores,
                        ref,
                        restored,
                        validation.to_document(),
                        run,
                        kind="dr_restore",
                    )
                )
    return records


def _pg_dump(source: PgConnectionInfo, dest: Path) -> None:
    done = subprocess.run(
        [pg_tool("pg_dump"), "-Fc", "-f", str(dest), *source.args()],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RecoveryFailed(f"pg_dump of {source} exited {done.returncode}: {done.stderr[-2000:]}")


def table_facts(connection: Any) -> dict[str, dict[str, Any]]:
    """Row counts and keys of every user table, read from a (recovered) database."""
    tables: dict[str, dict[str, Any]] = {}
    with connection.cursor() as cursor:
        cursor.execute(_TABLES_SQL)
        for schema, table in cursor.fetchall():
            cursor.execute(f'SELECT count(*) FROM "{schema}"."{table}"')
            tables[f"{schema}.{table}"] = {
                "rows": cursor.fetchone()[0],
                "primary_key": [],
                "foreign_keys": [],
            }
        cursor.execute(_KEYS_SQL)
        for kind, table, columns, referenced, referenced_columns in cursor.fetchall():
            facts = tables.setdefault(table, {"primary_key": [], "foreign_keys": []})
            if kind == "p":
                facts["primary_key"] = list(columns)
            else:
                facts["foreign_keys"].append(
                    {
                        "columns": list(columns),
                        "references": referenced,
                        "referenced_columns": list(referenced_columns),
                    }
                )
    return tables
