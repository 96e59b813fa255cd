"""Logical PostgreSQL backups with pg_dump's custom format.

The dump and the row counts come from one exported snapshot (`pg_export_snapshot` +
`pg_dump --snapshot`), so the counts in the manifest are exactly what the archive holds and a
restore test can compare them. The password and the connection's libpq extras (sslmode, options,
...) reach pg_dump through PG* environment variables, never argv or logs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any

from include.backup_dr import pg_globals
from include.backup_dr.engines.base import ReadCheck, SourceFacts, Sweep, stop_tool
from include.backup_dr.policy import Policy, Target
from include.backup_dr.postgres import (
    PgConnectionInfo,
    SnapshotError,
    pg_tool,
    require_client_for,
    tool_version,
)
from include.backup_dr.store import ObjectStore

if TYPE_CHECKING:
    from include.backup_dr.catalogue import BackupId

log = logging.getLogger(__name__)


_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
ORDER BY 1, 2
"""


#: Primary and foreign keys of user tables, so a restore test can check them (see validation.py).
_KEYS_SQL = """
SELECT con.contype, cn.nspname || '.' || cl.relname,
       array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i),
       fn.nspname || '.' || fl.relname,
       array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i)
FROM pg_constraint con
JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace
LEFT JOIN pg_class fl ON fl.oid = con.confrelid LEFT JOIN pg_namespace fn ON fn.oid = fl.relnamespace
WHERE con.contype IN ('p', 'f') AND cn.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1 DESC, 2, con.conname
"""


def read_row_counts(cursor: Any) -> dict[str, int]:
    """Exact row count of every user table ("schema.table"), in the cursor's snapshot."""
    cursor.execute(_TABLES_SQL)
    counts = {}
    for schema, table in cursor.fetchall():
        cursor.execute(f'SELECT count(*) FROM "{schema}"."{table}"')
        counts[f"{schema}.{table}"] = cursor.fetchone()[0]
    return counts


def read_keys(cursor: Any) -> dict[str, dict[str, Any]]:
    """Primary and foreign keys per user table, as restore validation checks them."""
    cursor.execute(_KEYS_SQL)
    keys: dict[str, dict[str, Any]] = {}
    for kind, table, columns, referenced, referenced_columns in cursor.fetchall():
        facts = keys.setdefault(table, {"primary_key": [], "foreign_keys": []})
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
    return keys


class PgDumpSnapshot:
    """A running pg_dump bound to an exported snapshot, with the row counts of that snapshot."""

    def __init__(
        self,
        info: PgConnectionInfo,
        exporter: Any,
        snapshot_id: str,
        keep_beside: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.info = info
        self._exporter = exporter
        #: Stores what belongs beside the archive (the server's globals) once pg_dump succeeded.
        self._keep_beside = keep_beside
        self._beside: dict[str, Any] | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self._process = subprocess.Popen(
            [pg_tool("pg_dump"), "-Fc", f"--snapshot={snapshot_id}", *info.args()],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, **info.env},
        )
        assert self._process.stdout is not None
        self.stream = self._process.stdout
        self._counts: dict[str, int] = {}
        self._keys: dict[str, dict[str, Any]] = {}
        self._count_error: BaseException | None = None
        self._counter = threading.Thread(target=self._count_rows, name="row-counts", daemon=True)
        self._counter.start()

    def _count_rows(self) -> None:
        """Exact counts in the exporting transaction: the same snapshot pg_dump reads."""
        try:
            with self._exporter.cursor() as cursor:
                self._counts = read_row_counts(cursor)
                self._keys = read_keys(cursor)
        except BaseException as exc:  # reported by finish(), in the task's thread
            self._count_error = exc

    def finish(self) -> None:
        code = self._process.wait()
        self._counter.join()
        if code != 0:
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:].decode(errors="replace").strip()
            raise SnapshotError(f"pg_dump of {self.info} exited with {code}: {tail}")
        if self._count_error is not None:
            raise SnapshotError(f"counting rows in {self.info} failed: {self._count_error}")
        if self._keep_beside is not None:
            self._beside = self._keep_beside()

    def facts(self) -> SourceFacts:
        with self._exporter.cursor() as cursor:
            cursor.execute("SHOW server_version")
            server_version = cursor.fetchone()[0]
        return SourceFacts(
            source={
                "kind": "postgresql",
                "host": self.info.host,
                "port": self.info.port,
                "database": self.info.database,
                "server_version": server_version,
                "format": "pg_dump custom (-Fc)",
                **({"globals": self._beside} if self._beside is not None else {}),
            },
            tool_versions={"pg_dump": tool_version("pg_dump")},
            row_counts=dict(self._counts),
            keys=dict(self._keys),
        )

    def close(self) -> None:
        stop_tool(self._process, self.stream, self._stderr)


