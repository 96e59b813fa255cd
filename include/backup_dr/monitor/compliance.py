"""Is every promise kept? The compliance rules, without I/O: plain facts read from the store go
in, one status per check comes out, and the Nagios exit code and one-line output from those.

Statuses follow the Nagios / Icinga plugin convention (`barman check --nagios` does too): OK 0,
WARNING 1, CRITICAL 2, UNKNOWN 3. CRITICAL and UNKNOWN are "red": a promise is broken, or
nobody can tell whether it holds; red pages on-call once (see `record.py`). WARNING is amber:
the promise holds today but the evidence says it will not, or cannot back a figure.

The checks (one row each; ids are stable, so paging state survives between runs):

- `backup_age` per production target (or continuous server), tier and region: the newest
  backup VERIFIED in that region, by its restore point (the manifest's start), against the
  tier's schedule period plus `compliance.grace`.
- `standby_lag` / `wal_archive` per continuous server: the continuous monitor's newest
  evidence (lag p99 over the RPO for the alert run length, the standby gone; archiver failing
  or the last archived WAL older than twice archive_timeout while segments wait), which must
  itself be recent.
- `server_config` per continuous server: the primary's settings, as the continuous monitor
  last read them, against the policy's `continuous` section: `archive_mode` on (or always),
  `wal_level` replica or logical, `archive_timeout` not off and not longer than the policy's
  (shorter is amber: the promise holds, the policy's figure is not what runs); with
  `synchronous: true` also `synchronous_standby_names` set, `synchronous_commit` waiting for
  the standby and the standby's `sync_state` sync or quorum. Without this, a server left
  asynchronous or archiving every 10 minutes reads as the policy's promise kept.
- `recovery_window` per continuous server and region, measured from the store (verified base
  backups plus WAL continuity across timelines, `pitr.recovery_range`): red when the oldest
  reachable second is later than now minus the tier's retention (once the tier has run that
  long), when the newest is older than twice archive_timeout, or when any hole lies inside
  the window. `wal_archive` alone cannot say this: it reads the server's archiver, which is
  green at any archive age while nothing waits.
- `replication_lag` per media target: the lag media_replicate measured at its last run, and
  how far behind the secondary can be now (time since that run began), against the RPO.
- `restore_drill` per production target and continuous server: the newest drill passed and is
  at most a year old (366 days, so a drill on the same date every year always passes).
- `projected_rto` per drilled target, and for all targets restored as `dr_restore` runs them
  (in parallel by priority, within the configured concurrency and pool): the drill's measured
  restore rate applied to the newest backup's size.
- `rehash_coverage` per media target and region: the share of the target's blobs whose
  rolling re-hash (one day-of-year bucket a day, see engines/media.py) passed within a year.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from include.backup_dr.engines.media import SAMPLE_BUCKETS, rehash_bucket
from include.backup_dr.policy import (
    CONTINUOUS,
    ContinuousSettings,
    Policy,
    cron_period,
    format_duration,
)
from include.backup_dr.restore.record import RestoreJob, plan_estate

#: "Within a year": 366 days, so a yearly job on the same date is never late in a leap year.
YEAR = timedelta(days=366)


class Status(IntEnum):
    """A check's verdict; the value is the Nagios plugin exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def is_red(self) -> bool:
        """Pages on-call: a promise is broken, or nobody can tell whether it holds."""
        return self in (Status.CRITICAL, Status.UNKNOWN)

    @property
    def severity(self) -> int:
        """Worst first when combined: CRITICAL > UNKNOWN > WARNING > OK."""
        return (0, 1, 3, 2)[self.value]


@dataclass(frozen=True)
class CheckResult:
    """One row of the compliance table: what was measured, against what, and the verdict."""

    id: str  # stable: "<kind>:<subject>[/<tier>][@<region>]"
    kind: str
    subject: str
    status: Status
    measured: str
    limit: str
    detail: str
    #: The figure for machines: seconds, or a share in [0, 1] for coverage; None if unmeasured.
    value: float | None = None
    tier: str | None = None
    region: str | None = None

    def to_document(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "tier": self.tier,
            "region": self.region,
            "status": self.status.name,
            "measured": self.measured,
            "limit": self.limit,
            "detail": self.detail,
            "value": self.value,
        }


