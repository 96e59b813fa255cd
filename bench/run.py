"""`make bench`: the snapshot and integrity tasks against bare tools, measured in the same run.

Each number is a ratio against a baseline taken on the same machine, database and bytes:
- snapshot task wall time vs `pg_dump -Fc` of the same database to /dev/null;
- peak RSS of the snapshot and integrity tasks, on a small and on the large database;
- the restore task vs bare pg_restore, and the GX validation of the restored database: its
  verdict and its peak RSS against the restore task's (`--only validation`: just these);
- integrity re-hash throughput vs `sha256sum` of the same bytes (and vs a bare download);
- catalogue builds and prune planning at 10,000 and 100,000 backups in the S3 server: cold,
  warm and warm + plan against a bare LIST of the same prefix (bench/catalogue.py);
- DAG parse time with 200 targets against the shipped policy (bench/parse.py);
- media: a first snapshot of 100,000 objects (`--media-objects`), unchanged ones alternated
  with bare listings of the bucket (medians of 3), one after 1% changed (bytes and time against
  the first), and peak RSS at 10,000 vs 100,000 objects;
- garbage collection (bench/gc.py): time against a bare listing, and peak RSS at 10,000 vs
  100,000 blobs;
- Object Lock on media (bench/locks.py): an unchanged snapshot with locks on vs off, and the
  monthly snapshot and copy that extend every blob's lock against the same without;
- continuous tier (bench/continuous.py): the base backup task vs bare pg_basebackup (to
  /dev/null, and piped into a bare boto3 upload), PITR vs the bare download + tar + barman-cloud
  restore_command, standby lag under the load generator, and peak RSS of every task;
- roles and grants kept with each dump (bench/globals.py): capture vs bare pg_dumpall, apply
  vs bare psql, with 1,000 extra roles;
- failover (bench/failover.py): approval to writable and the acknowledged commits lost at a
  kill -9 under 200 commits/s, asynchronous and synchronous, and the commit latency ratio;
- promotion (bench/promotion.py): the weekly tier's snapshot by promotion of the verified daily
  vs the daily's own dump of the bench database, and the bytes each read from the source
  (pg_stat_database), then the copy to the secondary region and the integrity check of each;
- transfer (bench/transfer.py): our upload path and the base backup task vs pg_basebackup piped
  into a bare boto3 upload, and our re-hash download path vs bare boto3 downloads of the same
  object, wall and CPU.

Usage: python -m bench.run [--size-mb 1100]
       [--only SECTION[,SECTION...]]   (platform, promotion, media, continuous, walfetch, parse, gc,
                                        catalogue, locks, failover, validation, estate,
                                        globals, transfer)
       [--rounds 3] [--lag-rate 200] [--lag-seconds 60] [--media-objects 100000]
(the database and the media buckets are generated once and kept). Each run writes
bench/results/bench-<UTC start>.json (bench/results.py): the date, the commit, the machine, the
load average at start and end, and every row; `make docs` generates docs/benchmarks.md and
docs/capacity.md from the newest results.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.results import Measured, Row, Run
from bench.steps import database_bytes, run_step

REPO = Path(__file__).resolve().parent.parent
BENCH_DB = "bench_platform"
SMALL_DB = "platform_billing"
#: Objects in the measured media bucket (`--media-objects`), and in the small bucket whose
#: snapshots' peak RSS is compared with it. Their blobs live under their own category, which is
#: emptied first so that the first snapshot really copies everything.
MEDIA_OBJECTS = 100_000
MEDIA_SMALL_OBJECTS = 10_000
MEDIA_CATEGORY = "benchmedia"


def _timed(argv: list[str], **kwargs) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, **kwargs)
    return time.perf_counter() - started


def _prepare(size_mb: int, media_objects: int, *, database: bool = True) -> None:
    """Start the stack and point this process at it; generate the bench database if asked."""
    from local import stack
    from local.airflow_stack import airflow_env
    from local.pg import connect, pg_bin
    from local.settings import airflow_env_vars

    stack.up(list(stack.DEFAULT_GROUPS))
    os.environ.update(airflow_env())
    os.environ.update(airflow_env_vars())
    os.environ["BACKUP_PG_BIN_DIR"] = str(pg_bin("pg_dump").parent)
    os.environ["BACKUP_POLICY_PATH"] = str(_bench_policy(media_objects))
    if not database:
        return
    with connect(BENCH_DB if _db_exists(BENCH_DB) else "postgres") as conn:
        size = (
            conn.execute(f"SELECT pg_database_size('{BENCH_DB}')").fetchone()[0]
            if _db_exists(BENCH_DB)
            else 0
        )
    if size < size_mb * 1e6 * 0.9:
        print(f"Generating {BENCH_DB} ({size_mb} MB); this takes a few minutes ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "local.sampledb", "--size-mb", str(size_mb), "--db", BENCH_DB],
            check=True,
            cwd=REPO,
        )


def _db_exists(name: str) -> bool:
    from local.sampledb import exists

    return exists(name)


def _bench_policy(media_objects: int) -> Path:
    import yaml

    from include.backup_dr.policy import DEFAULT_POLICY_PATH
    from local.config import STATE_DIR

    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["targets"].append(
        {
            "name": BENCH_DB,
            "category": "platform",
            "environment": "production",
            "server": data["servers"][0]["name"],
            "database": BENCH_DB,
        }
    )
    data["categories"][MEDIA_CATEGORY] = {**data["categories"]["media"]}
    data["categories"][MEDIA_CATEGORY].pop("replication_schedule", None)
    for bucket in _media_buckets(media_objects):
        data["targets"].append(
            {
                "name": _media_target(bucket),
                "category": MEDIA_CATEGORY,
                "environment": "production",
                "source": {"conn_id": "s3_media_source", "bucket": bucket},
            }
        )
    path = STATE_DIR / "bench-policy.yaml"  # beside the stack it names: one per stack
    path.write_text(yaml.safe_dump(data))
    return path


def _media_bucket(objects: int) -> str:
    return f"bench-media-{objects // 1000}k" if objects % 1000 == 0 else f"bench-media-{objects}"


def _media_buckets(objects: int) -> dict[str, int]:
    """Bucket -> object count: the measured bucket, and the small one (the same at 10,000)."""
    return {_media_bucket(n): n for n in (objects, MEDIA_SMALL_OBJECTS)}


def _media_target(bucket: str) -> str:
    return bucket.replace("-", "_")


def _prepare_media(objects: int) -> None:
    from local.samplemedia import ensure_sample_media, media_client

    for bucket, count in _media_buckets(objects).items():
        ensure_sample_media(media_client(), bucket, small=count, large=0)


#: Unchanged snapshots of the measured bucket, each right after a bare listing of it: the ratio
#: is of the medians, so a moment of load from elsewhere on the machine weighs on neither alone.
MEDIA_ROUNDS = 3


def _media_snapshot(policy, stores, target: str, window: datetime) -> dict:
    """One timed snapshot step, then (untimed) its copy and check, as the DAG runs them: the
    next snapshot reuses only a listing whose check passed."""
    from include.backup_dr.backup.steps import check_integrity, copy_to_secondary
    from include.backup_dr.catalogue import BackupId

    step = run_step("snapshot", target, window)
    manifest = stores.primary.manifest(BackupId(MEDIA_CATEGORY, target, "daily", window))
    assert manifest is not None
    copy_to_secondary(policy, stores, step["result"])
    check_integrity(policy, stores, step["result"])
    return {**step, "source": manifest.source}


def _bare_listing(client, bucket: str) -> tuple[float, int]:
    started = time.perf_counter()
    listed = sum(
        page.get("KeyCount", 0)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    )
    return time.perf_counter() - started, listed


def bench_media(objects: int = MEDIA_OBJECTS) -> list[Measured]:
    """Snapshots of `objects` objects: first, unchanged (alternated with bare listings), after
    1% changed; peak RSS against the 10,000-object bucket."""
    from include.backup_dr.policy import load_policy
    from include.backup_dr.store import ObjectStore
    from include.backup_dr.stores import Stores
    from local.samplemedia import media_client, mutate

    policy = load_policy()
    stores = Stores.from_policy(policy)
    for store in stores:
        store.delete_all_versions(f"{MEDIA_CATEGORY}/")
    base = datetime.now(UTC).replace(microsecond=0)
    client = media_client()
    bucket, small_bucket = _media_bucket(objects), _media_bucket(MEDIA_SMALL_OBJECTS)
    target = _media_target(bucket)
    first = _media_snapshot(policy, stores, target, base)
    # The snapshot's own client parses timestamps without dateutil (include/backup_dr/store/client.py):
    # a bare listing through it is the like-for-like baseline, the stock client the issue's.
    tuned = ObjectStore.for_bucket("s3_media_source", bucket).client
    bare, bare_tuned, unchanged, load = [], [], [], []
    for n in range(1, MEDIA_ROUNDS + 1):
        load.append(os.getloadavg()[0])
        seconds, listed = _bare_listing(client, bucket)
        bare.append(seconds)
        bare_tuned.append(_bare_listing(tuned, bucket)[0])
        unchanged.append(_media_snapshot(policy, stores, target, base + timedelta(hours=n)))
    load.append(os.getloadavg()[0])
    mutate(client, bucket, 0.01, seed=int(base.timestamp()))
    changed = _media_snapshot(policy, stores, target, base + timedelta(hours=MEDIA_ROUNDS + 1))
    if small_bucket == bucket:
        small = [first, unchanged[0]]
    else:
        small_target = _media_target(small_bucket)
        small = [
            _media_snapshot(policy, stores, small_target, base + timedelta(hours=n))
            for n in range(2)
        ]

    copied = changed["source"]["copied_bytes"] / first["source"]["copied_bytes"]
    snap_median = statistics.median(step["seconds"] for step in unchanged)
    bare_median, tuned_median = statistics.median(bare), statistics.median(bare_tuned)

    def rounds(baseline: list[float]) -> str:
        pairs = zip(unchanged, baseline, strict=True)
        return ", ".join(f"{step['seconds'] / seconds:.2f}x" for step, seconds in pairs)

    return [
        Row.parse(
            (
                f"media first snapshot, {first['source']['objects']:,} objects "
                f"({first['source']['bytes'] / 1e6:,.0f} MB), all new",
                f"{first['seconds']:.1f} s, {first['source']['copied']:,} blobs copied",
                f"{first['source']['objects'] / first['seconds']:,.0f} objects/s",
            ),
            "",
            key="media_first",
            seconds=first["seconds"],
            objects=first["source"]["objects"],
        ),
        (
            "media snapshot after 1% changed vs the first: bytes copied",
            f"{changed['source']['copied_bytes'] / 1e6:,.1f} MB vs "
            f"{first['source']['copied_bytes'] / 1e6:,.1f} MB",
            f"{copied:.2%} (goal <= 2%)",
        ),
        (
            "media snapshot after 1% changed vs the first: time",
            f"{changed['seconds']:.1f} s vs {first['seconds']:.1f} s",
            f"{changed['seconds'] / first['seconds']:.2f}x",
        ),
        Row.parse(
            (
                f"media unchanged snapshot (listing + manifest) vs bare listing of {listed:,} "
                f"objects with a stock boto3 client, medians of {MEDIA_ROUNDS}, alternated",
                f"{snap_median:.1f} s vs {bare_median:.1f} s",
                f"{snap_median / bare_median:.2f}x (goal <= 1.1x; rounds: {rounds(bare)})",
            ),
            "",
            key="media_unchanged",
            seconds=snap_median,
            objects=listed,
        ),
        (
            "the same snapshots vs a bare listing through the snapshot's own client "
            "(timestamps parsed without dateutil): the snapshot's own overhead",
            f"{snap_median:.1f} s vs {tuned_median:.1f} s",
            f"{snap_median / tuned_median:.2f}x (rounds: {rounds(bare_tuned)})",
        ),
        (
            "machine load during those rounds (1-minute load average, 2 cores)",
            f"{min(load):.1f} to {max(load):.1f}",
            "busy: above the core count, ratios are noisy" if max(load) > 2 else "quiet",
        ),
        (
            f"media snapshot peak RSS, {MEDIA_SMALL_OBJECTS:,} vs {objects:,} objects: "
            "first / unchanged",
            f"{small[0]['rss_mb']:.0f}/{small[1]['rss_mb']:.0f} MB vs "
            f"{first['rss_mb']:.0f}/{unchanged[0]['rss_mb']:.0f} MB",
            f"{unchanged[0]['rss_mb'] / small[1]['rss_mb']:.2f}x (goal < 300 MB, flat)",
        ),
    ]


def bench_snapshot_and_integrity() -> list[Measured]:
    from include.backup_dr.policy import load_policy
    from include.backup_dr.postgres import pg_tool
    from include.backup_dr.stores import Stores
    from local.pg import conninfo

    policy = load_policy()
    stores = Stores.from_policy(policy)
    rows = []
    window = datetime.now(UTC).replace(microsecond=0)
    env = {**os.environ, "PGPASSWORD": "postgres"}

    with Path(os.devnull).open("wb") as sink:
        bare = _timed([pg_tool("pg_dump"), "-Fc", "-d", conninfo(BENCH_DB)], stdout=sink, env=env)
    snap = run_step("snapshot", BENCH_DB, window)
    size = snap["result"]["size"]
    db_mb = database_bytes(BENCH_DB) / 1e6
    rows.append(
        Row.parse(
            (
                f"snapshot task vs bare pg_dump -Fc > /dev/null ({db_mb:,.0f} MB database, {size / 1e6:,.0f} MB dump)",
                f"{snap['seconds']:.1f} s vs {bare:.1f} s",
                f"{snap['seconds'] / bare:.2f}x (goal <= 1.15x)",
            ),
            "",
            key="snapshot",
            seconds=snap["seconds"],
            database_mb=db_mb,
            dump_mb=size / 1e6,
        )
    )
    small = run_step("snapshot", SMALL_DB, window)
    rows.append(
        (
            "snapshot task peak RSS: small DB vs large DB",
            f"{small['rss_mb']:.0f} MB vs {snap['rss_mb']:.0f} MB",
            f"{snap['rss_mb'] / small['rss_mb']:.2f}x (goal < 300 MB, flat)",
        )
    )

    from include.backup_dr.backup.steps import copy_to_secondary

    for target in (BENCH_DB, SMALL_DB):
        ref = {
            "category": "platform",
            "target": target,
            "tier": "daily",
            "window": window.isoformat(),
        }
        copy_to_secondary(policy, stores, ref)
    check = run_step("integrity", BENCH_DB, window)
    check_small = run_step("integrity", SMALL_DB, window)
    rows.append(
        (
            "integrity task peak RSS: small DB vs large DB",
            f"{check_small['rss_mb']:.0f} MB vs {check['rss_mb']:.0f} MB",
            f"{check['rss_mb'] / check_small['rss_mb']:.2f}x (goal < 300 MB, flat)",
        )
    )

    key = f"platform/{BENCH_DB}/daily/{window.strftime('%Y%m%dT%H%M%SZ')}/data.pgdump"
    started = time.perf_counter()
    for _ in stores.primary.iter_chunks(key):
        pass
    download = time.perf_counter() - started
    with tempfile.NamedTemporaryFile(dir=REPO / ".local") as local:
        for chunk in stores.primary.iter_chunks(key):
            local.write(chunk)
        local.flush()
        sha = _timed(["sha256sum", local.name], stdout=subprocess.DEVNULL)
        openssl = _timed(["openssl", "dgst", "-sha256", local.name], stdout=subprocess.DEVNULL)
    from include.backup_dr.catalogue import BackupId
    from include.backup_dr.engines import engine_for
    from include.backup_dr.integrity import check_copy

    reference = stores.primary.manifest(BackupId("platform", BENCH_DB, "daily", window))
    report = check_copy(stores.primary, reference, engine_for("pg_dump"))
    assert reference is not None
    rehash = size / report.seconds / 1e6
    rows.append(
        Row.parse(
            (
                "integrity re-hash (one region) vs sha256sum of the same bytes on local disk",
                f"{rehash:,.0f} MB/s vs {size / sha / 1e6:,.0f} MB/s",
                f"{sha / report.seconds:.2f}x (goal >= 0.8x)",
            ),
            "",
            key="integrity_rehash",
            mb_per_s=rehash,
        )
    )
    rows.append(
        (
            "integrity re-hash (one region) vs openssl dgst -sha256 of the same bytes",
            f"{rehash:,.0f} MB/s vs {size / openssl / 1e6:,.0f} MB/s",
            f"{openssl / report.seconds:.2f}x",
        )
    )
    rows.append(
        (
            "integrity re-hash (one region) vs bare download of the same object",
            f"{rehash:,.0f} MB/s vs {size / download / 1e6:,.0f} MB/s",
            f"{download / report.seconds:.2f}x",
        )
    )
    rows.extend(bench_restore_and_validation(stores, window, reference))
    return rows


def _fresh_sandbox_db(name: str) -> None:
    from local.pg import connect

    with connect(server="sandbox") as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")


def _drop_sandbox_dbs(*names: str) -> None:
    from local.pg import connect

    with connect(server="sandbox") as conn:
        for name in names:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def bench_restore_and_validation(stores, window: datetime, reference) -> list[Measured]:
    """Restore task (download + SHA-256 check + pg_restore -j 2) vs bare pg_restore -j 2.

    Restore times on one small server swing with checkpoints, so both are run three times,
    alternating, each into a fresh database, and the medians compared.
    """
    from include.backup_dr.postgres import pg_tool
    from local.pg import conninfo

    bare_db, task_db = "bench_restore_bare", "bench_restore_task"
    bare_times, task_runs = [], []
    try:
        with tempfile.NamedTemporaryFile(dir=REPO / ".local", suffix=".pgdump") as archive:
            for chunk in stores.primary.iter_chunks(reference.artifact.key):
                archive.write(chunk)
            archive.flush()
            restore_bare = [
                pg_tool("pg_restore"), "-j", "2", "--no-owner", "--no-privileges",
                "-d", conninfo(bare_db, server="sandbox"), archive.name,
            ]  # fmt: skip
            for _ in range(3):
                _fresh_sandbox_db(bare_db)
                env = {**os.environ, "PGPASSWORD": "postgres"}
                bare_times.append(_timed(restore_bare, env=env))
                _fresh_sandbox_db(task_db)
                task_runs.append(run_step("restore", BENCH_DB, window, task_db))
        validated = run_step("validate", BENCH_DB, window, task_db)
    finally:
        _drop_sandbox_dbs(bare_db, task_db)
    bare = statistics.median(bare_times)
    restored = statistics.median(run["seconds"] for run in task_runs)
    return [
        Row.parse(
            (
                "restore task (download + sha256 + pg_restore -j 2) vs bare pg_restore -j 2, median of 3",
                f"{restored:.1f} s vs {bare:.1f} s",
                f"{restored / bare:.2f}x (goal <= 1.15x)",
            ),
            "",
            key="restore",
            seconds=restored,
            database_mb=database_bytes(BENCH_DB) / 1e6,
        ),
        *_validation_rows(validated, task_runs[-1]),
    ]


def bench_validation() -> list[Measured]:
    """`--only validation`: one snapshot and one restore of the large database, then its GX
    validation, the step whose peak RSS the 300 MB limit is about."""
    window = datetime.now(UTC).replace(microsecond=0)
    task_db = "bench_restore_task"
    run_step("snapshot", BENCH_DB, window)
    try:
        _fresh_sandbox_db(task_db)
        restored = run_step("restore", BENCH_DB, window, task_db)
        validated = run_step("validate", BENCH_DB, window, task_db)
    finally:
        _drop_sandbox_dbs(task_db)
    return _validation_rows(validated, restored)


def _validation_rows(validated: dict, restored: dict) -> list[Measured]:
    """The validation step's verdict and time, and its peak RSS against the restore step's
    (same process shape: policy, stores, the manifest; no Great Expectations)."""
    checks = validated["result"]
    db_mb = database_bytes(BENCH_DB) / 1e6
    return [
        Row.parse(
            (
                f"GX validation of the restored {db_mb:,.0f} MB database ({checks['evaluated']} expectations)",
                f"{validated['seconds']:.1f} s",
                "all passed" if checks["ok"] else f"{checks['failed']} failed",
            ),
            "",
            key="validation",
            seconds=validated["seconds"],
            database_mb=db_mb,
        ),
        (
            "GX validation peak RSS vs restore task peak RSS (same database)",
            f"{validated['rss_mb']:.0f} MB vs {restored['rss_mb']:.0f} MB",
            f"{validated['rss_mb'] / restored['rss_mb']:.2f}x (goal < 300 MB)",
        ),
    ]


SECTIONS = (
    "platform",
    "promotion",
    "estate",
    "media",
    "parse",
    "catalogue",
    "locks",
    "gc",
    "globals",
    "failover",
    "transfer",
    "continuous",
)
#: Sections run only when named: parts of others, measured alone.
ALONE = ("validation", "walfetch")
#: Sections that need no bench database (and `parse` no stack at all).
NO_DATABASE = ("media", "gc", "catalogue", "locks", "failover", "estate", "globals", "walfetch")


def _sections(only: str | None) -> list[str]:
    """`--only a,b`: those sections, in the order of a full run; none named: the full run."""
    if only is None:
        return list(SECTIONS)
    named = only.split(",")
    unknown = set(named) - set(SECTIONS) - set(ALONE)
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {sorted(unknown)}; known: {SECTIONS + ALONE}")
    return [name for name in SECTIONS + ALONE if name in named]


def _measure(section: str, args: argparse.Namespace) -> list[Measured]:
    """The rows of one section (the stack and, where needed, the bench database are up)."""
    policy_path = Path(os.environ.get("BACKUP_POLICY_PATH", ""))
    if section == "platform":
        return bench_snapshot_and_integrity()
    if section == "validation":
        return bench_validation()
    if section == "promotion":
        from bench.promotion import bench_promotion

        return bench_promotion(BENCH_DB)
    if section == "estate":
        from bench.estate import bench_estate

        return bench_estate()
    if section == "media":
        _prepare_media(args.media_objects)
        return bench_media(args.media_objects)
    if section == "parse":
        from bench.parse import bench_parse

        return bench_parse()
    if section == "catalogue":
        from bench.catalogue import bench_catalogue

        return bench_catalogue()
    if section == "locks":
        from bench.locks import bench_locks

        small = _media_bucket(MEDIA_SMALL_OBJECTS)
        _prepare_media(MEDIA_SMALL_OBJECTS)
        return bench_locks(policy_path, MEDIA_CATEGORY, _media_target(small))
    if section == "gc":
        from bench.gc import bench_gc

        return bench_gc()
    if section == "globals":
        from bench.globals import bench_globals

        return bench_globals()
    if section == "failover":
        from bench.failover import bench_failover

        return bench_failover(policy_path, rounds=args.rounds)
    if section == "walfetch":  # the continuous section's WAL fetch part alone
        from bench.continuous import bench_wal_fetch_only

        return bench_wal_fetch_only()
    if section == "transfer":
        from bench.transfer import bench_transfer

        return bench_transfer(rounds=args.rounds)
    from bench.continuous import bench_continuous

    return bench_continuous(
        rounds=args.rounds, lag_rate=args.lag_rate, lag_seconds=args.lag_seconds
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1100)
    parser.add_argument(
        "--only",
        help=f"comma-separated sections: {', '.join(SECTIONS + ALONE)} (default: all but "
        f"{' and '.join(ALONE)}, which are parts of platform and continuous)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="continuous: repeats per baseline")
    parser.add_argument("--lag-rate", type=float, default=200, help="continuous: commits/s")
    parser.add_argument("--lag-seconds", type=float, default=60, help="continuous: lag run")
    parser.add_argument(
        "--media-objects", type=int, default=MEDIA_OBJECTS, help="media: objects in the bucket"
    )
    args = parser.parse_args()
    sections = _sections(args.only)
    sys.path.insert(0, str(REPO))
    from local import stack

    run = Run(args=vars(args) | {"sections": sections})
    rows: list[Row] = []
    if sections == ["parse"]:  # no stack needed: parsing touches no service
        rows += _tagged("parse", _measure("parse", args))
        _report(run, rows)
        return
    already = stack.running_groups()
    try:
        _prepare(
            args.size_mb,
            args.media_objects,
            database=any(section not in NO_DATABASE for section in sections),
        )
        for section in sections:
            rows += _tagged(section, _measure(section, args))
    finally:
        started = [group for group in stack.DEFAULT_GROUPS if group not in already]
        if started:
            stack.down(started)
    _report(run, rows)


def _tagged(section: str, measured: list[Measured]) -> list[Row]:
    return [
        replace(row, section=section) if isinstance(row, Row) else Row.parse(row, section)
        for row in measured
    ]


def _report(run: Run, rows: list[Row]) -> None:
    """Print the table for the reader; write the results file the docs are generated from."""
    width = max(len(row.measure) for row in rows)
    lines = [f"{'measure':{width}}  {'measured':28}  ratio", "-" * (width + 50)]
    lines += [f"{row.measure:{width}}  {row.measured:28}  {row.ratio}" for row in rows]
    print("\n" + "\n".join(lines))
    path = run.write(rows)
    print(f"results: {path} (`make docs` regenerates the pages from it)")
    print(
        f"(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
    )


if __name__ == "__main__":
    main()
