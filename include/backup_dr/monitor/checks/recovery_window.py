"""`recovery_window`: what each region can recover each continuous server to, measured from the
store, against the tier's retention, its freshness (twice archive_timeout) and holes."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta

from include.backup_dr.monitor.checks.inputs import StoreFacts, WindowFacts
from include.backup_dr.monitor.checks.result import CheckResult, Status, unknown
from include.backup_dr.policy import CONTINUOUS, Policy, human


def recovery_window_status(
    window: WindowFacts, now: datetime, retention: timedelta, freshness: timedelta
) -> tuple[Status, list[str]]:
    """The recovery window's verdict and every reason it is not OK (pure)."""
    if not window.intervals:
        return Status.CRITICAL, ["nothing can be recovered: no verified base backup with its WAL"]
    start = now - retention
    oldest, newest = window.intervals[0][0], window.intervals[-1][1]
    problems = []
    if oldest > start and window.since is not None and window.since <= start:
        problems.append(
            f"the oldest reachable second is {human(now - oldest)} ago, the policy keeps "
            f"{human(retention)}: the window has shrunk"
        )
    if now - newest > freshness:
        problems.append(f"the newest reachable second is {human(now - newest)} old")
    for left, right in itertools.pairwise(window.intervals):
        if right[0] > start:
            problems.append(
                f"hole: no recovery to {left[1]:%Y-%m-%d %H:%M:%S} .. {right[0]:%Y-%m-%d %H:%M:%S}"
            )
    return (Status.CRITICAL if problems else Status.OK), problems


def checks(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    settings = policy.continuous
    if settings is None:
        return
    retention = policy.categories[settings.category].tiers[CONTINUOUS].retention
    freshness = 2 * settings.archive_timeout
    limit = (
        f"from now - {human(retention)} to now - {human(freshness)} (2 x archive_timeout), no hole"
    )
    for server in policy.continuous_servers():
        for region in policy.iter_regions():
            check_id = f"recovery_window:{server.name}@{region.name}"
            found = facts.windows.get((server.name, region.name), WindowFacts())
            if found.error:
                yield replace(
                    unknown(check_id, "recovery_window", server.name, limit, found.error),
                    region=region.name,
                )
                continue
            status, problems = recovery_window_status(found, now, retention, freshness)
            if found.intervals:
                oldest, newest = found.intervals[0][0], found.intervals[-1][1]
                measured = (
                    f"{human(now - oldest)} back to {human(now - newest)} ago, "
                    f"{len(found.intervals) - 1} hole(s)"
                )
                reach: float | None = (now - oldest).total_seconds()
            else:
                measured, reach = "nothing reachable", None
            young = (
                f"the tier has run here since {found.since:%Y-%m-%d}"
                if found.since
                else "the tier has not pruned here yet"
            )
            yield CheckResult(
                check_id,
                "recovery_window",
                server.name,
                status,
                measured,
                limit,
                "; ".join(
                    [*problems, *(f"WAL missing from {g}" for g in found.gaps), young, found.detail]
                ),
                reach,
                region=region.name,
            )
