"""The backup policy: load the declarative file into typed, frozen objects and validate it.

Everything else in the package takes a `Policy`, never the raw file, so a mistake in the file is
caught once, here, with a message naming the file and the field.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_POLICY_PATH = Path(__file__).resolve().parent.parent / "policy.yaml"
POLICY_PATH_ENV = "BACKUP_POLICY_PATH"

#: The tiers of the customer's table. A tier name outside this set is a typo, not a new tier.
KNOWN_TIERS = ("continuous", "6h", "daily", "weekly", "monthly")
CONTINUOUS = "continuous"
PRODUCTION = "production"

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class PolicyError(ValueError):
    """The policy file is missing, unreadable or invalid; the message names the file and field."""


def parse_duration(value: object) -> timedelta:
    """Parse '90s', '6h', '7d', '4w' into a timedelta (the file's only duration syntax)."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as '6h', '7d' or '4w'")
    amount, unit = match.groups()
    return timedelta(seconds=int(amount) * _UNIT_SECONDS[unit])


def format_duration(value: timedelta) -> str:
    """Render a timedelta in the largest whole unit, as written in the policy file."""
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


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


def _cron(value: str) -> str:
    if not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a cron expression")
    return value


def cron_period(expression: str) -> timedelta:
    """The longest gap between two fire times of a cron schedule, over a year of them."""
    fires = croniter(expression, datetime(2026, 1, 1, tzinfo=UTC))
    previous = fires.get_next(datetime)
    longest = timedelta(0)
    for _ in range(400):
        current = fires.get_next(datetime)
        longest = max(longest, current - previous)
        previous = current
        if current.year > 2026:
            break
    return longest


def first_unmatched_fire(schedule: str, source: str, skew: timedelta) -> datetime | None:
    """The first of a year of `schedule`'s fire times with no fire of `source` within `skew`."""
    fires = croniter(schedule, datetime(2026, 1, 1, tzinfo=UTC))
    for _ in range(400):
        fire = fires.get_next(datetime)
        if fire.year > 2026:
            return None
        before = croniter(source, fire + timedelta(seconds=1)).get_prev(datetime)
        after = croniter(source, fire).get_next(datetime)
        if min(fire - before, after - fire) > skew:
            return fire
    return None


#: Engines whose backups a tier can promote (`derive_from`): a self-contained artifact. A media
#: snapshot is a listing of shared blobs whose locks follow the tiers that refer to them.
PROMOTING_ENGINES = frozenset({"pg_dump"})

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Cron = Annotated[str, AfterValidator(_cron)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]*$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: "Data will be retained for your policy length plus 12 months": how long past its tier's
#: retention a backup may still be stored, at most (what an object lock may hold it for).
DELETION_PROMISE = timedelta(days=365)
#: How far past the expiry of the snapshot that needs it a shared media blob's lock is set when
#: a snapshot extends it (`include.backup_dr.immutability`): once a month for a blob every daily
#: snapshot reuses, not on every snapshot.
SHARED_EXTENSION = timedelta(days=30)


class ObjectLock(_Frozen):
    """S3 Object Lock on a region's bucket (the bucket must have it enabled): every committed
    backup object and every evidence record is written with a retain-until date, so neither a
    stolen backup credential nor ransomware can delete or shorten it before then.

    governance: only a principal with s3:BypassGovernanceRetention (the break-glass connection
    below, never the backup one) can delete early; compliance: nobody can, not even root.
    """

    mode: Literal["governance", "compliance"]
    #: A backup is locked until its window + its tier's retention + this margin, so prune (which
    #: deletes from window + retention on) never meets a lock it could not wait out, and a clock
    #: skew or a late prune never opens a gap.
    margin: Duration = timedelta(days=1)
    #: How long an evidence record (evidence/...) is locked from when it is written: the annual
    #: audit report reads a year of it.
    evidence_retention: Duration = timedelta(days=400)
    #: The break-glass Airflow connection allowed to bypass governance locks; used only by
    #: `python -m include.backup_dr unlock`, which records each use as evidence.
    bypass_conn_id: str | None = None

    @field_validator("evidence_retention")
    @classmethod
    def _covers_an_audit_year(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=366):
            raise ValueError(
                f"{format_duration(value)} is shorter than the year the annual audit report "
                "reads: evidence could be deleted before it is audited (use at least 366d)"
            )
        return value

    @model_validator(mode="after")
    def _bypass_needs_governance(self) -> ObjectLock:
        if self.mode == "compliance" and self.bypass_conn_id:
            raise ValueError(
                "bypass_conn_id: a compliance lock cannot be bypassed by anyone; a break-glass "
                "connection only applies to mode governance"
            )
        return self


class Region(_Frozen):
    """One region's backup store: where copies go and which key encrypts them."""

    name: str
    conn_id: str
    bucket: str
    kms_key_id: str
    #: Off unless set: see `ObjectLock`.
    object_lock: ObjectLock | None = None


class Regions(_Frozen):
    primary: Region
    secondary: Region

    @model_validator(mode="after")
    def _distinct(self) -> Regions:
        if self.primary.name == self.secondary.name:
            raise ValueError("primary and secondary must be different regions")
        return self


class Tier(_Frozen):
    """A row of the customer's table: how often a backup is taken and how long it is kept."""

    schedule: str
    retention: Duration
    #: Take this tier's backups by promoting a backup of another tier of the category (one
    #: read of production feeds both), when one verified in both regions was taken within
    #: `max_skew` of the window; otherwise it reads the source, and says why.
    derive_from: str | None = None
    max_skew: Duration | None = None

    @property
    def is_continuous(self) -> bool:
        return self.schedule == CONTINUOUS

    @model_validator(mode="after")
    def _derivation_complete(self) -> Tier:
        if (self.derive_from is None) != (self.max_skew is None):
            raise ValueError(
                "derive_from and max_skew go together: which tier to promote from, and how far "
                "from this tier's window its backup may have been taken"
            )
        if self.derive_from is not None and self.is_continuous:
            raise ValueError("the continuous tier cannot derive_from another tier")
        if self.max_skew is not None and self.max_skew <= timedelta(0):
            raise ValueError("max_skew must be longer than zero")
        return self

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        if value != CONTINUOUS and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (or 'continuous')")
        return value

    def period(self) -> timedelta:
        """The longest gap between two runs of the schedule, over a year of fire times."""
        if self.is_continuous:
            return timedelta(seconds=1)
        return cron_period(self.schedule)

    @model_validator(mode="after")
    def _retention_covers_period(self) -> Tier:
        period = self.period()
        if self.retention < period:
            raise ValueError(
                f"retention {format_duration(self.retention)} is shorter than the schedule period "
                f"{format_duration(period)}: there would be times with no backup of this tier"
            )
        return self


class RpoAfter(_Frozen):
    older_than: Duration
    rpo: Duration


class Category(_Frozen):
    description: str
    engine: str  # how its targets are snapshotted; see include/backup_dr/engines
    rpo: Duration
    rpo_after: RpoAfter | None = None
    #: Cron schedule of the DAG that keeps the secondary region within the RPO between backups.
    replication_schedule: Cron | None = None
    tiers: dict[str, Tier]

    @model_validator(mode="after")
    def _replication_engine(self) -> Category:
        if self.replication_schedule and self.engine != "media":
            raise ValueError(
                f"replication_schedule is built for the media engine, not {self.engine!r}"
            )
        return self

    @field_validator("tiers")
    @classmethod
    def _known_tiers(cls, tiers: dict[str, Tier]) -> dict[str, Tier]:
        unknown = sorted(set(tiers) - set(KNOWN_TIERS))
        if unknown:
            raise ValueError(
                f"unknown tier {', '.join(unknown)}; tiers are {', '.join(KNOWN_TIERS)}"
            )
        if not tiers:
            raise ValueError("a category needs at least one tier")
        return tiers

    @model_validator(mode="after")
    def _derivations(self) -> Category:
        for name, tier in self.tiers.items():
            if tier.derive_from is None:
                continue
            where = f"tier {name}: derive_from {tier.derive_from!r}"
            source = self.tiers.get(tier.derive_from)
            if source is None or tier.derive_from == name:
                others = ", ".join(t for t in self.scheduled_tiers() if t != name)
                raise ValueError(f"{where} is not another tier of this category ({others})")
            if source.is_continuous or source.derive_from is not None:
                raise ValueError(
                    f"{where}: it must take its own backups (not continuous, not derived itself)"
                )
            if self.engine not in PROMOTING_ENGINES:
                raise ValueError(
                    f"{where}: the {self.engine} engine cannot promote a backup (engines that "
                    f"can: {', '.join(sorted(PROMOTING_ENGINES))})"
                )
            assert tier.max_skew is not None
            if missed := first_unmatched_fire(tier.schedule, source.schedule, tier.max_skew):
                raise ValueError(
                    f"{where}: {tier.derive_from} ({source.schedule}) never fires within "
                    f"{format_duration(tier.max_skew)} of this tier's window "
                    f"{missed.isoformat()} ({tier.schedule}): every run would dump"
                )
        return self

    def scheduled_tiers(self) -> dict[str, Tier]:
        """The tiers that Airflow runs (continuous replication is not a DAG)."""
        return {name: tier for name, tier in self.tiers.items() if not tier.is_continuous}


class Standby(_Frozen):
    """A server's physical streaming replica in the secondary region (the continuous tier)."""

    conn_id: str  # read-only connection to the standby, for lag measurement
    slot: Name = "backup_dr_standby"  # the replication slot on the primary that feeds it


#: What `dr_failover` may put into a fence or rebuild command (Python format fields).
COMMAND_FIELDS = frozenset(
    {"server", "failover_id", "old_primary_conn_id", "new_primary_conn_id", "slot"}
)


def _command(value: list[str]) -> list[str]:
    """An argv (no shell): a non-empty program and only the known `{fields}`, so a typo fails
    when the policy loads, not at 3 a.m. in the middle of a failover."""
    if not value or not value[0].strip():
        raise ValueError("must be a non-empty list: the program, then its arguments")
    for argument in value:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(argument) if name}
        except ValueError as exc:
            raise ValueError(f"argument {argument!r}: {exc}") from None
        if unknown := fields - COMMAND_FIELDS:
            raise ValueError(
                f"argument {argument!r} uses {', '.join(sorted(unknown))}; "
                f"known fields: {', '.join(sorted(COMMAND_FIELDS))}"
            )
    return value


