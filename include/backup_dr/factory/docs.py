"""The words on each generated DAG's page (doc_md): what it promises, how, and its params, with
the figures read from the policy at parse time."""

from __future__ import annotations

from datetime import timedelta

from include.backup_dr.policy import Category, Policy, Tier, cron_period, format_duration


def tier_doc(
    category_name: str, category: Category, tier_name: str, tier: Tier, policy: Policy
) -> str:
    rows = "\n".join(
        f"| {name} | `{t.schedule}` | {format_duration(t.retention)} | {_source_of(t)} |"
        for name, t in category.tiers.items()
    )
    return f"""### {category.description}: {tier_name} backups

**Policy row:** a `{tier_name}` backup of every production {category_name} target on schedule
`{tier.schedule}`, kept for **{format_duration(tier.retention)}**, stored in
{policy.regions.primary.name} and copied to {policy.regions.secondary.name}.
RPO target {format_duration(category.rpo)}; RTO target {format_duration(policy.objectives.rto)}.

Each target runs `snapshot -> copy_to_secondary -> integrity_check -> prune`.
{_promotion_doc(tier)}Params: `dry_run` plans the prune without deleting; `override_circuit_breaker` lets a prune
that deletes more than the policy expects go ahead (only after checking why).

| tier | schedule | retention | restore points |
|---|---|---|---|
{rows}
"""


def _source_of(tier: Tier) -> str:
    if tier.derive_from is None:
        return "its own read of the source"
    assert tier.max_skew is not None
    return f"promoted from {tier.derive_from} (within {format_duration(tier.max_skew)})"


def _promotion_doc(tier: Tier) -> str:
    """How a derived tier's snapshot works, in the DAG's own docs (empty for the others)."""
    if tier.derive_from is None or tier.max_skew is None:
        return ""
    skew = format_duration(tier.max_skew)
    return f"""
**Promoted from `{tier.derive_from}`:** `snapshot` reads no database when a {tier.derive_from}
backup verified in both regions was taken within {skew} of the window: it copies that backup
server-side into this tier (its log: `promoted from {tier.derive_from} <window>`), and
`copy_to_secondary` does the same in the secondary from its own copy. `integrity_check`
re-verifies both (size, SHA-256, `pg_restore --list`). While a due {tier.derive_from} is not yet
verified, `snapshot` is rescheduled (up for reschedule, holding no worker) until the window +
{skew}; with none, it dumps the source and its manifest's `not_derived` says why.
"""


def continuous_tier_doc(policy: Policy, category: Category, tier: Tier) -> str:
    settings = policy.continuous
    assert settings is not None
    days = f"{tier.retention.total_seconds() / 86400:g} days"
    after = category.rpo_after
    later = (
        f"Beyond {format_duration(after.older_than)} the policy promises an RPO of "
        f"{format_duration(after.rpo)}; what the tiers give there is one restore point per "
        "weekly backup (a week apart between 7 and 28 days) and per monthly one after that."
        if after
        else ""
    )
    return f"""### {category.description}: continuous tier (RPO {format_duration(category.rpo)})

**What "{format_duration(category.rpo)}" means here**
- *Loss of the primary*: at most the **measured standby lag** (each server streams to a standby
  in {policy.regions.secondary.name}; `platform_continuous_monitor` measures commit-to-visible
  lag with a heartbeat every second and pages when it stays over the RPO).
  {"Synchronous: a commit waits for the standby." if settings.synchronous else "Asynchronous: commits do not wait for the standby (set `continuous.synchronous: true` to trade commit latency for zero loss)."}
- *Loss of primary and standby together*: at most **archive_timeout =
  {format_duration(settings.archive_timeout)}** (every WAL segment goes to both regions with
  SSE-KMS; a segment is closed at least that often).
- *Recovery points*: **any second within the last {days}**, from a base backup plus archived
  WAL.
{later}

This DAG takes the base backups, on `{settings.base_backup_schedule}`, per server:
`snapshot` (pg_basebackup streamed to {policy.regions.primary.name}, committed once its end
WAL is archived) -> `copy_to_secondary` (the base backup and every WAL file it needs) ->
`integrity_check` (both regions: re-hash, tar readable, WAL continuous from the oldest base
backup to the newest segment, new segments re-read) -> `prune` (keeps the {days} recovery
window: the base backup its oldest second replays from is kept; WAL older than the oldest kept
base backup goes in `backup_collect_garbage`). Params: `dry_run`, `override_circuit_breaker`.
"""


