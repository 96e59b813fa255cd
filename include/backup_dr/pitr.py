"""Point-in-time recovery (PITR) of a whole PostgreSQL cluster from one region's backups.

The continuous tier keeps, per database server, base backups (``pg_basebackup -Ft -X none``:
a tar of the data directory, no WAL) and the WAL archive that barman-cloud writes to each
region. Together they recover the cluster to any second of the retention. This module:

* works out which times a region can recover to (``recovery_range``), from its *verified*
  base backups and the archive, and refuses any other time with the range in the message,
  before anything is downloaded;
* recovers the cluster into a throwaway server (``recover``): data directory in a private
  scratch directory, Unix socket only (no TCP port, so nothing can mistake it for
  production), never archiving, WAL read with ``barman-cloud-wal-restore`` using the region's
  credentials from a 0600 env file; always stopped and deleted afterwards;
* proves 1-second granularity in the drill (``drill``): T is half a second after a heartbeat
  the monitor recorded; after recovery that heartbeat is there and none written after T is;
* restores chosen databases at T for disaster recovery (``recover_targets``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pwd
import random
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.catalogue import (
    BackupId,
    Manifest,
    Verification,
    build_catalogue,
    window_label,
)
from include.backup_dr.engines.pg_dump import (
    _KEYS_SQL,
    _TABLES_SQL,
    PgConnectionInfo,
    pg_tool,
)
from include.backup_dr.policy import CONTINUOUS, Policy, Target, format_duration
from include.backup_dr.restore import (
    RestoreRefused,
    create_database,
    database_size,
    download_verified,
    drop_database,
    pg_restore,
    select_backup,
)
from include.backup_dr.store import ObjectStore
from include.backup_dr.wal import (
    DEFAULT_SEGMENT_SIZE,
    ArchivedFile,
    Segment,
    archive_prefix,
    classify,
    continuity,
)

log = logging.getLogger(__name__)

#: The OS user PostgreSQL runs as when we are root (it refuses to run as root).
OS_USER_ENV = "BACKUP_PG_OS_USER"
#: bin/ holding barman-cloud-wal-restore, readable by that user (default: found on PATH).
WAL_TOOLS_ENV = "BACKUP_WAL_TOOLS_BIN"
#: Where throwaway servers live (default: the system temp dir); the OS user must traverse it.
SCRATCH_ENV = "BACKUP_PITR_SCRATCH_DIR"
MONITOR_EVIDENCE = "evidence/continuous_monitor"
HEARTBEAT_TABLE = "backup_dr.heartbeat"
#: PostgreSQL's own words when the archive ends before the target: the failure we report.
RECOVERY_ENDED = "recovery ended before configured recovery target was reached"
#: Only names the socket file: the throwaway server has no TCP listener at all.
SOCKET_PORT = 5432
#: T is this long after the chosen heartbeat: later than its commit, earlier than the next one.
SAMPLE_OFFSET = timedelta(milliseconds=500)
#: Monitor records read at most while looking for a usable heartbeat (each is one GET).
MAX_RECORDS_READ = 40
#: Checksum settings boto3 >= 1.36 needs against some S3 servers (see FACTS / local.wal).
CHECKSUM_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


class TargetOutOfRange(RestoreRefused):
    """The requested recovery time is outside what the region can recover; nothing restored."""


class RecoveryFailed(AirflowFailException):
    """The throwaway server did not reach the recovery target; the message says why."""


# ---- what a region can recover ---------------------------------------------------------------


@dataclass(frozen=True)
class BaseBackup:
    """One region's copy of a base backup and how far its WAL chain reaches in that region."""

    id: BackupId
    region: str
    verification: Verification
    manifest: Manifest
    #: LastModified of the newest archived segment reachable from the start without a gap.
    chain_end_at: datetime | None = None
    chain_end: str | None = None

    @property
    def finished_at(self) -> datetime:
        return self.manifest.finished_at

    @property
    def segment_size(self) -> int:
        return int(self.manifest.source.get("segment_size") or DEFAULT_SEGMENT_SIZE)

    @property
    def start_segment(self) -> Segment:
        return Segment.parse(self.manifest.source["start_wal"], self.segment_size)

    @property
    def end_segment(self) -> Segment:
        return Segment.parse(self.manifest.source["end_wal"], self.segment_size)

    @property
    def usable(self) -> bool:
        """Verified, and its WAL reaches at least the backup's end (it can become consistent)."""
        return (
            self.verification is Verification.PASSED
            and self.chain_end is not None
            and Segment.parse(self.chain_end, self.segment_size).number >= self.end_segment.number
        )