class PgDumpEngine:
    """Engine: pg_dump -Fc streamed out, pg_restore --list to prove an archive readable."""

    name = "pg_dump"
    extension = "pgdump"
    contents_keep_arriving = False

    @contextmanager
    def open_snapshot(
        self, policy: Policy, target: Target, primary: ObjectStore, backup: BackupId
    ) -> Iterator[PgDumpSnapshot]:
        assert target.server is not None and target.database is not None
        info = PgConnectionInfo.from_airflow(policy.server(target.server).conn_id, target.database)
        exporter = info.connect()
        snapshot: PgDumpSnapshot | None = None
        try:
            exporter.set_session(isolation_level="REPEATABLE READ", readonly=True)
            require_client_for("pg_dump", exporter.server_version, str(info))
            with exporter.cursor() as cursor:
                cursor.execute("SELECT pg_export_snapshot()")
                snapshot_id = cursor.fetchone()[0]
            log.info("Exported snapshot %s of %s", snapshot_id, info)
            # Roles and grants, beside the archive once the dump succeeded (see pg_globals).
            snapshot = PgDumpSnapshot(
                info, exporter, snapshot_id, lambda: pg_globals.keep_beside(primary, backup, info)
            )
            yield snapshot
        finally:
            if snapshot is not None:
                snapshot.close()
            exporter.close()

    def copy_contents(self, manifest: Any, source: ObjectStore, target: ObjectStore) -> str:
        return pg_globals.copy_beside(manifest, source, target)

    def check_contents(self, store: ObjectStore, manifest: Any, now: datetime) -> list[Any]:
        return pg_globals.check_beside(store, manifest)

    @contextmanager
    def plan_garbage(
        self, policy: Policy, store: ObjectStore, category: str, now: datetime
    ) -> Iterator[list[Sweep]]:
        yield []  # nothing to collect: a dump is deleted with its backup

    def check_readable(self, chunks: Iterable[bytes]) -> ReadCheck:
        """Pipe the archive into `pg_restore --list`; it reads the table of contents only."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(
                [pg_tool("pg_restore"), "--list"], stdin=subprocess.PIPE, stdout=out, stderr=err
            )
            assert process.stdin is not None
            feeding = True
            for chunk in chunks:  # always drained, so the caller's hash sees every byte
                if not feeding:
                    continue
                try:
                    process.stdin.write(chunk)
                except BrokenPipeError:
                    feeding = False  # pg_restore has read the table of contents and left
            with suppress(BrokenPipeError):
                process.stdin.close()
            code = process.wait()
            out.seek(0)
            entries = [line for line in out.read().decode().splitlines() if line[:1].isdigit()]
            if code != 0:
                err.seek(0)
                message = err.read()[-1000:].decode(errors="replace").strip()
                return ReadCheck(False, f"pg_restore --list failed ({code}): {message}")
            tables = sum(1 for line in entries if " TABLE DATA " in line)
            return ReadCheck(
                True, f"pg_restore --list read {len(entries)} TOC entries ({tables} tables)"
            )
