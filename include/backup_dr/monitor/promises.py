"""The policy report: for each promise of the customer's policy, what the configured tiers can
actually deliver (pure functions of the Policy), and next to it the measured figure from the
compliance checks where evidence exists.

The configuration can fall short of a promise while every backup runs perfectly: the policy
text promises "6 hours" for data older than 7 days, but between 7 and 28 days old the only
restore points kept are the weekly ones, a week apart. Such gaps are found here, from the
tiers' schedules and retentions, before any backup runs.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from include.backup_dr.monitor.checks.result import YEAR, CheckResult, Status
from include.backup_dr.policy import (
    CONTINUOUS,
    KNOWN_TIERS,
    Category,
    Policy,
    Tier,
    cron_period,
    format_duration,
    human,
)

#: What each tier's name promises: how far apart its restore points are at most.
NOMINAL_PERIOD = {
    CONTINUOUS: timedelta(seconds=1),
    "6h": timedelta(hours=6),
    "daily": timedelta(days=1),
    "weekly": timedelta(days=7),
    "monthly": timedelta(days=31),
}
TIER_WORDS = {
    CONTINUOUS: "every second",
    "6h": "every 6 hours",
    "daily": "daily",
    "weekly": "weekly",
    "monthly": "monthly",
}


class Verdict(StrEnum):
    """Whether the configuration, by itself, can keep a promise."""

    MET = "met"
    PARTLY = "partly"
    NOT_MET = "NOT MET"
    MEASURED = "measured"  # no setting can promise it; only the measurement can tell
    NOT_MODELLED = "-"  # not a backup setting: outside include/policy.yaml


@dataclass(frozen=True)
class Measures:
    """Which compliance checks measure a promise (None: any). The first kind is the headline."""

    kinds: tuple[str, ...]
    subjects: frozenset[str] | None = None
    tiers: frozenset[str] | None = None
    regions: frozenset[str] | None = None

    def matches(self, check: CheckResult) -> bool:
        return (
            check.kind in self.kinds
            and (self.subjects is None or check.subject in self.subjects)
            and (self.tiers is None or check.tier in self.tiers)
            and (self.regions is None or check.region in self.regions)
        )


@dataclass(frozen=True)
class Promise:
    promise: str  # the customer's words, with the figures transcribed in the policy
    configured: str  # what the configuration delivers, worked out from it
    verdict: Verdict
    measures: tuple[Measures, ...] = ()


@dataclass(frozen=True)
class Band:
    """Restore points between `older_than` and `up_to` old are at most `spacing` apart."""

    older_than: timedelta
    up_to: timedelta
    spacing: timedelta
    tier: str


def spacing_at(tiers: Mapping[str, Tier], age: timedelta) -> tuple[timedelta, str] | None:
    """How far apart the restore points of data `age` old are: the shortest period among the
    tiers that still keep backups that old (None: no tier keeps any)."""
    keeping = [(tier.period(), name) for name, tier in tiers.items() if tier.retention >= age]
    return min(keeping, default=None)


def bands(tiers: Mapping[str, Tier], older_than: timedelta) -> list[Band]:
    """The restore-point spacing for data older than `older_than`, band by band: each band
    ends where a tier's retention ends (the last band ends with the longest retention)."""
    edges = sorted({t.retention for t in tiers.values() if t.retention > older_than})
    found = []
    start = older_than
    for edge in edges:
        spacing = spacing_at(tiers, edge)
        assert spacing is not None  # the tier whose retention is this edge keeps it
        found.append(Band(start, edge, spacing[0], spacing[1]))
        start = edge
    return found


def _regions(policy: Policy) -> str:
    return f"{policy.regions.primary.name} and {policy.regions.secondary.name}"


def _production(policy: Policy, category: str) -> frozenset[str]:
    return frozenset(t.name for t in policy.targets if t.category == category and t.is_production)


def promises(policy: Policy) -> list[Promise]:
    """Every promise of the policy text, each with what the configuration delivers."""
    found: list[Promise] = []
    for name, category in policy.categories.items():
        if not _production(policy, name):
            continue
        found.extend(_tier_promises(policy, name, category))
        found.extend(_rpo_promises(policy, name, category))
    found.append(_rto_promise(policy))
    found.append(_geo_promise(policy))
    found.append(_annual_test_promise(policy))
    found.append(_uat_promise(policy))
    found.append(
        Promise(
            "Data will be retained for your policy length plus 12 months",
            "not a backup setting: how long the platform keeps live data is outside "
            "include/policy.yaml (backups are kept as each tier's retention says)",
            Verdict.NOT_MODELLED,
        )
    )
    return found


