"""Builds the DAGs from the policy. Backups: one DAG per scheduled tier of a category, all with
the same shape:

    targets_on_<server>  ->  <server>[target].snapshot -> copy_to_secondary -> integrity_check -> prune

The per-target chain is a mapped task group over the production targets found at run time, so
adding a database or a bucket is a policy edit. Each database server gets its own group, whose
snapshot task runs in that server's pool; media targets are grouped by source bucket. Media
also gets `media_replicate` (hourly copy to the secondary region, for the RPO). Restores:
`restore_verification` (the yearly drill) and `dr_restore` (manual). Failover: `dr_failover`
(manual, approved by a human under Required Actions). Parsing reads only the
local policy file: no network, no database. The steps that move a backup's bytes run on the
`backup-io` queue, with their pod under the KubernetesExecutor (deployment.py).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import (
    DAG,
    AsyncCallback,
    BaseNotifier,
    DeadlineAlert,
    DeadlineReference,
    Param,
    TaskGroup,
    get_current_context,
    task,
    task_group,
)
from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.alerts import TARGET_KEY, OnCallNotifier, page_late_run
from include.backup_dr.deployment import placement
from include.backup_dr.policy import (
    CONTINUOUS,
    KNOWN_TIERS,
    Category,
    Policy,
    Tier,
    cron_period,
    format_duration,
    load_policy,
)

if TYPE_CHECKING:  # the lease module talks to S3: imported by the tasks only, not at parse time
    from include.backup_dr.lease import Tenure

log = logging.getLogger(__name__)

OWNER = "platform-sre"
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUTS = {
    "snapshot": timedelta(hours=3),
    "copy_to_secondary": timedelta(hours=3),
    "integrity_check": timedelta(hours=2),
    "prune": timedelta(minutes=30),
    "collect_garbage": timedelta(hours=2),
    "replicate": timedelta(minutes=50),
}

#: Mapped tasks are labelled with their target in the UI (set by `_label`).
LABELLED: dict[str, Any] = {"map_index_template": "{{ " + TARGET_KEY + " }}"}


def dag_id_for(category: str, tier: str) -> str:
    return f"{category}_backup_{tier}"


def _doc(category_name: str, category: Category, tier_name: str, tier: Tier, policy: Policy) -> str:
    rows = "\n".join(
        f"| {name} | `{t.schedule}` | {format_duration(t.retention)} |"
        for name, t in category.tiers.items()
    )
    return f"""### {category.description}: {tier_name} backups

**Policy row:** a `{tier_name}` backup of every production {category_name} target on schedule
`{tier.schedule}`, kept for **{format_duration(tier.retention)}**, stored in
{policy.regions.primary.name} and copied to {policy.regions.secondary.name}.
RPO target {format_duration(category.rpo)}; RTO target {format_duration(policy.objectives.rto)}.

Each target runs `snapshot -> copy_to_secondary -> integrity_check -> prune`.
Params: `dry_run` plans the prune without deleting; `override_circuit_breaker` lets a prune
that deletes more than the policy expects go ahead (only after checking why).

| tier | schedule | retention |
|---|---|---|
{rows}
"""


def _label(target: str) -> dict[str, Any]:
    """Name the target in the running context: the UI's map label and the alert use it."""
    context = get_current_context()
    context[TARGET_KEY] = target  # type: ignore[literal-required]
    return context  # type: ignore[return-value]


def _exclusive(store: Any, subject: str, step: str) -> AbstractContextManager[Tenure]:
    """The step's critical section on `subject` (e.g. `<category>/<target>/<tier>`): one task
    at a time, whatever runs beside it (backfills, other deployments; see lease.py). It waits at
    most a third of the step's timeout for the lease, then fails, to be retried."""
    from include.backup_dr.lease import Holder, critical_section

    holder = Holder.of(get_current_context()["ti"])
    return critical_section(store, subject, holder, max_wait=TIMEOUTS[step] / 3)


def _runtime() -> tuple[Any, Any]:
    from include.backup_dr.pipeline import Stores

    policy = load_policy()
    return policy, Stores.from_policy(policy)


def _subject(ref: dict[str, Any]) -> str:
    """The lease subject of a backup's steps: its target and tier."""
    return f"{ref['category']}/{ref['target']}/{ref['tier']}"


