"""Object Lock on media: what locks cost an unchanged snapshot, and what extending them costs.

On the 10,000-object bench bucket, in one run and one process: unchanged daily snapshots with
governance locks in both regions (every entry already held long enough, so no lock request)
alternate with the same snapshot with locks off, the baseline. Then a monthly snapshot needs
every blob for a year: it extends each blob's lock (one PutObjectRetention per entry), and its
copy step extends them in the secondary. Those are compared with the unlocked snapshot and with
the daily copy step, which extends nothing.

Usage: python -m bench.run --only locks (the stack is started if it is not running)
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: Alternated rounds of the locked and the unlocked unchanged snapshot.
ROUNDS = 3


def _locked_policy(plain: Path) -> Path:
    import yaml

    data = yaml.safe_load(plain.read_text())
    for role in ("primary", "secondary"):
        data["regions"][role]["object_lock"] = {
            "mode": "governance",
            "margin": "1d",
            "bypass_conn_id": f"s3_{role}_break_glass",
        }
    path = plain.with_name("bench-policy-locked.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def _clear(policy: Any, category: str) -> None:
    """Every version of the category's objects, locked or not (through the break glass)."""
    from include.backup_dr.immutability import LockRule
    from include.backup_dr.store import ObjectStore

    for region in policy.iter_regions():
        glass = ObjectStore.for_break_glass(region, LockRule.for_region(policy, region))
        glass.delete_all_versions(f"{category}/")


def _timed(call: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - started, result


def bench_locks(plain_path: Path, category: str, target: str) -> list[tuple[str, str, str]]:
    from include.backup_dr.backup.steps import check_integrity, copy_to_secondary, take_snapshot
    from include.backup_dr.catalogue import BackupId
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    plain, locked = load_policy(plain_path), load_policy(_locked_policy(plain_path))
    stores = {"plain": Stores.from_policy(plain), "locked": Stores.from_policy(locked)}
    policies = {"plain": plain, "locked": locked}
    _clear(locked, category)
    base = datetime.now(UTC).replace(microsecond=0)

    def backup(kind: str, tier: str, window: datetime) -> dict[str, Any]:
        """One snapshot and its copy, each timed, then the check (the next one reuses it)."""
        policy, where = policies[kind], stores[kind]
        seconds, ref = _timed(take_snapshot, policy, where, target, tier, window, {})
        copy_seconds, _ = _timed(copy_to_secondary, policy, where, ref)
        check_integrity(policy, where, ref)
        manifest = where.primary.manifest(BackupId(category, target, tier, window))
        contents = where.secondary.manifest(manifest.backup).copied_from["contents"]
        return {
            "seconds": seconds,
            "copy": copy_seconds,
            "source": manifest.source,
            "copied": contents,
        }

    try:
        first = backup("locked", "daily", base)
        objects = first["source"]["objects"]
        rounds: dict[str, list[dict[str, Any]]] = {"locked": [], "plain": []}
        for n in range(1, ROUNDS + 1):
            for kind in ("locked", "plain"):
                window = base + timedelta(hours=n, minutes=30 if kind == "plain" else 0)
                rounds[kind].append(backup(kind, "daily", window))
        assert all(r["source"]["extended"] == 0 for r in rounds["locked"])
        monthly = backup("locked", "monthly", base)
        assert monthly["source"]["extended"] == objects, monthly["source"]
    finally:
        _clear(locked, category)

    def median(kind: str, field: str) -> float:
        return statistics.median(r[field] for r in rounds[kind])

    locked_s, plain_s = median("locked", "seconds"), median("plain", "seconds")
    extra = monthly["seconds"] - plain_s
    per_round = ", ".join(
        f"{a['seconds'] / b['seconds']:.2f}x"
        for a, b in zip(rounds["locked"], rounds["plain"], strict=True)
    )
    return [
        (
            f"media unchanged snapshot of {objects:,} objects, locks on in both regions (every "
            "blob held long enough: no request) vs locks off, medians of "
            f"{ROUNDS}, alternated",
            f"{locked_s:.2f} s vs {plain_s:.2f} s",
            f"{locked_s / plain_s:.2f}x (rounds: {per_round})",
        ),
        (
            f"media monthly snapshot extending all {objects:,} blob locks vs the unlocked "
            "unchanged snapshot",
            f"{monthly['seconds']:.1f} s vs {plain_s:.2f} s",
            f"{monthly['seconds'] / plain_s:.1f}x ({extra / objects * 1000:.2f} ms per blob)",
        ),
        (
            "its copy step, extending the same locks in the secondary vs the daily copy "
            "step (locks on, nothing to extend)",
            f"{monthly['copy']:.1f} s vs {median('locked', 'copy'):.2f} s",
            f"{monthly['copy'] / median('locked', 'copy'):.1f}x ({monthly['copied']})",
        ),
    ]
