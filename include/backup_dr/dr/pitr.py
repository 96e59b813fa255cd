"""Disaster recovery at a point in time (dr_restore with ``target_time``): recover each
server's cluster to T in a throwaway server, validate each database there, then pg_dump it
and restore it into a new database at the destination, validate that, and only then swap it
in (the database it replaces is renamed aside, never dropped)."""

from __future__ import annotations

import logging
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.backup_dr import pg_globals
from include.backup_dr.engines.pg_dump import read_keys, read_row_counts
from include.backup_dr.pitr.server import RecoveredServer, RecoveryFailed, recover
from include.backup_dr.pitr.window import (
    RecoveryRange,
    _provenance,
    check_target,
    parse_target_time,
    recovery_range,
)
from include.backup_dr.policy import CONTINUOUS, Policy, Target
from include.backup_dr.postgres import PgConnectionInfo, pg_tool
from include.backup_dr.restore.database import pg_restore, staging_name

if TYPE_CHECKING:
    from include.backup_dr.dr.request import DrRequest

log = logging.getLogger(__name__)


def recover_targets(
    policy: Policy,
    stores: Any,
    targets: list[Target],
    request: DrRequest,
    run: dict[str, str],
    *,
    scratch_dir: Path | str | None = None,
    began: datetime | None = None,
) -> list[dict[str, Any]]:
    """dr_restore with `target_time`: per server, recover the cluster to T in a throwaway
    server; per target, validate it at T, copy it into a new database at `connection`,
    validate that and swap it in (the caller has checked confirm and overwrite). One evidence
    record per target; a target that fails does not stop the next one."""
    from include.backup_dr.restore.record import describe_failure, failure_ref, record_restore

    store = stores.role(request.region)
    assert request.target_time is not None
    when = request.target_time
    began = began or datetime.now(UTC)
    by_server: dict[str, list[Target]] = {}
    for target in targets:
        assert target.server is not None
        by_server.setdefault(target.server, []).append(target)
    spans = {server: recovery_range(policy, store, server) for server in by_server}
    for span in spans.values():  # every requested time is checked before anything is done
        check_target(span, parse_target_time(when))
    conn_id = request.connection
    records: dict[str, dict[str, Any]] = {}
    order = 0
    for server, group in by_server.items():
        try:
            with recover(
                policy, stores, server, store.region.name, when, scratch_dir, span=spans[server]
            ) as recovered:
                for target in group:
                    order += 1
                    try:
                        records[target.name] = _recover_one(
                            policy,
                            stores,
                            recovered,
                            spans[server],
                            target,
                            request,
                            run,
                            order,
                            began,
                        )
                    except Exception as exc:  # recorded; the next target goes ahead
                        log.exception("Point-in-time restore of %s failed", target.name)
                        ref = _ref(recovered, target, when, spans[server], conn_id)
                        records[target.name] = record_restore(
                            policy,
                            stores,
                            ref,
                            None,
                            None,
                            run,
                            "dr_restore",
                            [describe_failure(exc)],
                        )
        except Exception as exc:
            # The cluster could not be recovered (or not stopped): every target of the server
            # not yet recorded fails with the reason; the destination was not touched for them.
            log.exception("Recovering %s to %s failed", server, when)
            for target in group:
                if target.name in records:
                    continue
                ref = failure_ref(
                    target, CONTINUOUS, store.region.name, "-", f"{target.database} via {conn_id}"
                )
                ref["reason"] = f"point in time {when}: {spans[server].describe()}"
                records[target.name] = record_restore(
                    policy, stores, ref, None, None, run, "dr_restore", [describe_failure(exc)]
                )
    return [records[t.name] for group in by_server.values() for t in group]


def _ref(
    recovered: RecoveredServer, target: Target, when: str, span: RecoveryRange, conn_id: str
) -> dict[str, str]:
    return {
        "category": target.category,
        "target": target.name,
        "tier": CONTINUOUS,
        "window": recovered.base.id.window.isoformat(),
        "region": recovered.region,
        "reason": f"point in time {when}: base backup {recovered.base.id}, then WAL "
        f"from {recovered.region}; {span.describe()}",
        "destination": f"{target.database} via {conn_id}",
    }


def _recover_one(
    policy: Policy,
    stores: Any,
    recovered: RecoveredServer,
    span: RecoveryRange,
    target: Target,
    request: DrRequest,
    run: dict[str, str],
    order: int,
    began: datetime,
) -> dict[str, Any]:
    """One database at T: validated in the recovered server, then `replace_database` at the
    destination; returns its evidence record."""
    from include.backup_dr.restore.database import replace_database
    from include.backup_dr.restore.record import record_restore
    from include.backup_dr.restore.validation import validate_database

    assert target.database is not None
    when = str(request.target_time)
    conn_id = request.connection
    ref = _ref(recovered, target, when, span, conn_id)
    started = datetime.now(UTC)
    connection = recovered.connect(target.database)
    try:
        at_t = table_facts(connection)
    finally:
        connection.close()
    keys = {t: {**f, "rows": None} for t, f in at_t.items()}
    checked = validate_database(recovered.url(target.database), target.name, keys)
    if not checked.ok:
        return record_restore(
            policy,
            stores,
            ref,
            None,
            checked.to_document(),
            run,
            "dr_restore",
            [
                f"{target.name} recovered to {when} fails its checks; the destination was not touched"
            ],
        )
    dumped = recovered.data_dir.parent / f"{target.database}.pgdump"
    clock = time.monotonic()
    _pg_dump(recovered.info(target.database), dumped)
    kept = pg_globals.capture(recovered.info(target.database))  # the cluster's roles at T
    dump_seconds = time.monotonic() - clock
    destination = PgConnectionInfo.from_airflow(conn_id, "postgres")
    try:
        replaced = replace_database(
            destination,
            target.database,
            staging_name(target.database, run.get("run_id", began.isoformat())),
            lambda into: pg_globals.restore_with_globals(
                kept,
                destination,
                into,
                lambda owners: pg_restore(dumped, destination, into, 2, owners=owners),
                passwords=True,
            ),
            lambda into: validate_database(destination.sqlalchemy_url(into), target.name, at_t),
            overwrite=request.overwrite,
            stamp=began,
        )
    finally:
        dumped.unlink(missing_ok=True)
    restored = {
        "timings": {
            **recovered.timings,
            "pg_dump from the recovered server": round(dump_seconds, 3),
            "pg_restore": round(replaced.restore_seconds, 3),
        },
        "archive_bytes": recovered.archive_bytes,
        **replaced.steps(),
        "order": order,
        "started_at": started.isoformat(),
        "seconds_since_run_start": (datetime.now(UTC) - began).total_seconds(),
        "target_time": recovered.target.isoformat() if recovered.target else "latest",
        **_provenance(recovered.base),
    }
    return record_restore(
        policy,
        stores,
        ref,
        restored,
        replaced.validation.to_document(),
        run,
        "dr_restore",
        replaced.problems,
    )


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
    with connection.cursor() as cursor:
        tables = {
            table: {"rows": rows, "primary_key": [], "foreign_keys": []}
            for table, rows in read_row_counts(cursor).items()
        }
        for table, keys in read_keys(cursor).items():
            tables.setdefault(table, {"primary_key": [], "foreign_keys": []}).update(keys)
    return tables
