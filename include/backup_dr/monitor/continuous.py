"""`platform_continuous_monitor`'s I/O: measure end-to-end replication lag with a heartbeat, read
the primary's replication and archiver views, page on-call once per breach, and leave evidence.

Lag is measured, not inferred: once a second (on a fixed grid from the start) a heartbeat row is
committed on the primary, and the standby is polled every few milliseconds until that row is
visible there. `now() - pg_last_xact_replay_timestamp()` would only measure idle time.
The heartbeats double as recovery points for the PITR drill: each sample's `written_at` (the
database's clock) and the run's `end_segment` (the WAL file holding the last heartbeat).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr.evidence import evidence_key, read_newest, write_everywhere
from include.backup_dr.monitor.checks.server_config import SERVER_SETTINGS, server_config_status
from include.backup_dr.monitor.lag import (
    CONDITIONS,
    SAMPLE_TIMEOUT_MS,
    Alert,
    archive_failing,
    lag_breached,
    lag_stats,
    longest_run_over,
    plan_alerts,
    record_sent,
    standby_gone,
)
from include.backup_dr.policy import Policy, Server, format_duration
from include.backup_dr.store import StoreError

log = logging.getLogger(__name__)

SCHEMA = "backup-dr/continuous-monitor/v1"
STATE_SCHEMA = "backup-dr/continuous-monitor-state/v1"
#: How often the standby is asked whether the newest heartbeats have arrived.
POLL_INTERVAL_S = 0.005

_SETUP_SQL = """
CREATE SCHEMA IF NOT EXISTS backup_dr;
CREATE TABLE IF NOT EXISTS backup_dr.heartbeat (
    seq bigserial PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_id text
)
"""
#: Trims the oldest heartbeats past the recovery window, a bounded batch per run, along the
#: primary key (a recovery to any second inside the window still finds its heartbeat).
_TRIM_SQL = """
DELETE FROM backup_dr.heartbeat
WHERE seq IN (SELECT seq FROM backup_dr.heartbeat ORDER BY seq LIMIT 1000)
  AND written_at < now() - %s
"""
_INSERT_SQL = "INSERT INTO backup_dr.heartbeat (run_id) VALUES (%s) RETURNING seq, written_at"
_VISIBLE_SQL = "SELECT seq FROM backup_dr.heartbeat WHERE seq = ANY(%s)"
_REPLICATION_SQL = """
SELECT r.application_name, r.state, r.sync_state,
       extract(epoch FROM r.write_lag) * 1000, extract(epoch FROM r.flush_lag) * 1000,
       extract(epoch FROM r.replay_lag) * 1000, r.sent_lsn::text, r.replay_lsn::text
FROM pg_stat_replication r
WHERE r.pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = %(slot)s)
   OR r.application_name = %(slot)s
ORDER BY (r.pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = %(slot)s)) DESC
LIMIT 1
"""
_ARCHIVER_SQL = """
SELECT archived_count, failed_count, last_archived_wal, last_archived_time, last_failed_wal,
       last_failed_time, extract(epoch FROM now() - last_archived_time)
FROM pg_stat_archiver
"""
_SLOT_SQL = """
SELECT active, wal_status, (pg_current_wal_lsn() - restart_lsn)::bigint, restart_lsn::text
FROM pg_replication_slots WHERE slot_name = %s
"""
_SETTINGS_SQL = "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)"
_BACKLOG_SQL = "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
_END_SQL = """
SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn()),
       (SELECT timeline_id FROM pg_control_checkpoint())
"""


def state_key(server: str) -> str:
    return f"state/continuous_monitor/{server}.json"


def evidence_prefix(server: str) -> str:
    """Where a server's monitor evidence goes; keys below it start with the UTC date and time."""
    return f"evidence/continuous_monitor/{server}/"


def _connect(conn_id: str, database: str, *, readonly: bool) -> Any:
    from include.backup_dr.postgres import PgConnectionInfo

    conn = PgConnectionInfo.from_airflow(conn_id, database).connect()
    conn.set_session(readonly=readonly, autocommit=True)
    return conn


