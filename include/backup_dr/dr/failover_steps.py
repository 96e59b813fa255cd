"""`dr_failover`'s I/O: measure before asking, fence, promote, archive the new timeline in both
regions, follow the new primary, rebuild a standby, and leave evidence. The rules these apply
live in `dr/failover.py`; every connection goes through `PgConnectionInfo.from_airflow`.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from include.backup_dr.dr.failover import (
    EVIDENCE_KIND,
    FailoverRecord,
    Heartbeat,
    Preflight,
    estimate_loss,
    new_slot,
    render,
)
from include.backup_dr.evidence import evidence_key, newest, write_everywhere
from include.backup_dr.pitr.heartbeat import HEARTBEAT_TABLE, MONITOR_EVIDENCE
from include.backup_dr.policy import Policy
from include.backup_dr.postgres import PgConnectionInfo, database_of
from include.backup_dr.roles import ServerRoles, current_roles, record_roles
from include.backup_dr.store import ObjectStore
from include.backup_dr.wal_segments import archive_prefix

log = logging.getLogger(__name__)

#: How long a probe of the old primary may take before it counts as not answering.
PROBE_TIMEOUT_S = 5
#: How often the waits below look again.
POLL_S = 0.2
#: A fence or rebuild command taking longer than this is killed and counts as failed.
COMMAND_TIMEOUT_S = 600

_STANDBY_SQL = """
SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text,
       (SELECT last_msg_send_time FROM pg_stat_wal_receiver)
"""
_HEARTBEAT_SQL = f"SELECT seq, written_at FROM {HEARTBEAT_TABLE} ORDER BY seq DESC LIMIT 1"
_TIMELINE_SQL = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"

T = TypeVar("T")


class FailoverError(RuntimeError):
    """A step could not do its part; the message says what is left as it was."""


@contextmanager
def connected(conn_id: str, database: str, *, timeout: int | None = None) -> Iterator[Any]:
    info = PgConnectionInfo.from_airflow(conn_id, database)
    if timeout is not None:
        info.env["PGCONNECT_TIMEOUT"] = str(timeout)
    conn = info.connect()
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def _one(conn: Any, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _run(conn: Any, sql: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql)


def wait_until(what: str, probe: Callable[[], T | None], seconds: float) -> T:
    """Call `probe` until it returns something; FailoverError after `seconds`."""
    deadline = time.monotonic() + seconds
    last_error: Exception | None = None
    while True:
        try:
            if (result := probe()) is not None:
                return result
        except Exception as exc:  # the thing waited for may refuse connections meanwhile
            last_error = exc
        if time.monotonic() > deadline:
            raise FailoverError(
                f"gave up after {seconds:.0f} s waiting until {what}"
                + (f" (last error: {_first_line(last_error)})" if last_error else "")
            )
        time.sleep(POLL_S)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _monitor_heartbeats(
    stores: Sequence[ObjectStore], server: str
) -> tuple[list[Heartbeat], float | None]:
    """The heartbeats of the monitor's newest record (the primary's newest known commits)
    and that run's worst lag."""
    found = newest(stores, f"{MONITOR_EVIDENCE}/{server}/")
    if found is None or not isinstance(found[1], dict):
        return [], None
    beats = [
        Heartbeat(int(s["seq"]), datetime.fromisoformat(s["written_at"]))
        for s in found[1].get("samples") or []
        if s.get("seq") is not None and s.get("written_at")
    ]
    return beats, (found[1].get("stats") or {}).get("max_ms")


def preflight(
    policy: Policy, stores: Sequence[ObjectStore], server: str, *, planned: bool
) -> Preflight:
    """Is the standby there and in recovery, how far has it replayed, what would be lost, and
    does the old primary still answer? Reads only; changes nothing."""
    import psycopg2

    roles = current_roles(policy, stores, server)
    if roles.standby_conn_id is None:
        raise FailoverError(
            f"{server} has no standby now (failover {roles.failover_id} promoted it and none "
            "has been rebuilt): there is nothing to fail over to"
        )
    database = database_of(roles.primary_conn_id)
    checked_at = datetime.now(UTC)
    standby: dict[str, Any] = {"reachable": False, "error": None, "row": None, "heartbeat": None}
    try:
        with connected(roles.standby_conn_id, database, timeout=PROBE_TIMEOUT_S) as conn:
            standby["row"] = _one(conn, _STANDBY_SQL)
            with suppress(psycopg2.errors.UndefinedTable):
                standby["heartbeat"] = _one(conn, _HEARTBEAT_SQL)
            standby["reachable"] = True
    except Exception as exc:  # unreachable is a finding for the verdict, not a crash
        standby["error"] = _first_line(exc)
    primary_answers, primary_error, flush_lsn = False, None, None
    try:
        with connected(roles.primary_conn_id, database, timeout=PROBE_TIMEOUT_S) as conn:
            in_recovery, flush_lsn = _one(
                conn, "SELECT pg_is_in_recovery(), pg_current_wal_flush_lsn()::text"
            )
            primary_answers = not in_recovery
            if in_recovery:
                primary_error = "answers, but is in recovery (fenced)"
                flush_lsn = None
    except Exception as exc:
        primary_error = _first_line(exc)
    row = standby["row"] or (None, None, None, None)
    heartbeat = standby["heartbeat"]
    beats, lag_ms = _monitor_heartbeats(stores, server)
    loss = estimate_loss(
        Heartbeat(int(heartbeat[0]), heartbeat[1]) if heartbeat else None,
        beats,
        [row[3]] if row[3] is not None else [],
        lag_ms,
    )
    return Preflight(
        server=server,
        primary_conn_id=roles.primary_conn_id,
        standby_conn_id=roles.standby_conn_id,
        checked_at=checked_at.isoformat(),
        standby_reachable=standby["reachable"],
        standby_in_recovery=row[0],
        standby_replay_lsn=row[1],
        standby_receive_lsn=row[2],
        primary_answers=primary_answers,
        primary_error=primary_error,
        planned=planned,
        loss=loss,
        standby_error=standby["error"],
        primary_flush_lsn=flush_lsn,
    )