Command = Annotated[list[str], AfterValidator(_command)]


class Server(_Frozen):
    """A database server; its pool bounds concurrent dumps against it."""

    name: Name
    conn_id: str
    dump_pool: str
    #: Required when the server's category has a continuous tier.
    standby: Standby | None = None
    #: `dr_failover`: stops the old primary for good (exit 0 = fenced: it takes no writes and
    #: archives nothing, even if started again). Runs on the worker; see the README's contract.
    fence_command: Command | None = None
    #: `dr_failover`'s rebuild_standby: makes a new streaming standby from the new primary with
    #: the slot `{slot}`, reachable afterwards through the old primary's connection (exit 0).
    rebuild_command: Command | None = None


class Monitor(_Frozen):
    """`platform_continuous_monitor`: heartbeat-measured replication lag, archive health."""

    schedule: Cron = "* * * * *"
    #: How long one run writes a heartbeat a second and watches it arrive on the standby.
    duration: Duration = timedelta(seconds=50)
    #: Consecutive samples over the RPO before on-call is paged (one slow commit is not a page).
    lag_alert_samples: int = Field(default=3, ge=1)


class ContinuousSettings(_Frozen):
    """How the continuous tier keeps its promise: a streaming standby plus a WAL archive with
    base backups in both regions (point-in-time recovery over the tier's retention)."""

    category: str = "platform"
    #: Base backups (the tier's DAG, `<category>_backup_continuous`) run on this schedule.
    base_backup_schedule: Cron = "0 3 * * *"
    #: Bounds the loss when primary and standby are both lost: WAL is switched at least this often.
    archive_timeout: Duration = timedelta(seconds=60)
    #: True: commits wait for the standby (no loss on primary failure, slower commits).
    synchronous: bool = False
    monitor: Monitor = Monitor()

    @field_validator("archive_timeout")
    @classmethod
    def _sane_archive_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(hours=1):
            raise ValueError(
                f"archive_timeout {format_duration(value)} must be between 1s and 1h "
                "(it bounds the loss when primary and standby are both lost)"
            )
        return value


