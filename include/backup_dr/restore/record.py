"""The restore evidence record (JSON + Markdown, both regions) and the one RTO projection.

Every restore (the yearly drill, dr_restore, a point-in-time recovery) leaves one record per
target; ISO 27001 A.8.13 / A.5.30 ask for exactly this. Built from what the run knows and the
store: no production server is needed, so it works in a disaster."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr import evidence
from include.backup_dr.catalogue import Manifest, build_catalogue
from include.backup_dr.policy import CONTINUOUS, Policy, Target, format_duration
from include.backup_dr.restore.errors import DrillFailed, SwapFailed
from include.backup_dr.restore.select import is_media
from include.backup_dr.store import ObjectStore, StoreError
from include.backup_dr.stores import Stores

log = logging.getLogger(__name__)


def provenance(manifest: Manifest) -> dict[str, Any]:
    return {
        "age_seconds": round((datetime.now(UTC) - manifest.finished_at).total_seconds()),
        "taken_at": manifest.finished_at.isoformat(),
        "sha256": manifest.artifact.sha256,
    }


def _drill_projection(
    policy: Policy, stores: Stores, ref: dict[str, str], restored: dict[str, Any]
) -> dict[str, Any]:
    """The drill's measured throughput applied to the largest production target, vs the RTO.
    Both sides are in the same unit: dump bytes for databases (the archive restored per
    second), listed bytes for media."""
    seconds = sum(restored["timings"].values())
    media = is_media(policy, ref["category"])
    measured = restored["restored_bytes"] if media else restored.get("archive_bytes", 0)
    store = stores.by_region(ref["region"])
    largest, largest_bytes = largest_backed_up(policy, store, ref["category"])
    return rto_projection(
        restore_rate(measured, seconds) or 0.0,
        largest,
        largest_bytes,
        f"newest backup manifests in {store.region.name}",
        policy.objectives.rto,
        throughput_of="listed bytes" if media else "dump (archive) bytes",
    )


def _measured_projection(policy: Policy, restored: dict[str, Any]) -> dict[str, Any]:
    """dr_restore: the real restore, measured (no projection, no production server needed):
    the target's own steps and the time since the DR run began, against the RTO."""
    seconds = sum(restored["timings"].values())
    elapsed = float(restored.get("seconds_since_run_start", seconds))
    throughput = restore_rate(restored["restored_bytes"], seconds) or 0.0
    return {
        "restore_throughput_mb_per_s": round(throughput / 1e6, 2),
        "restored_bytes": restored["restored_bytes"],
        "restore_seconds": round(seconds, 3),
        "seconds_since_run_start": round(elapsed, 3),
        "projected_restore_seconds": round(elapsed, 1),
        "rto_seconds": policy.objectives.rto.total_seconds(),
        "within_rto": within_rto(elapsed, policy.objectives.rto),
    }


