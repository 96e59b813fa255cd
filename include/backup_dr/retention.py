"""The prune planner: a pure function from (backups, debris, policy, now) to decisions.

Every copy of every backup, and every piece of debris, gets exactly one decision with a reason
an auditor can read. The executor (`backup.steps.prune`) only carries out what this plans.

Rules, first match wins, per region copy:
1. the newest *verified* copy of a target's tier in a region is kept, however old;
2. a copy whose window is within the tier's retention is kept; for a recovery-window tier
   (continuous: base backups plus WAL), so is the newest verified copy older than that;
3. while a region has no verified copy of a tier at all, nothing of that tier is deleted there;
4. a copy is kept while the other region's copy of the same backup is kept unverified;
5. anything else is deleted, as expired.

Rule 1 is per region, so a region never loses its last good copy.

Debris (bytes no manifest vouches for) is deleted only once older than the grace period, so an
upload still in progress is never touched.

A circuit breaker trips when a plan would delete more than the policy expects from one
target/tier/region: more than one copy and more than `max_delete_fraction` of them. A tripped
plan is not executed; on-call decides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from include.backup_dr.catalogue import (
    Backup,
    BackupId,
    Debris,
    Verification,
    collector_paused,
)
from include.backup_dr.policy import format_duration


class Action(StrEnum):
    KEEP = "keep"
    DELETE = "delete"


class Decision(NamedTuple):
    """What happens to one region copy (or one piece of debris), and why.

    A NamedTuple rather than a dataclass: plans hold one per copy, hundreds of thousands.
    """

    action: Action
    region: str
    reason: str
    backup: BackupId | None = None
    debris: Debris | None = None

    @property
    def subject(self) -> str:
        if self.backup is not None:
            return f"{self.backup}@{self.region}"
        assert self.debris is not None
        return f"debris {self.debris.key}@{self.region}"


@dataclass(frozen=True)
class PrunePlan:
    decisions: tuple[Decision, ...]
    breaker: str | None = None  # why the circuit breaker tripped; None when it did not

    @property
    def deletions(self) -> list[Decision]:
        return [d for d in self.decisions if d.action is Action.DELETE]

    @property
    def keeps(self) -> list[Decision]:
        return [d for d in self.decisions if d.action is Action.KEEP]


def _age(delta: timedelta) -> str:
    if delta < timedelta(0):
        return "in the future"
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24}d {hours % 24}h" if hours >= 24 else f"{hours}h"


def newest_verified(
    backups: Iterable[Backup], by_taken: frozenset[str] = frozenset()
) -> dict[tuple[str, str, str], BackupId]:
    """(target, tier, region) -> the newest backup whose copy there passed its integrity check.

    Newest by window, or, for the tiers in `by_taken`, by when the backup was really taken."""
    newest: dict[tuple[str, str, str], Backup] = {}
    for backup in backups:
        for region, copy in backup.copies.items():
            if copy.verification is not Verification.PASSED:
                continue
            group = (backup.id.target, backup.id.tier, region)
            if group not in newest or _when(backup, by_taken) > _when(newest[group], by_taken):
                newest[group] = backup
    return {group: backup.id for group, backup in newest.items()}


def _when(backup: Backup, by_taken: frozenset[str]) -> datetime:
    """The time a rule judges a backup by: its window, or when it was taken (see plan_prune)."""
    return backup.taken_at if backup.id.tier in by_taken else backup.id.window


def plan_prune(
    backups: Iterable[Backup],
    debris: Iterable[Debris],
    retention: Mapping[str, timedelta],
    now: datetime,
    *,
    grace: timedelta,
    max_delete_fraction: float,
    recovery_windows: frozenset[str] = frozenset(),
) -> PrunePlan:
    """Decide keep or delete, with a reason, for every copy and every piece of debris.

    For a tier in `recovery_windows` (base backups that WAL replays from), retention is a
    recovery window, not a backup age: the newest verified copy older than the window is kept
    too, because the window's oldest second can only be reached by replaying from it. There,
    every rule judges a base backup by when it was taken (its manifest), never by its window
    label: a backfilled run takes a fresh base under an old label, and choosing the anchor by
    label would let that fresh base displace the real one and shrink the window.
    """
    with collector_paused():
        decisions = _plan_copies(list(backups), retention, now, recovery_windows)
        decisions.extend(_plan_debris(debris, now, grace))
        return PrunePlan(tuple(decisions), _circuit_breaker(decisions, max_delete_fraction))


def _plan_copies(
    backups: list[Backup],
    retention: Mapping[str, timedelta],
    now: datetime,
    recovery_windows: frozenset[str],
) -> list[Decision]:
    """Rules 1-5 for every region copy (see the module docstring)."""
    protected = newest_verified(backups, recovery_windows)
    anchors = (
        newest_verified(
            (
                b
                for b in backups
                if b.id.tier in recovery_windows and now - b.taken_at > retention[b.id.tier]
            ),
            recovery_windows,
        )
        if recovery_windows
        else {}
    )
    # Labels are formatted once, not once per copy: plans run over 100,000s of backups.
    newest_label = {group: f"{backup}@{group[2]}" for group, backup in protected.items()}
    keep_label = {tier: format_duration(keep_for) for tier, keep_for in retention.items()}
    decisions: list[Decision] = []
    for backup in backups:
        bid = backup.id
        keep_for = retention[bid.tier]
        by_taken = bid.tier in recovery_windows
        elapsed = now - _when(backup, recovery_windows)
        age = f"taken {_age(elapsed)} ago" if by_taken else f"window age {_age(elapsed)}"
        planned: list[Decision] = []
        weak: list[str] = []  # regions whose copy is kept although not verified
        for region, copy in sorted(backup.copies.items()):
            group = (bid.target, bid.tier, region)
            newest = protected.get(group)
            if newest == bid:
                action = Action.KEEP
                reason = (
                    f"newest verified backup of tier {bid.tier} in {region} ({age}); never deleted"
                )
            elif elapsed <= keep_for:
                action = Action.KEEP
                reason = f"within retention: {age} <= {keep_label[bid.tier]}"
            elif anchors.get(group) == bid:
                action = Action.KEEP
                reason = (
                    f"base of the recovery window: {age} > "
                    f"{keep_label[bid.tier]}, but it is the newest verified base backup "
                    f"older than that, so the oldest point of the {keep_label[bid.tier]} "
                    "recovery window replays from it"
                )
            elif newest is None:
                action = Action.KEEP
                reason = (
                    f"expired ({age}), but no copy of tier {bid.tier} in "
                    f"{region} has passed an integrity check yet; nothing is deleted until one has"
                )
            else:
                action = Action.DELETE
                reason = (
                    f"expired: {age} > {keep_label[bid.tier]}; "
                    f"newer verified copy {newest_label[group]} remains"
                )
            if action is Action.KEEP and copy.verification is not Verification.PASSED:
                weak.append(region)
            planned.append(Decision(action, region, reason, bid))
        decisions.extend(_guard_twins(backup, planned, weak) if weak else planned)
    return decisions


@dataclass(frozen=True)
class RecoveryHold:
    """How long prune will keep one region's copy of a base backup, as far as is known now.

    A base is kept until the next verified base in its region was taken `retention` ago: until
    then it is within retention or the window's anchor. The newest verified base has no next
    one yet, so it is held from `now` (the next prune extends it). The WAL between this base's
    start and the next one's is kept exactly as long (GC keeps WAL from the oldest kept base's
    start on), so Object Lock holds both until `until` plus the margin.
    """

    backup: BackupId
    region: str
    until: datetime
    #: The next verified base in the region; None for the newest.
    next_base: BackupId | None


def recovery_holds(
    backups: Iterable[Backup], retention: timedelta, now: datetime
) -> dict[tuple[BackupId, str], RecoveryHold]:
    """Every region copy's hold, for one recovery-window tier of one target (see RecoveryHold)."""
    copies: dict[str, list[Backup]] = defaultdict(list)
    for backup in backups:
        for region in backup.copies:
            copies[region].append(backup)
    holds: dict[tuple[BackupId, str], RecoveryHold] = {}
    for region, found in copies.items():
        following: Backup | None = None  # the next verified base, walking newest first
        for backup in sorted(found, key=lambda b: b.taken_at, reverse=True):
            until = (following.taken_at if following else now) + retention
            holds[(backup.id, region)] = RecoveryHold(
                backup.id, region, until, following.id if following else None
            )
            if backup.copies[region].verification is Verification.PASSED:
                following = backup
    return holds