# ---- facts: what the store says, as plain values ---------------------------------------------


@dataclass(frozen=True)
class BackupFacts:
    """One subject's tier in one region: its newest verified backup (None: there is none)."""

    restore_point: datetime | None = None  # the verified backup's manifest start
    window: datetime | None = None
    #: Bytes a restore of it moves, in the unit the drill measures (dump / listed / base bytes).
    restore_bytes: int | None = None
    #: Backups newer than the newest verified one whose check did not pass (or did not run).
    newer_unverified: int = 0
    error: str | None = None  # the region could not be read


@dataclass(frozen=True)
class MonitorFacts:
    """The continuous monitor's newest evidence for one server."""

    evidence: str | None = None
    measured_at: datetime | None = None
    samples: int = 0
    p99_ms: float | None = None
    max_ms: float | None = None
    archive_age_seconds: float | None = None
    #: Closed WAL segments waiting to be archived (None: the monitor could not read the backlog).
    ready_files: int | None = None
    conditions: Mapping[str, bool] = field(default_factory=dict)
    #: The primary's SERVER_SETTINGS as pg_settings gives them (None: an older record).
    settings: Mapping[str, str] | None = None
    #: The standby's pg_stat_replication.sync_state (None: no standby was streaming).
    sync_state: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class WindowFacts:
    """What one region can recover one continuous server to, read from the store."""

    #: (a, b] spans reachable from a verified base backup through whole WAL, oldest first.
    intervals: tuple[tuple[datetime, datetime], ...] = ()
    #: When the tier's first prune ran here (its history starts); None: it has not yet.
    since: datetime | None = None
    #: The first segment missing after each usable base's reach, where the archive goes on.
    gaps: tuple[str, ...] = ()
    detail: str = ""
    error: str | None = None


@dataclass(frozen=True)
class ReplicationFacts:
    """media_replicate's state for one target, as its last run left it in the secondary."""

    began_at: datetime | None = None
    lag_seconds: float | None = None
    evidence: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class DrillFacts:
    """The newest restore drill record of one target or server (database, media or PITR)."""

    evidence: str | None = None
    recorded_at: datetime | None = None
    outcome: str | None = None
    problems: tuple[str, ...] = ()
    tier: str | None = None
    region: str | None = None
    #: What the drill restored (bytes, in the unit of BackupFacts.restore_bytes) and how long.
    restored_bytes: int | None = None
    seconds: float | None = None
    error: str | None = None

    @property
    def rate(self) -> float | None:
        """Bytes restored per second, measured by the drill."""
        if not self.restored_bytes or not self.seconds:
            return None
        return self.restored_bytes / self.seconds


@dataclass(frozen=True)
class RehashFacts:
    """One media target's rolling re-hash in one region, from its kept integrity records."""

    #: Per sample bucket, when its re-hash last passed.
    passed: Mapping[int, datetime] = field(default_factory=dict)
    #: The first integrity record of this target in this region: the history starts there.
    since: datetime | None = None
    #: Blobs per bucket in the target's newest verified snapshot (None: could not be read).
    blobs_per_bucket: Mapping[int, int] | None = None
    error: str | None = None


@dataclass(frozen=True)
class StoreFacts:
    """Everything the checks read, keyed as the checks name their subjects."""

    backups: Mapping[tuple[str, str, str], BackupFacts]  # (subject, tier, region)
    monitors: Mapping[str, MonitorFacts]  # server
    replications: Mapping[str, ReplicationFacts]  # media target
    drills: Mapping[str, DrillFacts]  # target or server
    rehash: Mapping[tuple[str, str], RehashFacts]  # (media target, region)
    windows: Mapping[tuple[str, str], WindowFacts] = field(default_factory=dict)  # server, region


# ---- the rules: plain values in, a status out -------------------------------------------------


def backup_age_status(age: timedelta | None, period: timedelta, grace: timedelta) -> Status:
    """Red when there is no verified backup, or the newest is older than a period plus grace."""
    if age is None or age > period + grace:
        return Status.CRITICAL
    return Status.OK


def monitor_status(evidence_age: timedelta | None, limit: timedelta, breached: bool) -> Status:
    """Red when the monitor found a breach, or has left no evidence within `limit`."""
    if evidence_age is None or evidence_age > limit or breached:
        return Status.CRITICAL
    return Status.OK