class _Standby:
    """The standby's read-only connection; failing to connect, or losing the connection, marks it
    unreachable for the rest of the run instead of stopping the measurement (its absence is a
    finding, not a crash)."""

    def __init__(self, conn_id: str | None, database: str) -> None:
        self.error: str | None = None
        self.conn: Any = None
        if conn_id is None:  # promoted by dr_failover, none rebuilt yet
            self.error = "no standby: none has been rebuilt since the last failover"
            return
        try:
            self.conn = _connect(conn_id, database, readonly=True)
        except Exception as exc:  # unreachable, refused, auth: all mean "standby gone"
            self._lost(exc)

    @property
    def reachable(self) -> bool:
        return self.conn is not None

    def visible(self, seqs: list[int]) -> set[int]:
        import psycopg2

        if self.conn is None:
            return set()
        try:
            with self.conn.cursor() as cur:
                cur.execute(_VISIBLE_SQL, (seqs,))
                return {row[0] for row in cur.fetchall()}
        except psycopg2.errors.UndefinedTable:
            return set()  # the heartbeat table itself has not been replayed yet
        except psycopg2.Error as exc:
            if self.conn.closed:
                self._lost(exc)
            else:  # e.g. cancelled by a recovery conflict: this poll saw nothing, try again
                self.error = _first_line(exc)
            return set()

    def _lost(self, exc: BaseException) -> None:
        self.error = _first_line(exc)
        log.warning("Standby unreachable: %s", self.error)
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _heartbeats(primary: Any, standby: _Standby, duration: float, run_id: str) -> list[dict]:
    """One heartbeat a second for `duration`, each timed from commit to visible on the standby.

    A single loop both writes on the 1 s grid and polls every 5 ms, so slow visibility never
    delays the next heartbeat (and one connection each is reused throughout).
    """
    count = max(1, int(duration))
    start = time.monotonic()
    next_index = 0
    samples: list[dict[str, Any]] = []
    pending: dict[int, tuple[dict[str, Any], float]] = {}
    while next_index < count or pending:
        now = time.monotonic()
        if next_index < count and now >= start + next_index:
            with primary.cursor() as cur:
                cur.execute(_INSERT_SQL, (run_id,))
                seq, written_at = cur.fetchone()
            committed = time.monotonic()  # autocommit: the row is durable on the primary now
            sample = {"seq": seq, "written_at": written_at.isoformat(), "lag_ms": None}
            samples.append(sample)
            pending[seq] = (sample, committed)
            # A stalled primary skips grid points rather than bunching heartbeats together.
            next_index = max(next_index + 1, int(committed - start) + 1)
        if pending:
            seen = standby.visible(sorted(pending))
            observed = time.monotonic()
            for seq in list(pending):
                sample, committed = pending[seq]
                if seq in seen:
                    sample.update(lag_ms=round((observed - committed) * 1000, 3), status="visible")
                elif not standby.reachable:
                    sample.update(status="unmeasured")
                elif (observed - committed) * 1000 >= SAMPLE_TIMEOUT_MS:
                    sample.update(lag_ms=SAMPLE_TIMEOUT_MS, status="timed_out")
                else:
                    continue
                del pending[seq]
        wake = start + next_index if next_index < count else float("inf")
        if pending:
            wake = min(wake, time.monotonic() + POLL_INTERVAL_S)
        if wake != float("inf"):
            time.sleep(max(0.0, wake - time.monotonic()))
    return samples


def _one(conn: Any, sql: str, params: Any = None) -> tuple | None:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _ms(value: Any) -> float | None:
    return round(float(value), 3) if value is not None else None


def _primary_facts(conn: Any, slot: str) -> dict[str, Any]:
    """pg_stat_replication (for the standby), pg_stat_archiver, the slot, the archive backlog,
    and the settings the continuous tier depends on (compared with the policy)."""
    import psycopg2

    rep = _one(conn, _REPLICATION_SQL, {"slot": slot})
    replication = (
        None
        if rep is None
        else {
            "application_name": rep[0],
            "state": rep[1],
            "sync_state": rep[2],
            "write_lag_ms": _ms(rep[3]),
            "flush_lag_ms": _ms(rep[4]),
            "replay_lag_ms": _ms(rep[5]),
            "sent_lsn": rep[6],
            "replay_lsn": rep[7],
        }
    )
    arch = _one(conn, _ARCHIVER_SQL)
    assert arch is not None
    archiver = {
        "archived_count": arch[0],
        "failed_count": arch[1],
        "last_archived_wal": arch[2],
        "last_archived_time": _iso(arch[3]),
        "last_failed_wal": arch[4],
        "last_failed_time": _iso(arch[5]),
        "archive_age_seconds": _ms(arch[6]),
    }
    try:
        backlog = _one(conn, _BACKLOG_SQL)
        archiver["ready_files"] = backlog[0] if backlog else None
    except psycopg2.Error as exc:  # needs superuser or pg_monitor: say so, keep measuring
        archiver["ready_files"] = None
        archiver["ready_files_error"] = str(exc).strip().splitlines()[0]
    row = _one(conn, _SLOT_SQL, (slot,))
    slot_facts = {
        "name": slot,
        "exists": row is not None,
        "active": row[0] if row else None,
        "wal_status": row[1] if row else None,
        "retained_bytes": row[2] if row else None,
        "restart_lsn": row[3] if row else None,
    }
    with conn.cursor() as cur:
        cur.execute(_SETTINGS_SQL, (list(SERVER_SETTINGS),))
        settings = dict(cur.fetchall())
    return {
        "replication": replication,
        "archiver": archiver,
        "slot": slot_facts,
        "settings": settings,
    }