def gc_doc(policy: Policy) -> str:
    prune = policy.prune
    return f"""### Garbage collection: once a day per category

**Why a DAG of its own:** what backups refer to is shared by a whole category (a media blob is
stored once for every snapshot that lists it; a server's WAL serves every base backup), so it
is collected once per category, here, on `{prune.gc_schedule}`, not at the end of every
per-target prune. One mapped `collect_garbage` task per category does, in both regions:

- **media**: marks every blob that a committed snapshot's listing (checked against the SHA-256
  its manifest records) or a replica listing refers to, then sweeps the blobs nothing refers to
  once older than the grace ({format_duration(prune.incomplete_upload_grace)}), and only their
  versions older than the grace (a snapshot that meets an old blob again refreshes it first).
  Marks and plan live in a temporary SQLite file, so memory stays flat at any number of blobs.
- **continuous tier**: WAL older than the start of the oldest base backup that prune kept in
  the region (the recovery window's first base) restores nothing and goes; history files stay.

A listing or manifest that cannot be read whole stops the run before anything is deleted. The
circuit breaker stops it too, deleting nothing and failing red with the numbers, when a sweep
would delete more than {prune.max_delete_fraction:.0%} of a category's blobs (or of a server's
WAL) in a region. Params: `dry_run` plans without deleting; `override_circuit_breaker` lets a
large sweep go ahead (only after checking why). Every run leaves
`evidence/gc/<category>/<time>-<id>.json` in each region: counts, the breaker, and a sample of
the deletions with their reasons.
"""


def replication_doc(policy: Policy, category_name: str) -> str:
    category = policy.categories[category_name]
    return f"""### {category.description}: replication to {policy.regions.secondary.name}

**Policy:** RPO **{format_duration(category.rpo)}**. On schedule
`{category.replication_schedule}`, each production target's source is listed once and the
content the secondary region lacks is copied into its blob store; the replica listing there is
replaced. `check_rpo` fails, and pages on-call, when the oldest change that was missing from the
secondary was older than the RPO. Each run leaves a record in `evidence/replication/`.
A backfill catches up on its first run; later runs of the backfill copy nothing.
"""


def drill_doc(policy: Policy) -> str:
    drill = policy.restore_verification
    assert drill is not None
    return f"""### Restore verification (yearly drill)

**Policy:** "All production databases and media are tested for integrity at least annually",
with a **{format_duration(policy.objectives.rto)} RTO**. On schedule `{drill.schedule}` every
production database is restored from its newest verified `{drill.tier}` backup in the
**{drill.region}** region into a fresh sandbox database (connection `{drill.sandbox_conn_id}`,
never a production server), validated with Great Expectations (tables, row counts, keys and the
target's business rules in `include/expectations/`), and timed. Every production media target
is restored into a fresh prefix of the sandbox bucket and every object re-hashed against the
snapshot. Evidence (JSON + Markdown) goes to `evidence/restore_verification/<target>/` in both
regions. The sandbox (database or bucket prefix) is always dropped.

**Point-in-time recovery** (`pitr`, per server of the continuous tier): the server's cluster
is recovered from a base backup plus the WAL archive of the **{drill.region}** region (the other
region when this one's newest integrity evidence failed) into a throwaway server on a private
Unix socket (no TCP port), to T = a random heartbeat recorded by the continuous monitor + 0.5 s.
It proves 1-second granularity (that heartbeat is there, none written after T is), runs the
business rules and key checks on every production database, and projects the recovery time
against the RTO. Evidence goes to `evidence/restore_verification/<server>/`.

Trigger by hand with params `target` (a target, or a server for PITR only), `tier`
(`continuous`: PITR only), `region` and `backup` (a window, ISO 8601).
"""


