"""The continuous tier's engine: base backups plus the WAL archive (point-in-time recovery).

WAL leaves each server continuously through its ``archive_command`` (barman-cloud-wal-archive,
one call per region, SSE-KMS). This engine does the scheduled part, in the same four steps as
every other tier:

- snapshot: ``pg_basebackup -Ft -D - -X none`` streamed into the primary region (no local copy;
  the replication protocol works from any worker, unlike tools that read PGDATA). The backup is
  committed only once the WAL segment holding its end point is in the archive, so every
  committed base backup can be made consistent;
- copy_contents: every WAL file the secondary lacks, from the base backup's start on;
- check_contents: the WAL chain is whole from this base backup's own start to the newest
  segment, position by position on the timeline that owns it (history files), and every
  segment not re-read before decompresses and carries the header its name promises
  (timeline, position, cluster);
- plan_garbage (the `backup_collect_garbage` DAG, once a day): WAL older than the oldest kept
  base backup's start goes.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import json
import logging
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import islice
from typing import Any

from include.backup_dr import wal_segments
from include.backup_dr.catalogue import MANIFEST_NAME, BackupId, Manifest
from include.backup_dr.check import Check
from include.backup_dr.engines.base import (
    SWEEP_SAMPLE,
    ReadCheck,
    SourceFacts,
    Sweep,
    locked_reason,
    still_locked,
    stop_tool,
)
from include.backup_dr.lease import Holder, critical_section
from include.backup_dr.policy import CONTINUOUS, Policy, Target
from include.backup_dr.postgres import (
    PgConnectionInfo,
    SnapshotError,
    pg_tool,
    require_client_for,
    tool_version,
)
from include.backup_dr.retention import RecoveryHold
from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)

#: Files a base backup tar must hold to be a restorable data directory.
REQUIRED_MEMBERS = ("PG_VERSION", "global/pg_control", "backup_label", "backup_manifest")
#: Per region: the newest segment whose header was re-read and passed (so it is not re-read).
VERIFIED_NAME = "verified.json"
#: Per region: the last archived WAL file `lock_archive` locked (so it lists only newer ones).
LOCKED_NAME = "locked.json"
#: How long `lock_wal` (a 50 s task, every minute) waits for another run's lease on the WAL.
LOCK_LEASE_WAIT = timedelta(seconds=15)
#: Its lease's TTL: shorter than that wait (not `BACKUP_LEASE_TTL_SECONDS`), since a waiter
#: watches a lease stand still for a TTL before taking it over: with a longer one, a run
#: killed while holding it would keep every later run from locking the server's WAL.
LOCK_LEASE_TTL = timedelta(seconds=10)


def archive_files(
    store: ObjectStore, server: str, segment_size: int
) -> list[wal_segments.ArchivedFile]:
    return [
        wal_segments.classify(obj.key, obj.size, segment_size)
        for obj in store.list_objects(wal_segments.archive_prefix(server))
    ]


def read_histories(
    store: ObjectStore, files: Iterable[wal_segments.ArchivedFile]
) -> dict[int, wal_segments.TimelineHistory]:
    """The archive's timeline history files, read (a few hundred bytes each, one per failover):
    they say where each timeline forked, which the listing alone cannot."""
    histories = {}
    for item in files:
        if item.kind == "history" and item.history_timeline is not None:
            data = b"".join(store.iter_chunks(item.key))
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            histories[item.history_timeline] = wal_segments.parse_history(
                item.history_timeline, data.decode(errors="replace")
            )
    return histories


def lock_archive(
    store: ObjectStore,
    server: str,
    category: str,
    *,
    budget: timedelta = timedelta(seconds=25),
    batch: int = 200,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Lock the WAL files archived in `store` since the last call, each until it was archived
    plus the continuous tier's retention plus the margin (`LockRule.wal_until`).

    barman-cloud-wal-archive (like most archive_commands) writes without a lock, so the
    continuous monitor calls this every minute: a segment is locked within about a minute of
    its arrival. Files `copy_contents` fills in are locked as they are written.

    Bounded and resumable: listing starts after the last file locked, progress is saved every
    `batch` files, and a call stops after `budget` (the next one goes on), so any archive size
    is worked through, a batch at most redone after a timeout. A file whose date is already
    past (an old history file; WAL that GC will remove) gets no lock: S3 refuses a past date.

    It holds the lease of the server's WAL in `store` (`wal_subject`): in the region it
    locks, so that one region out never stops the other's locking.
    """
    assert store.lock is not None, f"{store.region.name} locks nothing"
    holder = Holder.current("lock_wal")
    subject = wal_subject(category, server)
    with critical_section(store, subject, holder, max_wait=LOCK_LEASE_WAIT, ttl=LOCK_LEASE_TTL):
        return _lock_archive(store, server, category, budget, batch, now)


