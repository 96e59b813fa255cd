"""Estate restore (`python -m bench.run --only estate`): the 12 databases of the local estate
(two servers, `local/estate.py`) restored and validated into the sandbox one after another, then
at the policy's configured concurrency, in priority order, each restore in a process of its own
as an Airflow task would be; and the projection for 200 databases of 100 GB.

The parallel run keeps at most min(concurrency, the sandbox pool's slots) restores running, the
bound Airflow puts on dr_restore. The projection takes the per-database time of 100 GB (restore
+ validation, from the platform bench's 1.1 GB measurement) and finds the restores at once the
RTO needs with `restore.record.workers_needed`, the same plan dr_restore and compliance use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: One target restored and validated in a fresh process, as dr_restore's task does it.
_RESTORE = """
import json, sys, time
from include.backup_dr.drill import dumps as drill
from include.backup_dr.backup.steps import Stores
from include.backup_dr.policy import load_policy
from include.backup_dr.restore.database import (
    create_database, drop_database, server_info, validate_restored,
)
from include.backup_dr.restore.select import select_backup
policy = load_policy(); stores = Stores.from_policy(policy)
target, into = sys.argv[1], sys.argv[2]
started = time.perf_counter()
selection = select_backup(policy, stores.secondary, target, "daily")
server = server_info("pg_sandbox")
drop_database(server, into); create_database(server, into)
restored = drill.restore_into(policy, stores, selection, "pg_sandbox", into, 2)
checked = validate_restored(stores, selection, "pg_sandbox", into)
print(json.dumps({"target": target, "seconds": time.perf_counter() - started,
                  "bytes": restored["archive_bytes"], "ok": checked.ok}))
"""


def _restore(target: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _RESTORE, target, f"bench_estate_{target}"[:60]],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _drop(targets: list[str]) -> None:
    from include.backup_dr.restore.database import drop_database, server_info

    server = server_info("pg_sandbox")
    for target in targets:
        drop_database(server, f"bench_estate_{target}"[:60])


def bench_estate(per_db_minutes: float = 21.8) -> list[tuple[str, str, str]]:
    from include.backup_dr.backup import steps
    from include.backup_dr.policy import load_policy
    from include.backup_dr.restore.record import RestoreJob, plan_estate, workers_needed
    from local.estate import ensure_estate

    os.environ["BACKUP_POLICY_PATH"] = str(ensure_estate())
    policy = load_policy()
    stores = steps.Stores.from_policy(policy)
    targets = [
        t.name
        for t in sorted(policy.targets, key=lambda t: (t.priority, t.name))
        if t.is_production and t.database
    ]
    window = datetime.now(UTC).replace(microsecond=0)
    for name in targets:  # the backups the restores read (not timed)
        ref = steps.take_snapshot(policy, stores, name, "daily", window, {"bench": "estate"})
        steps.copy_to_secondary(policy, stores, ref)
        steps.check_integrity(policy, stores, ref)
    recovery = policy.recovery()
    sandbox = next(d for d in recovery.destinations if d.conn_id == "pg_sandbox")
    width = min(recovery.concurrency, sandbox.slots)
    try:
        serial = [_restore(name) for name in targets]
        _drop(targets)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=width) as pool:  # submitted in priority order
            parallel = list(pool.map(_restore, targets))
        wall = time.perf_counter() - started
    finally:
        _drop(targets)
    serial_sum = sum(r["seconds"] for r in serial)
    assert all(r["ok"] for r in serial + parallel), "a restored database failed validation"
    efficiency = serial_sum / (wall * width)
    # 200 x 100 GB, each restore on a backup-io worker of its own (2 CPUs, as deployed), so
    # restores do not share cores as they must on this machine.
    jobs = [RestoreJob(f"db{n}", 1, "dest", per_db_minutes * 60) for n in range(200)]
    needed = workers_needed(jobs, policy.objectives.rto)
    serial_hours = 200 * per_db_minutes / 60
    at_needed = (
        plan_estate(jobs, {"dest": needed}, needed).wall_seconds / 3600 if needed else float("nan")
    )
    return [
        (
            f"estate restore + validation of {len(targets)} databases (two servers), "
            f"{width} at once vs one after another",
            f"{wall:.1f} s vs {serial_sum:.1f} s",
            f"{wall / serial_sum:.2f}x (parallel efficiency {efficiency:.0%} of {width} "
            "restores sharing this machine's 2 cores)",
        ),
        (
            f"projection, 200 x 100 GB at {per_db_minutes} min each (restore + GX, one worker "
            "per restore)",
            f"{serial_hours:.1f} h one after another",
            f"{needed} restores at once: {at_needed:.2f} h (RTO {timedelta(hours=4)})"
            if needed
            else "no width meets the RTO",
        ),
    ]
