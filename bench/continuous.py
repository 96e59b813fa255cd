"""`python -m bench.run --only continuous`: the continuous tier against the bare tools.

Every number is measured in this run, on the local stack's platform cluster (which holds the
~1.1 GB bench database), against a baseline taken in the same run on the same cluster and bytes:

- base backup: the `snapshot` task (``take_snapshot(..., "continuous", ...)``, in a fresh
  process) vs (a) bare ``pg_basebackup -Ft -D - -X none -c fast`` to /dev/null and (b) the same
  command piped into a bare boto3 ``upload_fileobj`` to the same bucket, SSE-KMS with the same
  key. Both bare runs wait, like the task, for the end WAL segment to be archived (without -X,
  pg_basebackup asks the server to wait for it);
- PITR: ``pitr.recover`` (download + SHA-256, extract, WAL replay to T) from the secondary
  region vs a boto3 ``download_file`` of the same tar, ``tar -x`` and PostgreSQL started with
  a bare barman-cloud-wal-restore ``restore_command`` and the same ``recovery_target_time``;
  both must end with the same newest heartbeat (the one just before T) and none after T;
- WAL fetch: per 16 MB segment, PostgreSQL's side of the prefetcher (the sh restore_command,
  called once per segment in order, the prefetcher started by hand as the README shows) vs
  ``cp`` of the same raw segment from local disk, each call through ``sh -c`` as PostgreSQL's
  system() does; and a few barman-cloud-wal-restore calls (the path before) for the day's
  extrapolation. The segments are synthetic (a valid header, half random bytes: about 2:1
  under gzip, like busy WAL), uploaded with SSE-KMS under a server name of their own;
- replication lag: the monitor's own measurement (a heartbeat a second, commit to visible on
  the standby) while ``local.loadgen`` commits at a steady rate;
- peak RSS (VmHWM) of every continuous-tier task, each in a fresh process.

Each task runs as ``python -m bench.continuous STEP ARGS_JSON`` and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.results import Measured, Row

REPO = Path(__file__).resolve().parent.parent
SERVER = "platform_primary"
TIER = "continuous"
#: Where the bare upload baseline puts its copy of the base backup (deleted afterwards).
BARE_KEY = "bench/continuous/bare-basebackup.tar"
#: The monitor's RPO goal and the memory goal of every task.
LAG_GOAL_MS = 1000.0
RSS_GOAL_MB = 300.0


# ---- the child side: one task in a fresh process ---------------------------------------------


def _hwm_mb() -> float:
    """VmHWM, not ru_maxrss: the latter carries the parent's peak across fork+exec."""
    with Path("/proc/self/status").open() as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(step: str, args: dict[str, Any]) -> dict[str, Any]:
    if step == "bare_upload":
        return _bare_upload(args)
    from include.backup_dr.backup import steps
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    policy = load_policy()
    stores = Stores.from_policy(policy)
    cpu_ready = _cpu_seconds()  # imports and clients made: the work's own CPU starts here
    run = {"dag_id": "bench_continuous", "run_id": f"bench-{step}"}
    extra: dict[str, Any] = {}
    if step == "snapshot":
        from include.backup_dr.engines import wal

        waited: list[float] = []
        original = wal.BaseBackupSnapshot._await_archived

        def timed(self: Any, last: Any, segment_size: int) -> None:  # measures, changes nothing
            started = time.perf_counter()
            try:
                original(self, last, segment_size)
            finally:
                waited.append(time.perf_counter() - started)

        wal.BaseBackupSnapshot._await_archived = timed  # type: ignore[method-assign]
        window = datetime.fromisoformat(args["window"])
        started = time.perf_counter()
        result = steps.take_snapshot(policy, stores, SERVER, TIER, window, run)
        extra["await_archived_seconds"] = sum(waited)
    elif step == "copy":
        started = time.perf_counter()
        result = steps.copy_to_secondary(policy, stores, args["ref"])
    elif step == "integrity":
        started = time.perf_counter()
        result = steps.check_integrity(policy, stores, args["ref"])
    elif step == "prune":
        started = time.perf_counter()
        result = steps.prune(policy, stores, SERVER, TIER)
    elif step == "measure":
        from include.backup_dr.monitor.continuous import measure

        started = time.perf_counter()
        result = measure(policy, stores, SERVER, float(args["duration"]), run)
    elif step == "recover":
        from include.backup_dr import pitr
        from include.backup_dr.postgres import database_of

        database = database_of(policy.server(SERVER).conn_id)
        target = datetime.fromisoformat(args["target"])
        started = time.perf_counter()
        with pitr.recover(policy, stores, SERVER, "secondary", target) as recovered:
            timings = dict(recovered.timings)
            connection = recovered.connect(database)
            try:
                heartbeats = _heartbeat_facts(connection, target)
            finally:
                connection.close()
            result = {
                "timings": timings,
                "wal_files": recovered.wal_files,
                "archive_bytes": recovered.archive_bytes,
                "restored_bytes": recovered.restored_bytes(),
                "base_backup": str(recovered.base.id),
                "heartbeats": heartbeats,
            }
    else:
        raise SystemExit(f"unknown step {step!r}")
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": _cpu_seconds(),
        "work_cpu_seconds": _cpu_seconds() - cpu_ready,
        "rss_mb": _hwm_mb(),
        "result": result,
        **extra,
    }


