"""Promotion: a tier (`derive_from` in the policy) takes its window by copying a verified backup of
another tier, so production is read once for both. Pure rules: which backup may be promoted, when
to wait for one, why a window reads the source instead, and the promoted backup's manifest.

Only a backup verified in every region, whose data was read within `max_skew` of the window, is
promoted: a copy of a failed or unchecked backup would pass its doubt on to a longer-kept tier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter

from include.backup_dr.catalogue import BackupId, Manifest, Verification, window_label
from include.backup_dr.policy import format_duration, human


@dataclass(frozen=True)
class Candidate:
    """A backup of the source tier, as the regions' catalogues see it."""

    backup: BackupId
    #: When its data was read from production (the manifest's `started_at`).
    taken_at: datetime
    verification: dict[str, Verification]

    def describe(self) -> str:
        return f"{self.backup.tier} {window_label(self.backup.window)}"


@dataclass(frozen=True)
class Promotion:
    """One window's plan: promote `source`, wait for one until `wait_until`, or read the source
    (both None). `reason` says which and why, for the log and the manifest."""

    reason: str
    source: Candidate | None = None
    wait_until: datetime | None = None


def source_windows(schedule: str, window: datetime, skew: timedelta) -> list[datetime]:
    """The source tier's fire times within `skew` of `window` (either side)."""
    fires = croniter(schedule, window - skew - timedelta(seconds=1))
    found = []
    while (fire := fires.get_next(datetime)) <= window + skew:
        found.append(fire)
    return found


def plan_promotion(
    window: datetime,
    source_tier: str,
    max_skew: timedelta,
    candidates: Iterable[Candidate],
    due: Sequence[datetime],
    regions: Sequence[str],
    now: datetime,
) -> Promotion:
    """Promote the newest candidate verified in every region and taken within `max_skew` of
    `window`. Failing that, wait (until `window + max_skew`) while a source window that is due
    (`due`, fire times <= now) has no verdict yet; else read the source, naming why."""
    skew = format_duration(max_skew)
    near = [c for c in candidates if abs(c.taken_at - window) <= max_skew]
    verified = [
        c for c in near if all(c.verification.get(r) is Verification.PASSED for r in regions)
    ]
    if verified:
        best = max(verified, key=lambda c: c.taken_at)
        offset = best.taken_at - window
        side = "after" if offset >= timedelta(0) else "before"
        return Promotion(
            f"promoted from {best.describe()}: verified in {', '.join(regions)}, its data "
            f"read {human(abs(offset))} {side} the window (max_skew {skew})",
            source=best,
        )
    failed = {
        c.backup.window: c
        for c in near
        if any(c.verification.get(r) is Verification.FAILED for r in regions)
    }
    pending = [w for w in due if w not in failed]
    deadline = window + max_skew
    if pending and now < deadline:
        waited_for = ", ".join(f"{source_tier} {window_label(w)}" for w in pending)
        return Promotion(
            f"waiting for {waited_for} to be verified in {', '.join(regions)} "
            f"(until {deadline.isoformat()}, the window + max_skew {skew})",
            wait_until=deadline,
        )
    why = [
        f"{c.describe()} failed its integrity check in "
        + ", ".join(r for r in regions if c.verification.get(r) is Verification.FAILED)
        for c in failed.values()
    ]
    why += [
        f"{c.describe()} is not verified in "
        + ", ".join(r for r in regions if c.verification.get(r) is not Verification.PASSED)
        for c in near
        if c.backup.window not in failed
    ]
    if not near:
        why.append(f"no {source_tier} backup's data was read within {skew} of the window")
    return Promotion("read the source: " + "; ".join(why) + " (never promoted: only verified)")


def promoted_manifest(
    source: Manifest,
    derived: BackupId,
    *,
    moved: Mapping[str, str],
    region: str,
    encryption: dict[str, str],
    run: dict[str, str],
    promoted_at: datetime,
    mode: str,
) -> Manifest:
    """The promoted backup's own manifest: the source's data facts (times, sizes, SHA-256, row
    counts, keys) under the derived id, its objects' new keys (`moved`: old key -> new key, for
    the artifact and what is kept beside it), and where it came from."""
    globals_entry = source.source.get("globals")
    facts = dict(source.source)
    if globals_entry is not None:
        facts["globals"] = {**globals_entry, "key": moved[globals_entry["key"]]}
    return dataclasses.replace(
        source,
        backup=derived,
        region=region,
        artifact=dataclasses.replace(source.artifact, key=moved[source.artifact.key]),
        source=facts,
        encryption=encryption,
        copied_from=None,
        run=run,
        derived_from={
            "backup": str(source.backup),
            "tier": source.backup.tier,
            "window": source.backup.window.isoformat(),
            "region": region,
            "artifact_key": source.artifact.key,
            "mode": mode,
            "promoted_at": promoted_at.isoformat(),
        },
        not_derived=None,
    )


def promoted_label(derived_from: Mapping[str, str] | None) -> str | None:
    """ "promoted from daily 20261206T003000Z", from a manifest's (or a kept check's)
    `derived_from`; None for a backup that is its own read of the source."""
    if not derived_from:
        return None
    label = window_label(datetime.fromisoformat(derived_from["window"]))
    return f"promoted from {derived_from['tier']} {label}"
