"""`python -m bench.run --only catalogue`: catalogue builds and prune planning at scale.

Prune reads every manifest and integrity record of a target's tier before it plans. This bench
writes 10,000 and 100,000 backups (manifest and integrity record each, no artifact bytes: the
catalogue never reads those) into the primary region of the real local S3 server, once, under
their own category, and keeps them between runs. Then, against a bare paginated
`list_objects_v2` of the same prefix measured in the same run (median of three, alternated
with the warm listing):
- the catalogue from a cold store (no catalogue cache: one GET per manifest and record);
- warm (the cache present, nothing changed);
- warm + plan, as the prune task does it (`plan_for`), in a fresh process for its peak RSS;
- warm + plan after one new backup (two GETs, the cache rewritten).
And the planner alone at 100,000 backups with copies in two regions (200,000 decisions).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.results import Measured, Row

REPO = Path(__file__).resolve().parent.parent
CATEGORY = "benchcatalogue"
TIER = "6h"
#: Bench targets: name -> backups. Windows every 6 hours back from NEWEST (68 years for 100,000).
TARGETS = {"bench_catalogue_10k": 10_000, "bench_catalogue_100k": 100_000}
NEWEST = datetime(2026, 11, 1, tzinfo=UTC)
STEP = timedelta(hours=6)
SHA = "5e" * 32
WRITERS = 16

#: The prune task's planning in a fresh process (as a task runs), with its peak RSS.
_PLAN = """
import json, sys, time
from datetime import datetime
from include.backup_dr.backup.steps import Stores, plan_for
from include.backup_dr.policy import load_policy
policy = load_policy(); store = Stores.from_policy(policy).primary
started = time.perf_counter()
plan = plan_for(policy, [store], sys.argv[1], sys.argv[2], sys.argv[3],
                datetime.fromisoformat(sys.argv[4]))
elapsed = time.perf_counter() - started
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": elapsed, "rss_mb": int(hwm.split()[1]) / 1024,
                  "decisions": len(plan.decisions)}))
"""


def bench_catalogue() -> list[Measured]:
    """All rows; the stack runs and the environment points at it (bench.run does both)."""
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    os.environ["BACKUP_POLICY_PATH"] = str(_bench_policy())
    store = Stores.from_policy(load_policy()).primary
    rows = [bench_planner()]
    for target, count in TARGETS.items():
        ensure_backups(store, target, count)
        rows += bench_target(store, target, count)
    return rows


def _bench_policy() -> Path:
    """The policy in force plus the bench's category: the platform's 6h tier."""
    import yaml

    from include.backup_dr.policy import DEFAULT_POLICY_PATH

    source = Path(os.environ.get("BACKUP_POLICY_PATH") or DEFAULT_POLICY_PATH)
    data = yaml.safe_load(source.read_text())
    platform = data["categories"]["platform"]
    data["categories"][CATEGORY] = {
        "description": "bench: catalogue builds and prune planning at scale",
        "engine": "pg_dump",
        "rpo": platform["rpo"],
        "tiers": {TIER: platform["tiers"][TIER]},
    }
    path = Path(tempfile.gettempdir()) / "bench-catalogue-policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _backup(target: str, index: int) -> Any:
    from include.backup_dr.catalogue import BackupId

    return BackupId(CATEGORY, target, TIER, NEWEST - index * STEP)


def _write_backup(store: Any, target: str, index: int) -> None:
    """A manifest and an integrity record shaped like the pg_dump engine's, with no artifact."""
    from include.backup_dr.catalogue import INTEGRITY_NAME, MANIFEST_NAME, Artifact, Manifest

    backup = _backup(target, index)
    tables = [f"public.table_{n}" for n in range(8)]
    manifest = Manifest(
        backup=backup,
        region=store.region.name,
        artifact=Artifact(backup.key("data.pgdump"), 1_000_000 + index, SHA),
        engine="pg_dump",
        started_at=backup.window,
        finished_at=backup.window + timedelta(minutes=3),
        source={
            "kind": "postgresql",
            "host": "127.0.0.1",
            "port": 5432,
            "database": target,
            "server_version": "16.2",
            "format": "pg_dump custom (-Fc)",
        },
        tool_versions={"pg_dump": "pg_dump (PostgreSQL) 16.2", "backup_dr": "bench"},
        encryption={"algorithm": "aws:kms", "kms_key_id": store.region.kms_key_id},
        row_counts={table: 1000 * n for n, table in enumerate(tables)},
        keys={table: {"primary_key": ["id"], "foreign_keys": []} for table in tables},
        run={"dag_id": f"{CATEGORY}_backup_{TIER}", "run_id": f"bench__{index}"},
    )
    store.put_json(backup.key(MANIFEST_NAME), manifest.to_json())
    checked = (backup.window + timedelta(hours=1)).isoformat()
    store.put_json(
        backup.key(INTEGRITY_NAME),
        {
            "schema": "backup-dr/integrity/v1",
            "backup": str(backup),
            "region": store.region.name,
            "key": backup.key("data.pgdump"),
            "ok": True,
            "verdict": "passed",
            "checked_at": checked,
            "bytes_read": 1_000_000 + index,
            "seconds": 0.1,
            "rehash_mb_per_s": 10.0,
            "checks": [
                {"name": "sha256", "ok": True, "detail": "matches the manifest"},
                {"name": "kms", "ok": True, "detail": "encrypted with the region's key"},
                {"name": "readable", "ok": True, "detail": "pg_restore --list reads 42 entries"},
            ],
            "artifact_sha256": SHA,
        },
    )


