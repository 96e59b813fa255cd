"""The throwaway server: the cluster recovered from one region's base backup and WAL into a
private scratch directory, Unix socket only (no TCP port), never archiving; always stopped and
deleted afterwards. WAL comes from one prefetch process per recovery (`wal_prefetch`), which
alone holds the region's credentials and checks every segment before the sh restore_command
may serve it."""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.catalogue import Manifest
from include.backup_dr.engines.wal import archive_files, read_histories
from include.backup_dr.pitr.wal_prefetch import (
    DEFAULT_DEPTH,
    ArchivePlan,
    Prefetcher,
    plan_archive,
    restore_script,
)
from include.backup_dr.pitr.window import (
    BaseBackup,
    RecoveryRange,
    check_target,
    choose_base,
    parse_target_time,
    recovery_range,
)
from include.backup_dr.policy import Policy
from include.backup_dr.postgres import PgConnectionInfo, pg_tool, run_sql
from include.backup_dr.restore.download import fetch, prove_bytes
from include.backup_dr.store import READ_CHUNK, ObjectStore

log = logging.getLogger(__name__)

#: The OS user PostgreSQL runs as when we are root (it refuses to run as root).
OS_USER_ENV = "BACKUP_PG_OS_USER"
#: Segments the prefetcher keeps ready ahead of PostgreSQL (default `wal_prefetch.DEFAULT_DEPTH`).
PREFETCH_DEPTH_ENV = "BACKUP_WAL_PREFETCH_DEPTH"
#: How long the prefetcher may take to start serving (Python start-up, boto3 import).
PREFETCH_START_SECONDS = 300
#: Where throwaway servers live (default: the system temp dir); the OS user must traverse it.
SCRATCH_ENV = "BACKUP_PITR_SCRATCH_DIR"
#: PostgreSQL's own words when the archive ends before the target: the failure we report.
RECOVERY_ENDED = "recovery ended before configured recovery target was reached"
#: Only names the socket file: the throwaway server has no TCP listener at all.
SOCKET_PORT = 5432
#: Checksum settings boto3 >= 1.36 needs against some S3 servers (see FACTS / local.wal).
CHECKSUM_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


class RecoveryFailed(AirflowFailException):
    """The throwaway server did not reach the recovery target; the message says why."""


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
    #: WAL files replayed (each one restore_command call that served a file).
    wal_files: int = 0

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
        return run_sql(self.connect(database), sql)

    def restored_bytes(self) -> int:
        rows = self.query("postgres", "SELECT sum(pg_database_size(oid)) FROM pg_database")
        return int(rows[0][0] or 0)


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