def _message(
    alert: Alert, server: Server, doc: Mapping[str, Any], policy: Policy
) -> tuple[str, str]:
    """Title and text for on-call: the DAG, the server, the condition, the figures, the RPO."""
    assert policy.continuous is not None
    dag_id = doc["run"].get("dag_id") or "platform_continuous_monitor"
    rpo = format_duration(policy.categories[policy.continuous.category].rpo)
    timeout = f"{int(policy.continuous.archive_timeout.total_seconds())} s"
    stats, over = doc["stats"], doc["over_rpo"]
    slot, arch, rep = doc["slot"], doc["archiver"], doc["replication"] or {}
    what = {
        "lag": (
            f"replication lag over the {rpo} RPO for {over['max_consecutive']} consecutive "
            f"samples (alert after {doc['lag_alert_samples']})"
        ),
        "archive_failing": "WAL archiving is failing (pg_stat_archiver failed_count is growing)",
        "standby_gone": (
            f"the streaming standby ({doc['standby']['conn_id'] or 'none since the failover'}) is "
            f"gone; until it is back, losing the primary loses up to archive_timeout ({timeout})"
        ),
    }[alert.condition]
    prefix = "RESOLVED: " if alert.kind == "resolved" else ""
    title = f"[backup] {prefix}{dag_id}: {alert.condition} on {server.name}"
    lines = [
        f"DAG: {dag_id}",
        f"Run: {doc['run'].get('run_id', '')}",
        f"Server: {server.name}",
        f"Condition: {alert.condition} ({'cleared' if alert.kind == 'resolved' else what})",
        f"RPO: {rpo} ({doc['rpo_seconds']} s)",
        (
            f"Lag: {stats['count']} samples, p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms,"
            f" max {stats['max_ms']} ms; {over['count']} over the RPO, "
            f"{over['max_consecutive']} in a row"
            if stats["count"]
            else "Lag: not measurable (no heartbeat could be looked for on the standby)"
        )
        + f"; {doc['unmeasured']} heartbeat(s) unmeasured",
        f"Standby: reachable={doc['standby']['reachable']} "
        f"({doc['standby']['error'] or 'ok'}), replication state={rep.get('state')}, "
        f"replay_lag_ms={rep.get('replay_lag_ms')}",
        f"Slot {slot['name']}: active={slot['active']}, wal_status={slot['wal_status']}, "
        f"retained={slot['retained_bytes']} bytes",
        f"Archiver: failed_count={arch['failed_count']}, last_failed_wal={arch['last_failed_wal']}"
        f" at {arch['last_failed_time']}, last_archived_wal={arch['last_archived_wal']} at "
        f"{arch['last_archived_time']} (age {arch['archive_age_seconds']} s), "
        f"ready_files={arch.get('ready_files')}",
        f"Evidence: {doc['key']}",
    ]
    return title, "\n".join(lines) + "\n"


