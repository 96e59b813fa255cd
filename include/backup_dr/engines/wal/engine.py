"""The continuous tier's engine the DAGs drive: opens a base backup (snapshot.py), checks its
tar and the WAL chain from its start, copies the WAL the other region lacks, and plans the
garbage collection of WAL no kept base backup needs."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import islice
from typing import Any

from include.backup_dr import wal_segments
from include.backup_dr.catalogue import BackupId, Manifest
from include.backup_dr.check import Check
from include.backup_dr.engines.base import (
    SWEEP_SAMPLE,
    ReadCheck,
    Sweep,
    locked_reason,
    still_locked,
)
from include.backup_dr.engines.wal.archive import (
    archive_files,
    base_manifests,
    oldest_base_start,
    read_histories,
)
from include.backup_dr.engines.wal.snapshot import BaseBackupSnapshot
from include.backup_dr.engines.wal.tar import ChunkReader
from include.backup_dr.policy import Policy, Target
from include.backup_dr.postgres import PgConnectionInfo, require_client_for
from include.backup_dr.store import ObjectStore

#: Files a base backup tar must hold to be a restorable data directory.
REQUIRED_MEMBERS = ("PG_VERSION", "global/pg_control", "backup_label", "backup_manifest")
#: Per region: the newest segment whose header was re-read and passed (so it is not re-read).
VERIFIED_NAME = "verified.json"


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
        reader = ChunkReader(iter(chunks))
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
            manifests = base_manifests(store, category, server.name)
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