def wal_subject(category: str, server: str) -> str:
    """The lease subject of a server's WAL archive in one region (its `lock_wal` runs)."""
    return f"{category}/{server}/wal"


def _lock_archive(
    store: ObjectStore,
    server: str,
    category: str,
    budget: timedelta,
    batch: int,
    now: datetime | None,
) -> dict[str, Any]:
    assert store.lock is not None
    now = now or datetime.now(UTC)
    marker = f"{wal_segments.ARCHIVE_PREFIX}/{server}/{LOCKED_NAME}"
    after = (store.get_json(marker) or {}).get("last")
    deadline = time.monotonic() + budget.total_seconds()
    locked = past = 0
    first = last = None
    more = False
    for obj in store.list_objects(wal_segments.archive_prefix(server), start_after=after):
        if time.monotonic() > deadline:
            more = True
            break
        until = store.lock.wal_until(obj.last_modified, category)
        if until > now:
            store.extend_lock(obj.key, until)
            locked += 1
        else:
            past += 1
        first, last = first or obj.key, obj.key
        if (locked + past) % batch == 0:
            store.put_json(marker, {"last": last, "at": datetime.now(UTC).isoformat()})
    if last is not None:
        store.put_json(marker, {"last": last, "at": datetime.now(UTC).isoformat()})
        log.info(
            "%s: locked %d WAL files up to %s (%d past their retention, not locked)%s",
            store.region.name,
            locked,
            last,
            past,
            "; more remain for the next run" if more else "",
        )
    return {
        "region": store.region.name,
        "server": server,
        "locked": locked,
        "past_retention": past,
        "more": more,
        "first": first,
        "last": last or after,
    }


#: Per region: the WAL ranges `hold_recovery_window` has locked, and until when.
HELD_NAME = "held.json"


def hold_recovery_window(
    store: ObjectStore, server: str, holds: Iterable[RecoveryHold], now: datetime
) -> dict[str, Any]:
    """Lock what prune keeps of the recovery window for as long as it keeps it.

    Each kept base backup is locked until its hold plus the margin (`RecoveryHold`), and so is
    the WAL from its start to the next verified base's start: GC keeps that WAL exactly as long.
    Locks are only ever extended. Each WAL range is extended once per hold (remembered in
    ``wal/<server>/held.json``), so a prune costs a listing only when a new base has arrived.
    """
    assert store.lock is not None, f"{store.region.name} locks nothing"
    marker = f"{wal_segments.ARCHIVE_PREFIX}/{server}/{HELD_NAME}"
    held: dict[str, str] = {
        span: until
        for span, until in ((store.get_json(marker) or {}).get("ranges") or {}).items()
        if datetime.fromisoformat(until) > now
    }
    bases = wal_ranges = segments = 0
    files: list[wal_segments.ArchivedFile] | None = None
    for hold in holds:
        until = store.lock.recovery_until(hold.until)
        manifest = store.manifest(hold.backup)
        if manifest is None:
            continue
        current = store.locked_until(hold.backup.key(MANIFEST_NAME))
        if current is None or current < until:
            for obj in store.list_objects(hold.backup.prefix):
                store.extend_lock(obj.key, until)
            bases += 1
        following = store.manifest(hold.next_base) if hold.next_base else None
        if following is None:
            continue  # the newest base: its WAL is locked as it arrives, and held by the next
        size = int(manifest.source["segment_size"])
        first = wal_segments.Segment.parse(manifest.source["start_wal"], size).number
        last = wal_segments.Segment.parse(following.source["start_wal"], size).number
        span = f"{first:X}-{last:X}"
        if span in held and datetime.fromisoformat(held[span]) >= until:
            continue
        files = files if files is not None else archive_files(store, server, size)
        for item in files:
            if item.segment is not None and first <= item.segment.number < last:
                store.extend_lock(item.key, until)
                segments += 1
        held[span] = until.isoformat()
        wal_ranges += 1
    if bases or wal_ranges:
        store.put_json(marker, {"ranges": held, "at": now.isoformat()})
    return {
        "region": store.region.name,
        "bases": bases,
        "wal_ranges": wal_ranges,
        "wal_files": segments,
    }


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
        self.stream = _TarTee(self._process.stdout)
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


