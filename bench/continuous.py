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

REPO = Path(__file__).resolve().parent.parent
SERVER = "platform_primary"
TIER = "continuous"
#: Where the bare upload baseline puts its copy of the base backup (deleted afterwards).
BARE_KEY = "bench/continuous/bare-basebackup.tar"
#: The monitor's RPO goal and the memory goal of every task.
LAG_GOAL_MS = 1000.0
RSS_GOAL_MB = 300.0
Row = tuple[str, str, str]


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
    from include.backup_dr import pipeline
    from include.backup_dr.policy import load_policy

    policy = load_policy()
    stores = pipeline.Stores.from_policy(policy)
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
        result = pipeline.take_snapshot(policy, stores, SERVER, TIER, window, run)
        extra["await_archived_seconds"] = sum(waited)
    elif step == "copy":
        started = time.perf_counter()
        result = pipeline.copy_to_secondary(policy, stores, args["ref"])
    elif step == "integrity":
        started = time.perf_counter()
        result = pipeline.check_integrity(policy, stores, args["ref"])
    elif step == "prune":
        started = time.perf_counter()
        result = pipeline.prune(policy, stores, SERVER, TIER)
    elif step == "measure":
        from include.backup_dr.monitor.continuous import measure

        started = time.perf_counter()
        result = measure(policy, stores, SERVER, float(args["duration"]), run)
    elif step == "recover":
        from include.backup_dr import pitr
        from include.backup_dr.monitor.continuous import heartbeat_database

        database = heartbeat_database(policy.server(SERVER).conn_id)
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
    from include.backup_dr.engines.pg_dump import pg_tool

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


def bare_recover(ctx: Context, manifest: Any, target: datetime) -> dict[str, Any]:
    """The same recovery with the bare tools: boto3 download_file, tar -x, postgres with a
    barman-cloud-wal-restore restore_command and the same recovery_target_time."""
    import psycopg2

    from include.backup_dr.engines.pg_dump import pg_tool
    from include.backup_dr.monitor.continuous import heartbeat_database
    from local.config import S3_ACCESS_KEY, S3_SECRET_KEY, s3_sites

    site = s3_sites()[1]  # the secondary region, as pitr.recover is pointed at
    work = Path(tempfile.mkdtemp(prefix="bare-", dir=ctx.scratch))
    data, socket = work / "data", work / "socket"
    for path in (data, socket, work / "spool"):
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
        database = heartbeat_database(ctx.policy.server(SERVER).conn_id)
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
            if time.monotonic() > deadline or (seen_running and not running):
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
    return {
        "timings": timings,
        "seconds": sum(timings.values()),
        "heartbeats": heartbeats,
        "segments_restored": segments,
    }


def bench_pitr(ctx: Context, target: datetime, rounds: int) -> dict[str, Any]:
    """`rounds` x (bare, task), alternating, to the same T from the secondary region."""
    from include.backup_dr import pitr

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
    projection = pitr.projection(ctx.policy, restored, task_seconds)
    return {"bare": bare, "task": task, "base": str(base.id), "projection": projection}


def _prepare(policy: Any, stores: Any) -> Context:
    from include.backup_dr.engines.pg_dump import PgConnectionInfo
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
) -> list[Row]:
    """The whole section; returns table rows and writes the raw measurements as JSON."""
    from include.backup_dr.pipeline import Stores
    from include.backup_dr.policy import load_policy

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


def _delete_base_backups(stores: Any, refs: list[dict[str, Any]]) -> None:
    """The base backups this run took (1 GB+ each, per region) would pile up run after run;
    the stack's own backups are left alone. Manifest first, as prune does."""
    from include.backup_dr.catalogue import MANIFEST_NAME
    from include.backup_dr.pipeline import from_ref

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
) -> list[Row]:
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
    phase("prune")
    prune = run_step("prune")
    elapsed = time.perf_counter() - clock

    raw = {
        "measured_at": datetime.now(UTC).isoformat(),
        "cluster_bytes": size,
        "elapsed_seconds": elapsed,
        "base_backup": backup,
        "copy_to_secondary": copy,
        "integrity_check": integrity,
        "lag": {k: v for k, v in lag.items() if k != "result"}
        | {"stats": lag["result"]["stats"], "replication": lag["result"]["replication"]},
        "pitr": recovery | {"target": target.isoformat()},
        "prune": prune,
    }
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"continuous-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(f"  raw measurements: {path.relative_to(REPO)} ({elapsed:.0f} s)")
    return _rows(raw)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _step(timings: dict[str, float], word: str) -> float:
    """The seconds of the recovery step(s) whose name contains `word` (pitr names them)."""
    return sum(seconds for name, seconds in timings.items() if word in name.lower())


def _rows(raw: dict[str, Any]) -> list[Row]:
    backup, pitr_raw, lag = raw["base_backup"], raw["pitr"], raw["lag"]
    n = len(backup["task"])
    task = _median([t["seconds"] for t in backup["task"]])
    devnull = _median(backup["devnull_seconds"])
    upload = _median([u["seconds"] for u in backup["upload"]])
    waited = _median([t["await_archived_seconds"] for t in backup["task"]])
    task_cpu = _median([t["cpu_seconds"] for t in backup["task"]])
    upload_cpu = _median([u["cpu_seconds"] for u in backup["upload"]])
    size = backup["size"]
    rows: list[Row] = [
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
        (
            f"PITR projected RTO, largest production server "
            f"({projection['largest_production_target']}, "
            f"{_mb(projection['largest_production_bytes'])}) at {rate:,.1f} MB/s",
            f"{projected:,.0f} s vs RTO {rto:,.0f} s",
            f"{projected / rto:.3f} of the RTO; 4 h restores ~{rate * rto / 1e3:,.0f} GB",
        )
    )
    segments = _median([r.get("segments_restored", 0) for r in bare_runs])
    replay = _median([_step(r["timings"], "replay") for r in bare_runs])
    if segments:
        per_segment = replay / segments
        rows.append(
            (
                "PITR WAL fetched to reach T (bare run): cost per 16 MB segment",
                f"{segments:.0f} segments in {replay:.1f} s",
                f"<= {per_segment:.2f} s each (>= {16 / per_segment:,.0f} MB/s of WAL)",
            )
        )
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
            f"max {max(peaks.values()):.0f} MB (goal < {RSS_GOAL_MB:.0f}); "
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
