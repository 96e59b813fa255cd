"""Expected windows against windows backed up, without I/O.

A window is *expected* when the tier's cron schedule fires in the period, on or after the day
the target entered the policy (its `since`, else its first evidence), and the backup has had
`compliance.grace` to be taken, copied and checked. It is *backed up* when the window's artifact
(by SHA-256: the newest manifest's, else the newest check's once pruned) passed its integrity
check in every region (the copy's own verdict while the manifest is kept, or a kept integrity
record of that same artifact once the prune has deleted it); a pass of another artifact of the
window proves nothing. Otherwise it is *missed*, and the report says what is lacking where.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from include.backup_dr.audit.records import BackupRecord, IntegrityRecord
from include.backup_dr.audit.rows import Backfilled, Missed, Origin, TierWindows
from include.backup_dr.policy import human

BACKFILL_PREFIX = "backfill__"


def expected_windows(
    schedule: str, start: datetime, end: datetime, due_by: datetime
) -> list[datetime]:
    """Every fire time of `schedule` in [start, end) that is no later than `due_by`."""
    fires = croniter(schedule, start - timedelta(seconds=1))
    found = []
    while (fire := fires.get_next(datetime)) < end and fire <= due_by:
        found.append(fire.astimezone(UTC))
    return found


def tier_windows(
    subject: str,
    tier: str,
    schedule: str,
    expected: list[datetime],
    regions: tuple[str, ...],
    backups: dict[tuple[str, str, datetime], dict[str, BackupRecord]],
    checks: dict[tuple[str, str, datetime], dict[str, list[IntegrityRecord]]],
    begin: datetime,
    stop: datetime,
    grace: timedelta,
) -> TierWindows:
    """One subject's tier over the period: each expected window backed up or missed (and why),
    those filled late, and verified backups of windows the schedule does not fire."""

    def evidence(window: datetime) -> Evidence:
        return Evidence(
            backups.get((subject, tier, window), {}), checks.get((subject, tier, window), {})
        )

    backed_up, missed, backfilled, origins = [], [], [], []
    for window in expected:
        found = evidence(window)
        if found.verified_everywhere(regions):
            backed_up.append(window)
            if origin := found.origin(window):
                origins.append(origin)
            if how := found.filled_late(window, grace):
                backfilled.append(Backfilled(window, how))
        else:
            missed.append(Missed(window, found.why_missed(regions)))
    scheduled = set(expected)
    seen = {w for (s, t, w) in (*backups, *checks) if s == subject and t == tier}
    unscheduled = sum(
        1
        for w in seen
        if begin <= w < stop and w not in scheduled and evidence(w).verified_everywhere(regions)
    )
    return TierWindows(
        subject,
        tier,
        schedule,
        tuple(expected),
        tuple(backed_up),
        tuple(missed),
        tuple(backfilled),
        unscheduled,
        has_evidence=bool(seen),
        origins=tuple(origins),
    )


@dataclass(frozen=True)
class Evidence:
    """What the records say about one window: its manifests and its kept checks, by region."""

    copies: dict[str, BackupRecord]
    checks: dict[str, list[IntegrityRecord]]

    @property
    def artifact(self) -> str | None:
        """The SHA-256 of the window's artifact: the newest manifest's; once the manifests are
        pruned, the newest check's (what the window last held)."""
        if self.copies:
            return max(self.copies.values(), key=lambda c: c.finished_at).sha256
        kept = [c for found in self.checks.values() for c in found]
        return max(kept, key=lambda c: c.checked_at).sha256 if kept else None

    def origin(self, window: datetime) -> Origin | None:
        """Where the window's artifact came from, as its kept manifest says; once that is
        pruned, as the newest kept check of the artifact says (None: neither is kept)."""
        artifact = self.artifact
        said: BackupRecord | IntegrityRecord | None = next(
            (c for c in self.copies.values() if c.sha256 == artifact), None
        )
        if said is None:
            kept = [
                c
                for found in self.checks.values()
                for c in found
                if c.sha256 == artifact and c.says_origin
            ]
            said = max(kept, key=lambda c: c.checked_at, default=None)
        if said is None:
            return None
        return Origin(window, said.promoted_from, said.not_derived)

    def verified_in(self, region: str) -> bool:
        """The window's own artifact passed its check in `region`: the copy's verdict while
        its manifest is kept, else a kept record of a check of that same artifact."""
        artifact = self.artifact
        copy = self.copies.get(region)
        if copy is not None:
            return copy.verified and copy.sha256 == artifact
        return any(c.ok and c.sha256 == artifact for c in self.checks.get(region, []))

    def verified_everywhere(self, regions: Iterable[str]) -> bool:
        return all(self.verified_in(region) for region in regions)

    def filled_late(self, window: datetime, grace: timedelta) -> str | None:
        """How a backed-up window was filled late: by a backfill run, or long after its window
        (from the manifest; from the first passed check once the manifest is pruned)."""
        for copy in self.copies.values():
            if copy.run_id.startswith(BACKFILL_PREFIX):
                return f"backfill run {copy.run_id}"
        if self.copies:
            finished = min(c.finished_at for c in self.copies.values())
            if finished - window > grace:
                return f"taken {human(finished - window)} after its window"
            return None
        passed = [c.checked_at for kept in self.checks.values() for c in kept if c.ok]
        if passed and min(passed) - window > grace:
            return f"first verified {human(min(passed) - window)} after its window (since pruned)"
        return None

    def why_missed(self, regions: Iterable[str]) -> str:
        if not self.copies and not self.checks:
            return "no backup in any region"
        parts = []
        for region in regions:
            if self.verified_in(region):
                continue
            if any(not c.ok for c in self.checks.get(region, [])):
                parts.append(f"integrity check failed in {region}")
            elif region in self.copies:
                parts.append(f"unverified in {region}")
            else:
                parts.append(f"no copy in {region}")
        return "; ".join(parts)