def hold_locked(
    plan: PrunePlan,
    locked_until: Mapping[str, datetime],
    now: datetime,
    max_delete_fraction: float,
) -> PrunePlan:
    """Keep each planned deletion that the store still holds under Object Lock, with the date.

    `locked_until` maps a decision's subject (a backup's copy, or debris: locks apply on write,
    so an upload whose manifest write failed is locked debris) to the lock's end, for the
    subjects whose lock was read (the end may be past). A delete before it would be refused;
    the first prune after it deletes. The circuit breaker is judged again on what is left.
    """
    if not locked_until:
        return plan
    decisions = []
    for decision in plan.decisions:
        if decision.action is Action.DELETE:
            until = locked_until.get(decision.subject)
            if until is not None and until > now:
                decision = decision._replace(
                    action=Action.KEEP,
                    reason=f"{decision.reason}; but locked until {until.isoformat()} "
                    f"(Object Lock), {_age(until - now)} from now: deleted by the first prune "
                    "after that",
                )
        decisions.append(decision)
    return PrunePlan(tuple(decisions), _circuit_breaker(decisions, max_delete_fraction))


def _plan_debris(debris: Iterable[Debris], now: datetime, grace: timedelta) -> list[Decision]:
    """Debris goes once older than the grace period; younger may be an upload in progress."""
    decisions: list[Decision] = []
    for item in debris:
        age = now - item.last_modified
        what = "unfinished multipart upload" if item.upload_id else "upload with no manifest"
        if age > grace:
            decisions.append(
                Decision(
                    Action.DELETE,
                    item.region,
                    f"{what}, {_age(age)} old > grace {format_duration(grace)}: never a backup",
                    debris=item,
                )
            )
        else:
            decisions.append(
                Decision(
                    Action.KEEP,
                    item.region,
                    f"{what}, {_age(age)} old <= grace "
                    f"{format_duration(grace)}: may still be in progress",
                    debris=item,
                )
            )
    return decisions