def _tier_promises(policy: Policy, name: str, category: Category) -> list[Promise]:
    rows = []
    subjects = _production(policy, name)
    for tier_name in KNOWN_TIERS:
        tier = category.tiers.get(tier_name)
        if tier is None:
            continue
        words = f"{category.description}: {TIER_WORDS[tier_name]}, kept {human(tier.retention)}"
        if tier.is_continuous:
            settings = policy.continuous
            assert settings is not None
            base = cron_period(settings.base_backup_schedule)
            rows.append(
                Promise(
                    words,
                    f"any second of the last {human(tier.retention)}: base backups "
                    f"`{settings.base_backup_schedule}` (at most {human(base)} apart) plus "
                    f"every WAL segment, in {_regions(policy)}",
                    Verdict.MET if base <= tier.retention else Verdict.NOT_MET,
                    (
                        Measures(("recovery_window",)),
                        Measures(("backup_age",), tiers=frozenset({CONTINUOUS})),
                        Measures(("wal_archive",)),
                        Measures(("server_config",)),  # archive_mode, wal_level on the server
                    ),
                )
            )
            continue
        period = tier.period()
        rows.append(
            Promise(
                words,
                f"`{tier.schedule}`: at most {human(period)} apart, kept "
                f"{human(tier.retention)} in {_regions(policy)}; {provenance(tier)}",
                Verdict.MET if period <= NOMINAL_PERIOD[tier_name] else Verdict.NOT_MET,
                (Measures(("backup_age",), subjects, frozenset({tier_name})),),
            )
        )
    return rows


def provenance(tier: Tier) -> str:
    """Where a tier's restore points come from: its own read of the source, or promoted from
    another tier's backup (`derive_from`), and what happens when there is none to promote."""
    if tier.derive_from is None:
        return "its own read of the source"
    assert tier.max_skew is not None
    return (
        f"promoted from {tier.derive_from}: a backup verified in both regions, read within "
        f"{format_duration(tier.max_skew)} of the window (else its own read of the source, "
        "saying why)"
    )


def _rpo_promises(policy: Policy, name: str, category: Category) -> list[Promise]:
    rows = []
    after = category.rpo_after
    recent = f" for data within the last {human(after.older_than)}" if after else ""
    rpo_words = f"{category.description}: RPO {format_duration(category.rpo)}{recent}"
    if category.replication_schedule is not None:
        rows.append(_replication_rpo(policy, name, category, rpo_words))
    elif CONTINUOUS in category.tiers and policy.continuous is not None:
        rows.append(_continuous_rpo(policy, category, rpo_words))
    else:
        rows.append(_tiers_rpo(policy, name, category, rpo_words))
    if after is not None:
        found = bands(category.tiers, after.older_than)
        parts = [
            f"{human(b.spacing)} apart between {human(b.older_than)} and {human(b.up_to)} old "
            f"({b.tier})"
            for b in found
        ]
        longest = max((b.up_to for b in found), default=after.older_than)
        parts.append(f"none kept beyond {human(longest)}")
        met = bool(found) and all(b.spacing <= after.rpo for b in found)
        rows.append(
            Promise(
                f"{category.description}: RPO {format_duration(after.rpo)} for data older "
                f"than {human(after.older_than)}",
                "restore points " + "; ".join(parts),
                Verdict.MET if met else Verdict.NOT_MET,
                (
                    Measures(
                        ("backup_age",),
                        _production(policy, name),
                        frozenset(b.tier for b in found),
                    ),
                ),
            )
        )
    return rows


def _replication_rpo(policy: Policy, name: str, category: Category, words: str) -> Promise:
    assert category.replication_schedule is not None
    every = cron_period(category.replication_schedule)
    backups = spacing_at(category.tiers, timedelta(0))
    alone = f"; the backups alone: {human(backups[0])} ({backups[1]} tier)" if backups else ""
    return Promise(
        words,
        f"media_replicate `{category.replication_schedule}` copies what the secondary lacks: "
        f"it is at most {human(every)} plus one run's time behind{alone}",
        Verdict.MET if every < category.rpo else Verdict.NOT_MET,
        (Measures(("replication_lag",), _production(policy, name)),),
    )


def _continuous_rpo(policy: Policy, category: Category, words: str) -> Promise:
    settings = policy.continuous
    assert settings is not None
    timeout = settings.archive_timeout
    if settings.synchronous:
        primary = (
            "losing the primary loses nothing (synchronous standby; server_config checks the "
            "server does wait)"
        )
    else:
        primary = "losing the primary loses the standby's lag (asynchronous: measured)"
    both = f"losing primary and standby together loses up to archive_timeout {human(timeout)}"
    met = settings.synchronous and timeout <= category.rpo
    return Promise(
        words,
        f"continuous tier: {primary}; {both}",
        Verdict.MET if met else Verdict.PARTLY,
        # server_config: the server's archive_timeout and synchronous settings are the policy's.
        (Measures(("standby_lag", "wal_archive", "server_config")),),
    )