def _heartbeat_facts(connection: Any, target: datetime) -> dict[str, Any]:
    """What a recovered cluster holds of the monitor's heartbeats: newest, and any after T."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT max(seq), count(*) FILTER (WHERE written_at > %s) FROM backup_dr.heartbeat",
            (target,),
        )
        newest, after = cursor.fetchone()
    return {"newest_seq": newest, "after_target": int(after)}


def _s3_client(site_index: int) -> Any:
    """A bare boto3 client for one local region (no Airflow, no ObjectStore)."""
    import boto3
    from botocore.config import Config

    from local.config import S3_ACCESS_KEY, S3_SECRET_KEY, s3_sites

    site = s3_sites()[site_index]
    return boto3.client(
        "s3",
        endpoint_url=site.endpoint,
        region_name=site.region,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _basebackup_argv(args: dict[str, Any]) -> list[str]:
    return [
        args["pg_basebackup"], "-Ft", "-D", "-", "-X", "none", "-c", "fast",
        "-h", args["host"], "-p", str(args["port"]), "-U", args["user"],
    ]  # fmt: skip


def _bare_upload(args: dict[str, Any]) -> dict[str, Any]:
    """Baseline (b): pg_basebackup's tar piped into boto3's upload_fileobj, default settings."""
    from local.config import s3_sites

    client = _s3_client(0)
    site = s3_sites()[0]
    cpu_ready = _cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(
        _basebackup_argv(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # its notices; the exit code is checked
        env={**os.environ, "PGPASSWORD": args["password"]},
    )
    assert process.stdout is not None
    client.upload_fileobj(
        process.stdout,
        site.bucket,
        BARE_KEY,
        ExtraArgs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": site.kms_key},
    )
    if process.wait() != 0:
        raise SystemExit(f"pg_basebackup exited {process.returncode}")
    seconds = time.perf_counter() - started
    work_cpu = _cpu_seconds() - cpu_ready
    size = client.head_object(Bucket=site.bucket, Key=BARE_KEY)["ContentLength"]
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds(),
        "work_cpu_seconds": work_cpu,
        "rss_mb": _hwm_mb(),
        "result": {"size": size},
    }


def run_step(step: str, **args: Any) -> dict[str, Any]:
    """One task in a fresh interpreter, so its peak RSS is its own; `process_seconds` includes
    the interpreter's start-up and imports, `seconds` is the task's function alone."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.continuous", step, json.dumps(args, default=str)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench step {step} failed ({out.returncode}): {out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "process_seconds": time.perf_counter() - started}


# ---- the parent side -------------------------------------------------------------------------


@dataclass
class Context:
    """What every part of the section needs: the policy, the stores, the cluster's access."""

    policy: Any
    stores: Any
    pg: Any  # PgConnectionInfo of the platform server
    os_user: str | None
    scratch: Path
    wal_tools: Path


def _sql(ctx: Context, statement: str, params: Any = None) -> list[tuple]:
    connection = ctx.pg.connect()
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def archive_now(ctx: Context, timeout: float = 900.0) -> str:
    """Close the current WAL segment and wait until the server has archived it (and all before:
    the database generation leaves a backlog that would otherwise be timed as our work)."""
    (segment,) = _sql(ctx, "SELECT pg_walfile_name(pg_switch_wal())")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        archived, ready = _sql(
            ctx,
            "SELECT last_archived_wal, (SELECT count(*) FROM pg_ls_archive_statusdir() "
            "WHERE name LIKE '%%.ready') FROM pg_stat_archiver",
        )[0]
        if archived is not None and archived >= segment and ready == 0:
            return segment
        time.sleep(0.5)
    raise RuntimeError(f"WAL segment {segment} was not archived within {timeout:.0f} s")