class WalEngine:
    """Engine: base backups (pg_basebackup tar) plus the barman-cloud WAL archive."""

    name = "wal"
    extension = "tar"
    contents_keep_arriving = True

    @contextmanager
    def open_snapshot(
        self, policy: Policy, target: Target, primary: ObjectStore, backup: BackupId
    ) -> Iterator[BaseBackupSnapshot]:
        assert target.server is not None and policy.continuous is not None
        server = policy.server(target.server)
        info = PgConnectionInfo.from_airflow(server.conn_id, "postgres")
        # Long enough for archive_timeout to close the segment if we may not switch it.
        wait = policy.continuous.archive_timeout * 2 + timedelta(minutes=2)
        probe = info.connect()
        try:
            require_client_for("pg_basebackup", probe.server_version, f"server {server.name}")
        finally:
            probe.close()
        snapshot = BaseBackupSnapshot(info, server.name, primary, wait)
        try:
            yield snapshot
        finally:
            snapshot.close()

    def check_readable(self, chunks: Iterable[bytes]) -> ReadCheck:
        """Read the tar's members in one pass: a data directory with its label and manifest."""
        reader = _ChunkReader(iter(chunks))
        names: set[str] = set()
        files = 0
        manifest_files: int | None = None
        error = None
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:
                for member in archive:
                    names.add(member.name.removeprefix("./"))
                    files += member.isfile()
                    if member.name.removeprefix("./") == "backup_manifest":
                        body = archive.extractfile(member)
                        if body is not None:
                            manifest_files = len(json.loads(body.read()).get("Files", []))
        except (tarfile.TarError, ValueError) as exc:
            error = str(exc)
        reader.drain()  # the caller's hash must see every byte
        if error is not None:
            return ReadCheck(False, f"not a readable tar: {error}")
        missing = [name for name in REQUIRED_MEMBERS if name not in names]
        if missing:
            return ReadCheck(False, f"tar of {files} files lacks {', '.join(missing)}")
        return ReadCheck(
            True,
            f"tar of {files} files with {', '.join(REQUIRED_MEMBERS)}; "
            f"backup_manifest lists {manifest_files} files",
        )

    def copy_contents(self, manifest: Manifest, source: ObjectStore, target: ObjectStore) -> str:
        """Every archived WAL file `target` lacks, from the oldest base backup kept in `source`
        (or this one's start): the whole recovery window, so a gap left earlier heals too."""
        facts = manifest.source
        server, size = facts["server"], int(facts["segment_size"])
        first = wal_segments.Segment.parse(facts["start_wal"], size)
        oldest = oldest_base_start(source, manifest.backup.category, server, size)
        first = min(first, oldest) if oldest else first
        present = {f.key for f in archive_files(target, server, size)}
        wanted = [
            f
            for f in archive_files(source, server, size)
            if f.key not in present
            and (
                f.kind == "history" or (f.segment is not None and f.segment.number >= first.number)
            )
        ]
        until = None
        if target.lock is not None:  # from now: the copy is as old as the secondary's own file
            until = target.lock.wal_until(datetime.now(UTC), manifest.backup.category)
        for item in wanted:
            target.copy_from(source, item.key, item.size, lock_until=until)
        copied = sum(item.size for item in wanted)
        return (
            f"WAL: {len(wanted)} file(s) ({copied} bytes) copied that {target.region.name} "
            f"lacked; {len(present)} already there"
        )

    def check_contents(self, store: ObjectStore, manifest: Manifest, now: datetime) -> list[Check]:

        facts = manifest.source
        server, size = facts["server"], int(facts["segment_size"])
        start = wal_segments.Segment.parse(facts["start_wal"], size)
        end = wal_segments.Segment.parse(facts["end_wal"], size)
        files = archive_files(store, server, size)
        # From this base backup's own start, never an older base's: a permanent gap before it
        # does not fail it (the recovery_window check names such a gap). From there the chain
        # must be whole to the newest segment, along the timelines the history files name.
        histories = read_histories(store, files)
        chain = wal_segments.continuity(files, start, histories, size)
        reaches_end = chain.reach is not None and chain.reach.number >= end.number
        checks = [
            Check(
                "wal_continuity",
                chain.ok and reaches_end,
                chain.describe(size)
                + ("" if reaches_end else f"; the base backup needs up to {end.name(size)}"),
            )
        ]
        checks.append(
            self._reread(store, server, files, start, chain, facts, size, forks=histories)
        )
        return checks

    def _reread(
        self,
        store: ObjectStore,
        server: str,
        files: list[wal_segments.ArchivedFile],
        start: wal_segments.Segment,
        chain: wal_segments.Continuity,
        facts: dict[str, Any],
        size: int,
        *,
        forks: dict[int, wal_segments.TimelineHistory],
    ) -> Check:
        """Re-read every segment not verified before (from this base backup's start at the
        latest), and remember how far the archive is verified in this region."""

        marker = f"{wal_segments.ARCHIVE_PREFIX}/{server}/{VERIFIED_NAME}"
        previous = store.get_json(marker) or {}
        since = start
        if (
            previous.get("through")
            and previous.get("system_identifier") == facts["system_identifier"]
        ):
            through = wal_segments.Segment.parse(previous["through"], size)
            since = min(start, wal_segments.Segment(through.timeline, through.number + 1))
        todo = sorted(
            (f for f in files if f.kind == "segment" and f.segment and f.segment >= since),
            key=lambda f: f.segment,  # type: ignore[arg-type,return-value]
        )
        bad = []
        for item in todo:
            assert item.segment is not None
            data = b"".join(store.iter_chunks(item.key))
            result = wal_segments.check_segment(
                data,
                item.segment,
                system_identifier=int(facts["system_identifier"]),
                segment_size=size,
                major_version=int(str(facts["server_version"]).split(".")[0]),
                parent=wal_segments.fork_parent(item.segment, forks, size),
            )
            if not result.ok:
                bad.append(f"{item.segment.name(size)} ({result.detail})")
        if bad:
            return Check(
                "wal_segments",
                False,
                f"{len(bad)} of {len(todo)} segment(s) re-read are damaged: " + "; ".join(bad[:5]),
            )
        if todo and chain.ok:
            newest = todo[-1].segment
            assert newest is not None
            store.put_json(
                marker,
                {
                    "through": newest.name(size),
                    "system_identifier": facts["system_identifier"],
                    "checked_at": datetime.now().astimezone().isoformat(),
                },
            )
        first = todo[0].segment.name(size) if todo and todo[0].segment else "-"
        return Check(
            "wal_segments",
            True,
            f"{len(todo)} segment(s) from {first} re-read: each decompresses and its header "
            "names its timeline, position and cluster",
        )

    @contextmanager
    def plan_garbage(
        self, policy: Policy, store: ObjectStore, category: str, now: datetime
    ) -> Iterator[list[Sweep]]:
        """WAL older than the oldest kept base backup in this region restores nothing: it goes.
        Prune decides which base backups are kept (the recovery window), so this follows it."""
        if policy.continuous is None or policy.continuous.category != category:
            yield []
            return
        sweeps = []
        for server in policy.continuous_servers():
            prefix = wal_segments.archive_prefix(server.name)
            what = f"WAL of server {server.name}"
            manifests = _base_manifests(store, category, server.name)
            if not manifests:  # WAL alone restores nothing, but a base backup may be committing
                total = sum(1 for _ in store.list_objects(prefix))
                sweeps.append(Sweep(what, total, 0, [], lambda: 0))
                continue
            size = int(manifests[0].source["segment_size"])
            base = min(
                manifests, key=lambda m: wal_segments.Segment.parse(m.source["start_wal"], size)
            )
            oldest = wal_segments.Segment.parse(base.source["start_wal"], size)
            files = archive_files(store, server.name, size)
            reason = (
                f"before {oldest.name(size)}, where the oldest kept base backup here "
                f"({base.backup}) starts"
            )
            removable = wal_segments.removable(files, oldest)
            locks = still_locked(store, (f.key for f in removable), now)
            doomed = [f for f in removable if f.key not in locks]
            keys = {f.key for f in doomed}
            sweeps.append(
                Sweep(
                    what,
                    len(files),
                    len(doomed),
                    [{"key": f.key, "reason": reason} for f in doomed[:SWEEP_SAMPLE]],
                    partial(store.delete_all_versions, prefix, keys=keys),
                    len(locks),
                    [
                        {"key": key, "reason": locked_reason(reason, until)}
                        for key, until in islice(locks.items(), SWEEP_SAMPLE)
                    ],
                )
            )
        yield sweeps