def run_command(what: str, argv: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a policy command (no shell); its output goes to the log. Exit 0 or FailoverError."""
    log.info("%s: %s", what, " ".join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FailoverError(f"{what} could not run: {exc}") from exc
    output = (done.stdout + done.stderr).strip()
    if output:
        log.info("%s said:\n%s", what, output[-4000:])
    if done.returncode != 0:
        raise FailoverError(f"{what} exited with {done.returncode}: {output[-1000:]}")
    return output


def fence(
    policy: Policy,
    stores: Sequence[ObjectStore],
    server: str,
    failover_id: str,
    *,
    planned: bool,
    wait_seconds: float,
) -> dict[str, Any]:
    """Run the policy's fence command; for a planned switchover, then wait until the standby
    has replayed everything the old primary flushed before it stopped."""
    from include.backup_dr.wal_segments import parse_lsn

    roles = current_roles(policy, stores, server)
    command = policy.server(server).fence_command
    if command is None:
        raise FailoverError(
            f"{server} has no fence_command in the policy: refusing to promote the standby "
            "while the old primary could come back and take writes. Nothing was changed."
        )
    assert roles.standby_conn_id is not None
    database = database_of(roles.primary_conn_id)
    flushed = None
    if planned:
        with connected(roles.primary_conn_id, database, timeout=PROBE_TIMEOUT_S) as conn:
            (flushed,) = _one(conn, "SELECT pg_current_wal_flush_lsn()::text")
    argv = render(
        command,
        server=server,
        failover_id=failover_id,
        old_primary_conn_id=roles.primary_conn_id,
        new_primary_conn_id=roles.standby_conn_id,
        slot=roles.slot or "",
    )
    output = run_command(f"fence of {server}'s old primary", argv)
    fenced_at = datetime.now(UTC).isoformat()
    caught_up = None
    if flushed is not None:

        def replayed() -> str | None:
            with connected(roles.standby_conn_id, database) as conn:
                replay, receive = _one(
                    conn,
                    "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text",
                )
            done = parse_lsn(replay) >= parse_lsn(flushed) and replay == receive
            return replay if done else None

        caught_up = wait_until(
            f"the standby replayed the old primary's {flushed}", replayed, wait_seconds
        )
    return {
        "fenced_at": fenced_at,
        "command": argv,
        "output": output[-2000:],
        "primary_flush_lsn": flushed,
        "standby_replayed_lsn": caught_up,
    }


def promote(
    policy: Policy, stores: Sequence[ObjectStore], server: str, *, wait_seconds: float
) -> dict[str, Any]:
    """`pg_promote()` on the standby, then wait until it takes a write (a transaction id is
    assigned and committed); returns the times and the new timeline."""
    roles = current_roles(policy, stores, server)
    assert roles.standby_conn_id is not None
    conn_id, database = roles.standby_conn_id, database_of(roles.primary_conn_id)
    with connected(conn_id, database) as conn:
        if _one(conn, "SELECT pg_is_in_recovery()")[0]:
            _one(conn, "SELECT pg_promote(true, %s)", (max(1, int(wait_seconds)),))
        promoted_at = datetime.now(UTC)
        # A synchronous primary with no standby would wait on every commit for ever: commit
        # asynchronously until rebuild_standby has a standby streaming again.
        (names,) = _one(conn, "SHOW synchronous_standby_names")
        if names:
            _run(conn, "ALTER SYSTEM SET synchronous_standby_names = ''")
            _run(conn, "SELECT pg_reload_conf()")
            log.warning(
                "%s: synchronous commit paused (was %r) until a standby is rebuilt", conn_id, names
            )

    def writable() -> tuple[datetime, int] | None:
        with connected(conn_id, database) as conn:
            _one(conn, "SELECT txid_current()")  # fails while the server is read-only
            (timeline,) = _one(conn, _TIMELINE_SQL)
        return datetime.now(UTC), int(timeline)

    writable_at, timeline = wait_until(f"{conn_id} takes writes", writable, wait_seconds)
    log.info(
        "%s promoted at %s, writable at %s on timeline %d",
        conn_id,
        promoted_at,
        writable_at,
        timeline,
    )
    return {
        "promoted_at": promoted_at.isoformat(),
        "writable_at": writable_at.isoformat(),
        "timeline": timeline,
        "new_primary_conn_id": conn_id,
        "synchronous_paused": names or None,
    }


_HISTORY = re.compile(r"^(?P<tli>[0-9A-F]{8})\.history(?:\.\w+)?$")


def _history_keys(store: ObjectStore, server: str, timeline: int) -> list[Any]:
    prefix = f"{archive_prefix(server)}{timeline:08X}.history"
    return [o for o in store.list_objects(prefix) if _HISTORY.match(o.key.rsplit("/", 1)[-1])]


def archive_timeline(
    stores: Sequence[ObjectStore], server: str, timeline: int, *, wait_seconds: float
) -> dict[str, Any]:
    """Wait until the new timeline's history file is in the archive, then make sure it is in
    BOTH regions (copied across from the region that has it)."""

    def somewhere() -> tuple[ObjectStore, Any] | None:
        for store in stores:
            found = _history_keys(store, server, timeline)
            if found:
                return store, found[0]
        return None

    source, obj = wait_until(
        f"{timeline:08X}.history of {server} is archived", somewhere, wait_seconds
    )
    copied = []
    for store in stores:
        if store is source or _history_keys(store, server, timeline):
            continue
        store.copy_from(source, obj.key, obj.size)
        copied.append(store.region.name)
    return {
        "history_file": obj.key,
        "regions": [s.region.name for s in stores],
        "copied_to": copied,
    }


def record_new_primary(
    stores: Sequence[ObjectStore], roles: ServerRoles, promoted: dict[str, Any], failover_id: str
) -> ServerRoles:
    """Record the new primary (no standby yet) in both regions: everything that connects to
    the server's primary follows it from now on."""
    followed = ServerRoles(
        server=roles.server,
        primary_conn_id=promoted["new_primary_conn_id"],
        standby_conn_id=None,
        slot=None,
        timeline=promoted["timeline"],
        since=promoted["writable_at"],
        failover_id=failover_id,
    )
    record_roles(stores, followed)
    return followed


def rebuild_standby(
    policy: Policy,
    stores: Sequence[ObjectStore],
    server: str,
    failover_id: str,
    old_primary: str,
    *,
    wait_seconds: float,
) -> ServerRoles:
    """Run the policy's rebuild command (a new standby from the new primary, on a new slot,
    reachable through the old primary's connection), wait until it streams, record it."""
    command = policy.server(server).rebuild_command
    roles = current_roles(policy, stores, server)
    if command is None:
        raise FailoverError(
            f"{server} has no rebuild_command in the policy: make a standby from "
            f"{roles.primary_conn_id} by hand; the monitor's standby_gone page stays open"
        )
    base_slot = policy.server(server).standby.slot if policy.server(server).standby else "standby"
    slot = new_slot(base_slot, roles.timeline or 0)
    argv = render(
        command,
        server=server,
        failover_id=failover_id,
        old_primary_conn_id=old_primary,
        new_primary_conn_id=roles.primary_conn_id,
        slot=slot,
    )
    run_command(f"rebuild of {server}'s standby", argv)
    database = database_of(roles.primary_conn_id)

    def streaming() -> bool | None:
        with connected(roles.primary_conn_id, database) as conn:
            row = _one(
                conn,
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
        return True if row and row[0] else None

    wait_until(f"a standby streams from slot {slot}", streaming, wait_seconds)
    with connected(roles.primary_conn_id, database) as conn:  # what promote paused, back
        _run(conn, "ALTER SYSTEM RESET synchronous_standby_names")
        _run(conn, "SELECT pg_reload_conf()")
    rebuilt = replace(
        roles, standby_conn_id=old_primary, slot=slot, since=datetime.now(UTC).isoformat()
    )
    record_roles(stores, rebuilt)
    return rebuilt


def write_record(
    stores: Sequence[ObjectStore], record: FailoverRecord, at: datetime
) -> dict[str, Any]:
    """The failover's evidence in both regions (one down does not stop the other)."""
    key = evidence_key(
        EVIDENCE_KIND, record.server, at, record.run.get("run_id", record.failover_id)
    )
    document = {**record.to_document(), "key": key}
    document["regions"] = write_everywhere(stores, key, document)
    log.info("Failover evidence %s written to %s", key, ", ".join(document["regions"]))
    return document