def replication_status(
    measured_lag: timedelta | None, since_run_began: timedelta | None, rpo: timedelta
) -> Status:
    """Red when the last run found the secondary beyond the RPO, or no run began within it (so
    the secondary may be missing changes older than the RPO now)."""
    if measured_lag is None or since_run_began is None:
        return Status.CRITICAL
    if measured_lag > rpo or since_run_began > rpo:
        return Status.CRITICAL
    return Status.OK


def archive_behind(
    archive_age_seconds: float | None, ready_files: int | None, limit: timedelta
) -> bool:
    """The WAL archive is behind: nothing was ever archived, or the last archive is older than
    `limit` while closed segments wait (an idle server closes none: nothing is at risk). Without
    the backlog (`ready_files` needs pg_monitor), the age alone decides."""
    if archive_age_seconds is None:
        return True
    late = timedelta(seconds=archive_age_seconds) > limit
    return late and (ready_files is None or ready_files > 0)


#: The primary's settings the continuous tier depends on (pg_settings names; archive_timeout's
#: `setting` is in seconds).
SERVER_SETTINGS = (
    "archive_mode",
    "archive_timeout",
    "wal_level",
    "synchronous_standby_names",
    "synchronous_commit",
)


def server_config_status(
    settings: ContinuousSettings, found: Mapping[str, str], sync_state: str | None
) -> tuple[Status, list[str]]:
    """The server's settings against the policy's continuous section: the verdict and every
    mismatch, each naming the promise it breaks (pure)."""
    missing = [name for name in SERVER_SETTINGS if name not in found]
    if missing:
        return Status.UNKNOWN, [f"{', '.join(missing)} not read from the server"]
    problems: list[str] = []
    warnings: list[str] = []
    if found["archive_mode"] not in ("on", "always"):
        problems.append(
            f"archive_mode is {found['archive_mode']}: no WAL reaches the archive, so neither "
            "point-in-time recovery nor the loss bound of primary and standby together holds"
        )
    if found["wal_level"] not in ("replica", "logical"):
        problems.append(
            f"wal_level is {found['wal_level']}: replica or logical is needed to archive and "
            "stream WAL (point-in-time recovery, the standby)"
        )
    actual = timedelta(seconds=int(found["archive_timeout"]))
    expected = settings.archive_timeout
    if not actual:
        problems.append(
            f"archive_timeout is 0 (off): a quiet server keeps WAL unarchived without bound, "
            f"the policy bounds losing primary and standby together at {human(expected)}"
        )
    elif actual > expected:
        problems.append(
            f"archive_timeout is {human(actual)}, the policy's {human(expected)}: losing primary "
            f"and standby together loses up to {human(actual)}"
        )
    elif actual < expected:
        warnings.append(
            f"archive_timeout is {human(actual)}, shorter than the policy's {human(expected)}: "
            "the promise holds, but each switch archives a whole 16 MB segment; align the two"
        )
    if settings.synchronous:
        lost = "losing the primary can lose commits (policy: synchronous)"
        if not found["synchronous_standby_names"].strip(" '\""):
            problems.append(f"synchronous_standby_names is empty: commits do not wait; {lost}")
        if found["synchronous_commit"] in ("off", "local"):
            problems.append(
                f"synchronous_commit is {found['synchronous_commit']}: commits do not wait for "
                f"the standby; {lost}"
            )
        if sync_state is None:
            problems.append(f"no standby is streaming; {lost}")
        elif sync_state not in ("sync", "quorum"):
            problems.append(f"the standby's sync_state is {sync_state}, not sync; {lost}")
    if problems:
        return Status.CRITICAL, problems + warnings
    return (Status.WARNING if warnings else Status.OK), warnings


def drill_status(age: timedelta | None, outcome: str | None, max_age: timedelta) -> Status:
    """Red without a drill, after a failed one, or when the newest is older than `max_age`."""
    if age is None or outcome != "passed" or age > max_age:
        return Status.CRITICAL
    return Status.OK


def rto_status(projected: timedelta | None, rto: timedelta) -> Status:
    """Red over the RTO; amber when no drill measured a restore rate to project from."""
    if projected is None:
        return Status.WARNING
    return Status.CRITICAL if projected > rto else Status.OK


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


