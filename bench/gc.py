"""Garbage collection at 10,000 and 100,000 blobs: peak RSS (flat memory means ~1.0x) and time.

Tiny blobs are written straight into the primary region under a category of their own, with one
committed snapshot whose listing refers to half of them; once they are older than the grace,
`collect_garbage` runs in a fresh process (so its VmHWM is its own) and sweeps the other half.
Its time is compared, in the same run, with what bare boto3 needs for the same S3 work: one
listing of the blobs, then (timed after GC, on the half it kept) one listing of their versions
and `delete_objects` of 1,000 at a time.

Usage: python -m bench.run --only gc (the stack is started if it is not running)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CATEGORY = "benchgc"
SIZES = (10_000, 100_000)
#: Blobs are old enough to sweep this long after they were written.
GRACE_SECONDS = 5

#: Runs garbage collection in a fresh process, so its peak RSS is the task's own.
_CHILD = """
import json, sys, time
from include.backup_dr.backup.gc import collect_garbage
from include.backup_dr.backup.steps import Stores
from include.backup_dr.policy import load_policy
policy = load_policy(); stores = Stores.from_policy(policy)
started = time.perf_counter()
# Half the blobs go at once: the breaker would rightly stop that; the cost is measured here.
result = collect_garbage(policy, stores, sys.argv[1], override_circuit_breaker=True)
elapsed = time.perf_counter() - started
# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork+exec.
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": elapsed, "rss_mb": int(hwm.split()[1]) / 1024, "result": result}))
"""


def _policy() -> Path:
    """The policy in force plus a media category of its own (no targets) and a short grace."""
    import yaml

    from include.backup_dr.policy import policy_path
    from local.config import STATE_DIR

    data = yaml.safe_load(policy_path().read_text())
    data["categories"][CATEGORY] = {**data["categories"]["media"]}
    data["categories"][CATEGORY].pop("replication_schedule", None)
    data["prune"]["incomplete_upload_grace"] = f"{GRACE_SECONDS}s"
    path = STATE_DIR / "bench-gc-policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _write_blobs(store, count: int) -> list[str]:
    """`count` tiny blobs and a committed snapshot whose listing refers to every other one."""
    from include.backup_dr.catalogue import BackupId
    from include.backup_dr.engines.media import Entry, blob_key
    from local.backups import commit_backup

    bodies = [f"gc bench blob {n} of {count}".encode() for n in range(count)]
    shas = [hashlib.sha256(body).hexdigest() for body in bodies]

    def put(n: int) -> None:
        store.put_bytes(blob_key(CATEGORY, shas[n]), bodies[n], "application/octet-stream")

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(put, range(count)))
    window = datetime.now(UTC).replace(microsecond=0)
    backup = BackupId(CATEGORY, "bench_gc", "daily", window)
    listing = b"".join(
        Entry(f"doc-{n}.pdf", "null", f"etag-{n}", len(bodies[n]), shas[n]).line()
        for n in range(0, count, 2)
    )
    commit_backup(store, backup, listing, engine="media", source={"kind": "bench"})
    return shas


def _measure(stores, count: int) -> dict:
    from include.backup_dr.engines.media import blob_prefix

    for store in stores:
        store.delete_all_versions(f"{CATEGORY}/")
    print(f"  writing {count:,} blobs ...", flush=True)
    _write_blobs(stores.primary, count)
    started = time.perf_counter()
    listed = sum(1 for _ in stores.primary.list_objects(blob_prefix(CATEGORY)))
    bare = time.perf_counter() - started
    time.sleep(GRACE_SECONDS + 1)
    print(f"  collecting garbage among {count:,} blobs ...", flush=True)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, CATEGORY],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    step = json.loads(out.stdout.strip().splitlines()[-1])
    left = sum(1 for _ in stores.primary.list_objects(blob_prefix(CATEGORY)))
    [sweep] = step["result"]["regions"][stores.primary.region.name]
    referenced = (count + 1) // 2  # every other blob, from the first
    assert (listed, sweep["doomed"], left) == (count, count - referenced, referenced), sweep
    started = time.perf_counter()
    deleted = _bare_delete(stores.primary.client, stores.primary.bucket, blob_prefix(CATEGORY))
    bare_delete = time.perf_counter() - started
    assert deleted == referenced, deleted
    return {
        **step,
        "bare_listing_seconds": bare,
        "bare_delete_seconds": bare_delete,
        "swept": sweep["doomed"],
    }


def _bare_delete(client, bucket: str, prefix: str) -> int:
    """Every version under `prefix`, listed and deleted 1,000 at a time with plain boto3."""
    deleted = 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        batch = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
        for start in range(0, len(batch), 1000):
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": batch[start : start + 1000], "Quiet": True}
            )
        deleted += len(batch)
    return deleted


def bench_gc() -> list[tuple[str, str, str]]:
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    os.environ["BACKUP_POLICY_PATH"] = str(_policy())
    stores = Stores.from_policy(load_policy())
    try:
        runs = {count: _measure(stores, count) for count in SIZES}
    finally:
        for store in stores:
            store.delete_all_versions(f"{CATEGORY}/")
    small, large = (runs[count] for count in SIZES)
    rows = [
        (
            f"GC of {count:,} blobs (half referenced, {run['swept']:,} swept) vs bare boto3: "
            f"listing them, then listing and deleting {run['swept']:,} blobs' versions",
            f"{run['seconds']:.1f} s vs {run['bare_listing_seconds']:.1f} + "
            f"{run['bare_delete_seconds']:.1f} s",
            f"{run['seconds'] / (run['bare_listing_seconds'] + run['bare_delete_seconds']):.2f}x",
        )
        for count, run in runs.items()
    ]
    rows.append(
        (
            f"GC peak RSS, {SIZES[0]:,} vs {SIZES[1]:,} blobs",
            f"{small['rss_mb']:.0f} MB vs {large['rss_mb']:.0f} MB",
            f"{large['rss_mb'] / small['rss_mb']:.2f}x (flat: ~1.0x)",
        )
    )
    return rows