def _target_group(category: str, tier: str, group: str, pool: str | None) -> None:
    @task(task_id=f"targets_on_{group}")
    def select_targets() -> list[str]:
        """The production targets in this group; every other one is skipped with its reason."""
        policy = load_policy()
        if tier == CONTINUOUS:  # one base backup holds every database of the server
            chosen = [s.name for s in policy.continuous_servers() if s.name == group]
            log.info("Base backup of server %s (all its databases): %s", group, chosen)
            return chosen
        chosen = []
        for target in policy.targets_on(category, group):
            if reason := target.skip_reason():
                log.warning("Skipping %s: %s", target.name, reason)
            else:
                chosen.append(target.name)
        log.info("Backing up %d target(s) on %s: %s", len(chosen), group, chosen)
        return chosen

    @task(
        multiple_outputs=False,
        pool=pool or "default_pool",
        execution_timeout=TIMEOUTS["snapshot"],
        **LABELLED,
        **placement("snapshot"),
    )
    def snapshot(target: str) -> dict[str, Any]:
        from include.backup_dr.pipeline import take_snapshot

        context = _label(target)
        window = context.get("logical_date") or context["dag_run"].run_after
        policy, stores = _runtime()
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        with _exclusive(stores.primary, f"{category}/{target}/{tier}", "snapshot"):
            return take_snapshot(policy, stores, target, tier, window, run)

    @task(
        multiple_outputs=False,
        execution_timeout=TIMEOUTS["copy_to_secondary"],
        **LABELLED,
        **placement("copy_to_secondary"),
    )
    def copy_to_secondary(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr import pipeline

        _label(ref["target"])
        policy, stores = _runtime()
        with _exclusive(stores.primary, _subject(ref), "copy_to_secondary"):
            return pipeline.copy_to_secondary(policy, stores, ref)

    @task(
        multiple_outputs=False,
        execution_timeout=TIMEOUTS["integrity_check"],
        **LABELLED,
        **placement("integrity_check"),
    )
    def integrity_check(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.pipeline import check_integrity

        _label(ref["target"])
        policy, stores = _runtime()
        with _exclusive(stores.primary, _subject(ref), "integrity_check"):
            return check_integrity(policy, stores, ref)

    @task(multiple_outputs=False, execution_timeout=TIMEOUTS["prune"], **LABELLED)
    def prune(ref: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr import pipeline

        context = _label(ref["target"])
        policy, stores = _runtime()
        params = context["params"]
        with _exclusive(stores.primary, _subject(ref), "prune") as lease:
            return pipeline.prune(
                policy,
                stores,
                ref["target"],
                ref["tier"],
                dry_run=bool(params["dry_run"]),
                override_circuit_breaker=bool(params["override_circuit_breaker"]),
                before_delete=lease.ensure_held,
            )

    @task_group(group_id=group)
    def per_target(target: str) -> None:
        prune(integrity_check(copy_to_secondary(snapshot(target))))

    per_target.expand(target=select_targets())


def _default_args() -> dict[str, Any]:
    """Every task: an owner, retries with backoff, a timeout, and on-call paged on failure."""
    return {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=1),
        "on_failure_callback": [OnCallNotifier()],
    }


def _continuous_doc(policy: Policy, category: Category, tier: Tier) -> str:
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


class _DeadlineDAG(DAG):
    """A DAG with Deadline Alerts that `dag.test()` (and `airflow dags test`) can still run.

    Airflow 3.3.2's dag.test() gives DagRun.update_state a DAG whose `deadline` holds the encoded
    alerts instead of their database ids, so a run that succeeds crashes in
    DeadlineAlertModel.get_by_id ("'dict' object has no attribute 'hex'"). dag.test() never
    evaluates deadlines anyway, so it runs without them.
    """

    def test(self, *args: Any, **kwargs: Any) -> Any:
        deadline, self.deadline = self.deadline, None
        try:
            return super().test(*args, **kwargs)
        finally:
            self.deadline = deadline


def build_tier_dag(policy: Policy, category_name: str, tier_name: str) -> DAG:
    category = policy.categories[category_name]
    tier = category.tiers[tier_name]
    groups = policy.groups_for(category_name)
    schedule = tier.schedule
    doc = _doc(category_name, category, tier_name, tier, policy)
    if tier.is_continuous:
        assert policy.continuous is not None
        groups = [(s.name, s.dump_pool) for s in policy.continuous_servers()]
        schedule = policy.continuous.base_backup_schedule
        doc = _continuous_doc(policy, category, tier)
    with _DeadlineDAG(
        dag_id=dag_id_for(category_name, tier_name),
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=_default_args(),
        tags=["backup", f"category:{category_name}", f"tier:{tier_name}"],
        doc_md=doc,
        params=_deletion_params("prune"),
        # A run not done by its window plus the grace pages on-call (experimental in 3.3; the
        # triggerer runs the callback; dag.test() never evaluates it).
        deadline=DeadlineAlert(
            reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
            interval=policy.compliance.grace,
            callback=AsyncCallback(
                page_late_run, kwargs={"grace": format_duration(policy.compliance.grace)}
            ),
        ),
    ) as dag:
        for group, pool in groups:
            _target_group(category_name, tier_name, group, pool)
    return dag


def _deletion_params(what: str) -> dict[str, Param]:
    """The params of a DAG that deletes: plan without deleting, or let a large plan through."""
    return {
        "dry_run": Param(False, type="boolean", description=f"Plan the {what}, delete nothing"),
        "override_circuit_breaker": Param(
            False, type="boolean", description=f"Let an unusually large {what} go ahead"
        ),
    }


def _gc_doc(policy: Policy) -> str:
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


def build_gc_dag(policy: Policy) -> DAG:
    """`backup_collect_garbage`: one mapped `collect_garbage` per category, once a day."""

    @task(task_id="categories")
    def select_categories() -> list[str]:
        return list(load_policy().categories)

    @task(multiple_outputs=False, execution_timeout=TIMEOUTS["collect_garbage"], **LABELLED)
    def collect_garbage(category: str) -> dict[str, Any]:
        from include.backup_dr import gc

        context = _label(category)
        policy_now, stores = _runtime()
        params = context["params"]
        return gc.collect_garbage(
            policy_now,
            stores,
            category,
            dry_run=bool(params["dry_run"]),
            override_circuit_breaker=bool(params["override_circuit_breaker"]),
            run={"dag_id": context["dag"].dag_id, "run_id": context["run_id"]},
        )

    with DAG(
        dag_id="backup_collect_garbage",
        schedule=policy.prune.gc_schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=_default_args(),
        tags=["backup", "gc"],
        doc_md=_gc_doc(policy),
        params=_deletion_params("garbage collection"),
    ) as dag:
        collect_garbage.expand(category=select_categories())
    return dag


def build_tier_dags(category: str, policy: Policy | None = None) -> dict[str, DAG]:
    """Every tier of `category` as a DAG, keyed by dag_id (for a DAG file's globals): the
    scheduled tiers, and the continuous tier's base backups where the policy configures it."""
    policy = policy or load_policy()
    tiers = list(policy.categories[category].scheduled_tiers())
    if policy.continuous is not None and policy.continuous.category == category:
        tiers.append(CONTINUOUS)
    return {dag_id_for(category, tier): build_tier_dag(policy, category, tier) for tier in tiers}


def build_replication_dag(policy: Policy, category_name: str) -> DAG:
    """`<category>_replicate`: per production target, replicate -> check_rpo (pages on breach)."""
    category = policy.categories[category_name]
    assert category.replication_schedule is not None

    @task(task_id="targets")
    def select_targets() -> list[str]:
        chosen = []
        for target in load_policy().targets:
            if target.category != category_name:
                continue
            if reason := target.skip_reason():
                log.warning("Skipping %s: %s", target.name, reason)
            else:
                chosen.append(target.name)
        return chosen

    @task(
        multiple_outputs=False,
        execution_timeout=TIMEOUTS["replicate"],
        **LABELLED,
        **placement("replicate"),
    )
    def replicate(target: str) -> dict[str, Any]:
        from include.backup_dr import replication

        context = _label(target)
        policy_now, stores = _runtime()
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        # Its lease lives in the secondary region, the only one it writes: replication goes on
        # while the primary region is out.
        with _exclusive(stores.secondary, f"{category_name}/{target}/replicate", "replicate"):
            return replication.replicate(policy_now, stores, target, run)

    @task(multiple_outputs=False, retries=0, execution_timeout=timedelta(minutes=5), **LABELLED)
    def check_rpo(state: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr import replication

        _label(state["target"])
        return replication.check_rpo(state)

    @task_group(group_id="replica")
    def per_target(target: str) -> None:
        check_rpo(replicate(target))

    with DAG(
        dag_id=f"{category_name}_replicate",
        schedule=category.replication_schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=_default_args(),
        tags=["replication", f"category:{category_name}"],
        doc_md=f"""### {category.description}: replication to {policy.regions.secondary.name}

**Policy:** RPO **{format_duration(category.rpo)}**. On schedule
`{category.replication_schedule}`, each production target's source is listed once and the
content the secondary region lacks is copied into its blob store; the replica listing there is
replaced. `check_rpo` fails, and pages on-call, when the oldest change that was missing from the
secondary was older than the RPO. Each run leaves a record in `evidence/replication/`.
A backfill catches up on its first run; later runs of the backfill copy nothing.
""",
    ) as dag:
        per_target.expand(target=select_targets())
    return dag


def _drill_doc(policy: Policy) -> str:
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


def build_restore_verification_dag(policy: Policy) -> DAG:
    """select -> [provision_sandbox -> restore -> validate -> report, teardown] per target."""
    drill = policy.restore_verification
    assert drill is not None
    tiers = sorted({t for c in policy.categories.values() for t in c.scheduled_tiers()})
    tiers += ["continuous"] if policy.continuous is not None else []
    # The steps fail red; `report` alone pages on-call, once per drill, naming the cause.
    quiet = {"on_failure_callback": None}

    @task
    def select() -> list[dict[str, str]]:
        from include.backup_dr.drill import dumps as drills

        policy_now, stores = _runtime()
        return drills.select(policy_now, stores, dict(get_current_context()["params"]))

    @task(multiple_outputs=False, **LABELLED, **quiet, execution_timeout=timedelta(minutes=10))
    def provision_sandbox(ref: dict[str, str]) -> dict[str, str]:
        from include.backup_dr.drill import dumps as drills

        context = _label(ref["target"])
        return drills.provision(load_policy(), ref, context["run_id"])

    # The estate rehearsal: restores run as dr_restore runs them, in parallel by priority
    # within the sandbox's pool and the configured concurrency.
    recovery = policy.recovery()
    sandbox_pool = next(
        (d.pool for d in recovery.destinations if d.conn_id == drill.sandbox_conn_id),
        "default_pool",
    )

    @task(
        multiple_outputs=False,
        **LABELLED,
        **quiet,
        execution_timeout=TIMEOUTS["snapshot"],
        pool=sandbox_pool,
        priority_weight=DR_PRIORITY_WEIGHT,
        weight_rule="absolute",
        **placement("restore"),
    )
    def restore(ref: dict[str, str]) -> dict[str, Any]:
        from include.backup_dr.drill import dumps as drills
        from include.backup_dr.restore.select import Selection

        _label(ref["target"])
        policy_now, stores = _runtime()
        return drills.restore_sandbox(policy_now, stores, Selection.from_ref(ref), ref["sandbox"])

    @task(multiple_outputs=False, **LABELLED, **quiet, execution_timeout=timedelta(hours=1))
    def validate(ref: dict[str, str]) -> dict[str, Any]:
        from include.backup_dr.drill import dumps as drills
        from include.backup_dr.restore.select import Selection

        context = _label(ref["target"])
        policy_now, stores = _runtime()
        result = drills.validate_sandbox(
            policy_now, stores, Selection.from_ref(ref), ref["sandbox"]
        )
        document = result.to_document()
        # Pushed before failing, so `report` records every result of a failed validation too.
        context["ti"].xcom_push(key="validation", value=document)
        if not result.ok:
            failed = result.failures()
            raise AirflowFailException(
                f"{len(failed)} expectation(s) failed for target {ref['target']}: "
                + "; ".join(f"{r.expectation} on {r.table} ({r.observed})" for r in failed)
            )
        return document

    @task(
        multiple_outputs=False,
        **LABELLED,
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=10),
    )
    def report(ref: dict[str, str]) -> dict[str, Any]:
        from include.backup_dr.restore import record
        from include.backup_dr.restore.errors import DrillFailed

        context = _label(ref["target"])
        ti = context["ti"]
        group = ti.task_id.rsplit(".", 1)[0]
        restored = ti.xcom_pull(task_ids=f"{group}.restore", map_indexes=ti.map_index)
        validation = ti.xcom_pull(
            task_ids=f"{group}.validate", key="validation", map_indexes=ti.map_index
        )
        policy_now, stores = _runtime()
        selection = ti.xcom_pull(task_ids=f"{group}.provision_sandbox", map_indexes=ti.map_index)
        document = record.report(
            policy_now,
            stores,
            selection or ref,
            restored,
            validation,
            {"dag_id": ti.dag_id, "run_id": context["run_id"]},
        )
        # Pushed before failing, so `estate` counts a failed target too.
        ti.xcom_push(key="record", value=document)
        if document["outcome"] != "passed":
            raise DrillFailed(
                f"Restore test of target {ref['target']} failed: " + "; ".join(document["problems"])
            )
        return document

    @task(**LABELLED, execution_timeout=timedelta(minutes=10))
    def drop_sandbox(ref: dict[str, str]) -> bool:
        from include.backup_dr.drill import dumps as drills

        context = _label(ref["target"])
        return drills.teardown(load_policy(), ref, context["run_id"])

    @task_group(group_id="drill")
    def per_target(ref: dict[str, str]) -> None:
        provisioned = provision_sandbox(ref)
        checked = validate(provisioned)
        restore(provisioned) >> checked
        reported = report(ref)
        checked >> reported
        reported >> drop_sandbox(ref).as_teardown(setups=provisioned)

    @task(
        multiple_outputs=False,
        trigger_rule="all_done",
        retries=0,
        execution_timeout=timedelta(minutes=10),
        on_failure_callback=[_RunRecordNotifier()],
    )
    def estate() -> dict[str, Any]:
        """The whole estate restored in parallel, as dr_restore would: its wall time from the
        first restore's start to the last record, against the RTO (evidence/estate/...)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.backup_dr.restore.errors import TargetsFailed
        from include.backup_dr.restore.record import record_estate

        context = get_current_context()
        ti = context["ti"]
        chosen = ti.xcom_pull(task_ids="select") or []
        found = ti.xcom_pull(
            task_ids="drill.report", key="record", map_indexes=list(range(len(chosen)))
        )
        records = [r for r in found or [] if r]
        starts = [
            datetime.fromisoformat(r["steps"]["started_at"])
            for r in records
            if (r.get("steps") or {}).get("started_at")
        ]
        if not chosen:
            raise AirflowSkipException("no database or media target was drilled")
        if len(records) < len(chosen) or not starts:
            raise TargetsFailed(
                f"{len(chosen) - len(records)} of {len(chosen)} drill(s) left no record "
                "(see their tasks)"
            )
        policy_now, stores = _runtime()
        document = record_estate(
            policy_now,
            stores,
            "restore_verification",
            {"dag_id": ti.dag_id, "run_id": context["run_id"]},
            records,
            min(starts),
        )
        _raise_for_run(document)  # the run is red when any target or the estate failed
        return {
            k: document[k] for k in ("wall_seconds", "serial_seconds", "within_rto", "evidence")
        }

    @task(task_id="continuous_servers")
    def pitr_servers() -> list[str]:
        from include.backup_dr.drill import pitr as pitrs

        return pitrs.drill_servers(load_policy(), dict(get_current_context()["params"]))

    @task(
        **LABELLED,
        retries=0,
        multiple_outputs=False,
        execution_timeout=TIMEOUTS["snapshot"],
        **placement("pitr"),
    )
    def pitr(server: str) -> dict[str, Any]:
        """Recover the server to a recorded second, prove it, validate; pages when it fails.
        Without a base backup it fails too (recorded): a skip would leave the run green with
        point-in-time recovery never drilled."""
        from include.backup_dr.drill import pitr as pitrs
        from include.backup_dr.restore.errors import DrillFailed

        context = _label(server)
        policy_now, stores = _runtime()
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        document = pitrs.drill(policy_now, stores, server, dict(context["params"]), run)
        if document["outcome"] != "passed":
            raise DrillFailed(
                f"Point-in-time recovery drill of {server} failed: "
                + "; ".join(document["problems"])
            )
        keys = ("target", "target_time", "proof", "outcome", "evidence_prefix")
        return {key: document[key] for key in keys}

    with DAG(
        dag_id="restore_verification",
        schedule=drill.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        max_active_tasks=recovery.concurrency,
        default_args=_default_args(),
        tags=["restore", "drill", "iso27001"],
        doc_md=_drill_doc(policy),
        params={
            "target": Param(None, type=["null", "string"], description="one target (default: all)"),
            "tier": Param(drill.tier, enum=tiers, description="tier to restore from"),
            "region": Param(drill.region, enum=["primary", "secondary"]),
            "backup": Param(None, type=["null", "string"], description="window, ISO 8601"),
        },
    ) as dag:
        reports = per_target.expand(ref=select())
        reports >> estate()
        pitr.expand(server=pitr_servers())
    return dag


def _dr_restore_params(policy: Policy) -> dict[str, Param]:
    """The trigger form of dr_restore. In a disaster it must submit with only what a database
    restore needs (targets): every other param has a default or may stay empty. Nothing runs
    before a human approves the plan (Required Actions)."""
    destinations = [d.conn_id for d in policy.recovery().destinations]
    production = sorted((t for t in policy.targets if t.is_production), key=lambda t: t.priority)
    in_use = {t.category for t in production}
    tiers = [
        name
        for name in KNOWN_TIERS
        if any(name in policy.categories[c].scheduled_tiers() for c in in_use)
    ]
    return {
        "targets": Param(
            [],
            type="array",
            examples=[t.name for t in production],
            items={"type": "string", "enum": [t.name for t in production]},
            description="Production targets to restore; they start highest priority first, "
            "in parallel within the policy's limits",
        ),
        "connection": Param(
            destinations[0],
            enum=destinations,
            description="The PostgreSQL server the databases are restored into (the policy's "
            "disaster_recovery.destinations; each has a pool bounding restores into it)",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="Plan only: check the request and show what would be restored, from "
            "which backup, and how long it would take; nothing is approved or restored",
        ),
        "overwrite": Param(
            False,
            type="boolean",
            description="Replace a database or destination that is not empty (refused otherwise)",
        ),
        "region": Param(
            "secondary",
            enum=["primary", "secondary"],
            description=f"Region whose backups are restored: primary "
            f"({policy.regions.primary.name}) or secondary ({policy.regions.secondary.name})",
        ),
        "tier": Param(
            "daily",
            enum=tiers,
            description="Tier whose newest verified backup is restored (ignored with target_time)",
        ),
        "backup": Param(
            None,
            type=["null", "string"],
            description="A backup window (ISO 8601) instead of the newest verified backup; "
            "one target only. Empty: the newest",
        ),
        "target_time": Param(
            None,
            type=["null", "string"],
            description="Databases: recover to this second (ISO 8601, or 'latest') from a "
            "base backup and the WAL archive. Empty: restore the tier's dump. What each region "
            "can recover to is a set of intervals, holes named: the recovery_window rows of "
            "the Backup compliance page (or `python -m include.backup_dr check`). A time in a "
            "hole is refused, and so is 'latest' when replay would stop at a gap",
        ),
        "bucket_connection": Param(
            "s3_restore_sandbox",
            type="string",
            description="Media: Airflow connection of the destination bucket",
        ),
        "bucket": Param(
            None,
            type=["null", "string"],
            description="Media: the bucket the objects are restored into (needed for media "
            "targets)",
        ),
        "prefix": Param(
            None,
            type=["null", "string"],
            description="Media: restore only the keys under this prefix. Empty: every key",
        ),
        "dest_prefix": Param(
            None,
            type=["null", "string"],
            description="Media: write each key under this prefix in the bucket. Empty: as is",
        ),
    }


class RestoreApprovalNotifier(BaseNotifier):
    """Tells on-call that a dr_restore plan waits for them, and where to answer it."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.alerts import send_message

        ti = context["ti"]
        plan = (ti.xcom_pull(task_ids="plan") or {}).get("markdown", "")
        send_message(
            "[backup] dr_restore: approval needed before anything is restored",
            f"{plan}\n\nApprove or reject under Browse > Required Actions "
            f"({getattr(ti, 'log_url', '') or 'dr_restore'}).\n",
            context,
            source="dr_restore",
        )


#: Restores go ahead of routine backups and checks when they share workers and pools.
DR_PRIORITY_WEIGHT = 100


def _restore_lanes(policy: Policy) -> list[tuple[str, str]]:
    """(lane, pool) per restore task of dr_restore: one per destination server, and media."""
    from include.backup_dr.dr.request import MEDIA_POOL

    return [(d.conn_id, d.pool) for d in policy.recovery().destinations] + [("media", MEDIA_POOL)]


def _dr_restore_doc(policy: Policy) -> str:
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


def build_dr_restore_dag(policy: Policy) -> DAG:
    """`dr_restore`: plan -> (dry run stops) -> approve -> restore per target, in parallel by
    priority within pools -> one record for the run."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    recovery = policy.recovery()
    lanes = _restore_lanes(policy)

    @task(task_id="plan", multiple_outputs=False)
    def plan() -> dict[str, Any]:
        from include.backup_dr.dr.request import DrRequest, make_plan

        context = get_current_context()
        policy_now, stores = _runtime()
        request = DrRequest.from_params(policy_now, dict(context["params"]))
        made = make_plan(policy_now, stores, request, datetime.now(UTC))
        log.info(
            "The plan%s:\n%s", " (dry run: nothing is restored)" * request.dry_run, made.markdown()
        )
        return made.to_document()

    @task.short_circuit(task_id="live", ignore_downstream_trigger_rules=True)
    def live(planned: dict[str, Any]) -> bool:
        """A dry run ends with the plan; nothing is approved or restored."""
        return not planned["request"]["dry_run"]

    def units(planned: dict[str, Any], lane: str) -> list[dict[str, Any]]:
        """The plan's units for one lane (media, or the destination server), in priority
        order: Airflow starts a mapped task's instances in map-index order among equal
        priority weights."""
        connection = planned["request"]["connection"]
        return [
            u
            for u in planned["units"]
            if (u["kind"] == "media") == (lane == "media") and lane in ("media", connection)
        ]

    def restore(unit: dict[str, Any]) -> list[dict[str, Any]]:
        from include.backup_dr.dr.dumps import raise_for, restore_unit
        from include.backup_dr.dr.request import DrRequest, Unit

        context = _label(unit["name"])
        ti = context["ti"]
        planned = ti.xcom_pull(task_ids="plan")
        approval = ti.xcom_pull(task_ids="approve") or {}
        approver = approval.get("responded_by_user") or {}
        began = _began(approval, planned)
        run = {
            "dag_id": context["dag"].dag_id,
            "run_id": context["run_id"],
            "approved_by": approver.get("name") or approver.get("id") or "-",
            "approved_at": began.isoformat(),
        }
        policy_now, stores = _runtime()
        records = restore_unit(
            policy_now,
            stores,
            DrRequest.from_document(planned["request"]),
            Unit.from_document(unit),
            run,
            began,
        )
        # Pushed before failing, so `record` sees a failed target's evidence too.
        ti.xcom_push(key="records", value=[_brief(r) for r in records])
        raise_for(records)
        return [_brief(r) for r in records]

    @task(
        task_id="record",
        multiple_outputs=False,
        trigger_rule="all_done",
        retries=0,
        on_failure_callback=[_RunRecordNotifier()],
    )
    def record() -> dict[str, Any]:

        from include.backup_dr.restore.errors import DrillFailed
        from include.backup_dr.restore.record import record_estate

        context = get_current_context()
        ti = context["ti"]
        planned = ti.xcom_pull(task_ids="plan")
        approval = ti.xcom_pull(task_ids="approve") or {}
        if planned is None:  # the request was refused: the run must not end green
            raise DrillFailed("dr_restore was refused before anything was touched (see `plan`)")
        if not approval:  # a timeout or a broken approval: nothing ran, and it must show red
            raise DrillFailed("dr_restore was not approved (timed out or failed): nothing restored")
        records = [
            r
            for lane, _ in lanes
            for found in _all_mapped(ti, f"{lane}.restore", len(units(planned, lane)))
            for r in found or []
        ]
        if not records:  # a rejection or a dry run never gets here: they skip this task
            raise DrillFailed(
                "dr_restore restored nothing: the approval or every restore task failed "
                "(see their logs)"
            )
        policy_now, stores = _runtime()
        approver = approval.get("responded_by_user") or {}
        document = record_estate(
            policy_now,
            stores,
            "dr_restore",
            {
                "dag_id": context["dag"].dag_id,
                "run_id": context["run_id"],
                "approved_by": approver.get("name") or approver.get("id") or "-",
            },
            records,
            _began(approval, planned),
            planned["estate"],
        )
        _raise_for_run(document)
        return {k: document[k] for k in ("wall_seconds", "rto_seconds", "within_rto", "evidence")}

    with DAG(
        dag_id="dr_restore",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        max_active_tasks=recovery.concurrency,
        default_args={**_default_args(), "retries": 0},
        tags=["restore", "disaster-recovery"],
        doc_md=_dr_restore_doc(policy),
        params=_dr_restore_params(policy),
    ) as dag:
        planned = plan()
        approve = ApprovalOperator(
            task_id="approve",
            subject="Restore {{ params.targets | join(', ') }} into {{ params.connection }}?",
            body="{{ ti.xcom_pull(task_ids='plan')['markdown'] }}",
            response_timeout=recovery.approval_timeout,
            notifiers=[RestoreApprovalNotifier()],
            fail_on_reject=False,
            ignore_downstream_trigger_rules=True,
            retries=0,
        )
        live(planned) >> approve
        restores = []
        for lane, pool in lanes:
            with TaskGroup(group_id=lane):
                chosen = task(units, task_id="units")(planned, lane)
                approve >> chosen
                restores.append(
                    task(
                        restore,
                        task_id="restore",
                        pool=pool,
                        priority_weight=DR_PRIORITY_WEIGHT,
                        weight_rule="absolute",
                        execution_timeout=TIMEOUTS["snapshot"],
                        **LABELLED,
                        **placement("restore"),
                    ).expand(unit=chosen)
                )
        restores >> record()
    return dag


def _raise_for_run(document: dict[str, Any]) -> None:
    """Fail a run's record when it failed: its task is the run's last, so its state is the
    run's (targets that failed raise TargetsFailed, which pages no second time)."""
    from include.backup_dr.restore.errors import DrillFailed, TargetsFailed

    failed = [t["target"] for t in document["targets"] if t["outcome"] != "passed"]
    if failed:
        raise TargetsFailed(f"{document['kind']}: {', '.join(failed)} failed (see their tasks)")
    if document["outcome"] != "passed":
        raise DrillFailed(f"{document['kind']}: " + "; ".join(document["problems"]))


def _began(approval: dict[str, Any], planned: dict[str, Any]) -> datetime:
    """When the restores were allowed to start: the approval (else the plan, for the record)."""
    at = approval.get("responded_at") or planned["planned_at"]
    return at if isinstance(at, datetime) else datetime.fromisoformat(str(at))


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("target", "outcome", "problems", "recorded_at", "steps", "evidence_prefix")
    return {k: record.get(k) for k in keys}


def _all_mapped(ti: Any, task_id: str, count: int) -> list[Any]:
    """Every map index's `records` of a mapped task (a failed one pushed them before failing)."""
    if not count:
        return []
    found = ti.xcom_pull(task_ids=task_id, key="records", map_indexes=list(range(count)))
    return list(found or [])


class _RunRecordNotifier(OnCallNotifier):
    """Pages when a restore run's own record is red (over the RTO, evidence lost, nothing
    restored); not for targets that failed, whose own tasks have paged once each."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.restore.errors import TargetsFailed

        if isinstance(context.get("exception"), TargetsFailed):
            return
        super().notify(context)


class _MonitorFailureNotifier(OnCallNotifier):
    """Pages when the monitor itself breaks (primary or store unreachable); not when it failed
    red on an open condition, which `continuous.measure` has already paged once for."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.monitor.lag import ConditionsOpenError

        if isinstance(context.get("exception"), ConditionsOpenError):
            return
        super().notify(context)


def _monitor_doc(policy: Policy) -> str:
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


def build_continuous_monitor_dag(policy: Policy) -> DAG:
    """`<category>_continuous_monitor`: a mapped `measure` per continuous server, every minute."""
    settings = policy.continuous
    assert settings is not None
    monitor = settings.monitor
    default_duration = int(monitor.duration.total_seconds())

    @task(task_id="servers")
    def select_servers() -> list[str]:
        return [server.name for server in load_policy().continuous_servers()]

    # Longest run: the duration, then the last heartbeat's 10 s visibility limit, then the reads.
    @task(
        retries=0,  # the next run is a minute away
        multiple_outputs=False,
        execution_timeout=monitor.duration + timedelta(seconds=40),
        on_failure_callback=[_MonitorFailureNotifier()],
        **LABELLED,
    )
    def measure(server: str) -> dict[str, Any]:
        from include.backup_dr.monitor import continuous
        from include.backup_dr.monitor.lag import ConditionsOpenError

        context = _label(server)
        policy_now, stores = _runtime()
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        duration = float(context["params"]["duration_seconds"])
        doc = continuous.measure(policy_now, stores, server, duration, run, context=context)
        summary = {
            "server": server,
            "evidence": doc["key"],
            "stats": doc["stats"],
            "end_segment": doc["end_segment"],
            "conditions": doc["conditions"],
        }
        if opened := continuous.open_conditions(doc):
            lag = doc["stats"]["p99_ms"]
            raise ConditionsOpenError(
                f"{server}: {', '.join(opened)} (lag p99 "
                f"{'not measurable' if lag is None else f'{lag} ms'}, RPO {doc['rpo_seconds']} s);"
                f" on-call is paged once per breach; evidence {doc['key']}"
            )
        return summary

    @task(retries=0, execution_timeout=timedelta(seconds=50))
    def lock_wal() -> list[dict[str, Any]]:
        """Lock the WAL archived since the last run, in every region that locks."""
        from include.backup_dr.engines.wal import lock_archive
        from include.backup_dr.lease import LeaseBusyError
        from include.backup_dr.store import StoreError

        policy_now, stores = _runtime()
        assert policy_now.continuous is not None
        done, failed = [], []
        for store in stores:  # one region down never stops the other's locking
            if store.lock is None:
                continue
            for server in policy_now.continuous_servers():
                try:
                    done.append(lock_archive(store, server.name, policy_now.continuous.category))
                except (StoreError, LeaseBusyError) as exc:
                    log.error("lock_wal in %s for %s: %s", store.region.name, server.name, exc)
                    failed.append(f"{store.region.name}/{server.name}: {exc}")
        if failed:
            raise StoreError("WAL could not be locked in " + "; ".join(failed))
        return done

    with DAG(
        dag_id=f"{settings.category}_continuous_monitor",
        schedule=monitor.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args={**_default_args(), "retries": 0},
        tags=["monitor", "continuous", f"category:{settings.category}"],
        doc_md=_monitor_doc(policy),
        params={
            "duration_seconds": Param(
                default_duration,
                type="integer",
                minimum=1,
                maximum=default_duration,
                description="how long to write a heartbeat a second (shorter for a quick check)",
            ),
        },
    ) as dag:
        measure.expand(server=select_servers())
        if policy.locked_regions():
            lock_wal()
    return dag


def _compliance_doc(policy: Policy) -> str:
    from include.backup_dr.monitor.output import human

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


def build_compliance_dag(policy: Policy) -> DAG:
    """`backup_compliance`: every promise judged from the store; pages once per breach."""

    @task(
        retries=0,  # the next run is minutes away
        multiple_outputs=False,
        execution_timeout=timedelta(minutes=10),
        on_failure_callback=[_MonitorFailureNotifier()],
    )
    def check_promises() -> dict[str, Any]:
        from include.backup_dr.monitor import record
        from include.backup_dr.monitor.lag import ConditionsOpenError

        context = get_current_context()
        policy_now, stores = _runtime()
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        document = record.run(policy_now, list(stores), run, context=context)
        red = [c["id"] for c in document["checks"] if c["status"] in ("CRITICAL", "UNKNOWN")]
        if red:
            raise ConditionsOpenError(
                f"{len(red)} check(s) red: {', '.join(red[:8])}"
                + (f" and {len(red) - 8} more" if len(red) > 8 else "")
                + f"; on-call is paged once per breach; evidence {document['key']}"
            )
        return {"status": document["status"], "counts": document["counts"]}

    with DAG(
        dag_id="backup_compliance",
        schedule=policy.compliance.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args={**_default_args(), "retries": 0},
        tags=["monitor", "compliance", "iso27001"],
        doc_md=_compliance_doc(policy),
    ) as dag:
        check_promises()
    return dag


#: `backup_audit_report`: on 2 January, once the last windows of the year are checked.
AUDIT_SCHEDULE = "0 6 2 1 *"


def build_audit_dag(policy: Policy) -> DAG:
    """`backup_audit_report`: the year's audit report, from the store, kept as evidence."""

    @task(multiple_outputs=False, execution_timeout=timedelta(hours=2))
    def write_report() -> dict[str, str]:
        from include.backup_dr.audit import build_audit, run_period, write_evidence

        context = get_current_context()
        policy_now, stores = _runtime()
        start, end = run_period(context["logical_date"], context["params"])
        report = build_audit(policy_now, stores, start, end)
        prefix = write_evidence(report, stores)
        log.info("%d exception(s) in the audit of %s to %s", len(report.exceptions), start, end)
        return {"from": start.isoformat(), "to": end.isoformat(), "evidence": prefix}

    with DAG(
        dag_id="backup_audit_report",
        schedule=AUDIT_SCHEDULE,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=_default_args(),
        params={
            "from": Param(
                None,
                type=["null", "string"],
                format="date",
                description="First day reported (YYYY-MM-DD). Empty: 1 January of the year "
                "before the run. Give `to` too.",
            ),
            "to": Param(
                None,
                type=["null", "string"],
                format="date",
                description="Last day reported, included (YYYY-MM-DD). Empty: 31 December of "
                "the year before the run.",
            ),
        },
        tags=["compliance", "audit", "iso27001"],
        doc_md=f"""### The annual audit report

Every `{AUDIT_SCHEDULE}` (2 January) this DAG reads the evidence of the previous calendar year
from both regions' stores (never Airflow's database): expected windows of every tier against
those backed up and verified in every region (missed and backfilled ones listed), integrity
results, prune decisions with their reasons, and the restore drills' RTO and RPO against the
policy ({format_duration(policy.objectives.rto)} RTO), each line with its ISO 27001 control.
It writes `evidence/audit/<from>-<to>/<time>-<id>/report.md` and `report.html` to both regions.
Params `from` / `to` report another period. The same from a shell:
`python -m include.backup_dr audit --from 2026-01-01 --to 2026-12-31 --out DIR`.
""",
    ) as dag:
        write_report()
    return dag


#: How long on-call has to answer the approval before the run fails (and pages); nothing
#: changes on the servers until someone approves.
FAILOVER_APPROVAL_TIMEOUT = timedelta(hours=1)


def _failover_doc(policy: Policy) -> str:
    servers = ", ".join(f"`{name}`" for name in _failover_servers(policy)) or "(none)"
    return f"""### Fail a database server over to its standby (manual)

On-call's path when a primary is lost. Servers with a standby: {servers}.

1. `preflight`: the standby answers and is in recovery; its replay position; its newest
   heartbeat against the newest the continuous monitor recorded on the primary: the **loss so
   far**. Refuses while the old primary still answers, unless `planned` is true (a switchover:
   the old primary is stopped first and the standby replays everything it flushed: no loss).
2. `approve`: **Browse > Required Actions** shows the plan (server, standby, loss so far, what
   happens to the old primary). Reject, or no answer within
   {format_duration(FAILOVER_APPROVAL_TIMEOUT)}, changes nothing; a timeout pages on-call.
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


class FailoverApprovalNotifier(BaseNotifier):
    """Tells on-call that a failover waits for them: the plan, and where to answer it."""

    def notify(self, context: Any) -> None:
        from include.backup_dr.alerts import send_message

        ti = context["ti"]
        plan = (ti.xcom_pull(task_ids="preflight") or {}).get("plan", "")
        server = context["params"]["server"]
        send_message(
            f"[backup] dr_failover: approval needed to fail {server} over",
            f"{plan}\n\nApprove or reject under Browse > Required Actions "
            f"({getattr(ti, 'log_url', '') or 'dr_failover'}).\n",
            context,
            source="dr_failover",
        )


def _failover_servers(policy: Policy) -> list[str]:
    from include.backup_dr.dr.failover import failover_servers

    return failover_servers(policy)


def build_failover_dag(policy: Policy) -> DAG:
    """`dr_failover`: preflight -> approve (Human-in-the-loop) -> fence -> promote -> follow
    -> archive_timeline -> base_backup, and rebuild_standby; evidence at the end."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    servers = _failover_servers(policy)
    continuous_dag = (
        dag_id_for(policy.continuous.category, CONTINUOUS) if policy.continuous else None
    )

    def _server_and_wait() -> tuple[Any, str, float]:
        context = get_current_context()
        params = context["params"]
        return context, str(params["server"]), float(params["wait_seconds"])

    @task(retries=0, multiple_outputs=False)
    def preflight() -> dict[str, Any]:
        """Measure first, change nothing; refuse a split brain."""
        import uuid

        from include.backup_dr.dr import failover, failover_steps

        context, server, _ = _server_and_wait()
        policy_now, stores = _runtime()
        checked = failover_steps.preflight(
            policy_now, list(stores), server, planned=bool(context["params"]["planned"])
        )
        log.info("Preflight of %s: %s", server, checked)
        if reason := failover.refusal(checked):
            raise AirflowFailException(reason)
        return {
            "failover_id": uuid.uuid4().hex[:12],
            "preflight": checked.to_document(),
            "plan": failover.plan_text(policy_now, checked),
        }

    @task(retries=0, multiple_outputs=False)
    def fence(checked: dict[str, Any]) -> dict[str, Any]:
        """Stop the old primary for good before anything is promoted."""
        from include.backup_dr.dr import failover_steps

        context, server, wait = _server_and_wait()
        policy_now, stores = _runtime()
        return failover_steps.fence(
            policy_now,
            list(stores),
            server,
            checked["failover_id"],
            planned=bool(context["params"]["planned"]),
            wait_seconds=wait,
        )

    @task(retries=0, multiple_outputs=False)
    def promote(fenced: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.dr import failover_steps

        _, server, wait = _server_and_wait()
        policy_now, stores = _runtime()
        return failover_steps.promote(policy_now, list(stores), server, wait_seconds=wait)

    @task(retries=0, multiple_outputs=False)
    def follow(checked: dict[str, Any], promoted: dict[str, Any]) -> dict[str, Any]:
        """Record the new primary in the store: backups and the monitor follow it."""
        from include.backup_dr.dr import failover_steps
        from include.backup_dr.roles import current_roles

        _, server, _ = _server_and_wait()
        policy_now, stores = _runtime()
        roles = current_roles(policy_now, list(stores), server)
        return failover_steps.record_new_primary(
            list(stores), roles, promoted, checked["failover_id"]
        ).to_document()

    @task(retries=0, multiple_outputs=False)
    def archive_timeline(promoted: dict[str, Any], followed: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.dr import failover_steps

        _, server, wait = _server_and_wait()
        _, stores = _runtime()
        return failover_steps.archive_timeline(
            list(stores), server, int(promoted["timeline"]), wait_seconds=wait
        )

    # A new standby copies the whole cluster: hours for a large one.
    @task(retries=0, multiple_outputs=False, execution_timeout=timedelta(hours=12))
    def rebuild_standby(checked: dict[str, Any], followed: dict[str, Any]) -> dict[str, Any]:
        from include.backup_dr.dr import failover_steps

        _, server, wait = _server_and_wait()
        policy_now, stores = _runtime()
        return failover_steps.rebuild_standby(
            policy_now,
            list(stores),
            server,
            checked["failover_id"],
            checked["preflight"]["primary_conn_id"],
            wait_seconds=wait,
        ).to_document()

    @task(retries=0, multiple_outputs=False, trigger_rule="all_done")
    def evidence() -> dict[str, Any]:
        """Whatever happened after the approval, in both regions."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.backup_dr.dr import failover_steps
        from include.backup_dr.dr.failover import FailoverRecord, old_primary_fate

        context, server, _ = _server_and_wait()
        ti = context["ti"]

        def pulled(task_id: str) -> dict[str, Any]:
            return ti.xcom_pull(task_ids=task_id) or {}

        checked, approval, promoted = pulled("preflight"), pulled("approve"), pulled("promote")
        if not promoted:
            raise AirflowSkipException("nothing was promoted: nothing changed, nothing to record")
        policy_now, stores = _runtime()
        fenced, followed = pulled("fence"), pulled("follow")
        archived, rebuilt = pulled("archive_timeline"), pulled("rebuild_standby")
        approver = approval.get("responded_by_user") or {}
        steps = ["follow", "archive_timeline", "base_backup", "rebuild_standby"]
        found = ti.get_task_states(
            dag_id=context["dag"].dag_id, task_ids=steps, run_ids=[context["run_id"]]
        )
        states = {t: str(found.get(context["run_id"], {}).get(t)) for t in steps}
        record = FailoverRecord(
            server=server,
            failover_id=checked["failover_id"],
            run={"dag_id": context["dag"].dag_id, "run_id": context["run_id"]},
            planned=bool(context["params"]["planned"]),
            preflight_at=checked["preflight"]["checked_at"],
            approved_at=_iso(approval.get("responded_at")),
            approved_by=approver.get("name") or approver.get("id"),
            fenced_at=fenced.get("fenced_at"),
            old_primary=(
                f"{checked['preflight']['primary_conn_id']}: "
                + old_primary_fate(policy_now, server)
                + (f"; now the standby (slot {rebuilt.get('slot')})" if rebuilt else "")
            ),
            promoted_at=promoted.get("promoted_at"),
            writable_at=promoted.get("writable_at"),
            timeline=promoted.get("timeline"),
            history_file=archived.get("history_file"),
            history_regions=archived.get("regions", []),
            new_primary_conn_id=promoted.get("new_primary_conn_id"),
            standby_conn_id=rebuilt.get("standby_conn_id") if rebuilt else None,
            loss=checked["preflight"]["loss"],
            base_backup_run=f"{continuous_dag}: after_failover__{context['run_id']}"
            if states["base_backup"] == "success"
            else None,
            outcome="promoted" if followed else "promoted, not followed",
            problems=[f"{t}: {s}" for t, s in states.items() if s != "success"],
        )
        document = failover_steps.write_record(list(stores), record, datetime.now(UTC))
        if record.problems:  # recorded first; the run still ends red, naming what is left
            raise AirflowFailException(
                f"{server} failed over (evidence {document['key']}), but: "
                + "; ".join(record.problems)
            )
        return document

    with DAG(
        dag_id="dr_failover",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args={**_default_args(), "retries": 0},
        tags=["disaster-recovery", "failover", "iso27001"],
        doc_md=_failover_doc(policy),
        params={
            "server": Param(
                servers[0] if servers else None,
                type="string",
                enum=servers,
                description="The server whose primary is lost (one with a standby)",
            ),
            "planned": Param(
                False,
                type="boolean",
                description="A switchover while the primary still answers: stop it first and "
                "lose nothing. Without it, a primary that answers makes preflight refuse.",
            ),
            "wait_seconds": Param(
                300,
                type="integer",
                minimum=5,
                description="How long each wait may take (caught up, writable, history "
                "archived, new standby streaming)",
            ),
        },
    ) as dag:
        checked = preflight()
        # Inside the DAG, so a timeout fails it with the on-call page of every task.
        approve = ApprovalOperator(
            task_id="approve",
            subject="Fail {{ params.server }} over to its standby?",
            body="{{ ti.xcom_pull(task_ids='preflight')['plan'] }}",
            response_timeout=FAILOVER_APPROVAL_TIMEOUT,
            notifiers=[FailoverApprovalNotifier()],
            fail_on_reject=False,
            ignore_downstream_trigger_rules=True,
            retries=0,
        )
        fenced = fence(checked)
        checked >> approve >> fenced
        promoted = promote(fenced)
        followed = follow(checked, promoted)
        archived = archive_timeline(promoted, followed)
        chain: list[Any] = [archived]
        if continuous_dag is not None:
            base_backup = TriggerDagRunOperator(
                task_id="base_backup",
                trigger_dag_id=continuous_dag,
                trigger_run_id="after_failover__{{ run_id }}",
                retries=0,
            )
            archived >> base_backup
            chain = [base_backup]
        rebuilt = rebuild_standby(checked, followed)
        [*chain, rebuilt] >> evidence()
    return dag


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)