def overall(statuses: Iterable[Status]) -> Status:
    """The worst status (CRITICAL > UNKNOWN > WARNING > OK); OK when there is none."""
    return max(statuses, key=lambda status: status.severity, default=Status.OK)


def nagios_exit(checks: Iterable[CheckResult]) -> int:
    """The plugin exit code for a set of checks: the worst status's code."""
    return overall(check.status for check in checks).value


# ---- which checks a policy asks for --------------------------------------------------------


@dataclass(frozen=True)
class BackupSubject:
    """A tier of one target (or, for the continuous tier, one server) that must stay fresh."""

    category: str
    subject: str
    tier: str
    period: timedelta


def backup_subjects(policy: Policy) -> list[BackupSubject]:
    """Every production target's scheduled tiers, then each continuous server's base backups."""
    subjects = []
    for target in sorted(policy.targets, key=lambda t: (t.priority, t.name)):
        if not target.is_production:
            continue
        for tier_name, tier in policy.categories[target.category].scheduled_tiers().items():
            subjects.append(BackupSubject(target.category, target.name, tier_name, tier.period()))
    if policy.continuous is not None:
        period = cron_period(policy.continuous.base_backup_schedule)
        for server in policy.continuous_servers():
            subjects.append(
                BackupSubject(policy.continuous.category, server.name, CONTINUOUS, period)
            )
    return subjects


def drill_subjects(policy: Policy) -> list[str]:
    """What the restore drill must prove: each production target, and each continuous server
    (point-in-time recovery)."""
    targets = sorted(
        (t for t in policy.targets if t.is_production), key=lambda t: (t.priority, t.name)
    )
    return [t.name for t in targets] + [s.name for s in policy.continuous_servers()]


def media_targets(policy: Policy) -> list[str]:
    """Production targets of media categories (content-addressed blobs, re-hashed by sample)."""
    return [
        t.name
        for t in policy.targets
        if t.is_production and policy.categories[t.category].engine == "media"
    ]


# ---- evaluation ----------------------------------------------------------------------------


def evaluate(policy: Policy, facts: StoreFacts, now: datetime) -> list[CheckResult]:
    """Every check the policy asks for, in table order, from the facts alone."""
    return [
        *_backup_ages(policy, facts, now),
        *_continuous(policy, facts, now),
        *_server_configs(policy, facts, now),
        *_recovery_windows(policy, facts, now),
        *_replication(policy, facts, now),
        *_drills(policy, facts, now),
        *_projected_rto(policy, facts),
        *_rehash(policy, facts, now),
    ]


def _unknown(check_id: str, kind: str, subject: str, limit: str, error: str) -> CheckResult:
    return CheckResult(check_id, kind, subject, Status.UNKNOWN, "-", limit, f"cannot read: {error}")


