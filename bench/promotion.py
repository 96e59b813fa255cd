"""`python -m bench.run --only promotion`: the weekly tier's snapshot by promotion against a
fresh dump of the same database, in the same run, and what each read from the source.

- dump: the daily tier's snapshot of the bench database (`pg_dump -Fc` streamed into the
  primary region), the read the weekly tier makes when it does not promote; then its copy to
  the secondary region (across regions) and its integrity check, which make it promotable;
- promotion: the weekly tier's snapshot for a window of now, within the policy's `max_skew` of
  the daily's read: a server-side copy of the verified daily in the primary region; then its
  `copy_to_secondary` (a server-side copy of the secondary's own daily) and integrity check.

What the source read is PostgreSQL's own count for the bench database (pg_stat_database),
before and after each snapshot, read from another database: blks_read, the 8 KiB blocks its
sessions read into shared buffers (from disk or the OS cache), pg_dump's and the snapshot's own
queries included; beside it blks_read + blks_hit, every block access, a page already in shared
buffers counted at each access.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from bench.results import Measured, Row
from bench.steps import database_bytes, run_step

BLOCK = 8192
#: The tier that promotes, and what it promotes from (the shipped policy's `derive_from`).
TIER = "weekly"


def _blocks(database: str) -> tuple[int, int]:
    """(blks_read, blks_hit) of `database` as PostgreSQL counts them, from a fresh session on
    another database (so neither this read nor a cached snapshot of the counters weighs)."""
    from local.pg import connect

    time.sleep(2)  # a session's counters reach the shared statistics when it ends
    with connect("postgres") as conn:
        row = conn.execute(
            "SELECT blks_read, blks_hit FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    assert row is not None, f"no statistics for {database}"
    return int(row[0]), int(row[1])


def _snapshot(database: str, tier: str, window: datetime) -> dict[str, Any]:
    """One timed snapshot step in a fresh process, and the blocks the source read meanwhile."""

    before = _blocks(database)
    step = run_step("snapshot", database, window, tier=tier)
    after = _blocks(database)
    read, hit = (a - b for a, b in zip(after, before, strict=True))
    return {**step, "blks_read": read, "blks_hit": hit}


def _copy(policy: Any, stores: Any, ref: dict[str, str]) -> float:
    from include.backup_dr.backup.steps import copy_to_secondary

    started = time.perf_counter()
    copy_to_secondary(policy, stores, ref)
    return time.perf_counter() - started


def bench_promotion(database: str) -> list[Measured]:
    from include.backup_dr.catalogue import BackupId
    from include.backup_dr.policy import load_policy
    from include.backup_dr.promotion import promoted_label
    from include.backup_dr.stores import Stores

    policy = load_policy()
    stores = Stores.from_policy(policy)
    rules = policy.categories["platform"].tiers[TIER]
    assert rules.derive_from is not None, f"the policy's {TIER} tier does not promote"
    source_tier = rules.derive_from

    source_window = datetime.now(UTC).replace(microsecond=0)
    dump = _snapshot(database, source_tier, source_window)
    dump_copy = _copy(policy, stores, dump["result"])
    dump_check = run_step("integrity", database, source_window, tier=source_tier)

    window = datetime.now(UTC).replace(microsecond=0)  # a run triggered by hand, after the daily
    promoted = _snapshot(database, TIER, window)
    assert "promoted" in promoted["result"], f"the {TIER} snapshot read the source: {promoted}"
    promoted_copy = _copy(policy, stores, promoted["result"])
    promoted_check = run_step("integrity", database, window, tier=TIER)

    backup = BackupId("platform", database, TIER, window)
    manifest, copy = (store.manifest(backup) for store in stores)
    assert manifest is not None and copy is not None and copy.copied_from is not None
    db_mb = database_bytes(database) / 1e6
    dump_mb = dump["result"]["size"] / 1e6

    def read_mb(step: dict[str, Any]) -> float:
        return step["blks_read"] * BLOCK / 1e6

    def accesses(step: dict[str, Any]) -> int:
        return step["blks_read"] + step["blks_hit"]

    return [
        Row.parse(
            (
                f"{TIER} snapshot by promotion (server-side copy of the verified {source_tier} "
                f"in the primary region) vs the {source_tier}'s own snapshot (pg_dump -Fc of "
                f"the same {db_mb:,.0f} MB database, {dump_mb:,.0f} MB dump)",
                f"{promoted['seconds']:.1f} s vs {dump['seconds']:.1f} s",
                f"{promoted['seconds'] / dump['seconds']:.3f}x",
            ),
            "",
            key="promotion_snapshot",
            seconds=promoted["seconds"],
            dump_seconds=dump["seconds"],
            dump_mb=dump_mb,
            database_mb=db_mb,
        ),
        Row.parse(
            (
                "read from the source by that snapshot, as PostgreSQL counts it for the "
                "database (pg_stat_database): blocks read into shared buffers (blks_read) x "
                "8 KiB, promotion vs dump",
                f"{read_mb(promoted):,.1f} MB vs {read_mb(dump):,.1f} MB",
                f"{read_mb(promoted) / read_mb(dump):.3f}x (block accesses, blks_read + "
                f"blks_hit: {accesses(promoted):,} vs {accesses(dump):,}; a page found in "
                "shared buffers counts at each access)",
            ),
            "",
            key="promotion_source_read",
            promoted_mb=read_mb(promoted),
            dump_mb=read_mb(dump),
        ),
        (
            f"copy_to_secondary: the promoted {TIER} (server-side copy of the secondary's own "
            f"{source_tier}) vs the {source_tier} (copied across regions)",
            f"{promoted_copy:.1f} s vs {dump_copy:.1f} s",
            f"{promoted_copy / dump_copy:.2f}x",
        ),
        (
            f"integrity check, both regions (size, SHA-256, TOC): the promoted {TIER} vs the "
            f"{source_tier}, same bytes",
            f"{promoted_check['seconds']:.1f} s vs {dump_check['seconds']:.1f} s",
            f"{promoted_check['seconds'] / dump_check['seconds']:.2f}x",
        ),
        (
            "snapshot peak RSS: promotion vs dump",
            f"{promoted['rss_mb']:.0f} MB vs {dump['rss_mb']:.0f} MB",
            f"{promoted['rss_mb'] / dump['rss_mb']:.2f}x",
        ),
        (
            f"the promoted {TIER}'s manifests",
            f"{promoted_label(manifest.derived_from)}",
            f"secondary: {copy.copied_from['mode']}",
        ),
    ]