def record_restore(
    policy: Policy,
    stores: Stores,
    ref: dict[str, str],
    restored: dict[str, Any] | None,
    validation: dict[str, Any] | None,
    run: dict[str, str],
    kind: str = "restore_verification",
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """Write the evidence record (JSON + Markdown) to both regions; return it. Built from what
    the run knows and the store: no production server is needed, so it works in a disaster.
    `problems` are failures the caller met (a refused backup, a failed swap)."""
    rto = policy.objectives.rto
    problems = list(problems or [])
    projection: dict[str, Any] = {}
    if restored is None:
        if not problems:
            problems.append("the restore did not complete (see the restore task's log)")
    else:
        if kind == "dr_restore":
            projection = _measured_projection(policy, restored)
            what = ref["target"]
        else:
            projection = _drill_projection(policy, stores, ref, restored)
            what = projection["largest_production_target"]
        if not projection["within_rto"]:
            projected = projection["projected_restore_seconds"]
            problems.append(
                f"restore of {what} takes {timedelta(seconds=round(projected))}, "
                f"over the RTO of {format_duration(rto)}"
            )
    if validation is None:
        problems.append("validation did not run")
    elif not validation["ok"]:
        failed = [r for r in validation["results"] if not r["success"]]
        problems.append(
            f"{len(failed)} expectation(s) failed: "
            + "; ".join(
                f"{r['suite']}: {r['expectation']} on {r['table']} ({r['observed']})"
                for r in failed
            )
        )
    document = {
        "schema": f"backup-dr/{kind}/v1",
        "kind": kind,
        "target": ref["target"],
        "backup": {k: ref[k] for k in ("category", "target", "tier", "window", "region")},
        "selection_reason": ref["reason"],
        "restored_into": ref.get("sandbox") or ref.get("destination"),
        "recorded_at": datetime.now(UTC).isoformat(),
        "run": run,
        "steps": restored,
        "projection": projection,
        "validation": validation,
        "outcome": "passed" if not problems else "failed",
        "problems": problems,
    }
    prefix = evidence.evidence_key(kind, ref["target"], datetime.now(UTC), ending="")
    files = {
        "report.json": (
            (json.dumps(document, indent=2, default=str) + "\n").encode(),
            "application/json",
        ),
        "report.md": (render_markdown(document).encode(), "text/markdown"),
    }
    try:
        written = evidence.write_files_everywhere(stores, prefix + "/", files)
    except StoreError as exc:
        raise DrillFailed(str(exc)) from exc
    document["evidence_prefix"] = prefix
    document["evidence_missing_in"] = [
        s.region.name for s in stores if s.region.name not in written
    ]
    log.info("Evidence written to %s/report.{json,md} in %s", prefix, ", ".join(written))
    return document


def render_markdown(document: dict[str, Any]) -> str:
    """The evidence record as a page an auditor can read without tools."""
    backup = document["backup"]
    steps = document.get("steps") or {}
    projection = document.get("projection") or {}
    validation = document.get("validation") or {"results": []}
    lines = [
        f"# Restore test of {document['target']}: {document['outcome'].upper()}",
        "",
        f"- Recorded: {document['recorded_at']} (run {document['run'].get('run_id', '?')})",
        f"- Backup: {backup['target']}/{backup['tier']} window {backup['window']} "
        f"from region {backup['region']}",
        f"- Why this backup: {document['selection_reason']}",
        f"- Taken at: {steps.get('taken_at', '?')} (age {steps.get('age_seconds', '?')} s)",
        f"- Restored into: {document['restored_into']}",
        *(
            [f"- Database it replaced: renamed aside to {steps['previous_database']} (kept)"]
            if steps.get("previous_database")
            else []
        ),
        "",
        "## Steps",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in steps.get("timings", {}).items()),
        f"| validation | {validation.get('seconds', '-')} |",
        "",
        "## Recovery time objective",
        "",
        f"- Restore throughput: {projection.get('restore_throughput_mb_per_s', '-')} MB/s",
        f"- Largest production target: {projection.get('largest_production_target', '-')} "
        f"({projection.get('largest_production_bytes', '-')} bytes)",
        f"- Projected (dr_restore: measured) restore: "
        f"{projection.get('projected_restore_seconds', '-')} s "
        f"against an RTO of {projection.get('rto_seconds', '-')} s",
        "",
        "## Expectations",
        "",
        "| suite | table | expectation | result | observed |",
        "|---|---|---|---|---|",
        *(
            f"| {r['suite']} | {r['table']} | {r['expectation']} | "
            f"{'pass' if r['success'] else '**FAIL**'} | {r['observed']} |"
            for r in validation["results"]
        ),
        "",
        "## Outcome",
        "",
        document["outcome"].upper()
        + (": " + "; ".join(document["problems"]) if document["problems"] else ""),
        "",
    ]
    return "\n".join(lines)


def failure_ref(
    target: Target, tier: str, region: str, window: str, destination: str
) -> dict[str, str]:
    """The evidence reference of a target whose restore failed before a backup was chosen."""
    return {
        "category": target.category,
        "target": target.name,
        "tier": tier,
        "window": window,
        "region": region,
        "reason": "no backup could be restored (see problems)",
        "destination": destination,
    }


def describe_failure(exc: BaseException) -> str:
    """A failure for the evidence: what happened, and whether the destination was changed."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SwapFailed):
        return text  # its message says where each database is
    return f"{text}; the destination was not touched"


def largest_backed_up(policy: Policy, store: ObjectStore, category: str) -> tuple[str, int]:
    """The largest production target of the category, sized from its newest backup's manifest
    in `store` (dump bytes for a database, listed bytes for media). Read from the store, not
    from production servers, so the drill's projection works while production is down."""
    sizes = []
    for target in policy.targets:
        if not target.is_production or target.category != category:
            continue
        manifest = _newest_manifest(store, target)
        if manifest is None:
            continue
        if is_media(policy, category):
            sizes.append((target.name, int(manifest.source.get("bytes", 0))))
        else:
            sizes.append((target.name, manifest.artifact.size))
    return max(sizes, key=lambda item: item[1], default=("-", 0))


