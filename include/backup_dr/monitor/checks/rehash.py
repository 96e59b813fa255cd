"""`rehash_coverage`: the share of each media target's blobs whose rolling re-hash (one
day-of-year bucket a day, see engines/media/layout.py) passed within a year, per region."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from include.backup_dr.engines.media import SAMPLE_BUCKETS, rehash_bucket
from include.backup_dr.monitor.checks.inputs import RehashFacts, StoreFacts
from include.backup_dr.monitor.checks.result import YEAR, CheckResult, Status, unknown
from include.backup_dr.policy import Policy, human
from include.backup_dr.subjects import media_targets


@dataclass(frozen=True)
class Coverage:
    """Which sample buckets passed a re-hash within the window, and which are late."""

    covered: frozenset[int]
    #: Days since the history began (not today: its check may not have run yet) whose bucket
    #: has no passed re-hash: their blobs will be more than a year without one.
    missed: frozenset[int]
    #: The history covers a whole window, so every bucket should have passed within it.
    full_year: bool


def rehash_coverage(
    passed: Mapping[int, datetime], since: datetime | None, now: datetime, window: timedelta
) -> Coverage:
    """The rolling re-hash's coverage over `window` (a year plus grace), as of `now`."""
    start = now - window
    covered = frozenset(bucket for bucket, when in passed.items() if start < when <= now)
    if since is None:
        return Coverage(covered, frozenset(), full_year=False)
    first = max(since, start).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = (now.astimezone(UTC) - first).days
    due = {rehash_bucket(first + timedelta(days=offset)) for offset in range(max(days, 0))}
    return Coverage(covered, frozenset(due - covered), full_year=since <= start)


def rehash_status(coverage: Coverage, has_evidence: bool) -> Status:
    """OK when no bucket is late; amber when some day was missed (its blobs will go a year
    without a re-hash) or there is no evidence; red once a whole year of history still leaves
    a bucket without a passed re-hash within it."""
    if not has_evidence:
        return Status.WARNING
    if coverage.full_year and len(coverage.covered) < SAMPLE_BUCKETS:
        return Status.CRITICAL
    return Status.WARNING if coverage.missed else Status.OK


def checks(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    window = YEAR + policy.compliance.grace
    limit = f"100% within {human(YEAR)}"
    for name in media_targets(policy):
        for region in policy.iter_regions():
            check_id = f"rehash_coverage:{name}@{region.name}"
            found = facts.rehash.get((name, region.name), RehashFacts())
            if found.error:
                yield replace(
                    unknown(check_id, "rehash_coverage", name, limit, found.error),
                    region=region.name,
                )
                continue
            if found.since is None:
                yield CheckResult(
                    check_id,
                    "rehash_coverage",
                    name,
                    rehash_status(Coverage(frozenset(), frozenset(), False), has_evidence=False),
                    "no evidence",
                    limit,
                    f"no integrity record of {name} in {region.name} (evidence/integrity/)",
                    region=region.name,
                )
                continue
            coverage = rehash_coverage(found.passed, found.since, now, window)
            share, measured = _share(coverage, found.blobs_per_bucket)
            detail = (
                f"{len(coverage.covered)} of {SAMPLE_BUCKETS} daily sample buckets re-hashed "
                f"since {found.since:%Y-%m-%d}; {len(coverage.missed)} day(s) missed"
            )
            if coverage.missed:
                detail += f" (buckets {', '.join(map(str, sorted(coverage.missed)[:5]))})"
            if not coverage.full_year:
                detail += f"; full coverage from {found.since + YEAR:%Y-%m-%d}"
            yield CheckResult(
                check_id,
                "rehash_coverage",
                name,
                rehash_status(coverage, has_evidence=True),
                measured,
                limit,
                detail,
                share,
                region=region.name,
            )


def _share(coverage: Coverage, blobs: Mapping[int, int] | None) -> tuple[float, str]:
    """The share of blobs whose bucket passed; of the hash space when the blobs are unknown."""
    if blobs is None:
        share = len(coverage.covered) / SAMPLE_BUCKETS
        return share, f"{share:.1%} of the hash space (blob count unreadable)"
    total = sum(blobs.values())
    if not total:
        return 1.0, "no blobs"
    share = sum(n for bucket, n in blobs.items() if bucket in coverage.covered) / total
    return share, f"{share:.1%} of {total:,} blobs"