def _extract_proven(
    archive: Path, data_dir: Path, manifest: Manifest, region: str, user: str | None
) -> None:
    """Unpack the base tar with GNU tar, run as the server's OS user (so every file is its
    own), while the same read of the archive re-hashes it against the manifest.

    Extracting before the hash is proven is safe: the private data directory is not started
    until `prove_bytes` passes, and a tampered archive is deleted with it. GNU tar refuses
    members that climb out with '..' and strips leading '/'.
    """
    digest = hashlib.sha256()
    size = 0
    tar = subprocess.Popen(
        ["tar", "-x", "-f", "-", "-C", str(data_dir)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        user=user,
    )
    assert tar.stdin is not None
    with archive.open("rb") as source, suppress(BrokenPipeError):
        for chunk in iter(lambda: source.read(READ_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
            tar.stdin.write(chunk)
    with suppress(BrokenPipeError):
        tar.stdin.close()
    error = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
    code = tar.wait()
    prove_bytes(manifest, region, digest.hexdigest(), size)
    if code != 0:
        raise RecoveryFailed(f"tar could not unpack the base backup ({code}): {error[-500:]}")
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


def _start_prefetch(
    work: Path, store: ObjectStore, server: str, base: BaseBackup, owner: tuple[int, int] | None
) -> tuple[Prefetcher, ArchivePlan]:
    """List the region's archive, plan the segments this base backup's replay needs (timeline
    by timeline) and start the prefetcher on them, holding the region's credentials."""
    size = base.segment_size
    files = archive_files(store, server, size)
    plan = plan_archive(
        files,
        base.start_segment,
        read_histories(store, files),
        segment_size=size,
        system_identifier=int(base.manifest.source["system_identifier"]),
        major_version=int(str(base.manifest.source["server_version"]).split(".")[0]),
    )
    spool = work / "spool"
    spool.mkdir(mode=0o700)
    _give(spool, owner, 0o700)
    env, endpoint = _region_access(store)
    depth = int(os.environ.get(PREFETCH_DEPTH_ENV) or DEFAULT_DEPTH)
    prefetch = Prefetcher.start(
        plan,
        work=work,
        spool=spool,
        bucket=store.bucket,
        region=env["AWS_DEFAULT_REGION"],
        endpoint=endpoint,
        credentials=env,
        owner=owner,
        depth=depth,
    )
    return prefetch, plan


def _restored(work: Path) -> list[str]:
    """The WAL files PostgreSQL says it restored, in order, from its log."""
    try:
        text = (work / "postgres.log").read_text(errors="replace")
    except OSError:
        return []
    return re.findall(r'restored log file "([^"]+)" from archive', text)


def _restored_through(work: Path) -> str:
    names = _restored(work)
    return f"the last WAL file PostgreSQL restored: {names[-1] if names else 'none'}"


def _require_whole(
    work: Path, prefetch: Prefetcher, plan: ArchivePlan, target: datetime | None
) -> None:
    """'latest' must replay the whole planned span. PostgreSQL ends recovery quietly at the
    first file it cannot have, so a refused segment (a gap, a damaged file) fails it here. With
    a target time, PostgreSQL itself fails when it ends before the target."""
    if target is not None:
        return
    refused = prefetch.refused({*plan.order, *plan.gaps})
    if refused:
        first = min(refused)
        raise RecoveryFailed(
            f"recovery to the end of the archive stopped at {first}, which was refused "
            f"({refused[first]}); the archive goes on to {plan.newest}; "
            f"{_restored_through(work)}. Not used."
        )


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


def _wait_for_promotion(
    recovered: RecoveredServer, work: Path, deadline: float, prefetch: Prefetcher
) -> None:
    """Until pg_is_in_recovery() is false; a server that stops first, or a prefetcher that
    stops serving, has failed."""
    import psycopg2

    seen_running = False
    while time.monotonic() < deadline:
        if prefetch.failure():
            raise RecoveryFailed("the WAL prefetcher stopped serving")
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
    prefetch: Prefetcher | None = None
    try:
        _give(work, owner, 0o700)
        for private in (data_dir, socket_dir):
            private.mkdir(mode=0o700)
        (work / "postgres.log").touch(mode=0o600)
        _give(work / "postgres.log", owner, 0o600)
        started = time.monotonic()
        # Started first: WAL is fetched and checked while the base backup downloads.
        prefetch, plan = _start_prefetch(work, store, server, base, owner)
        archive = work / "base.tar"
        fetch(store, base.manifest, archive)
        recovered.archive_bytes = base.manifest.artifact.size
        recovered.timings["download"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        if owner is not None:
            os.chown(archive, *owner)
            os.chown(data_dir, *owner)
        _extract_proven(archive, data_dir, base.manifest, span.region, user)
        archive.unlink()
        script = work / "restore-wal.sh"
        restore_command = restore_script(script, prefetch.spool)
        _give(script, owner, 0o700)
        _configure(data_dir, socket_dir, restore_command, target)
        if owner is not None:
            for root, dirs, files in os.walk(work):
                if Path(root) == work:
                    dirs.remove("spool")  # the prefetcher's own, written as it goes
                for name in (*dirs, *files):
                    os.lchown(Path(root, name), *owner)
        for private in (data_dir, socket_dir):
            _give(private, owner, 0o700)
        recovered.timings["extract + SHA-256 check"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        limit = (timeout or policy.objectives.rto).total_seconds()
        try:
            prefetch.wait_ready(timeout=min(limit, PREFETCH_START_SECONDS))
        except RuntimeError as exc:
            raise RecoveryFailed(str(exc)) from exc
        done = _pg_ctl(work, data_dir, user, "-W", "start")
        if done.returncode != 0:
            raise RecoveryFailed(f"pg_ctl start failed ({done.returncode}): {_log_tail(work)}")
        try:
            _wait_for_promotion(recovered, work, started + limit, prefetch)
        except RecoveryFailed as exc:
            raise RecoveryFailed(
                f"{exc}. WAL prefetch: {prefetch.summary()}; {_restored_through(work)}"
            ) from exc
        _require_whole(work, prefetch, plan, target)
        recovered.wal_files = len(_restored(work))
        recovered.timings["WAL replay to promote"] = round(time.monotonic() - started, 3)
        log.info("Recovered %s: %s", server, recovered.timings)
        yield recovered
    finally:
        _stop(work, data_dir, user)
        if prefetch is not None:
            prefetch.stop()
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