@dataclass(frozen=True)
class RecoveryRange:
    """The times one region can recover a server to: (oldest, newest], from its usable bases."""

    region: str
    server: str
    bases: tuple[BaseBackup, ...]
    oldest: datetime | None
    newest: datetime | None
    #: Newest archived full segment (any position): the monitor's end_segment is compared to it.
    newest_segment: str | None
    wal_ok: bool
    wal_detail: str

    def usable(self) -> list[BaseBackup]:
        return [b for b in self.bases if b.usable]

    def describe(self) -> str:
        if self.oldest is None or self.newest is None:
            return f"{self.region} can recover {self.server} to no time at all ({self.wal_detail})"
        return (
            f"{self.region} can recover {self.server} to any time after "
            f"{self.oldest.isoformat()} up to {self.newest.isoformat()}"
        )

    def problems(self) -> list[str]:
        """Why this region should not be the one a drill proves (empty: it is fine)."""
        found = []
        if self.bases:
            newest = max(self.bases, key=lambda b: b.id.window)
            if newest.verification is Verification.FAILED:
                found.append(
                    f"the newest base backup {newest.id} failed its integrity check in "
                    f"{self.region}"
                )
        if not self.wal_ok:
            found.append(f"the WAL archive in {self.region} is not continuous: {self.wal_detail}")
        if not self.usable():
            found.append(f"{self.region} has no verified base backup with its WAL")
        return found

    def to_document(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
            "newest_segment": self.newest_segment,
            "wal": self.wal_detail,
            "base_backups": [
                {
                    "id": str(b.id),
                    "finished_at": b.finished_at.isoformat(),
                    "verification": b.verification.value,
                    "wal_reaches": b.chain_end,
                }
                for b in self.bases
            ],
        }


def summarise_range(
    region: str,
    server: str,
    bases: Iterable[tuple[BackupId, Verification, Manifest]],
    archive: Iterable[tuple[ArchivedFile, datetime]],
) -> RecoveryRange:
    """The range from committed base backups and the archive listing (pure: no I/O).

    Oldest: the earliest usable base backup's end (its ``finished_at``). Newest: when the
    newest segment reachable without a gap from a usable base was archived (its LastModified):
    a commit after that cannot be in this region yet.
    """
    files = list(archive)
    archived: dict[int, datetime] = {}  # segment position -> newest LastModified
    names: dict[int, str] = {}
    for item, modified in files:
        if item.kind == "segment" and item.segment is not None:
            number = item.segment.number
            if number not in archived or modified > archived[number]:
                archived[number] = modified
                names[number] = item.key.rsplit("/", 1)[-1].split(".")[0]
    found = []
    for backup, verification, manifest in sorted(bases, key=lambda b: b[0].window):
        base = BaseBackup(backup, region, verification, manifest)
        end = base.start_segment.number
        if end not in archived:
            found.append(base)
            continue
        while end + 1 in archived:
            end += 1
        found.append(BaseBackup(backup, region, verification, manifest, archived[end], names[end]))
    usable = [b for b in found if b.usable]
    oldest = min((b.finished_at for b in usable), default=None)
    newest = max((b.chain_end_at for b in usable if b.chain_end_at), default=None)
    newest_segment = names[max(archived)] if archived else None
    if usable:
        first = max(usable, key=lambda b: b.finished_at).start_segment
        check = continuity((item for item, _ in files), first)
        wal_ok, wal_detail = check.ok, check.describe(usable[0].segment_size)
    elif found:
        wal_ok, wal_detail = False, "no verified base backup's WAL is archived up to its end"
    else:
        wal_ok, wal_detail = False, "no base backup of the continuous tier"
    return RecoveryRange(
        region, server, tuple(found), oldest, newest, newest_segment, wal_ok, wal_detail
    )


def recovery_range(policy: Policy, store: ObjectStore, server: str) -> RecoveryRange:
    """What `store`'s region can recover `server` to, from its catalogue and WAL listing."""
    category = policy.subject(server, CONTINUOUS).category
    listing = store.listing(f"{category}/{server}/{CONTINUOUS}/")
    backups, _ = build_catalogue([listing])
    region = store.region.name
    bases = [
        (b.id, b.copies[region].verification, listing.manifests[b.id])
        for b in backups
        if region in b.copies
    ]
    segment_size = next(
        (int(m.source.get("segment_size") or DEFAULT_SEGMENT_SIZE) for _, _, m in bases),
        DEFAULT_SEGMENT_SIZE,
    )
    archive = [
        (classify(obj.key, obj.size, segment_size), obj.last_modified)
        for obj in store.list_objects(archive_prefix(server))
    ]
    return summarise_range(region, server, bases, archive)


def parse_target_time(value: str | datetime | None) -> datetime | None:
    """An ISO 8601 time (naive means UTC), or None for "latest" (the end of the archive)."""
    if value is None or isinstance(value, datetime):
        target = value
    elif value.strip().lower() == "latest":
        return None
    else:
        try:
            target = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RestoreRefused(
                f"target_time {value!r} is neither an ISO 8601 time nor 'latest'"
            ) from None
    if target is not None and target.tzinfo is None:
        target = target.replace(tzinfo=UTC)
    return target


