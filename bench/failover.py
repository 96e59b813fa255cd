"""Failover: approval to writable, the loss at 200 commits/s, and what synchronous costs.

Per round, asynchronous and synchronous alternated (`--rounds`), each on a fresh throwaway
primary + standby (local.failover.Pair) archiving to both local regions: the commit latency of
every acknowledged commit at 200 commits/s (the synchronous/asynchronous ratio is measured in
the same run), one continuous-monitor run, then kill -9 of the primary under the load, and
dr_failover's own steps: preflight, then (the approval) fence, promote and the first write.
Approval to writable is timed from the approval to the first committed write; the loss is the
acknowledged commits missing on the new primary, and the span between the oldest of them and
the kill. Called directly, the steps do not include Airflow's task start-up: the fault test's
evidence (tests/faults/test_failover.py) gives the same span through Airflow.

Usage: python -m bench.run --only failover [--rounds 3]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.results import Measured

RATE = 200.0
#: Seconds of load whose commit latencies are compared, and before the kill.
LATENCY_SECONDS = 10.0
SETTLE_SECONDS = 3.0
#: Ports below the ephemeral range that neither the stack nor the fault test uses.
BASE_PORT = int(os.environ.get("BACKUP_FAILOVER_BENCH_PORT", "16760"))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_round(mode: str, plain_policy: Path) -> dict[str, Any]:
    from include.backup_dr.dr import failover_steps
    from include.backup_dr.monitor import continuous
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores
    from local.failover import Pair, forget, load_until_kill, missing_on, write_policy
    from local.loadgen import LoadGenerator

    synchronous = mode == "sync"
    pair = Pair(f"bench_failover_{mode}", BASE_PORT, BASE_PORT + 1, synchronous=synchronous)
    policy_path = write_policy(pair, plain_policy, rebuild=False)
    saved = {k: os.environ.get(k) for k in [*pair.connection_env(), "BACKUP_POLICY_PATH"]}
    os.environ.update({**pair.connection_env(), "BACKUP_POLICY_PATH": str(policy_path)})
    policy = load_policy(policy_path)
    both = Stores.from_policy(policy)
    stores = list(both)
    try:
        pair.start()
        with LoadGenerator(
            rate=RATE, conninfo=pair.conninfo(pair.primary_port), database="postgres", record=True
        ) as load:
            time.sleep(LATENCY_SECONDS)
        latencies = [a.latency for a in load.acks]
        with LoadGenerator(
            rate=RATE, conninfo=pair.conninfo(pair.primary_port), database="postgres"
        ):
            continuous.measure(policy, both, pair.server, 2, {"dag_id": "bench", "run_id": mode})
        kill = load_until_kill(pair, RATE, SETTLE_SECONDS)
        checked = failover_steps.preflight(policy, stores, pair.server, planned=False)
        approved = datetime.now(UTC)
        failover_steps.fence(policy, stores, pair.server, "bench", planned=False, wait_seconds=60)
        promoted = failover_steps.promote(policy, stores, pair.server, wait_seconds=60)
        writable = datetime.fromisoformat(promoted["writable_at"])
        missing = missing_on(pair, pair.standby_port, kill.acks)
        return {
            "mode": mode,
            "latency_p50_ms": statistics.median(latencies) * 1000,
            "latency_p99_ms": _percentile(latencies, 0.99) * 1000,
            "commits": len(latencies),
            "approval_to_writable_s": (writable - approved).total_seconds(),
            "acked": len(kill.acks),
            "lost": len(missing),
            "lost_ms": kill.lost_ms(missing),
            "within_lag": kill.within_lag(),
            "lag_at_kill_ms": kill.lag_seconds * 1000,
            "estimated_loss_s": checked.loss.seconds,
            "rate": kill.rate,
        }
    finally:
        pair.remove()
        forget(stores, pair.server)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def bench_failover(plain_policy: Path, rounds: int = 3) -> list[Measured]:
    results: dict[str, list[dict[str, Any]]] = {"async": [], "sync": []}
    for n in range(rounds):
        for mode in ("async", "sync")[:: 1 if n % 2 == 0 else -1]:
            print(f"  failover round {n + 1}/{rounds}, {mode} ...", flush=True)
            results[mode].append(one_round(mode, plain_policy))

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    rows: list[Measured] = []
    for mode in ("async", "sync"):
        runs = results[mode]
        rows.append(
            (
                f"failover {mode}: approval -> writable (fence, promote, first write), median of {rounds}",
                f"{med(mode, 'approval_to_writable_s'):.2f} s",
                "rounds " + ", ".join(f"{r['approval_to_writable_s']:.2f}" for r in runs),
            )
        )
        rows.append(
            (
                f"failover {mode}: acknowledged commits lost at kill -9 under {RATE:.0f}/s",
                ", ".join(f"{r['lost']} of {r['acked']} ({r['lost_ms']:.1f} ms)" for r in runs),
                "within the lag at the kill: "
                + ", ".join(f"{r['within_lag']} ({r['lag_at_kill_ms']:.1f} ms)" for r in runs),
            )
        )
    for q in ("p50", "p99"):
        sync, base = med("sync", f"latency_{q}_ms"), med("async", f"latency_{q}_ms")
        rows.append(
            (
                f"commit latency {q}, synchronous vs asynchronous, {RATE:.0f}/s",
                f"{sync:.2f} ms vs {base:.2f} ms",
                f"{sync / base:.2f}x",
            )
        )
    return rows


if __name__ == "__main__":
    for row in bench_failover(Path(tempfile.gettempdir())):
        print(row)