def _guard_twins(backup: Backup, planned: list[Decision], weak: list[str]) -> list[Decision]:
    """Keep a copy whose twin in another region is kept but unverified (a region in `weak`):
    that twin may be bad, and this copy the only good one."""
    guarded = []
    for decision in planned:
        twin = next((other for other in weak if other != decision.region), None)
        if decision.action is Action.DELETE and twin is not None:
            decision = Decision(
                Action.KEEP,
                decision.region,
                f"expired, but the copy in {twin} is kept and "
                f"{backup.copies[twin].verification.value}; this copy may be the only good one",
                backup=backup.id,
            )
        guarded.append(decision)
    return guarded


def _circuit_breaker(decisions: list[Decision], max_delete_fraction: float) -> str | None:
    totals: dict[tuple[str, str, str], int] = defaultdict(int)
    deletes: dict[tuple[str, str, str], int] = defaultdict(int)
    for decision in decisions:
        if decision.backup is None:
            continue
        group = (decision.backup.target, decision.backup.tier, decision.region)
        totals[group] += 1
        if decision.action is Action.DELETE:
            deletes[group] += 1
    tripped = [
        f"{target}/{tier}@{region}: {deletes[group]} of {totals[group]} copies"
        for group in sorted(deletes)
        for target, tier, region in [group]
        if deletes[group] > 1 and deletes[group] > max_delete_fraction * totals[group]
    ]
    if not tripped:
        return None
    return (
        f"circuit breaker: the plan would delete more than {max_delete_fraction:.0%} of a tier "
        f"at once ({'; '.join(tripped)}); nothing was deleted. Check the clock and the "
        "catalogue, then re-run with the param override_circuit_breaker=true if it is right."
    )