def check_target(
    span: RecoveryRange, target: datetime | None, now: datetime | None = None
) -> datetime | None:
    """Refuse a time the region cannot recover to, naming the range; return the target."""
    now = now or datetime.now(UTC)
    if span.oldest is None or span.newest is None:
        raise TargetOutOfRange(f"nothing can be recovered: {span.describe()}; nothing restored")
    if target is None:
        return None
    if target > now:
        why = f"{target.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})"
    elif target <= span.oldest:
        why = f"{target.isoformat()} is older than the recovery window"
    elif target > span.newest:
        why = f"{target.isoformat()} is after the newest archived WAL"
    else:
        return target
    raise TargetOutOfRange(f"{why}: {span.describe()}; nothing restored")


def choose_base(span: RecoveryRange, target: datetime | None) -> BaseBackup:
    """The newest usable base backup finished before `target` whose WAL reaches it."""
    candidates = [
        b
        for b in span.usable()
        if target is None
        or (b.finished_at < target and b.chain_end_at is not None and b.chain_end_at >= target)
    ]
    if not candidates:
        when = "the end of the archive" if target is None else target.isoformat()
        raise TargetOutOfRange(f"no base backup can reach {when}: {span.describe()}")
    return max(candidates, key=lambda b: b.finished_at)


def choose_region(
    preferred: RecoveryRange, other: RecoveryRange, why_preferred: str
) -> tuple[RecoveryRange, str]:
    """The preferred region unless its newest integrity evidence failed; then the other."""
    trouble = preferred.problems()
    if not trouble:
        return preferred, f"{preferred.region}: {why_preferred}; {preferred.describe()}"
    if not other.problems():
        return other, (
            f"{other.region} instead of {preferred.region} ({why_preferred}), because "
            + "; ".join(trouble)
            + f"; {other.describe()}"
        )
    return preferred, (
        f"{preferred.region} ({why_preferred}) although "
        + "; ".join(trouble)
        + f"; {other.region} is no better: "
        + "; ".join(other.problems())
    )


# ---- heartbeats: the proof of 1-second granularity -------------------------------------------


@dataclass(frozen=True)
class HeartbeatSample:
    """A heartbeat the monitor wrote and saw committed; T is half a second after it."""

    seq: int
    written_at: datetime
    next_written_at: datetime
    evidence_key: str

    @property
    def target_time(self) -> datetime:
        return self.written_at + SAMPLE_OFFSET

    def to_document(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "written_at": self.written_at.isoformat(),
            "next_written_at": self.next_written_at.isoformat(),
            "evidence": self.evidence_key,
        }


def eligible_samples(
    record: dict[str, Any], key: str, span: RecoveryRange
) -> list[HeartbeatSample]:
    """The heartbeats of one monitor run that a drill may aim at.

    The run's last WAL must be at or before the newest archived full segment (so every
    heartbeat of it is archived), T must be inside the range, and the next heartbeat must come
    after T: its commit is what tells recovery to stop, and what "nothing after T" is about.
    """
    end = record.get("end_segment")
    if not end or span.newest_segment is None or span.oldest is None or span.newest is None:
        return []
    try:
        if Segment.parse(end).number > Segment.parse(span.newest_segment).number:
            return []
    except ValueError:
        return []
    samples = sorted(
        (
            (int(s["seq"]), _utc(datetime.fromisoformat(s["written_at"])))
            for s in record.get("samples") or []
            if s.get("seq") is not None and s.get("written_at")
        ),
        key=lambda s: s[0],
    )
    chosen = []
    for (seq, written), (_, following) in itertools.pairwise(samples):
        target = written + SAMPLE_OFFSET
        if span.oldest < written and target <= span.newest and following > target:
            chosen.append(HeartbeatSample(seq, written, following, key))
    return chosen


def choose_sample(
    store: ObjectStore, span: RecoveryRange, rng: random.Random
) -> HeartbeatSample | None:
    """A random usable heartbeat from the monitor's evidence in this region, or None."""
    keys = [
        obj.key
        for obj in store.list_objects(f"{MONITOR_EVIDENCE}/{span.server}/")
        if obj.key.endswith(".json") and span.oldest is not None and obj.last_modified > span.oldest
    ]
    rng.shuffle(keys)
    for key in keys[:MAX_RECORDS_READ]:
        record = store.get_json(key)
        if isinstance(record, dict) and (samples := eligible_samples(record, key, span)):
            return rng.choice(samples)
    return None


