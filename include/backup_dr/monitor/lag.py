"""The monitor's rules, without I/O: lag statistics, the breach conditions, and the alert state
machine that pages once per breach and says "resolved" once when it clears.

Kept pure so the rules that decide whether someone is woken up can be tested exhaustively.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

#: Every condition the monitor can raise, in the order messages name them.
CONDITIONS = ("lag", "archive_failing", "standby_gone")

#: A heartbeat not visible on the standby after this long counts as this long (and as a breach).
SAMPLE_TIMEOUT_MS = 10_000.0

AlertKind = Literal["breach", "resolved"]


class ConditionsOpenError(RuntimeError):
    """Raised after evidence and alerts are written, so the run shows red while a condition is
    open; on-call has already been paged once for it (see `plan_alerts`)."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation below the tail."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def lag_stats(lags_ms: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p99 and max of the samples (None when there are none)."""
    if not lags_ms:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(lags_ms),
        "p50_ms": round(percentile(lags_ms, 50), 3),
        "p99_ms": round(percentile(lags_ms, 99), 3),
        "max_ms": round(max(lags_ms), 3),
    }


def longest_run_over(lags_ms: Iterable[float], limit_ms: float) -> int:
    """The most consecutive samples strictly over `limit_ms`."""
    longest = current = 0
    for lag in lags_ms:
        current = current + 1 if lag > limit_ms else 0
        longest = max(longest, current)
    return longest


def lag_breached(lags_ms: Sequence[float], rpo_ms: float, samples: int) -> bool:
    """Over the RPO for `samples` consecutive samples: one slow commit is not a page."""
    return longest_run_over(lags_ms, rpo_ms) >= samples


def archive_failing(
    failed_count: int,
    last_failed_time: datetime | None,
    last_archived_time: datetime | None,
    previous_failed_count: int | None,
    *,
    was_open: bool = False,
) -> bool:
    """Archiving is failing now: its newest attempt failed, and failures grew since the last
    run (or the condition was already open: the archiver backs off between retries, so a run
    can see no new failure while nothing has been archived either)."""
    newest_failed = last_failed_time is not None and (
        last_archived_time is None or last_failed_time > last_archived_time
    )
    grew = failed_count > (previous_failed_count or 0)
    return newest_failed and (grew or was_open)


def standby_gone(streaming: bool, slot_active: bool | None, reachable: bool) -> bool:
    """The standby no longer receives WAL: no pg_stat_replication row for it, its slot
    inactive (or missing: None), or it cannot be reached for the heartbeat."""
    return not streaming or not slot_active or not reachable


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    condition: str


def plan_alerts(open_conditions: Mapping[str, Any], current: Mapping[str, bool]) -> list[Alert]:
    """What to send: "breach" for a condition that turned on, "resolved" for one that cleared.

    `open_conditions` is the stored state (condition -> details of the page sent); a condition
    already open sends nothing, however long it stays on.
    """
    alerts = []
    for name in sorted(set(open_conditions) | set(current), key=_order):
        is_on = bool(current.get(name, False))
        if is_on and name not in open_conditions:
            alerts.append(Alert("breach", name))
        elif not is_on and name in open_conditions:
            alerts.append(Alert("resolved", name))
    return alerts


def record_sent(
    open_conditions: Mapping[str, Any], alert: Alert, details: Mapping[str, Any]
) -> dict[str, Any]:
    """The state after `alert` was delivered; an undelivered alert is simply not recorded, so the
    next run tries again."""
    state = dict(open_conditions)
    if alert.kind == "breach":
        state[alert.condition] = dict(details)
    else:
        state.pop(alert.condition, None)
    return state


def _order(name: str) -> tuple[int, str]:
    return (CONDITIONS.index(name) if name in CONDITIONS else len(CONDITIONS), name)