def ensure_backups(store: Any, target: str, count: int) -> None:
    """Write whichever of the target's backups are missing (all of them, the first time)."""
    from include.backup_dr.catalogue import INTEGRITY_NAME

    prefix = f"{CATEGORY}/{target}/{TIER}/"
    done = {o.key for o in store.list_objects(prefix) if o.key.endswith(INTEGRITY_NAME)}
    missing = [i for i in range(count) if _backup(target, i).key(INTEGRITY_NAME) not in done]
    if not missing:
        return
    print(f"Writing {len(missing):,} backups of {target}; this takes a while ...", flush=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(WRITERS) as pool:
        for n, _ in enumerate(pool.map(lambda i: _write_backup(store, target, i), missing), 1):
            if n % 10_000 == 0:
                print(f"  {n:,} in {time.perf_counter() - started:.0f} s", flush=True)


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def _bare_list(store: Any, prefix: str) -> int:
    """The baseline: a paginated LIST of the prefix with the store's client, nothing else."""
    pages = store.client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix=prefix
    )
    return sum(page.get("KeyCount", 0) for page in pages)


def _plan_in_process(target: str, now: datetime) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _PLAN, CATEGORY, target, TIER, now.isoformat()],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_target(store: Any, target: str, count: int) -> list[Measured]:
    from include.backup_dr.catalogue import build_catalogue
    from include.backup_dr.store.listing import cache_key

    prefix = f"{CATEGORY}/{target}/{TIER}/"
    now = NEWEST + timedelta(hours=1)

    def catalogue() -> Any:
        return build_catalogue([store.listing(prefix)])

    store.delete_all_versions(cache_key(prefix))
    cold, (backups, _) = _timed(catalogue)
    assert len(backups) == count, (target, len(backups))
    bare_times, warm_times = [], []
    for _ in range(3):
        seconds, listed = _timed(lambda: _bare_list(store, prefix))
        bare_times.append(seconds)
        warm_times.append(_timed(catalogue)[0])
    bare, warm = statistics.median(bare_times), statistics.median(warm_times)
    planned = _plan_in_process(target, now)
    assert planned["decisions"] == count

    _write_backup(store, target, -1)  # one backup newer than the rest, then gone again
    changed = _plan_in_process(target, now + STEP)
    store.delete_all_versions(_backup(target, -1).prefix)
    store.listing(prefix)  # the cache forgets it again (no GET: a deletion)

    label = f"{count:,} backups ({listed:,} objects, one region)"
    return [
        (f"bare LIST of {label}", f"{bare:.2f} s (median of 3)", "1.00x (baseline)"),
        (
            f"catalogue from a cold store (a GET per manifest/record), {label}",
            f"{cold:.1f} s",
            f"{cold / bare:.1f}x bare LIST",
        ),
        (
            f"catalogue, cache warm, nothing changed, {label}",
            f"{warm:.2f} s (median of 3)",
            f"{warm / bare:.2f}x bare LIST",
        ),
        Row.parse(
            (
                f"prune plan_for (warm catalogue + plan), fresh process, {label}",
                f"{planned['seconds']:.2f} s, peak RSS {planned['rss_mb']:.0f} MB",
                f"{planned['seconds'] / bare:.2f}x bare LIST",
            ),
            "",
            key=f"plan_for_{count}",
            seconds=planned["seconds"],
        ),
        (
            f"prune plan_for after one new backup (2 GETs, cache rewritten), {label}",
            f"{changed['seconds']:.2f} s",
            f"{changed['seconds'] / bare:.2f}x bare LIST",
        ),
    ]


def bench_planner() -> tuple[str, str, str]:
    """The planner alone, in this process (Airflow and boto3 loaded, as in a task)."""
    from include.backup_dr.catalogue import Backup, BackupId, Copy, Verification
    from include.backup_dr.retention import plan_prune

    now = datetime.now(UTC)
    backups = [
        Backup(
            BackupId("platform", f"db{i % 100}", "6h", now - timedelta(hours=6 * (i // 100))),
            {r: Copy(r, Verification.PASSED, 1) for r in ("eu-west-1", "eu-central-1")},
            now,
        )
        for i in range(100_000)
    ]
    times, cpu_times = [], []
    for _ in range(3):
        cpu = time.process_time()
        seconds, plan = _timed(
            lambda: plan_prune(
                backups,
                [],
                {"6h": timedelta(days=1)},
                now,
                grace=timedelta(hours=6),
                max_delete_fraction=1.0,
            )
        )
        cpu_times.append(time.process_time() - cpu)
        times.append(seconds)
    elapsed, cpu = statistics.median(times), statistics.median(cpu_times)
    return (
        "prune planner alone, 100,000 backups (200,000 copies), median of 3",
        f"{elapsed:.2f} s ({cpu:.2f} s CPU), {len(plan.deletions):,} deletions",
        f"{elapsed:.2f} s (goal < 1 s)",
    )