def heartbeat_proof(connection: Any, sample: HeartbeatSample, target: datetime) -> dict[str, Any]:
    """What the recovered cluster says about the chosen heartbeat and everything after T."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT written_at FROM {HEARTBEAT_TABLE} WHERE seq = %s", (sample.seq,))
        row = cursor.fetchone()
        cursor.execute(
            f"SELECT count(*), max(written_at) FROM {HEARTBEAT_TABLE} WHERE written_at > %s",
            (target,),
        )
        after, _ = cursor.fetchone()
        cursor.execute(f"SELECT max(seq), max(written_at) FROM {HEARTBEAT_TABLE}")
        newest_seq, newest_at = cursor.fetchone()
    gap = (target - newest_at).total_seconds() if newest_at is not None else None
    present = row is not None
    return {
        "seq": sample.seq,
        "seq_present": present,
        "seq_written_at": row[0].isoformat() if present else None,
        "target_time": target.isoformat(),
        "heartbeats_after_target": int(after),
        "newest_restored_seq": newest_seq,
        "newest_restored_written_at": newest_at.isoformat() if newest_at else None,
        "seconds_between_newest_and_target": round(gap, 3) if gap is not None else None,
        "ok": present and after == 0 and gap is not None and 0 <= gap < 1,
    }


# ---- the throwaway server --------------------------------------------------------------------


@dataclass
class RecoveredServer:
    """A recovered cluster running on a Unix socket in a private directory."""

    server: str
    region: str
    base: BaseBackup
    target: datetime | None
    data_dir: Path
    socket_dir: Path
    user: str
    port: int = SOCKET_PORT
    timings: dict[str, float] = field(default_factory=dict)
    archive_bytes: int = 0

    def info(self, database: str) -> PgConnectionInfo:
        """For pg_dump: libpq takes a directory as host to mean a Unix socket."""
        return PgConnectionInfo(str(self.socket_dir), self.port, self.user, database, {})

    def connect(self, database: str) -> Any:
        import psycopg2

        connection = psycopg2.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.user,
            dbname=database,
            connect_timeout=5,
            application_name="backup_dr pitr",
        )
        connection.autocommit = True
        return connection

    def url(self, database: str) -> str:
        """SQLAlchemy URL over the socket. The query's host (the socket directory) is what
        psycopg2 uses; 'localhost' only satisfies GX's URL validation, which wants a host."""
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg2",
            username=self.user,
            host="localhost",
            database=database,
            query={"host": str(self.socket_dir), "port": str(self.port)},
        ).render_as_string(hide_password=False)

    def query(self, database: str, sql: str) -> list[tuple]:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def restored_bytes(self) -> int:
        rows = self.query("postgres", "SELECT sum(pg_database_size(oid)) FROM pg_database")
        return int(rows[0][0] or 0)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _os_user() -> str | None:
    """Who runs PostgreSQL: ourselves, or, as root, $BACKUP_PG_OS_USER."""
    if os.geteuid() != 0:
        return None
    user = os.environ.get(OS_USER_ENV)
    if not user:
        raise RecoveryFailed(
            f"running as root: set {OS_USER_ENV} to the OS user PostgreSQL runs as "
            "(it refuses to run as root)"
        )
    return user


def _wal_tools() -> Path:
    configured = os.environ.get(WAL_TOOLS_ENV)
    if configured:
        tools = Path(configured)
    elif found := shutil.which("barman-cloud-wal-restore"):
        tools = Path(found).parent
    else:
        raise RecoveryFailed(
            f"barman-cloud-wal-restore is not on PATH; set {WAL_TOOLS_ENV} to its directory"
        )
    if not (tools / "barman-cloud-wal-restore").exists():
        raise RecoveryFailed(f"{tools} holds no barman-cloud-wal-restore ({WAL_TOOLS_ENV})")
    return tools


def _give(path: Path, owner: tuple[int, int] | None, mode: int) -> None:
    path.chmod(mode)
    if owner is not None:
        os.chown(path, *owner)


def _quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("'", "''") + "'"