def _tiers_rpo(policy: Policy, name: str, category: Category, words: str) -> Promise:
    newest = spacing_at(category.tiers, timedelta(0))
    if newest is None:
        return Promise(words, "no tier", Verdict.NOT_MET)
    return Promise(
        words,
        f"the {newest[1]} tier: backups at most {human(newest[0])} apart",
        Verdict.MET if newest[0] <= category.rpo else Verdict.NOT_MET,
        (Measures(("backup_age",), _production(policy, name), frozenset({newest[1]})),),
    )


def _rto_promise(policy: Policy) -> Promise:
    drill = policy.restore_verification
    how = (
        f"restore_verification `{drill.schedule}` restores every production target from the "
        f"{drill.region} region and times it; dr_restore restores targets in parallel, "
        "highest priority first"
        if drill
        else "no restore_verification section: nothing measures it"
    )
    return Promise(
        f"RTO {format_duration(policy.objectives.rto)} for production systems",
        "no setting can promise a duration: " + how,
        Verdict.MEASURED if drill else Verdict.NOT_MET,
        (Measures(("projected_rto",)),),
    )


def _geo_promise(policy: Policy) -> Promise:
    primary, secondary = policy.regions.primary, policy.regions.secondary
    return Promise(
        "Multiple copies of your data in geo-redundant locations",
        f"every backup is taken in {primary.name} and copied to {secondary.name} (each "
        "region's own KMS key), and its integrity checked in both",
        Verdict.MET,
        (Measures(("backup_age",), regions=frozenset({secondary.name})),),
    )


def _annual_test_promise(policy: Policy) -> Promise:
    drill = policy.restore_verification
    media = [
        c
        for name, c in policy.categories.items()
        if c.engine == "media" and _production(policy, name)
    ]
    daily_rehash = all(
        min((t.period() for t in c.scheduled_tiers().values()), default=YEAR) <= timedelta(days=1)
        for c in media
    )
    if drill is None:
        return Promise(
            "All production databases and media are tested for integrity at least annually",
            "no restore_verification section: no restore is ever tested",
            Verdict.NOT_MET,
        )
    period = cron_period(drill.schedule)
    parts = [
        f"restore_verification `{drill.schedule}` (at most {human(period)} apart) restores and "
        "validates every production target",
        "every backup's integrity is checked in both regions when it is taken",
    ]
    if media:
        parts.append(
            "media blobs are re-hashed 1/365 a day by the integrity check"
            + ("" if daily_rehash else ", but no media tier runs daily")
        )
    return Promise(
        "All production databases and media are tested for integrity at least annually",
        "; ".join(parts),
        Verdict.MET if period <= YEAR and daily_rehash else Verdict.NOT_MET,
        (Measures(("restore_drill", "rehash_coverage")),),
    )


def _uat_promise(policy: Policy) -> Promise:
    skipped = [t for t in policy.targets if t.environment.lower() == "uat"]
    backed_up = [t.name for t in skipped if t.is_production]
    names = ", ".join(t.name for t in skipped) or "(no UAT target in the policy)"
    return Promise(
        "We do not take any backups of UAT data",
        f"only environment 'production' is backed up; skipped with the reason: {names}",
        Verdict.NOT_MET if backed_up else Verdict.MET,
    )


# ---- the measured side -----------------------------------------------------------------------


def measured(promise: Promise, checks: Sequence[CheckResult]) -> str:
    """The compliance checks that measure a promise, in one phrase: the worst status, how many
    are OK, and the figure of the worst of them (headline kind first, then the largest)."""
    if not promise.measures:
        return "-"
    mine = [c for c in checks if any(m.matches(c) for m in promise.measures)]
    if not mine:
        return "no check"
    kinds = [kind for m in promise.measures for kind in m.kinds]
    worst = max(
        mine,
        key=lambda c: (
            c.status.severity,
            -kinds.index(c.kind),
            c.value if c.value is not None else 0,
        ),
    )
    ok = sum(1 for c in mine if c.status is Status.OK)
    return f"{worst.status.name} ({ok}/{len(mine)} ok): {worst.measured} [{worst.id}]"


WIDTHS = (34, 56, 8, 44)


def render_report(rows: Sequence[Promise], checks: Sequence[CheckResult] | None) -> str:
    """The promises as a text table; the MEASURED column only when checks were read."""
    header = ("PROMISE", "BY CONFIGURATION", "VERDICT", "MEASURED")
    table = [
        (p.promise, p.configured, p.verdict.value, measured(p, checks) if checks else "-")
        for p in rows
    ]
    if checks is None:
        header, table = header[:3], [row[:3] for row in table]
    lines = [_line(header)]
    for row in table:
        wrapped = [
            textwrap.wrap(cell, width, break_on_hyphens=False, break_long_words=False) or [""]
            for cell, width in zip(row, WIDTHS[: len(row)], strict=True)
        ]
        for i in range(max(len(cell) for cell in wrapped)):
            lines.append(_line(tuple(cell[i] if i < len(cell) else "" for cell in wrapped)))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(
        cell.ljust(width) for cell, width in zip(cells, WIDTHS[: len(cells)], strict=True)
    ).rstrip()
