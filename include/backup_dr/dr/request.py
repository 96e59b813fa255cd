"""`dr_restore`'s request, parsed once from the trigger form, and the plan on-call approves.

The request is checked whole before anything is touched: unknown or non-production targets,
a destination the policy does not list, a backup window for several targets, a point in time
for media. The plan names, per unit of work (a target; a server's whole cluster for a
point-in-time recovery), the backup or time it comes from and the region, what will be set
aside at the destination, and the projected duration against the RTO. The restore tasks then
do exactly what was approved: the backup each unit reads is chosen here, not again later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from include.backup_dr import evidence
from include.backup_dr.policy import Policy, Target, format_duration
from include.backup_dr.restore import media as media_restore
from include.backup_dr.restore.database import (
    database_exists,
    database_is_empty,
    server_info,
)
from include.backup_dr.restore.errors import RestoreRefused
from include.backup_dr.restore.record import (
    EstatePlan,
    RestoreJob,
    measured_rate,
    plan_estate,
    projected_seconds,
)
from include.backup_dr.restore.select import is_media, manifest_of, select_backup
from include.backup_dr.store import ObjectStore
from include.backup_dr.stores import Stores

#: The pool of media restores: they write to a bucket, not to a database server.
MEDIA_POOL = "default_pool"


@dataclass(frozen=True)
class DrRequest:
    """What on-call asked `dr_restore` for, validated against the policy."""

    targets: tuple[str, ...]
    connection: str
    region: Literal["primary", "secondary"] = "secondary"
    tier: str = "daily"
    backup: datetime | None = None
    target_time: str | None = None
    overwrite: bool = False
    dry_run: bool = False
    bucket: str | None = None
    bucket_connection: str = "s3_restore_sandbox"
    prefix: str = ""
    dest_prefix: str = ""

    @classmethod
    def from_params(cls, policy: Policy, params: dict[str, Any]) -> DrRequest:
        """Parse the trigger form; refuse (changing nothing) with the reason in words. A field
        the form leaves empty takes the default declared above, the one place it is written."""
        names = list(params.get("targets") or [])
        if not names:
            raise RestoreRefused("dr_restore needs at least one target in the param 'targets'")
        targets = []
        for name in names:
            try:
                target = policy.target(name)
            except KeyError:
                raise RestoreRefused(f"{name!r} is not a target in the policy") from None
            if not target.is_production:
                raise RestoreRefused(f"{name} is not a production target: nothing to restore")
            targets.append(target)
        destinations = [d.conn_id for d in policy.recovery().destinations]
        connection = params.get("connection") or destinations[0]
        if connection not in destinations:
            raise RestoreRefused(
                f"connection {connection!r} is not a restore destination in the policy "
                f"(disaster_recovery.destinations: {', '.join(destinations)})"
            )
        backup = datetime.fromisoformat(params["backup"]) if params.get("backup") else None
        if backup is not None and len(targets) > 1:
            raise RestoreRefused("a chosen backup window applies to one target only")
        media = [t.name for t in targets if is_media(policy, t.category)]
        target_time = params.get("target_time") or None
        if target_time and (media or backup is not None):
            raise RestoreRefused(
                "target_time (point-in-time recovery) applies to databases only, without a "
                f"backup window; got {', '.join(media) or 'backup=' + params['backup']}"
            )
        if media and not params.get("bucket"):
            raise RestoreRefused("restoring media needs the param 'bucket' (and bucket_connection)")
        ordered = sorted(targets, key=lambda t: (t.priority, t.name))
        return cls(
            targets=tuple(t.name for t in ordered),
            connection=connection,
            region=params.get("region") or cls.region,
            tier=params.get("tier") or cls.tier,
            backup=backup,
            target_time=target_time,
            overwrite=bool(params.get("overwrite")),
            dry_run=bool(params.get("dry_run")),
            bucket=params.get("bucket") or None,
            bucket_connection=params.get("bucket_connection") or cls.bucket_connection,
            prefix=params.get("prefix") or "",
            dest_prefix=params.get("dest_prefix") or "",
        )

    def to_document(self) -> dict[str, Any]:
        document = asdict(self)
        document["targets"] = list(self.targets)
        document["backup"] = self.backup.isoformat() if self.backup else None
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> DrRequest:
        backup = document.get("backup")
        return cls(
            **{
                **document,
                "targets": tuple(document["targets"]),
                "backup": datetime.fromisoformat(backup) if backup else None,
            }
        )


@dataclass(frozen=True)
class Unit:
    """One restore task of the plan: a target, or for a point in time a server's cluster
    (recovered once, then each of its targets copied out)."""

    kind: Literal["dump", "media", "pitr"]
    name: str
    targets: tuple[str, ...]
    priority: int
    pool: str
    source: str  # where the bytes come from, in words
    refs: tuple[dict[str, str], ...]  # the chosen backup per target (dump and media)
    set_aside: tuple[str, ...]  # what changes at the destination, in words
    size_bytes: int | None
    projected_seconds: float | None

    def to_document(self) -> dict[str, Any]:
        document = asdict(self)
        return {
            **document,
            "targets": list(self.targets),
            "refs": list(self.refs),
            "set_aside": list(self.set_aside),
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Unit:
        return cls(
            **{
                **document,
                "targets": tuple(document["targets"]),
                "refs": tuple(document["refs"]),
                "set_aside": tuple(document["set_aside"]),
            }
        )


@dataclass(frozen=True)
class Plan:
    request: DrRequest
    units: tuple[Unit, ...]
    estate: EstatePlan
    rto: timedelta
    planned_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_document(self) -> dict[str, Any]:
        return {
            "request": self.request.to_document(),
            "units": [u.to_document() for u in self.units],
            "estate": self.estate.to_document(self.rto),
            "planned_at": self.planned_at.isoformat(),
            "markdown": self.markdown(),
        }

    def markdown(self) -> str:
        """What the approver reads (Required Actions) before anything is touched."""
        request = self.request
        where = f"`{request.connection}`" + (
            f" and bucket `{request.bucket}`" if request.bucket else ""
        )
        lines = [
            f"**Restore {len(request.targets)} target(s) into {where}**, "
            f"from the {request.region} region, highest priority first.",
            "",
            "| # | restores | from | at the destination | projected |",
            "|---|---|---|---|---|",
        ]
        for n, unit in enumerate(self.units, start=1):
            projected = (
                format_duration(timedelta(seconds=round(unit.projected_seconds)))
                if unit.projected_seconds is not None
                else "unknown (no drill rate)"
            )
            lines.append(
                f"| {n} | {', '.join(unit.targets)} | {unit.source} | "
                f"{'; '.join(unit.set_aside)} | {projected} |"
            )
        estate = self.estate
        unknown = [u.name for u in self.units if u.projected_seconds is None]
        wall = format_duration(timedelta(seconds=round(estate.wall_seconds)))
        if len(unknown) == len(self.units):
            projection = (
                f"Projected wall time: **unknown**: no drill has measured a restore rate for "
                f"these targets (the RTO is {format_duration(self.rto)})."
            )
        else:
            within = estate.wall_seconds <= self.rto.total_seconds()
            projection = (
                f"Projected wall time: **{wall}** ({estate.concurrency} at once"
                + (f"; not counting {', '.join(unknown)}" if unknown else "")
                + f") against the RTO of {format_duration(self.rto)}: "
                + ("within it." if within else "**OVER IT**.")
            )
        lines += [
            "",
            projection,
            "",
            "Nothing is dropped: a database that is replaced is renamed aside and kept. "
            "Reject (or let the approval time out) and nothing is touched.",
        ]
        return "\n".join(lines)


def make_plan(policy: Policy, stores: Stores, request: DrRequest, now: datetime) -> Plan:
    """Choose every unit's backup, check every destination, project every duration. Raises
    RestoreRefused (nothing changed) when any target cannot be restored as asked."""
    from include.backup_dr.pitr.window import (
        check_target,
        choose_base,
        parse_target_time,
        recovery_range,
    )

    store = stores.role(request.region)
    recovery = policy.recovery()
    pool = next(d.pool for d in recovery.destinations if d.conn_id == request.connection)
    targets = [policy.target(name) for name in request.targets]
    databases = [t for t in targets if not is_media(policy, t.category)]
    server = server_info(request.connection) if databases else None
    aside: dict[str, str] = {}
    for target in databases:
        assert server is not None and target.database is not None
        if not database_exists(server, target.database):
            aside[target.name] = f"creates {target.database}"
            continue
        if not database_is_empty(server, target.database) and not request.overwrite:
            raise RestoreRefused(
                f"database {target.database} on {server.host}:{server.port} is not empty; "
                "set overwrite=true to replace it"
            )
        aside[target.name] = (
            f"{target.database} renamed aside to {target.database}__before_<run start>, kept"
        )
    units: list[Unit] = []
    if request.target_time:
        when = parse_target_time(request.target_time)
        by_server: dict[str, list[Target]] = {}
        for target in databases:
            assert target.server is not None
            by_server.setdefault(target.server, []).append(target)
        for name, group in by_server.items():
            span = recovery_range(policy, store, name)
            base = choose_base(span, check_target(span, when))
            rate = _drill_rate(policy, stores, name)
            size = base.manifest.artifact.size
            units.append(
                Unit(
                    kind="pitr",
                    name=name,
                    targets=tuple(t.name for t in group),
                    priority=min(t.priority for t in group),
                    pool=pool,
                    source=f"{name} at {request.target_time}: base backup {base.id.window:%Y-%m-%d %H:%M:%S} "
                    f"+ WAL from {store.region.name}",
                    refs=(),
                    set_aside=tuple(aside[t.name] for t in group),
                    size_bytes=size,
                    projected_seconds=_projected(size, rate),
                )
            )
    else:
        for target in targets:
            selection = select_backup(policy, store, target.name, request.tier, request.backup)
            manifest = manifest_of(store, selection)
            media = is_media(policy, target.category)
            if media:
                assert request.bucket is not None
                bucket = ObjectStore.for_bucket(request.bucket_connection, request.bucket)
                media_restore.ensure_empty(
                    bucket, request.dest_prefix + request.prefix, request.overwrite
                )
                size = int(manifest.source.get("bytes", manifest.artifact.size))
                change = f"objects written under {bucket.where(request.dest_prefix)}"
            else:
                size = manifest.artifact.size
                change = aside[target.name]
            units.append(
                Unit(
                    kind="media" if media else "dump",
                    name=target.name,
                    targets=(target.name,),
                    priority=target.priority,
                    pool=MEDIA_POOL if media else pool,
                    source=f"{target.name}/{request.tier} {selection.backup.window:%Y-%m-%d %H:%M} "
                    f"in {selection.region}",
                    refs=(selection.to_ref(),),
                    set_aside=(change,),
                    size_bytes=size,
                    projected_seconds=_projected(size, _drill_rate(policy, stores, target.name)),
                )
            )
    units.sort(key=lambda u: (u.priority, u.name))
    slots = {d.pool: d.slots for d in recovery.destinations}
    jobs = [RestoreJob(u.name, u.priority, u.pool, u.projected_seconds or 0.0) for u in units]
    return Plan(
        request,
        tuple(units),
        plan_estate(jobs, slots, recovery.concurrency),
        policy.objectives.rto,
        now,
    )


def _projected(size: int, rate: float | None) -> float | None:
    return projected_seconds(size, rate) if rate else None


def _drill_rate(policy: Policy, stores: Stores, subject: str) -> float | None:
    """Bytes a second the newest restore drill of `subject` measured (None: never drilled)."""
    found = evidence.newest(stores, f"evidence/restore_verification/{subject}/")
    if found is None:
        return None
    _, document = found
    category = (document.get("backup") or {}).get("category")
    media = category in policy.categories and is_media(policy, category)
    return measured_rate(document, media)