def _newest_manifest(store: ObjectStore, target: Target) -> Manifest | None:
    backups, _ = build_catalogue([store.listing(f"{target.category}/{target.name}/")])
    if not backups:
        return None
    return store.manifest(max(backups, key=lambda b: b.id.window).id)


# ---- the one RTO projection ------------------------------------------------------------------


def measured_restore(document: dict[str, Any], media: bool) -> tuple[int | None, float | None]:
    """What a restore evidence record measured: the bytes it restored, in the unit the store
    sizes backups in (listed bytes for media and whole clusters, the dump archive otherwise),
    and the seconds of all its steps."""
    backup = document.get("backup") or {}
    steps = document.get("steps") or {}
    unit = "restored_bytes" if media or backup.get("tier") == CONTINUOUS else "archive_bytes"
    seconds = sum(float(v) for v in (steps.get("timings") or {}).values())
    size = steps.get(unit)
    return (int(size) if size is not None else None), (seconds or None)


def restore_rate(size_bytes: float | None, seconds: float | None) -> float | None:
    """Bytes a second a restore measured; None when it measured no time or no bytes."""
    return size_bytes / seconds if size_bytes and seconds else None


def measured_rate(document: dict[str, Any], media: bool) -> float | None:
    """The restore rate a restore evidence record measured (`measured_restore`'s bytes over its
    seconds); None for a record that measured none."""
    return restore_rate(*measured_restore(document, media))


def projected_seconds(size_bytes: float, rate: float | None) -> float:
    """Restoring `size_bytes` at a measured `rate` (bytes a second); unknown rate: infinite."""
    return size_bytes / rate if rate else float("inf")


def within_rto(projected: float, rto: timedelta) -> bool:
    return projected <= rto.total_seconds()


def rto_projection(
    rate: float,
    largest: str,
    largest_bytes: int,
    sized_from: str,
    rto: timedelta,
    *,
    throughput_of: str | None = None,
) -> dict[str, Any]:
    """A drill's evidence of the RTO: its measured `rate` applied to the largest production
    target (`largest_bytes`, sized from the store, not from production, which may be down)."""
    projected = projected_seconds(largest_bytes, rate)
    return {
        "restore_throughput_mb_per_s": round(rate / 1e6, 2),
        **({"throughput_of": throughput_of} if throughput_of else {}),
        "largest_production_target": largest,
        "largest_production_bytes": largest_bytes,
        "sized_from": sized_from,
        "projected_restore_seconds": round(projected, 1),
        "rto_seconds": rto.total_seconds(),
        "within_rto": within_rto(projected, rto),
    }


@dataclass(frozen=True)
class RestoreJob:
    """One restore of an estate plan: a target (or a server's cluster), where it writes (its
    destination's pool) and how long it is projected (or was measured) to take."""

    name: str
    priority: int
    pool: str
    seconds: float


@dataclass(frozen=True)
class Scheduled:
    job: RestoreJob
    start: float
    end: float


@dataclass(frozen=True)
class EstatePlan:
    """When each restore starts and ends when they run as Airflow runs dr_restore."""

    scheduled: tuple[Scheduled, ...]
    concurrency: int

    @property
    def wall_seconds(self) -> float:
        return max((s.end for s in self.scheduled), default=0.0)

    @property
    def serial_seconds(self) -> float:
        return sum(s.job.seconds for s in self.scheduled)

    def to_document(self, rto: timedelta) -> dict[str, Any]:
        wall = self.wall_seconds
        return {
            "concurrency": self.concurrency,
            "wall_seconds": round(wall, 1),
            "serial_seconds": round(self.serial_seconds, 1),
            "rto_seconds": rto.total_seconds(),
            "within_rto": within_rto(wall, rto),
            "order": [
                {
                    "name": s.job.name,
                    "pool": s.job.pool,
                    "start": round(s.start, 1),
                    "end": round(s.end, 1),
                }
                for s in self.scheduled
            ],
        }