def _backup_ages(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    grace = policy.compliance.grace
    for item in backup_subjects(policy):
        limit = f"{human(item.period)} + {human(grace)} grace"
        for region in policy.iter_regions():
            check_id = f"backup_age:{item.subject}/{item.tier}@{region.name}"
            found = facts.backups.get((item.subject, item.tier, region.name), BackupFacts())
            if found.error:
                yield replace(
                    _unknown(check_id, "backup_age", item.subject, limit, found.error),
                    tier=item.tier,
                    region=region.name,
                )
                continue
            age = now - found.restore_point if found.restore_point else None
            if found.restore_point is None or found.window is None:
                detail = f"no verified {item.tier} backup in {region.name}"
            else:
                detail = (
                    f"window {found.window:%Y-%m-%d %H:%M}, taken "
                    f"{found.restore_point:%Y-%m-%d %H:%M:%S} UTC"
                )
            if found.newer_unverified:
                detail += f"; {found.newer_unverified} newer backup(s) not verified"
            yield CheckResult(
                check_id,
                "backup_age",
                item.subject,
                backup_age_status(age, item.period, grace),
                human(age) if age is not None else "none",
                limit,
                detail,
                age.total_seconds() if age is not None else None,
                tier=item.tier,
                region=region.name,
            )


def _continuous(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    settings = policy.continuous
    if settings is None:
        return
    rpo = policy.categories[settings.category].rpo
    runs = settings.monitor.lag_alert_samples
    stale_after = cron_period(settings.monitor.schedule) + policy.compliance.monitor_grace
    archive_limit = 2 * settings.archive_timeout
    for server in policy.continuous_servers():
        found = facts.monitors.get(server.name, MonitorFacts())
        lag_id, wal_id = f"standby_lag:{server.name}", f"wal_archive:{server.name}"
        lag_limit = f"RPO {format_duration(rpo)} ({runs} samples in a row)"
        wal_limit = f"2 x archive_timeout = {human(archive_limit)}"
        if found.error:
            yield _unknown(lag_id, "standby_lag", server.name, lag_limit, found.error)
            yield _unknown(wal_id, "wal_archive", server.name, wal_limit, found.error)
            continue
        age = now - found.measured_at if found.measured_at else None
        if age is None:
            seen = "no continuous monitor evidence in the last day"
        else:
            seen = f"measured {human(age)} ago (stale after {human(stale_after)}): {found.evidence}"
        # A stale record's figures are history: say so first, where the figure would be.
        stale = "" if age is not None and age <= stale_after else "monitor stale: "
        conditions = found.conditions
        lag_breach = bool(conditions.get("lag") or conditions.get("standby_gone"))
        lag_detail = (
            "; ".join(name for name in ("lag", "standby_gone") if conditions.get(name)) or "ok"
        )
        yield CheckResult(
            lag_id,
            "standby_lag",
            server.name,
            monitor_status(age, stale_after, lag_breach),
            stale
            + (
                f"p99 {found.p99_ms:g} ms, max {found.max_ms:g} ms ({found.samples} samples)"
                if found.p99_ms is not None and found.max_ms is not None
                else "not measured"
            ),
            lag_limit,
            f"conditions: {lag_detail}; {seen}",
            found.p99_ms / 1000 if found.p99_ms is not None else None,
        )
        archive_age = found.archive_age_seconds
        behind = archive_behind(archive_age, found.ready_files, archive_limit)
        notes = [
            "archiving is failing" if conditions.get("archive_failing") else "",
            f"{found.ready_files} segment(s) waiting" if found.ready_files else "",
            "idle: nothing waits to be archived" if found.ready_files == 0 and not behind else "",
        ]
        yield CheckResult(
            wal_id,
            "wal_archive",
            server.name,
            monitor_status(age, stale_after, behind or bool(conditions.get("archive_failing"))),
            stale
            + ("never archived" if archive_age is None else f"{archive_age:.0f}s since the last"),
            wal_limit,
            "; ".join([n for n in notes if n] + [seen]),
            archive_age,
        )


def _server_configs(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    settings = policy.continuous
    if settings is None:
        return
    stale_after = cron_period(settings.monitor.schedule) + policy.compliance.monitor_grace
    limit = f"archive_mode on, archive_timeout {human(settings.archive_timeout)}, wal_level " + (
        "replica or logical"
    )
    if settings.synchronous:
        limit += ", a synchronous standby (sync_state sync)"
    for server in policy.continuous_servers():
        check_id = f"server_config:{server.name}"
        found = facts.monitors.get(server.name, MonitorFacts())
        if found.error:
            yield _unknown(check_id, "server_config", server.name, limit, found.error)
            continue
        age = now - found.measured_at if found.measured_at else None
        if age is None or age > stale_after:
            seen = "no continuous monitor evidence in the last day"
            if age is not None:
                seen = f"measured {human(age)} ago (stale after {human(stale_after)})"
            yield CheckResult(
                check_id,
                "server_config",
                server.name,
                Status.CRITICAL,
                "monitor stale",
                limit,
                seen,
            )
            continue
        seen = f"read {human(age)} ago: {found.evidence}"
        if found.settings is None:
            yield CheckResult(
                check_id,
                "server_config",
                server.name,
                Status.UNKNOWN,
                "-",
                limit,
                f"the monitor's record has no server settings; {seen}",
            )
            continue
        status, problems = server_config_status(settings, found.settings, found.sync_state)
        shown = dict(found.settings)
        timeout = shown.get("archive_timeout")
        value = float(timeout) if timeout is not None and timeout.isdigit() else None
        if value is not None:
            shown["archive_timeout"] = human(timedelta(seconds=value))
        names = ["archive_mode", "archive_timeout", "wal_level"]
        measured = ", ".join(f"{name}={shown.get(name, '?')}" for name in names)
        if settings.synchronous:
            measured += f", sync_state={found.sync_state or 'none'}"
        yield CheckResult(
            check_id,
            "server_config",
            server.name,
            status,
            measured,
            limit,
            "; ".join([*problems, seen] if problems else ["matches the policy", seen]),
            value,
        )


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


def _recovery_windows(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
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
                    _unknown(check_id, "recovery_window", server.name, limit, found.error),
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


def _replication(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    for name in media_targets(policy):
        category = policy.categories[policy.target(name).category]
        if category.replication_schedule is None:
            continue
        rpo = category.rpo
        check_id, limit = f"replication_lag:{name}", f"RPO {format_duration(rpo)}"
        found = facts.replications.get(name, ReplicationFacts())
        if found.error:
            yield _unknown(check_id, "replication_lag", name, limit, found.error)
            continue
        if found.began_at is None or found.lag_seconds is None:
            yield CheckResult(
                check_id,
                "replication_lag",
                name,
                Status.CRITICAL,
                "never replicated",
                limit,
                "media_replicate has left no state in the secondary region",
            )
            continue
        lag = timedelta(seconds=found.lag_seconds)
        behind = max(now - found.began_at, lag)
        yield CheckResult(
            check_id,
            "replication_lag",
            name,
            replication_status(lag, now - found.began_at, rpo),
            f"{human(lag)} at the last run; now at most {human(behind)}",
            limit,
            f"last run began {found.began_at:%Y-%m-%d %H:%M:%S} UTC: {found.evidence}",
            behind.total_seconds(),
        )


def _drills(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    max_age = YEAR + policy.compliance.grace
    limit = f"passed, within {human(YEAR)}"
    for subject in drill_subjects(policy):
        check_id = f"restore_drill:{subject}"
        found = facts.drills.get(subject, DrillFacts())
        if found.error:
            yield _unknown(check_id, "restore_drill", subject, limit, found.error)
            continue
        if found.recorded_at is None:
            yield CheckResult(
                check_id,
                "restore_drill",
                subject,
                Status.CRITICAL,
                "never",
                limit,
                "no restore_verification evidence in either region",
            )
            continue
        age = now - found.recorded_at
        detail = f"{found.tier} backup from {found.region}: {found.evidence}"
        if found.problems:
            detail += "; problems: " + "; ".join(found.problems)
        yield CheckResult(
            check_id,
            "restore_drill",
            subject,
            drill_status(age, found.outcome, max_age),
            f"{found.outcome} {found.recorded_at:%Y-%m-%d} ({human(age)} ago)",
            limit,
            detail,
            age.total_seconds(),
        )


def _projected_rto(policy: Policy, facts: StoreFacts) -> Iterable[CheckResult]:
    """The drill's measured rate (bytes restored / seconds of all its steps) applied to the
    newest verified backup of the same tier and region now: restores grow with the data. The
    whole estate is planned as dr_restore runs it: in parallel, highest priority first, within
    the configured concurrency and the default destination's pool."""
    rto = policy.objectives.rto
    limit = f"RTO {format_duration(rto)}"
    servers = {s.name for s in policy.continuous_servers()}
    recovery = policy.recovery()
    destination = recovery.destinations[0]
    jobs, unprojected = [], []
    for subject in drill_subjects(policy):
        projected, detail = _project(facts, subject)
        if subject not in servers:  # dr_restore's units; a server is the PITR alternative
            if projected is None:
                unprojected.append(subject)
            else:
                target = policy.target(subject)
                pool = "media" if target.server is None else destination.pool
                jobs.append(RestoreJob(subject, target.priority, pool, projected.total_seconds()))
        yield CheckResult(
            f"projected_rto:{subject}",
            "projected_rto",
            subject,
            rto_status(projected, rto),
            human(projected) if projected is not None else "no evidence",
            limit,
            detail,
            projected.total_seconds() if projected is not None else None,
        )
    targets = [s for s in drill_subjects(policy) if s not in servers]
    estate = plan_estate(jobs, {destination.pool: destination.slots}, recovery.concurrency)
    total = timedelta(seconds=estate.wall_seconds)
    status = rto_status(total, rto)
    if unprojected and status is Status.OK:
        status = Status.WARNING
    yield CheckResult(
        "projected_rto:all targets",
        "projected_rto",
        "all targets",
        status,
        "no evidence"
        if len(unprojected) == len(targets)
        else human(total) + (" + unknown" if unprojected else ""),
        limit,
        f"dr_restore restores {len(targets)} target(s) in parallel, highest priority first: "
        f"{recovery.concurrency} at once, {destination.slots} into {destination.conn_id} "
        f"(pool {destination.pool}); one after another it would take "
        f"{human(timedelta(seconds=estate.serial_seconds))}"
        + (f"; no drill rate for {', '.join(unprojected)}" if unprojected else ""),
        total.total_seconds(),
    )


def _project(facts: StoreFacts, subject: str) -> tuple[timedelta | None, str]:
    drill = facts.drills.get(subject, DrillFacts())
    rate = drill.rate
    if drill.recorded_at is None or rate is None or drill.tier is None or drill.region is None:
        return None, "no drill has measured a restore rate"
    newest = facts.backups.get((subject, drill.tier, drill.region), BackupFacts())
    size = newest.restore_bytes if newest.restore_bytes is not None else drill.restored_bytes
    assert size is not None
    sized = "its newest verified backup" if newest.restore_bytes is not None else "the drill"
    return timedelta(seconds=size / rate), (
        f"{size / 1e6:,.1f} MB ({sized}, {drill.tier} in {drill.region}) at "
        f"{rate / 1e6:,.2f} MB/s, the rate the drill of {drill.recorded_at:%Y-%m-%d} measured"
    )


def _rehash(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    window = YEAR + policy.compliance.grace
    limit = f"100% within {human(YEAR)}"
    for name in media_targets(policy):
        for region in policy.iter_regions():
            check_id = f"rehash_coverage:{name}@{region.name}"
            found = facts.rehash.get((name, region.name), RehashFacts())
            if found.error:
                yield replace(
                    _unknown(check_id, "rehash_coverage", name, limit, found.error),
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


# ---- output --------------------------------------------------------------------------------


def human(value: timedelta) -> str:
    """A duration as people say it: 45s, 12m30s, 6h, 7h05m, 2d3h."""
    seconds = round(value.total_seconds())
    if seconds < 0:
        return "-" + human(-value)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{seconds:02d}s" if seconds else f"{minutes}m"
    return f"{seconds}s"


def counts(checks: Iterable[CheckResult]) -> dict[str, int]:
    found = {status.name.lower(): 0 for status in Status}
    for check in checks:
        found[check.status.name.lower()] += 1
    return found


def summary(checks: Sequence[CheckResult]) -> str:
    tally = counts(checks)
    return (
        f"{overall(c.status for c in checks).name}: {len(checks)} checks, "
        f"{tally['critical']} critical, {tally['unknown']} unknown, "
        f"{tally['warning']} warning, {tally['ok']} ok"
    )


def render_table(checks: Sequence[CheckResult]) -> str:
    """The checks as an aligned text table (the CLI's output and the page's body)."""
    header = ("STATUS", "CHECK", "MEASURED", "LIMIT", "DETAIL")
    rows = [header] + [(c.status.name, c.id, c.measured, c.limit, c.detail) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def nagios_line(checks: Sequence[CheckResult], shown: int = 5) -> str:
    """One line in the Nagios plugin format, `SERVICE STATUS - text | perfdata`: the tally,
    then the worst `shown` checks that are not OK, with their figures."""
    worst = overall(c.status for c in checks)
    tally = counts(checks)
    bad = sorted((c for c in checks if c.status is not Status.OK), key=lambda c: -c.status.severity)
    text = "; ".join(f"{c.status.name} {c.id} ({c.measured}, limit {c.limit})" for c in bad[:shown])
    if len(bad) > shown:
        text += f"; and {len(bad) - shown} more"
    perf = " ".join(f"{name}={count}" for name, count in tally.items())
    return (
        f"BACKUP_DR {worst.name} - {tally['critical']} critical, {tally['unknown']} unknown, "
        f"{tally['warning']} warning, {tally['ok']} ok of {len(checks)} checks"
        + (f": {text}" if text else "")
        + f" | {perf}"
    )