def cluster_bytes(ctx: Context) -> int:
    return int(_sql(ctx, "SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0])


def _timed(argv: list[str], **kwargs: Any) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, **kwargs)
    return time.perf_counter() - started


def bench_base_backup(ctx: Context, rounds: int, created: list[dict[str, Any]]) -> dict[str, Any]:
    """`rounds` x (bare to /dev/null, bare into boto3, the task), alternating; medians."""
    from include.backup_dr.postgres import pg_tool

    access = {
        "pg_basebackup": pg_tool("pg_basebackup"),
        "host": ctx.pg.host,
        "port": ctx.pg.port,
        "user": ctx.pg.user,
        "password": ctx.pg.env.get("PGPASSWORD", ""),
    }
    env = {**os.environ, "PGPASSWORD": access["password"]}
    base = datetime.now(UTC).replace(microsecond=0)
    devnull, upload, task = [], [], []

    def to_devnull() -> None:
        with Path(os.devnull).open("wb") as sink:
            devnull.append(
                _timed(_basebackup_argv(access), stdout=sink, stderr=subprocess.DEVNULL, env=env)
            )

    def to_s3() -> None:
        upload.append(run_step("bare_upload", **access))

    def the_task() -> None:
        window = base + timedelta(minutes=len(task))
        task.append(run_step("snapshot", window=window.isoformat()))
        created.append(task[-1]["result"])

    for n in range(rounds):
        print(f"  base backup round {n + 1}/{rounds} ...", flush=True)
        # Alternate the order, so neither side always meets a warm or a cold cache first.
        for measure in (to_devnull, to_s3, the_task)[:: 1 if n % 2 == 0 else -1]:
            archive_now(ctx)  # each starts with an empty archive queue
            measure()
    _s3_client(0).delete_object(Bucket=ctx.stores.primary.bucket, Key=BARE_KEY)
    return {
        "devnull_seconds": devnull,
        "upload": upload,
        "task": task,
        "ref": task[-1]["result"],
        "size": task[-1]["result"]["size"],
        "bare_size": upload[-1]["result"]["size"],
    }


def bench_lag(rate: float, seconds: float) -> dict[str, Any]:
    """The monitor's measurement (in its own process) while the load generator commits."""
    from local.loadgen import LoadGenerator

    with LoadGenerator(rate=rate) as load:
        time.sleep(2)  # the load is steady before the first heartbeat
        measured = run_step("measure", duration=seconds)
    return {**measured, "committed": load.committed, "achieved_rate": load.achieved_rate}


def recovery_target(doc: dict[str, Any]) -> datetime:
    """Half a second after a heartbeat in the middle of the monitor run (as the drill does)."""
    samples = [s for s in doc["samples"] if s.get("seq") is not None]
    sample = samples[len(samples) // 2]
    return datetime.fromisoformat(sample["written_at"]) + timedelta(milliseconds=500)


def _give(path: Path, os_user: str | None) -> None:
    if os_user is not None:
        shutil.chown(path, os_user, os_user)


def short_socket_dir() -> Path:
    """A private directory for a throwaway server's Unix socket, in /tmp: under a deep
    checkout the socket path passes the 107-byte limit and the server never starts."""
    return Path(tempfile.mkdtemp(prefix="bench-sock-", dir="/tmp"))


def bare_recover(ctx: Context, manifest: Any, target: datetime) -> dict[str, Any]:
    """The same recovery with the bare tools: boto3 download_file, tar -x, postgres with a
    barman-cloud-wal-restore restore_command and the same recovery_target_time."""
    import psycopg2

    from include.backup_dr.postgres import database_of, pg_tool
    from local.config import S3_ACCESS_KEY, S3_SECRET_KEY, s3_sites

    site = s3_sites()[1]  # the secondary region, as pitr.recover is pointed at
    work = Path(tempfile.mkdtemp(prefix="bare-", dir=ctx.scratch))
    data = work / "data"
    socket = short_socket_dir()
    for path in (data, work / "spool"):
        path.mkdir(mode=0o700)
    for path in (work, data, socket, work / "spool"):
        _give(path, ctx.os_user)
    log = work / "postgres.log"
    timings: dict[str, float] = {}
    pg_ctl = [pg_tool("pg_ctl"), "-D", str(data), "-l", str(log)]
    try:
        started = time.perf_counter()
        archive = work / "base.tar"
        _s3_client(1).download_file(site.bucket, manifest.artifact.key, str(archive))
        timings["download"] = time.perf_counter() - started

        started = time.perf_counter()
        subprocess.run(
            ["tar", "-x", "-f", str(archive), "-C", str(data)], check=True, user=ctx.os_user
        )
        archive.unlink()
        restore = (
            f"env AWS_ACCESS_KEY_ID={S3_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={S3_SECRET_KEY} "
            f"AWS_DEFAULT_REGION={site.region} AWS_REQUEST_CHECKSUM_CALCULATION=when_required "
            f"AWS_RESPONSE_CHECKSUM_VALIDATION=when_required "
            f"{ctx.wal_tools / 'barman-cloud-wal-restore'} --endpoint-url {site.endpoint} "
            f"--spool-dir {work / 'spool'} s3://{site.bucket}/wal {SERVER} %f %p"
        )
        settings = {
            "restore_command": restore,
            "recovery_target_time": target.isoformat(),
            "recovery_target_action": "promote",
            # A copy of production: never archive into the live bucket, never take its port.
            "archive_mode": "off",
            "listen_addresses": "",
            "unix_socket_directories": str(socket),
            "port": "5432",
        }
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{k} = '{v}'\n" for k, v in settings.items())
        (data / "recovery.signal").touch()
        _give(data / "recovery.signal", ctx.os_user)
        timings["extract"] = time.perf_counter() - started

        started = time.perf_counter()
        subprocess.run(
            [*pg_ctl, "-W", "start"],
            check=True,
            user=ctx.os_user,
            cwd=work,
            stdout=subprocess.DEVNULL,
        )
        database = database_of(ctx.policy.server(SERVER).conn_id)
        deadline = time.monotonic() + 900
        seen_running = False
        while True:
            try:
                connection = psycopg2.connect(
                    host=str(socket), port=5432, user=ctx.pg.user, dbname=database
                )
            except psycopg2.OperationalError:
                connection = None
            if connection is not None:
                connection.autocommit = True
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_is_in_recovery()")
                    promoted = not cursor.fetchone()[0]
                if promoted:
                    timings["WAL replay to promote"] = time.perf_counter() - started
                    heartbeats = _heartbeat_facts(connection, target)
                    connection.close()
                    # Each is one barman-cloud-wal-restore call that found its file.
                    segments = log.read_text(errors="replace").count("restored log file")
                    break
                connection.close()
            # Our own early connections log FATAL ("starting up"): a postmaster that came up
            # and went away is the failure.
            running = (data / "postmaster.pid").exists()
            seen_running = seen_running or running
            text = log.read_text(errors="replace") if log.exists() else ""
            never_started = not running and "FATAL" in text
            if time.monotonic() > deadline or (seen_running and not running) or never_started:
                text = log.read_text(errors="replace") if log.exists() else "(no log)"
                raise RuntimeError(f"bare recovery failed: {text[-2000:]}")
            time.sleep(0.2)
    finally:
        subprocess.run(
            [*pg_ctl, "-m", "immediate", "-w", "stop"],
            user=ctx.os_user,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(socket, ignore_errors=True)
    return {
        "timings": timings,
        "seconds": sum(timings.values()),
        "heartbeats": heartbeats,
        "segments_restored": segments,
    }


#: A busy day of WAL, for the extrapolation: 5,000 segments of 16 MB (80 GB).
DAY_SEGMENTS = 5000
WAL_FETCH_SERVER = "bench_walfetch"


def _synthetic_segment(segment: Any) -> bytes:
    """A raw segment: a header the prefetcher's check accepts, then half random, half zero
    bytes (gzip about 2:1, like busy WAL)."""
    import gzip

    from local.backups import wal_segment

    raw = bytearray(gzip.decompress(wal_segment(segment)))
    half = len(raw) // 2
    raw[8192 : 8192 + half] = os.urandom(half)
    return bytes(raw)


def _sh_calls(command: str, names: list[str], dest: Path) -> list[float]:
    """Each call as PostgreSQL makes it (system(): sh -c), in order, timed; all must serve."""
    seconds = []
    for name in names:
        started = time.perf_counter()
        subprocess.run(
            ["sh", "-c", command.replace("%f", name).replace("%p", str(dest))], check=True
        )
        seconds.append(time.perf_counter() - started)
    return seconds


def bench_wal_fetch(ctx: Context, segments: int = 200, barman_calls: int = 10) -> dict[str, Any]:
    """Per segment: cp from local disk vs the prefetcher's restore_command, alternated in two
    halves; then a few barman-cloud-wal-restore calls. The prefetcher is started by hand
    (`python -m include.backup_dr.pitr.wal_prefetch`, listing the archive itself)."""
    import gzip
    from concurrent.futures import ThreadPoolExecutor

    from include.backup_dr.pitr.wal_prefetch import PID_NAME, restore_script
    from include.backup_dr.wal_segments import Segment, archive_prefix
    from local.backups import SYSTEM_IDENTIFIER, archive_segment
    from local.config import S3_ACCESS_KEY, S3_SECRET_KEY, s3_sites

    store, site = ctx.stores.secondary, s3_sites()[1]
    work = Path(tempfile.mkdtemp(prefix="walfetch-", dir=ctx.scratch))
    raw_dir, spool, dest = work / "raw", work / "spool", work / "pg_wal"
    for path in (raw_dir, spool, dest):
        path.mkdir()
    prefetcher = None
    try:
        store.delete_all_versions(archive_prefix(WAL_FETCH_SERVER))
        names = [Segment(1, n).name() for n in range(0x10, 0x10 + segments)]

        def make(name: str) -> None:  # one at a time per thread: 16 MB each, 3 GB in all
            raw = _synthetic_segment(Segment.parse(name))
            (raw_dir / name).write_bytes(raw)
            archive_segment(store, WAL_FETCH_SERVER, Segment.parse(name), gzip.compress(raw, 6))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(make, names))
        stored = sum(o.size for o in store.list_objects(archive_prefix(WAL_FETCH_SERVER)))
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": site.region,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }
        command = restore_script(work / "restore-wal.sh", spool)
        argv = [
            sys.executable,
            "-m",
            "include.backup_dr.pitr.wal_prefetch",
            "--bucket",
            site.bucket,
        ]
        argv += ["--region", site.region, "--endpoint-url", site.endpoint, "--spool", str(spool)]
        argv += ["--server", WAL_FETCH_SERVER, "--start", names[0]]
        argv += ["--system-identifier", str(SYSTEM_IDENTIFIER)]
        started = time.perf_counter()
        with (work / "prefetch.log").open("wb") as out:
            prefetcher = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=out)
        while not (spool / PID_NAME).exists():
            if prefetcher.poll() is not None:
                raise RuntimeError((work / "prefetch.log").read_text()[-2000:])
            time.sleep(0.05)
        start_up = time.perf_counter() - started
        half = len(names) // 2
        cp = f"cp {raw_dir}/%f %p"
        cp_seconds = _sh_calls(cp, names[:half], dest / "RECOVERYXLOG")
        prefetch_seconds = _sh_calls(command, names, dest / "RECOVERYXLOG")
        cp_seconds += _sh_calls(cp, names[half:], dest / "RECOVERYXLOG")
        status = Path(f"/proc/{prefetcher.pid}/status").read_text()
        rss = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
        barman = [
            _timed(
                [
                    str(ctx.wal_tools / "barman-cloud-wal-restore"),
                    "--endpoint-url",
                    site.endpoint,
                    f"s3://{site.bucket}/wal",
                    WAL_FETCH_SERVER,
                    name,
                    str(dest / "RECOVERYXLOG"),
                ],
                env=env,
            )
            for name in names[:barman_calls]
        ]
    finally:
        if prefetcher is not None:
            prefetcher.terminate()
            prefetcher.wait()
        store.delete_all_versions(archive_prefix(WAL_FETCH_SERVER))
        shutil.rmtree(work, ignore_errors=True)
    return {
        "segments": len(names),
        "stored_bytes": stored,
        "prefetcher_start_seconds": start_up,
        "prefetcher_rss_mb": rss / 1024,
        "cp_seconds": cp_seconds,
        "prefetch_seconds": prefetch_seconds,
        "barman_seconds": barman,
    }


def bench_pitr(ctx: Context, target: datetime, rounds: int) -> dict[str, Any]:
    """`rounds` x (bare, task), alternating, to the same T from the secondary region."""
    from include.backup_dr import pitr
    from include.backup_dr.drill import pitr as pitr_drill

    span = pitr.recovery_range(ctx.policy, ctx.stores.secondary, SERVER)
    base = pitr.choose_base(span, pitr.check_target(span, target))
    bare, task = [], []
    for n in range(rounds):
        print(f"  PITR round {n + 1}/{rounds} (to {target.isoformat()}) ...", flush=True)
        if n % 2 == 0:  # alternate which one goes first (warm caches)
            bare.append(bare_recover(ctx, base.manifest, target))
        task.append(run_step("recover", target=target.isoformat()))
        if n % 2 == 1:
            bare.append(bare_recover(ctx, base.manifest, target))
    restored = task[-1]["result"]["restored_bytes"]
    task_seconds = statistics.median(sum(t["result"]["timings"].values()) for t in task)
    projection = pitr_drill.projection(ctx.policy, ctx.stores.secondary, restored, task_seconds)
    return {"bare": bare, "task": task, "base": str(base.id), "projection": projection}


def _prepare(policy: Any, stores: Any) -> Context:
    from include.backup_dr.postgres import PgConnectionInfo
    from local import pg, wal
    from local.config import STATE_DIR

    scratch = STATE_DIR / "pitr-scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    scratch.chmod(0o711)  # the server's OS user must traverse it
    tools = wal.tools_bin()
    os.environ.update(
        {
            "BACKUP_WAL_TOOLS_BIN": str(tools),
            "BACKUP_PITR_SCRATCH_DIR": str(scratch),
            **({"BACKUP_PG_OS_USER": pg.OS_USER} if pg.OS_USER else {}),
        }
    )
    server = policy.server(SERVER)
    return Context(
        policy,
        stores,
        PgConnectionInfo.from_airflow(server.conn_id, "postgres"),
        pg.OS_USER,
        scratch,
        tools,
    )


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"


def bench_continuous(
    *, rounds: int = 3, lag_rate: float = 200.0, lag_seconds: float = 60.0
) -> list[Measured]:
    """The whole section; returns table rows and writes the raw measurements as JSON."""
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    policy = load_policy()
    stores = Stores.from_policy(policy)
    ctx = _prepare(policy, stores)
    clock = time.perf_counter()

    def phase(text: str) -> None:
        print(f"  [{time.perf_counter() - clock:5.0f} s] {text} ...", flush=True)

    phase("continuous tier: waiting for the WAL archive to catch up")
    archive_now(ctx)
    size = cluster_bytes(ctx)

    phase("base backups")
    created: list[dict[str, Any]] = []
    try:
        return _measure_all(ctx, rounds, lag_rate, lag_seconds, size, phase, created)
    finally:
        _delete_base_backups(stores, created)


def bench_wal_fetch_only() -> list[Measured]:
    """`--only walfetch`: the WAL fetch measurement without the rest of the section."""
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    policy = load_policy()
    fetch = bench_wal_fetch(_prepare(policy, Stores.from_policy(policy)))
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"walfetch-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(fetch, indent=2) + "\n")
    return wal_fetch_rows(fetch)


def _delete_base_backups(stores: Any, refs: list[dict[str, Any]]) -> None:
    """The base backups this run took (1 GB+ each, per region) would pile up run after run;
    the stack's own backups are left alone. Manifest first, as prune does."""
    from include.backup_dr.catalogue import MANIFEST_NAME
    from include.backup_dr.stores import from_ref

    for ref in refs:
        backup = from_ref(ref)
        for store in stores:
            store.delete_all_versions(backup.key(MANIFEST_NAME))
            store.delete_all_versions(backup.prefix)


def _measure_all(
    ctx: Context,
    rounds: int,
    lag_rate: float,
    lag_seconds: float,
    size: int,
    phase: Callable[[str], None],
    created: list[dict[str, Any]],
) -> list[Measured]:
    clock = time.perf_counter()
    backup = bench_base_backup(ctx, rounds, created)
    ref = backup["ref"]
    phase("copy_to_secondary, integrity_check")
    copy = run_step("copy", ref=ref)
    integrity = run_step("integrity", ref=ref)
    phase(f"replication lag under load ({lag_rate:.0f} commits/s, {lag_seconds:.0f} s)")
    lag = bench_lag(lag_rate, lag_seconds)
    phase("PITR: archiving the WAL up to T")
    archive_now(ctx)  # T's WAL must be in the archive (both regions) before recovering to it
    target = recovery_target(lag["result"])
    recovery = bench_pitr(ctx, target, rounds)
    phase("WAL fetch per segment: the prefetcher vs cp vs barman-cloud-wal-restore")
    wal_fetch = bench_wal_fetch(ctx)
    raw = {
        "measured_at": datetime.now(UTC).isoformat(),
        "cluster_bytes": size,
        "base_backup": backup,
        "copy_to_secondary": copy,
        "integrity_check": integrity,
        "lag": {k: v for k, v in lag.items() if k != "result"}
        | {"stats": lag["result"]["stats"], "replication": lag["result"]["replication"]},
        "pitr": recovery | {"target": target.isoformat()},
        "wal_fetch": wal_fetch,
    }
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"continuous-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(raw, indent=2, default=str) + "\n")  # kept if prune fails
    phase("prune")
    raw["prune"] = run_step("prune")
    raw["elapsed_seconds"] = elapsed = time.perf_counter() - clock
    path.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(f"  raw measurements: {path.relative_to(REPO)} ({elapsed:.0f} s)")
    return _rows(raw)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _step(timings: dict[str, float], word: str) -> float:
    """The seconds of the recovery step(s) whose name contains `word` (pitr names them)."""
    return sum(seconds for name, seconds in timings.items() if word in name.lower())


def wal_fetch_rows(fetch: dict[str, Any]) -> list[Measured]:
    n = fetch["segments"]
    cp = sum(fetch["cp_seconds"]) / n
    prefetch = sum(fetch["prefetch_seconds"]) / n
    barman = _median(fetch["barman_seconds"])
    start = fetch["prefetcher_start_seconds"]
    return [
        (
            f"WAL fetch per 16 MB segment, in order through sh -c: prefetcher's restore_command "
            f"vs cp from local disk ({n} segments, {_mb(fetch['stored_bytes'])} stored gzip + "
            "SSE-KMS; means, cp alternated before and after)",
            f"{prefetch * 1000:.1f} ms vs {cp * 1000:.1f} ms",
            f"{prefetch / cp:.2f}x (goal <= 3x)",
        ),
        (
            f"barman-cloud-wal-restore per segment (the path before; median of "
            f"{len(fetch['barman_seconds'])}) vs cp",
            f"{barman * 1000:.0f} ms vs {cp * 1000:.1f} ms",
            f"{barman / cp:.0f}x; {barman / prefetch:.0f}x the prefetcher",
        ),
        (
            f"a busy day of WAL ({DAY_SEGMENTS:,} segments) fetched, extrapolated from the above "
            "(fetch only, replay not included): before vs after",
            f"{DAY_SEGMENTS * barman / 60:.1f} min vs {DAY_SEGMENTS * prefetch / 60:.1f} min",
            f"+ {start:.1f} s prefetcher start-up once; its peak RSS "
            f"{fetch['prefetcher_rss_mb']:.0f} MB",
        ),
    ]


def _rows(raw: dict[str, Any]) -> list[Measured]:
    backup, pitr_raw, lag = raw["base_backup"], raw["pitr"], raw["lag"]
    n = len(backup["task"])
    task = _median([t["seconds"] for t in backup["task"]])
    devnull = _median(backup["devnull_seconds"])
    upload = _median([u["seconds"] for u in backup["upload"]])
    waited = _median([t["await_archived_seconds"] for t in backup["task"]])
    task_cpu = _median([t["cpu_seconds"] for t in backup["task"]])
    upload_cpu = _median([u["cpu_seconds"] for u in backup["upload"]])
    size = backup["size"]
    rows: list[Measured] = [
        (
            f"base backup task vs bare pg_basebackup -Ft -X none > /dev/null "
            f"({_mb(raw['cluster_bytes'])} cluster, {_mb(size)} tar), median of {n}",
            f"{task:.1f} s vs {devnull:.1f} s",
            f"{task / devnull:.2f}x (goal <= 1.15x)",
        ),
        (
            f"base backup task vs bare pg_basebackup | boto3 upload_fileobj "
            f"(same bucket, KMS key, {_mb(backup['bare_size'])}), median of {n}",
            f"{task:.1f} s vs {upload:.1f} s",
            f"{task / upload:.2f}x (goal <= 1.15x)",
        ),
        (
            "base backup CPU: task process vs bare upload process; task's end-WAL wait",
            f"{task_cpu:.1f} s vs {upload_cpu:.1f} s; {waited:.2f} s",
            f"{task_cpu / upload_cpu:.2f}x CPU",
        ),
    ]
    bare_runs, task_runs = pitr_raw["bare"], pitr_raw["task"]
    steps = {"download": "download", "extract (+ SHA-256)": "extract", "replay to T": "replay"}
    for label, word in steps.items():
        t = _median([_step(r["result"]["timings"], word) for r in task_runs])
        b = _median([_step(r["timings"], word) for r in bare_runs])
        rows.append(
            (f"  PITR step {label}: task vs bare", f"{t:.1f} s vs {b:.1f} s", f"{t / b:.2f}x")
        )
    t_total = _median([sum(r["result"]["timings"].values()) for r in task_runs])
    b_total = _median([r["seconds"] for r in bare_runs])
    same = {json.dumps(r["result"]["heartbeats"]) for r in task_runs}
    same |= {json.dumps(r["heartbeats"]) for r in bare_runs}
    proof = json.loads(next(iter(same)))
    agree = (
        f"both end at heartbeat {proof['newest_seq']}, {proof['after_target']} after T"
        if len(same) == 1
        else f"DISAGREE: {sorted(same)}"
    )
    rows.append(
        (
            f"PITR recover vs boto3 download_file + tar -x + barman-cloud-wal-restore replay, "
            f"median of {n} ({agree})",
            f"{t_total:.1f} s vs {b_total:.1f} s",
            f"{t_total / b_total:.2f}x (goal <= 1.15x)",
        )
    )
    projection = pitr_raw["projection"]
    rto = projection["rto_seconds"]
    rate = projection["restore_throughput_mb_per_s"]
    projected = projection["projected_restore_seconds"]
    rows.append(
        Row.parse(
            (
                f"PITR projected RTO, largest production server "
                f"({projection['largest_production_target']}, "
                f"{_mb(projection['largest_production_bytes'])}) at {rate:,.1f} MB/s",
                f"{projected:,.0f} s vs RTO {rto:,.0f} s",
                f"{projected / rto:.3f} of the RTO; 4 h restores ~{rate * rto / 1e3:,.0f} GB",
            ),
            "",
            key="pitr_projection",
            mb_per_s=rate,
        )
    )
    segments = _median([r.get("segments_restored", 0) for r in bare_runs])
    replay = _median([_step(r["timings"], "replay") for r in bare_runs])
    task_files = _median([r["result"].get("wal_files", 0) for r in task_runs])
    task_replay = _median([_step(r["result"]["timings"], "replay") for r in task_runs])
    if segments and task_files:
        rows.append(
            (
                "PITR replay to T incl. PostgreSQL's start and redo, per WAL file restored: "
                "task (prefetcher) vs bare (barman-cloud-wal-restore)",
                f"{task_replay / task_files:.2f} s vs {replay / segments:.2f} s",
                f"{task_files:.0f} vs {segments:.0f} files; "
                f"{task_replay:.1f} s vs {replay:.1f} s to promote",
            )
        )
    rows += wal_fetch_rows(raw["wal_fetch"])
    copy, check = raw["copy_to_secondary"], raw["integrity_check"]
    rows.append(
        (
            "copy_to_secondary (streamed) / integrity_check (both regions) / prune: time",
            f"{copy['seconds']:.1f} / {check['seconds']:.1f} / {raw['prune']['seconds']:.1f} s",
            f"{size / copy['seconds'] / 1e6:,.0f} MB/s copied; "
            f"{check['result']['bytes_read'] / check['seconds'] / 1e6:,.0f} MB/s re-hashed",
        )
    )
    stats = lag["stats"]
    few = " (p99 of < 100 samples = max)" if stats["count"] < 100 else ""
    rows.append(
        (
            f"standby lag, commit to visible, {stats['count']} heartbeats under "
            f"{lag['achieved_rate']:,.0f} commits/s ({lag['committed']:,} commits){few}",
            f"p50 {stats['p50_ms']:.1f}, p99 {stats['p99_ms']:.1f}, max {stats['max_ms']:.1f} ms",
            f"p99 = {stats['p99_ms'] / LAG_GOAL_MS:.3f} x the 1 s goal",
        )
    )
    peaks = {
        "snapshot": max(t["rss_mb"] for t in backup["task"]),
        "copy": copy["rss_mb"],
        "integrity": check["rss_mb"],
        "prune": raw["prune"]["rss_mb"],
        "monitor": lag["rss_mb"],
        "PITR recover": max(r["rss_mb"] for r in task_runs),
    }
    bare_upload_rss = max(u["rss_mb"] for u in backup["upload"])
    rows.append(
        (
            "peak RSS (VmHWM): " + " / ".join(peaks),
            " / ".join(f"{v:.0f}" for v in peaks.values()) + " MB",
            f"max {max(peaks.values()):.0f} MB (goal < {RSS_GOAL_MB:.0f} MB); "
            f"bare upload {bare_upload_rss:.0f} MB",
        )
    )
    return rows


def _main() -> None:
    sys.path.insert(0, str(REPO))
    step, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(_child(step, args), default=str))


if __name__ == "__main__":
    _main()
