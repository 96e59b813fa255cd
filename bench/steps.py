"""A tier's step run as the benchmarks measure it: in a process of its own, so that its peak
RSS is the step's alone, and the size of the database it read."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Runs one step in a fresh process, so its peak RSS is the step's own.
_STEP = """
import json, sys, time
from datetime import datetime
from include.backup_dr.backup.steps import check_integrity, take_snapshot
from include.backup_dr.policy import load_policy
from include.backup_dr.stores import Stores
policy = load_policy(); stores = Stores.from_policy(policy)
step, target, tier = sys.argv[1], sys.argv[2], sys.argv[3]
window = datetime.fromisoformat(sys.argv[4])
started = time.perf_counter()
ref = {"category": "platform", "target": target, "tier": tier, "window": window.isoformat()}
if step == "snapshot":
    result = take_snapshot(policy, stores, target, tier, window, {"bench": "1"})
elif step == "integrity":
    result = check_integrity(policy, stores, ref)
else:
    from include.backup_dr.drill import dumps as drill
    from include.backup_dr.restore.select import Selection
    selection = Selection.from_ref({**ref, "region": "eu-west-1", "reason": "bench"})
    if step == "restore":
        result = drill.restore_into(policy, stores, selection, "pg_sandbox", sys.argv[5], 2)
    else:
        from include.backup_dr.restore.database import validate_restored

        result = validate_restored(stores, selection, "pg_sandbox", sys.argv[5]).to_document()
elapsed = time.perf_counter() - started
# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork+exec.
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": elapsed, "rss_mb": int(hwm.split()[1]) / 1024, "result": result}))
"""


def run_step(step: str, target: str, window: datetime, *extra: str, tier: str = "daily") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _STEP, step, target, tier, window.isoformat(), *extra],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def database_bytes(name: str) -> int:
    from local.pg import connect

    with connect(name) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