def plan_estate(
    jobs: Iterable[RestoreJob], slots: Mapping[str, int], concurrency: int
) -> EstatePlan:
    """Simulate Airflow running the restores: highest priority (lowest number) first, each as
    soon as fewer than `concurrency` run in total and its pool has a free slot (a pool missing
    from `slots` has one). A job whose pool is full does not hold back a later one whose pool is
    free, as Airflow's scheduler does not."""
    pending = sorted(jobs, key=lambda j: (j.priority, j.name))
    running: list[Scheduled] = []
    scheduled: list[Scheduled] = []
    now = 0.0
    while pending:
        for job in list(pending):
            if len(running) >= concurrency:
                break
            if sum(1 for r in running if r.job.pool == job.pool) < slots.get(job.pool, 1):
                placed = Scheduled(job, now, now + job.seconds)
                running.append(placed)
                scheduled.append(placed)
                pending.remove(job)
        if pending:
            now = min(r.end for r in running)
            running = [r for r in running if r.end > now]
    return EstatePlan(tuple(scheduled), concurrency)


def workers_needed(jobs: list[RestoreJob], rto: timedelta, *, most: int = 1024) -> int | None:
    """The fewest restores at once (each pool as wide as that) that bring the estate back
    within the RTO; None when no number can (one restore alone is longer than the RTO)."""
    if not all(within_rto(j.seconds, rto) for j in jobs):
        return None
    pools = {j.pool for j in jobs}
    for width in range(1, most + 1):
        if within_rto(plan_estate(jobs, dict.fromkeys(pools, width), width).wall_seconds, rto):
            return width
    return None


def record_estate(
    policy: Policy,
    stores: Stores,
    kind: str,
    run: dict[str, str],
    records: list[dict[str, Any]],
    began: datetime,
    projected: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One record for a whole restore run (`dr_restore`, or the drill's estate rehearsal):
    each target's outcome and time, and the estate's wall time from `began` to the last
    record, against the RTO. Written to `evidence/estate/<kind>/` in both regions."""

    rto = policy.objectives.rto
    rows = []
    for document in sorted(records, key=lambda d: str(d.get("recorded_at"))):
        steps = document.get("steps") or {}
        started = steps.get("started_at")
        finished = document.get("recorded_at")
        rows.append(
            {
                "target": document.get("target"),
                "outcome": document.get("outcome"),
                "started_at": started,
                "finished_at": finished,
                "seconds": round(
                    (
                        datetime.fromisoformat(finished) - datetime.fromisoformat(started)
                    ).total_seconds(),
                    1,
                )
                if started and finished
                else None,
                "restore_seconds": round(sum((steps.get("timings") or {}).values()), 1),
                "evidence": document.get("evidence_prefix"),
            }
        )
    ends = [datetime.fromisoformat(r["finished_at"]) for r in rows if r["finished_at"]]
    wall = (max(ends) - began).total_seconds() if ends else None
    serial = sum(r["seconds"] or 0.0 for r in rows)
    failed = [r["target"] for r in rows if r["outcome"] != "passed"]
    problems = [f"{', '.join(failed)} failed"] if failed else []
    if wall is not None and not within_rto(wall, rto):
        problems.append(
            f"the estate took {format_duration(timedelta(seconds=round(wall)))}, "
            f"over the RTO of {format_duration(rto)}"
        )
    document = {
        "schema": f"backup-dr/estate/{kind}/v1",
        "kind": kind,
        "run": run,
        "began_at": began.isoformat(),
        "recorded_at": datetime.now(UTC).isoformat(),
        "targets": rows,
        "wall_seconds": round(wall, 1) if wall is not None else None,
        "serial_seconds": round(serial, 1),
        "rto_seconds": rto.total_seconds(),
        "within_rto": wall is not None and within_rto(wall, rto),
        "projected": projected,
        "outcome": "failed" if problems or not rows else "passed",
        "problems": problems or ([] if rows else ["no target was restored"]),
    }
    key = evidence.evidence_key("estate", kind, began, run.get("run_id", "manual"))
    document["evidence_missing_in"] = sorted(
        {s.region.name for s in stores} - set(evidence.write_everywhere(stores, key, document))
    )
    document["evidence"] = key
    log.info(
        "Estate %s: %d target(s), wall %s s against the RTO of %s s (serial %s s); evidence %s",
        kind,
        len(rows),
        document["wall_seconds"],
        document["rto_seconds"],
        document["serial_seconds"],
        key,
    )
    return document