def _region_access(store: ObjectStore) -> tuple[dict[str, str], str | None]:
    """Credentials and endpoint of the region's Airflow aws connection (secrets: env only)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=store.region.conn_id, client_type="s3")
    credentials = hook.get_credentials()
    env = {
        "AWS_ACCESS_KEY_ID": credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
        "AWS_DEFAULT_REGION": hook.conn_config.region_name or store.region.name,
        **CHECKSUM_ENV,
    }
    if credentials.token:
        env["AWS_SESSION_TOKEN"] = credentials.token
    return env, hook.conn_config.endpoint_url or store.endpoint_url


def _extract(archive: Path, data_dir: Path) -> None:
    """Unpack the base tar; the 'data' filter refuses paths and links leaving the directory."""
    with tarfile.open(archive, copybufsize=8 * 1024 * 1024) as tar:
        tar.extractall(data_dir, filter="data")
    for needed in ("pg_wal/archive_status",):
        (data_dir / needed).mkdir(parents=True, exist_ok=True)
    for stale in ("standby.signal", "postmaster.pid", "postmaster.opts"):
        (data_dir / stale).unlink(missing_ok=True)


def _configure(
    data_dir: Path, socket_dir: Path, restore_command: str, target: datetime | None
) -> None:
    """Recovery settings, appended to postgresql.auto.conf (read last, so they win over
    production's settings the backup carries), and a pg_hba.conf of local trust only."""
    settings = {
        "restore_command": restore_command,
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
        # Never archive into the live bucket, never stream, never wait for a standby.
        "archive_mode": "off",
        "archive_command": "",
        "archive_library": "",
        "primary_conninfo": "",
        "primary_slot_name": "",
        "synchronous_standby_names": "",
        # No TCP at all: only a Unix socket in a private directory.
        "listen_addresses": "",
        "port": str(SOCKET_PORT),
        "unix_socket_directories": str(socket_dir),
        "unix_socket_permissions": "0700",
        "hba_file": str(data_dir / "pg_hba.conf"),
        "ssl": "off",
        "hot_standby": "on",
        "logging_collector": "off",
        "log_destination": "stderr",
    }
    if target is not None:
        settings["recovery_target_time"] = target.isoformat()
    lines = ["", "# --- backup_dr.pitr: a throwaway recovery server, never production ---"]
    lines += [f"{name} = {_quote(value)}" for name, value in settings.items()]
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n".join(lines) + "\n")
    (data_dir / "pg_hba.conf").write_text(
        "# backup_dr.pitr: the local socket only, in a directory only the server user can read\n"
        "local all all trust\nlocal replication all trust\n"
    )
    (data_dir / "recovery.signal").touch()


def _restore_script(
    work: Path, store: ObjectStore, server: str, owner: tuple[int, int] | None
) -> str:
    """The restore_command wrapper and its private env file; returns the restore_command."""
    env, endpoint = _region_access(store)
    env_file = work / "restore.env"
    env_file.touch(mode=0o600)
    _give(env_file, owner, 0o600)
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    spool = work / "spool"
    spool.mkdir(mode=0o700)
    _give(spool, owner, 0o700)
    tool = shlex.quote(str(_wal_tools() / "barman-cloud-wal-restore"))
    endpoint_arg = f" --endpoint-url {shlex.quote(endpoint)}" if endpoint else ""
    script = work / "restore-wal.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"# restore_command of a throwaway PITR server: WAL from {store.region.name}, read only.\n"
        "set -e\n"
        f". {shlex.quote(str(env_file))}\n"
        f"exec {tool}{endpoint_arg} --spool-dir {shlex.quote(str(spool))}"
        f' {shlex.quote(f"s3://{store.bucket}/wal")} {shlex.quote(server)} "$1" "$2"\n'
    )
    _give(script, owner, 0o700)
    return f"{script} %f %p"