class MediaSource(_Frozen):
    """A bucket of documents and files, reached through an Airflow connection."""

    conn_id: str
    bucket: str
    prefix: str = ""


def _since_date(value: object) -> object:
    """A day (YAML `2026-11-01`), never a time of day: windows are counted from its midnight."""
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a date such as 2026-11-01 (when the target entered the policy)"
        ) from None


class Target(_Frozen):
    """One thing to back up, labelled with the environment it belongs to."""

    name: Name
    category: str
    environment: str
    server: str | None = None  # database targets: the server and the database on it
    database: str | None = None
    source: MediaSource | None = None  # media targets: the bucket (and prefix) to back up
    priority: int = Field(default=100, ge=1)
    #: The day the target entered the policy: the audit counts its windows from then (default:
    #: its first evidence), so a target added last week has no year of missed windows.
    since: Annotated[date | None, BeforeValidator(_since_date)] = None

    @property
    def group(self) -> str:
        """What the target's DAG task group is named after: its server, or its source bucket."""
        if self.source is not None:
            return f"bucket_{re.sub(r'[^a-z0-9_]', '_', self.source.bucket.lower())}"
        assert self.server is not None
        return self.server

    @property
    def is_production(self) -> bool:
        return self.environment == PRODUCTION

    def skip_reason(self) -> str | None:
        """Why this target is never backed up, or None when it is."""
        if self.is_production:
            return None
        if self.environment.lower() == "uat":
            return (
                f"{self.name} is UAT data; the policy says 'We do not take any backups of UAT data'"
            )
        return (
            f"{self.name} has environment {self.environment!r}; "
            f"only {PRODUCTION!r} targets are backed up"
        )