def dr_restore_doc(policy: Policy) -> str:
    recovery = policy.recovery()
    lanes = ", ".join(
        f"`{d.conn_id}` (pool `{d.pool}`, {d.slots} at once)" for d in recovery.destinations
    )
    return f"""### Disaster recovery restore (manual)

Restores the named `targets` into a `connection` (databases) or a `bucket` (media), from the
newest verified backup of `tier` (or the `backup` window, or a point in time `target_time`) in
`region`. Destinations: {lanes}.

1. `plan` checks the whole request before anything is touched (a non-empty destination without
   `overwrite`, a time outside what the region can recover to, a missing bucket...), chooses
   each target's backup, and projects each restore's duration from its newest drill's rate.
   `dry_run` stops here: the plan is in this task's log and XCom.
2. `approve`: **Browse > Required Actions** shows the plan: each target, the backup or time it
   comes from and the region, what is set aside at the destination, and the projected wall time
   against the RTO. Reject, or no answer within {format_duration(recovery.approval_timeout)},
   touches nothing (a timeout pages). The approver's name goes into every evidence record.
3. `<destination>.restore` (and `media.restore`): one mapped task per target (per server for a point in time: the cluster is
   recovered once into a throwaway server, then each database copied out), started highest
   priority first; at most {recovery.concurrency} at once in total, and each destination's pool
   bounds the restores writing into it. One target's failure never stops the others.
4. `record`: one record for the whole run in `evidence/estate/dr_restore/`: each target's time
   and outcome, and the estate's wall time against the RTO.

A database is never dropped: the backup is downloaded and its SHA-256 proven first, restored
into `<db>__restoring_<id>` with the server's roles, owners and grants, validated there, and only
then swapped in. The database it replaces is renamed to `<db>__before_<approval time>` (its
sessions are terminated at that moment, and the log says so) and kept: drop it yourself once the
restore is confirmed. Per-target evidence goes to `evidence/dr_restore/<target>/`."""


def failover_doc(servers: list[str], approval_timeout: timedelta) -> str:
    named = ", ".join(f"`{name}`" for name in servers) or "(none)"
    return f"""### Fail a database server over to its standby (manual)

On-call's path when a primary is lost. Servers with a standby: {named}.

1. `preflight`: the standby answers and is in recovery; its replay position; its newest
   heartbeat against the newest the continuous monitor recorded on the primary: the **loss so
   far**. Refuses while the old primary still answers, unless `planned` is true (a switchover:
   the old primary is stopped first and the standby replays everything it flushed: no loss).
2. `approve`: **Browse > Required Actions** shows the plan (server, standby, loss so far, what
   happens to the old primary). Reject, or no answer within
   {format_duration(approval_timeout)}, changes nothing; a timeout pages on-call.
3. `fence`: the server's `fence_command` from the policy stops the old primary for good (no
   writes, no archiving into the same prefix, even if started again).
4. `promote`: `pg_promote()`, then waits until the server takes a write.
5. `follow`: `state/servers/<server>.json` in both regions now names the new primary: dumps,
   base backups and the monitor connect to it. `archive_timeline` waits for the new timeline's
   history file in both regions' WAL archive (copies it across if one lacks it), then
   `base_backup` triggers the continuous tier's base backup on the new timeline.
6. `rebuild_standby`: the server's `rebuild_command` makes a new standby from the new primary
   (new slot); until it streams, the monitor's `standby_gone` page stays open.
7. `evidence`: `evidence/failover/<server>/<time>-<run>.json` in both regions (times,
   approver, measured loss, the old primary's fate, the timeline): an ISO 27001 A.5.29 /
   A.5.30 record in the audit report and on the compliance page.

Params: `server`, `planned`, `wait_seconds` (each wait: caught up, writable, history
archived, new standby streaming).
"""


def monitor_doc(policy: Policy) -> str:
    settings = policy.continuous
    assert settings is not None
    category = policy.categories[settings.category]
    rpo = format_duration(category.rpo)
    days = category.tiers["continuous"].retention.total_seconds() / 86400
    monitor = settings.monitor
    return f"""### {category.description}: continuous replication monitor (RPO {rpo})

**What "{rpo}" means here**
- *Loss of the primary*: at most the **measured standby lag** shown by this DAG.
- *Loss of primary and standby together*: at most **archive_timeout
  ({int(settings.archive_timeout.total_seconds())} s)**: the WAL archive in both regions.
- *Recovery points*: **any second within the last {days:g} days** (base backups plus WAL).

Each run, per server, writes a heartbeat row (`backup_dr.heartbeat`) on the primary once a
second for {int(monitor.duration.total_seconds())} s (param `duration_seconds`) and times how
long each takes to become visible on the standby: end-to-end lag, not an idle-time artefact.
It also reads `pg_stat_replication`, `pg_stat_archiver`, the replication slot's retained WAL
and the archive backlog. Evidence (samples, p50/p99/max, archive age, the last WAL segment)
goes to `evidence/continuous_monitor/<server>/` in both regions.

On-call is paged **once** per breach, and told once when it clears, when: the lag stays over
the RPO for {monitor.lag_alert_samples} consecutive samples (`lag`), archiving fails
(`archive_failing`), or the standby is gone (`standby_gone`). The task stays red while a
condition is open; the alert state lives in the primary region's store
(`state/continuous_monitor/<server>.json`), not in Airflow.
{_lock_wal_doc(policy)}"""