def _base_manifests(store: ObjectStore, category: str, server: str) -> list[Manifest]:
    manifests = []
    for obj in store.list_objects(f"{category}/{server}/{CONTINUOUS}/"):
        parsed = BackupId.from_key(obj.key)
        if parsed is not None and parsed[1] == MANIFEST_NAME:
            manifest = store.manifest(parsed[0])
            if manifest is not None:
                manifests.append(manifest)
    return manifests


def oldest_base_start(
    store: ObjectStore, category: str, server: str, segment_size: int
) -> wal_segments.Segment | None:
    """The start segment of the oldest base backup committed in this region."""
    starts = [
        wal_segments.Segment.parse(m.source["start_wal"], segment_size)
        for m in _base_manifests(store, category, server)
    ]
    return min(starts) if starts else None


class TarMember:
    """Finds one member of a tar stream (its bytes) as the stream passes by in chunks, however
    they are cut. Only the 512-byte headers and that member's own bytes are looked at: the
    rest of the stream is neither copied nor parsed. Pure: `feed` takes bytes, no I/O."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: str | None = None
        self._fed = 0  # stream offset of the next byte fed
        self._next = 0  # stream offset of the next header
        self._header = bytearray()  # the part of that header fed so far
        self._span: tuple[int, int] | None = None  # the member's bytes, when its header passed
        self._data = bytearray()
        self._ended = False  # the end-of-archive block passed, or the stream is not a tar

    def feed(self, chunk: bytes) -> None:
        start = self._fed
        self._fed += len(chunk)
        self._take(chunk, start)
        while not self._ended and self._next + len(self._header) < self._fed:
            begin = self._next + len(self._header) - start
            self._header += chunk[begin : min(self._next + tarfile.BLOCKSIZE, self._fed) - start]
            if len(self._header) < tarfile.BLOCKSIZE:
                return  # the rest of the header comes in the next chunk
            block, self._header = bytes(self._header), bytearray()
            if not block.strip(b"\0"):
                self._ended = True
                return
            try:
                info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
            except tarfile.HeaderError as exc:
                self.error, self._ended = f"bad header at byte {self._next}: {exc}", True
                return
            first = self._next + tarfile.BLOCKSIZE
            self._next = first + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if info.name.removeprefix("./") == self.name and info.isfile():
                self._span = (first, first + info.size)
                self._take(chunk, start)

    def _take(self, chunk: bytes, start: int) -> None:
        """The member's bytes within `chunk` (which starts at stream offset `start`)."""
        if self._span is None:
            return
        low = max(self._span[0] + len(self._data), start)
        high = min(self._span[1], start + len(chunk))
        if low < high:
            self._data += chunk[low - start : high - start]

    def found(self) -> bytes | None:
        """The member's bytes, None if the stream (so far) has no such member whole."""
        if self._span is None or len(self._data) < self._span[1] - self._span[0]:
            return None
        return bytes(self._data)


class _TarTee:
    """Passes pg_basebackup's tar through unchanged while reading its backup_manifest (the WAL
    range the backup needs) from the chunks as they pass: no copy of the stream, no thread."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._manifest = TarMember("backup_manifest")

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._manifest.feed(data)
        return data

    def finish(self) -> dict[str, Any]:
        body = self._manifest.found()
        if self._manifest.error is not None:
            raise SnapshotError(f"the base backup is not a readable tar: {self._manifest.error}")
        if body is None:
            return {}
        try:
            return dict(json.loads(body))
        except ValueError as exc:
            raise SnapshotError(f"the base backup's backup_manifest does not parse: {exc}") from exc

    def close(self) -> None:
        self._source.close()


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]  # a view: no copy of the rest
        return size

    def drain(self) -> None:
        for _ in self._chunks:
            pass


@contextmanager
def _connected(info: PgConnectionInfo) -> Iterator[Any]:
    connection = info.connect()
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()