class Objectives(_Frozen):
    rto: Duration


class PruneSettings(_Frozen):
    incomplete_upload_grace: Duration = timedelta(hours=6)
    max_delete_fraction: float = Field(default=0.5, gt=0, le=1)
    #: `backup_collect_garbage`: once per category, what no kept backup refers to any more.
    gc_schedule: Cron = "0 5 * * *"


class SandboxBucket(_Frozen):
    """A scratch bucket for media restore tests, reached through an Airflow connection."""

    conn_id: str
    bucket: str


class RestoreSettings(_Frozen):
    """The restore drill: when it runs, where it restores, and what it restores by default."""

    schedule: Cron = "0 4 15 1 *"
    sandbox_conn_id: str
    #: Where media snapshots are restored and re-hashed (never a source or a backup bucket).
    sandbox_bucket: SandboxBucket | None = None
    region: Literal["primary", "secondary"] = "secondary"
    tier: str = "daily"
    jobs: int = Field(default=2, ge=1)


class RestoreDestination(_Frozen):
    """A PostgreSQL server restores may write into, and the Airflow pool that bounds how many
    restores write into it at once (`slots`: create the pool with that many slots)."""

    conn_id: str
    pool: str
    slots: int = Field(default=2, ge=1)


class DisasterRecovery(_Frozen):
    """`dr_restore` and the estate rehearsal: restores run in parallel, highest priority first,
    at most `concurrency` at once in total and a destination's `slots` into each server."""

    concurrency: int = Field(default=4, ge=1)
    #: How long on-call has to approve the plan before the run fails (and pages).
    approval_timeout: Duration = timedelta(hours=1)
    #: The first is the default destination, and the one the RTO projection plans for.
    destinations: list[RestoreDestination] = Field(min_length=1)


class ComplianceSettings(_Frozen):
    """`backup_compliance` (and `python -m include.backup_dr check`): is every promise kept,
    read from the store."""

    schedule: Cron = "*/15 * * * *"
    #: How much older than its schedule's period a tier's newest verified backup may be before
    #: the tier is red: the time a run takes to snapshot, copy and check (and a late start).
    grace: Duration = timedelta(hours=2)
    #: How much older than its schedule's period the continuous monitor's newest evidence may be
    #: before the standby lag and WAL archive count as unwatched (red).
    monitor_grace: Duration = timedelta(minutes=5)