def _pg_ctl(
    work: Path, data_dir: Path, user: str | None, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """pg_ctl as the server's OS user, in a clean environment (no Airflow secrets inherited)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LC_ALL": "C"}
    with (work / "postgres.log").open("ab") as out:
        return subprocess.run(
            [pg_tool("pg_ctl"), "-D", str(data_dir), "-l", str(work / "postgres.log"), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            user=user,
            cwd=work,
            check=False,
            timeout=120,
        )


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _log_tail(work: Path, lines: int = 8) -> str:
    try:
        text = (work / "postgres.log").read_text(errors="replace")
    except OSError:
        return "(no server log)"
    interesting = [line for line in text.splitlines() if "FATAL" in line or "LOG:" in line]
    return " | ".join((interesting or text.splitlines())[-lines:])


def _wait_for_promotion(recovered: RecoveredServer, work: Path, deadline: float) -> None:
    """Until pg_is_in_recovery() is false; a server that stops first has failed."""
    import psycopg2

    seen_running = False
    while time.monotonic() < deadline:
        log_text = (work / "postgres.log").read_text(errors="replace")
        if RECOVERY_ENDED in log_text:
            raise RecoveryFailed(
                f"{RECOVERY_ENDED} (target {recovered.target}); the archive in "
                f"{recovered.region} holds no commit after it: {_log_tail(work)}"
            )
        pid = _postmaster_pid(recovered.data_dir)
        if pid is not None:
            seen_running = True
            try:
                connection = recovered.connect("postgres")
            except psycopg2.OperationalError:
                pass
            else:
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_is_in_recovery()")
                        if not cursor.fetchone()[0]:
                            return
                finally:
                    connection.close()
        elif seen_running or "FATAL" in log_text:
            raise RecoveryFailed(f"the recovery server stopped: {_log_tail(work)}")
        time.sleep(0.2)
    raise RecoveryFailed(f"recovery did not finish in time: {_log_tail(work)}")


@contextmanager
def recover(
    policy: Policy,
    stores: Any,
    server: str,
    region: str,
    target_time: str | datetime | None,
    scratch_dir: Path | str | None = None,
    *,
    span: RecoveryRange | None = None,
    timeout: timedelta | None = None,
) -> Iterator[RecoveredServer]:
    """Recover `server`'s cluster from `region` ("primary", "secondary" or a region name) to
    `target_time` ("latest" or None: the end of the archive) in a throwaway server, stopped
    and deleted on exit. The time is checked against the region's range before anything is
    downloaded; `span` saves listing the region again when the caller already did."""
    store = stores.role(region) if region in ("primary", "secondary") else stores.by_region(region)
    span = span or recovery_range(policy, store, server)
    target = check_target(span, parse_target_time(target_time))
    base = choose_base(span, target)
    login = PgConnectionInfo.from_airflow(policy.server(server).conn_id, "postgres").user
    user = _os_user()
    owner = None
    if user is not None:
        entry = pwd.getpwnam(user)
        owner = (entry.pw_uid, entry.pw_gid)
    scratch = Path(scratch_dir or os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="pitr-", dir=scratch))
    data_dir, socket_dir = work / "data", work / "socket"
    if len(str(socket_dir / f".s.PGSQL.{SOCKET_PORT}")) > 100:
        shutil.rmtree(work)
        raise RecoveryFailed(f"scratch directory {scratch} is too deep for a Unix socket path")
    recovered = RecoveredServer(server, span.region, base, target, data_dir, socket_dir, login)
    log.info(
        "Recovering %s from %s to %s with base backup %s (finished %s)",
        server,
        span.region,
        target.isoformat() if target else "the end of the archive",
        base.id,
        base.finished_at.isoformat(),
    )
    try:
        _give(work, owner, 0o700)
        for private in (data_dir, socket_dir):
            private.mkdir(mode=0o700)
        (work / "postgres.log").touch(mode=0o600)
        _give(work / "postgres.log", owner, 0o600)

        download = download_verified(store, base.manifest, work / "base.tar")
        recovered.archive_bytes = download.size
        recovered.timings["download + SHA-256 check"] = round(download.seconds, 3)

        started = time.monotonic()
        _extract(download.path, data_dir)
        download.path.unlink()
        restore_command = _restore_script(work, store, server, owner)
        _configure(data_dir, socket_dir, restore_command, target)
        if owner is not None:
            for root, dirs, files in os.walk(work):
                for name in (*dirs, *files):
                    os.lchown(Path(root, name), *owner)
        for private in (data_dir, socket_dir):
            _give(private, owner, 0o700)
        recovered.timings["extract"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        limit = (timeout or policy.objectives.rto).total_seconds()
        done = _pg_ctl(work, data_dir, user, "-W", "start")
        if done.returncode != 0:
            raise RecoveryFailed(f"pg_ctl start failed ({done.returncode}): {_log_tail(work)}")
        _wait_for_promotion(recovered, work, started + limit)
        recovered.timings["WAL replay to promote"] = round(time.monotonic() - started, 3)
        log.info("Recovered %s: %s", server, recovered.timings)
        yield recovered
    finally:
        _stop(work, data_dir, user)
        shutil.rmtree(work, ignore_errors=True)


def _stop(work: Path, data_dir: Path, user: str | None) -> None:
    """Immediate stop (the copy is thrown away); a server that will not stop is killed."""
    if _postmaster_pid(data_dir) is None:
        return
    with suppress(subprocess.TimeoutExpired):
        _pg_ctl(work, data_dir, user, "-m", "immediate", "-w", "-t", "30", "stop")
    pid = _postmaster_pid(data_dir)
    if pid is not None:
        log.warning("The recovery server (pid %d) did not stop; killing it", pid)
        with suppress(ProcessLookupError):
            os.kill(pid, 9)


# ---- validation and sizes -------------------------------------------------------------------


def production_targets(policy: Policy, server: str) -> list[Target]:
    """The production databases of a server, in priority order."""
    return [
        t
        for t in policy.targets_on(policy.subject(server, CONTINUOUS).category, server)
        if t.is_production
    ]


def key_facts(policy: Policy, store: ObjectStore, target: str, tier: str) -> tuple[dict, str]:
    """Tables and keys from the newest verified `tier` dump of `target` in this region, without
    row counts (nobody counted rows at T); and where they came from."""
    try:
        selection = select_backup(policy, store, target, tier)
    except RestoreRefused as exc:
        return {}, f"no key checks: {exc}"
    manifest = store.manifest(selection.backup)
    if manifest is None:
        return {}, f"no key checks: {selection.backup} has no manifest"
    tables = {name: {**facts, "rows": None} for name, facts in manifest.tables().items()}
    return tables, f"tables and keys from {selection.backup} in {selection.region}"


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


def merge_validations(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One validation document for several databases; each result names its database."""
    results = [
        {**result, "suite": f"{result['suite']} [{database}]"}
        for database, document in reports.items()
        for result in document["results"]
    ]
    failed = sum(1 for r in results if not r["success"])
    return {
        "ok": bool(results) and all(d["ok"] for d in reports.values()),
        "seconds": round(sum(d["seconds"] for d in reports.values()), 3),
        "evaluated": len(results),
        "passed": len(results) - failed,
        "failed": failed,
        "suites": sorted({r["suite"] for r in results}),
        "databases": {
            db: {k: d.get(k) for k in ("ok", "evaluated", "failed", "key_checks")}
            for db, d in reports.items()
        },
        "results": results,
    }


def validate_recovered(
    policy: Policy, store: ObjectStore, recovered: RecoveredServer, tier: str
) -> dict[str, Any]:
    """Business rules and key checks on every production database of the recovered server."""
    from include.backup_dr.validation import validate_database

    reports = {}
    for target in production_targets(policy, recovered.server):
        assert target.database is not None
        tables, source = key_facts(policy, store, target.name, tier)
        log.info("Validating %s at %s: %s", target.database, recovered.target, source)
        report = validate_database(recovered.url(target.database), target.name, tables)
        reports[target.database] = {**report.to_document(), "key_checks": source}
    return merge_validations(reports)


def cluster_size(conn_id: str) -> int:
    """Every database of a (production) server, in bytes: what a full recovery must rebuild."""
    connection = PgConnectionInfo.from_airflow(conn_id, "postgres").connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT sum(pg_database_size(oid)) FROM pg_database")
            return int(cursor.fetchone()[0] or 0)
    finally:
        connection.close()


def projection(policy: Policy, restored_bytes: int, seconds: float) -> dict[str, Any]:
    """The measured recovery throughput applied to the largest production server, vs the RTO."""
    rto = policy.objectives.rto.total_seconds()
    throughput = restored_bytes / seconds if seconds else 0.0
    sizes = [(s.name, cluster_size(s.conn_id)) for s in policy.continuous_servers()]
    largest, largest_bytes = max(sizes, key=lambda item: item[1], default=("-", 0))
    projected = largest_bytes / throughput if throughput else float("inf")
    return {
        "restore_throughput_mb_per_s": round(throughput / 1e6, 2),
        "largest_production_target": largest,
        "largest_production_bytes": largest_bytes,
        "projected_restore_seconds": round(projected, 1),
        "rto_seconds": rto,
        "within_rto": projected <= rto,
    }


# ---- the drill -------------------------------------------------------------------------------


def drill(
    policy: Policy,
    stores: Any,
    server: str,
    params: dict[str, Any],
    run: dict[str, str],
    *,
    rng: random.Random | None = None,
    scratch_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Recover `server` to a random recorded heartbeat + 0.5 s, prove it, validate, report."""
    settings = policy.restore_verification
    assert settings is not None
    rng = rng or random.SystemRandom()
    role = params.get("region") or settings.region
    other = "primary" if role == "secondary" else "secondary"
    preferred = recovery_range(policy, stores.role(role), server)
    alternative = recovery_range(policy, stores.role(other), server)
    why = f"the drill's region ({role}{': the DR path' if role == 'secondary' else ''})"
    span, reason = choose_region(preferred, alternative, why)
    store = stores.by_region(span.region)
    log.info("PITR drill of %s: %s", server, reason)

    problems: list[str] = []
    sample = choose_sample(store, span, rng) if span.oldest else None
    if sample is not None:
        target: datetime | None = sample.target_time
    elif span.oldest is not None and span.newest is not None:
        problems.append(
            f"no heartbeat recorded by the continuous monitor in {span.region} lies inside "
            "the recovery range with its WAL archived: 1-second granularity is not proven"
        )
        seconds = (span.newest - span.oldest).total_seconds()
        target = span.oldest + timedelta(seconds=rng.uniform(0, seconds))
    else:
        target = None
    proof = validation = restored = projected = None
    base = None
    try:
        if target is None:
            check_target(span, None)  # raises, naming what is missing
        with recover(
            policy, stores, server, span.region, target, scratch_dir, span=span
        ) as recovered:
            base = recovered.base
            if sample is not None:
                connection = recovered.connect(_heartbeat_database(policy, server))
                try:
                    proof = heartbeat_proof(connection, sample, target)
                finally:
                    connection.close()
                if not proof["ok"]:
                    problems.append(f"heartbeat proof failed: {json.dumps(proof)}")
            validation = validate_recovered(policy, store, recovered, settings.tier)
            restored_bytes = recovered.restored_bytes()
            listen = recovered.query("postgres", "SHOW listen_addresses")[0][0]
            restored = {
                "timings": dict(recovered.timings),
                "archive_bytes": recovered.archive_bytes,
                "restored_bytes": restored_bytes,
                "listen_addresses": listen,
                **_provenance(recovered.base),
            }
    except Exception as exc:  # any failure is a finding of the drill: recorded, then failed
        log.exception("PITR drill of %s failed", server)
        problems.append(f"recovery failed: {exc}")
    if restored is not None:
        projected = projection(
            policy, restored["restored_bytes"], sum(restored["timings"].values())
        )
        if not projected["within_rto"]:
            problems.append(
                f"projected recovery of {projected['largest_production_target']} takes "
                f"{timedelta(seconds=round(projected['projected_restore_seconds']))}, over the "
                f"RTO of {format_duration(policy.objectives.rto)}"
            )
    if validation is not None and not validation["ok"]:
        failed = [r for r in validation["results"] if not r["success"]]
        problems.append(
            f"{len(failed)} expectation(s) failed: "
            + "; ".join(f"{r['suite']}: {r['expectation']} on {r['table']}" for r in failed)
        )
    elif validation is None and not problems:
        problems.append("validation did not run")
    document = _document(
        policy,
        server,
        span,
        reason,
        base,
        target,
        sample,
        proof,
        restored,
        projected,
        validation,
        problems,
        run,
    )
    return write_evidence(stores, document)


def _heartbeat_database(policy: Policy, server: str) -> str:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook.get_connection(policy.server(server).conn_id).schema or "postgres"


def _provenance(base: BaseBackup) -> dict[str, Any]:
    return {
        "base_backup": str(base.id),
        "taken_at": base.finished_at.isoformat(),
        "age_seconds": round((datetime.now(UTC) - base.finished_at).total_seconds()),
        "sha256": base.manifest.artifact.sha256,
        "start_wal": base.manifest.source.get("start_wal"),
        "end_wal": base.manifest.source.get("end_wal"),
    }


def _document(
    policy: Policy,
    server: str,
    span: RecoveryRange,
    reason: str,
    base: BaseBackup | None,
    target: datetime | None,
    sample: HeartbeatSample | None,
    proof: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    projected: dict[str, Any] | None,
    validation: dict[str, Any] | None,
    problems: list[str],
    run: dict[str, str],
) -> dict[str, Any]:
    """The drill's evidence record, shaped like drill.report's (render_markdown reads it)."""
    category = policy.subject(server, CONTINUOUS).category
    return {
        "schema": "backup-dr/restore_verification/pitr/v1",
        "kind": "restore_verification",
        "target": server,
        "backup": {
            "category": category,
            "target": server,
            "tier": CONTINUOUS,
            "window": base.id.window.isoformat() if base else "-",
            "region": span.region,
        },
        "selection_reason": reason,
        "restored_into": "a throwaway PostgreSQL server on a private Unix socket (no TCP port), "
        "deleted afterwards",
        "recorded_at": datetime.now(UTC).isoformat(),
        "run": run,
        "recovery_range": span.to_document(),
        "target_time": target.isoformat() if target else None,
        "heartbeat_sample": sample.to_document() if sample else None,
        "proof": proof,
        "steps": restored,
        "projection": projected or {},
        "validation": validation,
        "outcome": "passed" if not problems else "failed",
        "problems": problems,
    }


def write_evidence(stores: Any, document: dict[str, Any]) -> dict[str, Any]:
    """report.json + report.md under a unique prefix, in both regions."""
    from include.backup_dr.drill import render_markdown

    stamp = window_label(datetime.now(UTC))
    prefix = f"evidence/{document['kind']}/{document['target']}/{stamp}-{uuid.uuid4().hex[:8]}"
    page = render_markdown(document) + render_pitr_markdown(document)
    for store in stores:
        store.put_json(f"{prefix}/report.json", json.dumps(document, indent=2, default=str) + "\n")
        store.put_bytes(f"{prefix}/report.md", page.encode(), "text/markdown")
    log.info("PITR evidence written to %s/report.{json,md} in both regions", prefix)
    return {**document, "evidence_prefix": prefix}


def render_pitr_markdown(document: dict[str, Any]) -> str:
    """The PITR facts an auditor looks for, appended to the common restore page."""
    span = document.get("recovery_range") or {}
    proof = document.get("proof") or {}
    sample = document.get("heartbeat_sample") or {}
    lines = [
        "## Point-in-time recovery",
        "",
        f"- Recoverable in {span.get('region', '?')}: after {span.get('oldest')} up to "
        f"{span.get('newest')} (WAL: {span.get('wal', '?')})",
        f"- Target time T: {document.get('target_time')}",
        f"- Heartbeat chosen: seq {sample.get('seq', '-')} written at "
        f"{sample.get('written_at', '-')} (next at {sample.get('next_written_at', '-')})",
        f"- Heartbeat present after recovery: {proof.get('seq_present', '-')}",
        f"- Heartbeats written after T: {proof.get('heartbeats_after_target', '-')}",
        f"- Newest restored heartbeat: seq {proof.get('newest_restored_seq', '-')} at "
        f"{proof.get('newest_restored_written_at', '-')} "
        f"({proof.get('seconds_between_newest_and_target', '-')} s before T)",
        f"- 1-second granularity proven: {'yes' if proof.get('ok') else 'NO'}",
        "",
    ]
    return "\n".join(lines)


def drill_servers(policy: Policy, params: dict[str, Any]) -> list[str]:
    """Servers whose PITR the drill proves: all continuous ones, or the one named in `target`.
    A database or media `target` is a single-target drill: no PITR then."""
    servers = [s.name for s in policy.continuous_servers()]
    chosen = params.get("target")
    if chosen:
        return [chosen] if chosen in servers else []
    return servers


def has_base_backup(policy: Policy, stores: Any, server: str) -> bool:
    """Whether the continuous tier has committed a base backup of `server` in any region."""
    category = policy.subject(server, CONTINUOUS).category
    prefix = f"{category}/{server}/{CONTINUOUS}/"
    return any(
        obj.key.endswith("/manifest.json") for store in stores for obj in store.list_objects(prefix)
    )


# ---- disaster recovery at a point in time ---------------------------------------------------


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