def _lock_wal_doc(policy: Policy) -> str:
    locking = [region.name for region in policy.locked_regions()]
    if not locking:
        return ""
    return f"""
`lock_wal` locks (S3 Object Lock) every WAL file archived since its last run in
{", ".join(locking)}, until archived + the tier's retention + the margin: the archive_command
writes without a lock, so a segment is locked within about a minute of arriving.
"""


def compliance_doc(policy: Policy) -> str:
    from include.backup_dr.policy import human

    settings = policy.compliance
    grace = human(settings.grace)
    continuous = policy.continuous
    if continuous is not None:
        rpo = format_duration(policy.categories[continuous.category].rpo)
        monitor = continuous.monitor
        stale = human(cron_period(monitor.schedule) + settings.monitor_grace)
        lag = (
            f"the continuous monitor's newest evidence is at most {stale} old and shows neither "
            f"`lag` (over the {rpo} RPO for {monitor.lag_alert_samples} samples in a row) nor "
            "`standby_gone`"
        )
        wal = (
            "the same evidence: archiving is not failing, and no closed WAL segment waits while "
            "the last one archived is more than 2 x archive_timeout "
            f"({human(2 * continuous.archive_timeout)}) old"
        )
        config = (
            "the primary's settings in the same evidence are the policy's: archive_mode on, "
            "wal_level replica or logical, archive_timeout not off nor longer than "
            f"{human(continuous.archive_timeout)} (shorter: amber)"
            + (
                "; synchronous_standby_names set, synchronous_commit waiting, the standby's "
                "sync_state sync"
                if continuous.synchronous
                else ""
            )
        )
    else:
        lag = wal = config = "(no continuous tier in the policy)"
    media_rpo = next(
        (format_duration(c.rpo) for c in policy.categories.values() if c.replication_schedule),
        "-",
    )
    return f"""### Compliance: is every promise kept?

Every `{settings.schedule}` this DAG reads the store of both regions (never Airflow's database)
and judges each promise of the policy; one evidence record per run (every check, its figure,
its limit and why) goes to `evidence/compliance/` in both regions.

| check | one per | green when |
|---|---|---|
| `backup_age` | production target (continuous: server), tier, region | the newest backup **verified** in that region was taken within the tier's schedule period + {grace} grace |
| `standby_lag` | continuous server | {lag} |
| `wal_archive` | continuous server | {wal} |
| `server_config` | continuous server | {config} |
| `replication_lag` | media target | media_replicate's last run found the secondary within the {media_rpo} RPO and began less than {media_rpo} ago |
| `restore_drill` | production target, continuous server | the newest restore drill passed and is at most 366 days (+ grace) old |
| `projected_rto` | drilled target, and all targets | the newest backup's size at the restore rate the drill measured fits the {format_duration(policy.objectives.rto)} RTO; `all targets` adds them up, as dr_restore restores one after another |
| `rehash_coverage` | media target, region | every blob's daily sample bucket was re-hashed (and passed) within a year; amber when a missed day will leave blobs over a year without a re-hash, or when there is no evidence |

Statuses follow Nagios: OK, WARNING (amber, no page), CRITICAL and UNKNOWN (red: broken, or
nobody can tell). On-call is paged **once** when checks turn red (one message naming them) and
told once when they are green again; that state lives in the store
(`state/compliance/state.json`), not in Airflow. The task fails while any check is red.
The same checks from a shell, without Airflow: `python -m include.backup_dr check` (exit 0 OK,
1 WARNING, 2 CRITICAL, 3 UNKNOWN; `--nagios` for one line), and
`python -m include.backup_dr policy report` for each promise against the configuration.
"""


def audit_doc(policy: Policy, schedule: str) -> str:
    return f"""### The annual audit report

Every `{schedule}` (2 January) this DAG reads the evidence of the previous calendar year
from both regions' stores (never Airflow's database): expected windows of every tier against
those backed up and verified in every region (missed and backfilled ones listed), integrity
results, prune decisions with their reasons, and the restore drills' RTO and RPO against the
policy ({format_duration(policy.objectives.rto)} RTO), each line with its ISO 27001 control.
It writes `evidence/audit/<from>-<to>/<time>-<id>/report.md` and `report.html` to both regions.
Params `from` / `to` report another period. The same from a shell:
`python -m include.backup_dr audit --from 2026-01-01 --to 2026-12-31 --out DIR`.
"""