class Policy(_Frozen):
    """The whole policy. Cross-references (target -> category/server) are checked here."""

    version: Literal[1]
    objectives: Objectives
    regions: Regions
    categories: dict[str, Category]
    servers: list[Server] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)
    prune: PruneSettings = PruneSettings()
    restore_verification: RestoreSettings | None = None
    disaster_recovery: DisasterRecovery | None = None
    continuous: ContinuousSettings | None = None
    compliance: ComplianceSettings = ComplianceSettings()

    @model_validator(mode="after")
    def _references(self) -> Policy:
        _no_duplicates("servers", [s.name for s in self.servers])
        _no_duplicates("targets", [t.name for t in self.targets])
        servers = {s.name for s in self.servers}
        for index, target in enumerate(self.targets):
            if target.category not in self.categories:
                raise ValueError(
                    f"targets[{index}] ({target.name}): unknown category {target.category!r}; "
                    f"categories are {', '.join(sorted(self.categories))}"
                )
            engine = self.categories[target.category].engine
            where = f"targets[{index}] ({target.name})"
            if engine == "media" and (target.source is None or target.server or target.database):
                raise ValueError(f"{where}: a media target needs a source bucket, not a server")
            if engine != "media" and (target.server is None or target.database is None):
                raise ValueError(f"{where}: a database target needs a server and a database")
            if target.server is not None and target.server not in servers:
                raise ValueError(
                    f"{where}: unknown server {target.server!r}; "
                    f"servers are {', '.join(sorted(servers)) or '(none)'}"
                )
        self._continuous_references()
        self._locks_within_promise()
        self._restore_destinations()
        drill = self.restore_verification
        if drill is not None:
            if drill.sandbox_conn_id in {s.conn_id for s in self.servers}:
                raise ValueError(
                    f"restore_verification.sandbox_conn_id {drill.sandbox_conn_id!r} is a "
                    "production server's connection; restore tests need a separate sandbox"
                )
            media = [t for t in self.targets if t.source is not None and t.is_production]
            if media and drill.sandbox_bucket is None:
                raise ValueError(
                    "restore_verification.sandbox_bucket is required: production media targets "
                    f"({', '.join(t.name for t in media)}) must be restore-tested too"
                )
            taken = {self.regions.primary.bucket, self.regions.secondary.bucket} | {
                t.source.bucket for t in self.targets if t.source is not None
            }
            if drill.sandbox_bucket is not None and drill.sandbox_bucket.bucket in taken:
                raise ValueError(
                    f"restore_verification.sandbox_bucket.bucket {drill.sandbox_bucket.bucket!r} "
                    "is a backup or media source bucket; restore tests need a scratch bucket"
                )
            tiers = {t for c in self.categories.values() for t in c.scheduled_tiers()}
            if drill.tier not in tiers:
                raise ValueError(
                    f"restore_verification.tier {drill.tier!r} is not a scheduled tier"
                )
        return self

    def _restore_destinations(self) -> None:
        recovery = self.disaster_recovery
        if recovery is None:
            return
        _no_duplicates("disaster_recovery.destinations", [d.conn_id for d in recovery.destinations])
        drill = self.restore_verification
        if drill is not None and drill.sandbox_conn_id not in {
            d.conn_id for d in recovery.destinations
        }:
            raise ValueError(
                f"disaster_recovery.destinations must include the sandbox "
                f"{drill.sandbox_conn_id!r}: the estate rehearsal restores there as dr_restore would"
            )

    def recovery(self) -> DisasterRecovery:
        """The configured restore concurrency, or one restore at a time into the sandbox."""
        if self.disaster_recovery is not None:
            return self.disaster_recovery
        sandbox = self.restore_verification.sandbox_conn_id if self.restore_verification else None
        return DisasterRecovery(
            concurrency=1,
            destinations=[RestoreDestination(conn_id=sandbox or "pg_sandbox", pool="default_pool")],
        )

    def _locks_within_promise(self) -> None:
        """Refuse a lock that would keep data past its retention + 12 months. A backup is
        deleted by the first prune after its lock ends (the next run of its tier); what only it
        referred to (media blobs, WAL) then waits for garbage collection (its period and grace)."""
        collection = cron_period(self.prune.gc_schedule) + self.prune.incomplete_upload_grace
        for role in ("primary", "secondary"):
            lock = getattr(self.regions, role).object_lock
            if lock is None:
                continue
            for category_name, category in self.categories.items():
                for tier_name, tier in category.tiers.items():
                    held = lock.margin + tier.period() + collection
                    if category.engine == "media":  # blobs: held past the last snapshot's expiry
                        held += SHARED_EXTENSION
                    if held > DELETION_PROMISE:
                        raise ValueError(
                            f"regions.{role}.object_lock.margin {format_duration(lock.margin)}: "
                            f"a {category_name} {tier_name} backup could stay stored up to "
                            f"{format_duration(held)} past its "
                            f"{format_duration(tier.retention)} retention (the margin, plus "
                            "the tier's period until prune runs again, plus garbage "
                            "collection's period and grace, plus for media the "
                            f"{format_duration(SHARED_EXTENSION)} a shared blob's lock is "
                            "extended by); the policy "
                            "promises deleted data is gone within its policy length plus 12 "
                            f"months ({format_duration(DELETION_PROMISE)})"
                        )

    def _continuous_references(self) -> None:
        with_tier = [n for n, c in self.categories.items() if CONTINUOUS in c.tiers]
        settings = self.continuous
        if settings is None:
            if with_tier:
                raise ValueError(
                    f"categories.{with_tier[0]}.tiers.continuous needs a top-level 'continuous' "
                    "section (base backup schedule, archive_timeout, monitor)"
                )
            return
        if settings.category not in with_tier:
            raise ValueError(
                f"continuous.category {settings.category!r} has no continuous tier; "
                f"categories with one: {', '.join(with_tier) or '(none)'}"
            )
        if self.categories[settings.category].engine != "pg_dump":
            raise ValueError(
                f"continuous.category {settings.category!r} is not a database category"
            )
        for server in self.continuous_servers():
            if server.standby is None:
                raise ValueError(
                    f"servers ({server.name}): the continuous tier needs a streaming standby "
                    "(standby: {conn_id: ..., slot: ...})"
                )
            if server.standby.conn_id == server.conn_id:
                raise ValueError(
                    f"servers ({server.name}): standby.conn_id must not be the primary's connection"
                )

    def server(self, name: str) -> Server:
        return next(s for s in self.servers if s.name == name)

    def continuous_servers(self) -> list[Server]:
        """Servers holding a production target of the continuous tier's category."""
        if self.continuous is None:
            return []
        used = {
            t.server
            for t in self.targets
            if t.category == self.continuous.category and t.is_production
        }
        return [s for s in self.servers if s.name in used]

    def engine_name(self, category: str, tier: str) -> str:
        """The engine that snapshots a tier: WAL + base backups for continuous, else the category's."""
        return "wal" if tier == CONTINUOUS else self.categories[category].engine

    def subject(self, name: str, tier: str) -> Target:
        """What one backup of `tier` is of: a target, or, for the continuous tier, a whole
        server (a base backup and WAL hold every database of the cluster)."""
        if tier != CONTINUOUS:
            return self.target(name)
        assert self.continuous is not None, "the policy has no continuous section"
        for server in self.continuous_servers():
            if server.name == name:
                return Target(
                    name=server.name,
                    category=self.continuous.category,
                    environment=PRODUCTION,
                    server=server.name,
                )
        raise KeyError(f"no server named {name!r} in the continuous tier")

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(f"no target named {name!r} in the policy")

    def targets_on(self, category: str, group: str) -> list[Target]:
        """All targets of a category in one group (server or bucket), in priority order."""
        return sorted(
            (t for t in self.targets if t.category == category and t.group == group),
            key=lambda t: (t.priority, t.name),
        )

    def servers_for(self, category: str) -> list[Server]:
        used = {t.server for t in self.targets if t.category == category}
        return [s for s in self.servers if s.name in used]

    def groups_for(self, category: str) -> list[tuple[str, str | None]]:
        """(group, pool) per task group of a category's DAGs: servers get their dump pool."""
        pools = {s.name: s.dump_pool for s in self.servers}
        groups = dict.fromkeys(t.group for t in self.targets if t.category == category)
        return [(group, pools.get(group)) for group in groups]

    def iter_regions(self) -> Iterator[Region]:
        yield self.regions.primary
        yield self.regions.secondary

    def locked_regions(self) -> list[Region]:
        """The regions with Object Lock on (see `include.backup_dr.immutability`)."""
        return [region for region in self.iter_regions() if region.object_lock is not None]


def _no_duplicates(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {field[:-1]} {name!r} in {field}")
        seen.add(name)


def policy_path() -> Path:
    """The policy file in use: $BACKUP_POLICY_PATH, else include/policy.yaml."""
    return Path(os.environ.get(POLICY_PATH_ENV) or DEFAULT_POLICY_PATH)


def load_policy(path: Path | str | None = None) -> Policy:
    """Read and validate the policy file; every problem becomes one readable `PolicyError`."""
    source = Path(path) if path is not None else policy_path()
    try:
        raw = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise PolicyError(f"policy file {source}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {source}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise PolicyError(f"policy file {source}: expected a mapping at the top level")
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(_describe(source, exc)) from None


def _describe(source: Path, exc: ValidationError) -> str:
    lines = [f"policy file {source} is invalid:"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but missing"
        elif error["type"] == "extra_forbidden":
            message = "is not a known field"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)