def measure(
    policy: Policy,
    stores: Any,
    server_name: str,
    duration: float,
    run: Mapping[str, Any],
    *,
    context: Any = None,
) -> dict[str, Any]:
    """One monitor run for one server: heartbeat for `duration` s, read the primary's views,
    send the alerts due (de-duplicated via the store), write evidence to both regions.

    Returns the evidence document; its `conditions` say what is open (the caller fails red).
    """
    from include.backup_dr.alerts import condition_key, send_message
    from include.backup_dr.postgres import database_of

    settings = policy.continuous
    assert settings is not None, "the policy has no continuous section"
    from include.backup_dr.roles import current_roles

    server = policy.server(server_name)
    assert server.standby is not None, f"server {server_name} has no standby in the policy"
    # The primary and standby now: the policy's, or what the last dr_failover recorded.
    roles = current_roles(policy, stores, server_name)
    slot = roles.slot or server.standby.slot
    rpo_seconds = policy.categories[settings.category].rpo.total_seconds()
    samples_needed = settings.monitor.lag_alert_samples
    database = database_of(roles.primary_conn_id)
    keep_heartbeats = policy.categories[settings.category].tiers["continuous"].retention
    keep_heartbeats += timedelta(days=1)
    started_at = datetime.now(UTC)
    key = evidence_key("continuous_monitor", server.name, started_at)

    primary = _connect(roles.primary_conn_id, database, readonly=False)
    standby = _Standby(roles.standby_conn_id, database)
    try:
        with primary.cursor() as cur:
            cur.execute(_SETUP_SQL)
        samples = _heartbeats(primary, standby, duration, str(run.get("run_id", "")))
        facts = _primary_facts(primary, slot)
        with primary.cursor() as cur:
            cur.execute(_TRIM_SQL, (keep_heartbeats,))
            trimmed = cur.rowcount
        end = _one(primary, _END_SQL)
        assert end is not None
    finally:
        standby.close()
        primary.close()
    finished_at = datetime.now(UTC)

    lags = [s["lag_ms"] for s in samples if s["lag_ms"] is not None]
    rpo_ms = rpo_seconds * 1000
    state = read_newest(stores, state_key(server.name)) or {}  # one region may be down
    open_conditions: dict[str, Any] = dict(state.get("open", {}))
    archiver = facts["archiver"]
    gone = standby_gone(
        streaming=facts["replication"] is not None,
        slot_active=facts["slot"]["active"],
        reachable=standby.reachable,
    )
    conditions = {
        # While the standby is gone its lag is a consequence, not a second page.
        "lag": not gone and lag_breached(lags, rpo_ms, samples_needed),
        "archive_failing": archive_failing(
            archiver["failed_count"],
            _parse(archiver["last_failed_time"]),
            _parse(archiver["last_archived_time"]),
            state.get("archiver_failed_count"),
            was_open="archive_failing" in open_conditions,
        ),
        "standby_gone": gone,
    }
    # Recorded for the compliance check `server_config` (which pages once per breach).
    config_status, config_problems = server_config_status(
        settings, facts["settings"], (facts["replication"] or {}).get("sync_state")
    )
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "key": key,
        "server": server.name,
        "run": dict(run),
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "duration_seconds": duration,
        "rpo_seconds": rpo_seconds,
        "lag_alert_samples": samples_needed,
        "samples": samples,
        "stats": lag_stats(lags),
        "over_rpo": {
            "count": sum(1 for lag in lags if lag > rpo_ms),
            "max_consecutive": longest_run_over(lags, rpo_ms),
        },
        "unmeasured": sum(1 for s in samples if s["lag_ms"] is None),
        "standby": {
            "conn_id": roles.standby_conn_id,
            "reachable": standby.reachable,
            "error": standby.error,
        },
        **facts,
        "archive_age_seconds": archiver["archive_age_seconds"],
        "heartbeats_trimmed": trimmed,
        "end_lsn": end[0],
        "end_segment": end[1],
        "timeline": end[2],
        "conditions": {name: conditions[name] for name in CONDITIONS},
        "server_config": {"status": config_status.name, "problems": config_problems},
        "alerts": [],
    }
    for alert in plan_alerts(open_conditions, conditions):
        title, text = _message(alert, server, doc, policy)
        channel = send_message(
            title,
            text,
            context,
            source=server.name,
            keys=[condition_key("continuous", server.name, alert.condition)],
            resolve=alert.kind == "resolved",
        )
        if channel is None:  # every channel failed: not recorded as sent, the next run retries
            doc["alerts"].append({**_alert_doc(alert), "sent": False})
            continue
        open_conditions = record_sent(
            open_conditions, alert, {"since": started_at.isoformat(), "evidence": key}
        )
        doc["alerts"].append({**_alert_doc(alert), "sent": True, "channel": channel})
    regions = [store.region.name for store in stores]
    written = write_everywhere(
        stores,
        state_key(server.name),
        {
            "schema": STATE_SCHEMA,
            "server": server.name,
            "updated_at": finished_at.isoformat(),
            "open": open_conditions,
            "archiver_failed_count": archiver["failed_count"],
            "last_evidence": key,
        },
    )
    written += write_everywhere(stores, key, doc)
    missing = [region for region in regions if written.count(region) < 2]
    if config_problems:
        log.warning("%s: server_config %s: %s", server.name, config_status.name, config_problems)
    log.info(
        "%s: %d samples, p50 %s ms, p99 %s ms, max %s ms (RPO %s s); conditions %s; evidence %s",
        server.name,
        doc["stats"]["count"],
        doc["stats"]["p50_ms"],
        doc["stats"]["p99_ms"],
        doc["stats"]["max_ms"],
        rpo_seconds,
        [name for name, on in conditions.items() if on] or "none",
        key,
    )
    if missing:  # the other region has the record; the task goes red so on-call looks
        raise StoreError(f"{server.name}: evidence {key} is missing in {missing}")
    return doc


def _alert_doc(alert: Alert) -> dict[str, str]:
    return {"kind": alert.kind, "condition": alert.condition}


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def open_conditions(doc: Mapping[str, Any]) -> list[str]:
    """The conditions a measurement found on, in message order."""
    return [name for name in CONDITIONS if doc["conditions"].get(name)]
