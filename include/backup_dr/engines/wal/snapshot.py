"""A base backup streamed into the store: pg_basebackup's tar goes from its stdout to the
primary region with no local copy, and is committed only once its end WAL is archived."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

from include.backup_dr import wal_segments
from include.backup_dr.engines.base import SourceFacts, stop_tool
from include.backup_dr.engines.wal.archive import archive_files
from include.backup_dr.engines.wal.tar import TarTee
from include.backup_dr.postgres import (
    PgConnectionInfo,
    SnapshotError,
    pg_tool,
    tool_version,
)
from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)


class BaseBackupSnapshot:
    """A running pg_basebackup whose tar goes to stdout; `finish` waits for its end WAL."""

    def __init__(
        self, info: PgConnectionInfo, server: str, store: ObjectStore, wait: timedelta
    ) -> None:
        self.info = info
        self.server = server
        self._store = store
        self._wait = wait
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        argv = [pg_tool("pg_basebackup"), "-Ft", "-D", "-", "-X", "none", "-c", "fast", "-v"]
        argv += ["-l", f"backup_dr {server}", "-h", info.host, "-p", str(info.port)]
        self._process = subprocess.Popen(
            [*argv, "-U", info.user],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, **info.env},
        )
        assert self._process.stdout is not None
        self.stream = TarTee(self._process.stdout)
        self._facts: dict[str, Any] = {}

    def finish(self) -> None:
        code = self._process.wait()
        self._stderr.seek(0)
        output = self._stderr.read().decode(errors="replace")
        if code != 0:
            raise SnapshotError(
                f"pg_basebackup of {self.server} ({self.info.host}:{self.info.port}) exited "
                f"with {code}: {output[-2000:].strip()}"
            )
        ranges = self.stream.finish().get("WAL-Ranges") or []
        if len(ranges) != 1:
            raise SnapshotError(
                f"the base backup's backup_manifest has {len(ranges)} WAL ranges, expected one "
                "(was the timeline switched during the backup?)"
            )
        timeline = int(ranges[0]["Timeline"])
        start, end = ranges[0]["Start-LSN"], ranges[0]["End-LSN"]
        with _connected(self.info) as cursor:
            cursor.execute(
                "SELECT system_identifier, current_setting('server_version'), "
                "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') "
                "FROM pg_control_system()"
            )
            system_identifier, version, segment_size = cursor.fetchone()
        start_lsn, end_lsn = wal_segments.parse_lsn(start), wal_segments.parse_lsn(end)
        first = wal_segments.Segment.of_lsn(timeline, start_lsn, segment_size)
        last = wal_segments.Segment.of_lsn(timeline, end_lsn, segment_size)
        self._facts = {
            "kind": "postgresql-cluster",
            "server": self.server,
            "host": self.info.host,
            "port": self.info.port,
            "server_version": version,
            "system_identifier": int(system_identifier),
            "timeline": timeline,
            "start_lsn": start,
            "end_lsn": end,
            "start_wal": first.name(segment_size),
            "end_wal": last.name(segment_size),
            "segment_size": int(segment_size),
            "archive_prefix": wal_segments.archive_prefix(self.server),
            "format": "pg_basebackup tar (-Ft -X none); WAL from the archive",
        }
        self._await_archived(last, int(segment_size))

    def _await_archived(self, last: wal_segments.Segment, segment_size: int) -> None:
        """Commit only a base backup whose end point is archived: else it restores nothing."""
        name = last.name(segment_size)
        with suppress(Exception), _connected(self.info) as cursor:
            # Closes the segment now instead of after archive_timeout; needs EXECUTE on
            # pg_switch_wal (or superuser). Without it we just wait for archive_timeout.
            cursor.execute(
                "SELECT pg_switch_wal() WHERE pg_walfile_name(pg_current_wal_lsn()) <= %s", (name,)
            )
        deadline = time.monotonic() + self._wait.total_seconds()
        while True:
            files = archive_files(self._store, self.server, segment_size)
            if any(f.kind == "segment" and f.segment == last for f in files):
                log.info("End WAL segment %s is archived in %s", name, self._store.region.name)
                return
            if time.monotonic() > deadline:
                raise SnapshotError(
                    f"the base backup of {self.server} ends in WAL segment {name}, which did "
                    f"not reach {self._store.where(wal_segments.archive_prefix(self.server))} within "
                    f"{self._wait}; check archive_command and pg_stat_archiver. Not committed."
                )
            time.sleep(1)

    def facts(self) -> SourceFacts:
        versions = {"pg_basebackup": tool_version("pg_basebackup")}
        with suppress(importlib.metadata.PackageNotFoundError):
            versions["barman-cloud"] = importlib.metadata.version("barman")
        return SourceFacts(source=dict(self._facts), tool_versions=versions)

    def close(self) -> None:
        stop_tool(self._process, self.stream, self._stderr)


@contextmanager
def _connected(info: PgConnectionInfo) -> Iterator[Any]:
    connection = info.connect()
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()
