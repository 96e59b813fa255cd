"""Local stand-ins for `dr_failover`'s policy commands, and a throwaway primary + standby pair.

    python -m local.failover fence --data-dir DIR
    python -m local.failover rebuild --data-dir DIR --primary-port P --port Q --slot SLOT

`fence` stops a local server if it runs and leaves its data directory so that, started again,
it comes up as a standby with nowhere to stream from (read-only) and with archiving off: it
neither takes writes nor archives into the server's WAL prefix. `rebuild` makes a fresh standby
of the new primary (`pg_basebackup -R` on a new slot) and starts it. Both exit 0 on success,
as the policy's command contract says (README: "Fence and rebuild commands").

`Pair` (the fault test, the bench and `make demo`) runs a primary archiving to both local S3 regions under a server
name of its own, and its streaming standby, in a short directory of their own (a Unix socket
path must stay under 107 bytes), on ports the stack does not use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

from local import wal
from local.config import HOST, PG_PASSWORD, PG_USER
from local.loadgen import Ack, LoadGenerator
from local.pg import OS_USER, Server, StandbyServer, pg_bin
from local.proc import StackError

#: Written into a fenced data directory: who fenced it, for the human who finds it.
FENCE_NOTE = "FENCED_BY_DR_FAILOVER"
_FENCE_CONF = (
    "\n# dr_failover fence: never a primary again, never archives into the server's prefix.\n"
    "archive_mode = 'off'\n"
    "primary_conninfo = ''\n"
)


def _as_owner(argv: list[str], data_dir: Path, log: Path | None = None) -> int:
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        return subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, user=OS_USER, cwd=data_dir, check=False
        ).returncode
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def _running(data_dir: Path) -> bool:
    code = _as_owner([str(pg_bin("pg_ctl")), "-D", str(data_dir), "status"], data_dir)
    return code == 0


def fence(data_dir: Path) -> str:
    """Stop the server if it runs (fast: clean, so a live primary hands its last WAL to the
    standby), then make the data directory a read-only standby with archiving off."""
    said = []
    if _running(data_dir):
        argv = [str(pg_bin("pg_ctl")), "-D", str(data_dir), "-m", "fast", "-w", "-t", "60", "stop"]
        if _as_owner(argv, data_dir) != 0 and _running(data_dir):
            raise StackError(f"could not stop the server in {data_dir}")
        said.append("stopped")
    else:
        said.append("not running")
    (data_dir / "standby.signal").touch()
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(_FENCE_CONF)
    (data_dir / FENCE_NOTE).write_text("started again it is a read-only standby, archive off\n")
    if OS_USER is not None:
        shutil.chown(data_dir / "standby.signal", OS_USER, OS_USER)
    said.append("standby.signal + archive_mode off")
    return f"fenced {data_dir}: {', '.join(said)}"


def start(data_dir: Path, port: int, log: Path) -> None:
    """Start a server detached on HOST:port, its socket in its data dir."""
    log.touch()
    if OS_USER is not None:
        shutil.chown(log, OS_USER, OS_USER)
    argv = [str(pg_bin("pg_ctl")), "-D", str(data_dir), "-l", str(log)]
    argv += ["-o", f"-h {HOST} -p {port} -k {data_dir}", "-w", "-t", "60", "start"]
    if _as_owner(argv, data_dir) != 0:
        raise StackError(f"pg_ctl start of {data_dir} on port {port} failed; see {log}")


def rebuild(data_dir: Path, primary_port: int, port: int, slot: str) -> str:
    """A fresh standby of the primary on `primary_port`, in `data_dir`, on a new slot."""
    if data_dir.exists():
        if _running(data_dir):
            _as_owner(
                [str(pg_bin("pg_ctl")), "-D", str(data_dir), "-m", "immediate", "stop"], data_dir
            )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o700)
    if OS_USER is not None:
        shutil.chown(data_dir, OS_USER, OS_USER)
    log = data_dir.parent / f"{data_dir.name}.log"
    argv = [str(pg_bin("pg_basebackup")), "-D", str(data_dir), "-R", "-X", "stream"]
    argv += ["-S", slot, "--create-slot", "-h", HOST, "-p", str(primary_port), "-U", PG_USER]
    argv += ["-c", "fast", "-d", "application_name=backup_dr_standby"]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        user=OS_USER,
        cwd=data_dir,
        env={**os.environ, "PGPASSWORD": PG_PASSWORD},
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"pg_basebackup from port {primary_port} failed: {done.stderr[-1000:]}")
    start(data_dir, port, log)
    return f"standby of port {primary_port} in {data_dir} on port {port}, slot {slot}"


@dataclass(frozen=True)
class _PairPrimary(Server):
    fixed_port: int = 0
    conf: str = ""

    @property
    def port(self) -> int:
        return self.fixed_port

    def _write_role_conf(self) -> None:
        (self.data_dir / "backup_dr.conf").write_text(self.conf)
        conf = self.data_dir / "postgresql.conf"
        line = "include_if_exists = 'backup_dr.conf'\n"
        if line not in conf.read_text():
            with conf.open("a") as out:
                out.write(line)


@dataclass(frozen=True)
class _PairStandby(StandbyServer):
    fixed_port: int = 0

    @property
    def port(self) -> int:
        return self.fixed_port


@dataclass
class Pair:
    """A throwaway primary archiving as `server` to both local regions, and its standby."""

    server: str
    primary_port: int
    standby_port: int
    synchronous: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fo-", dir="/tmp")))

    def __post_init__(self) -> None:
        self.root.chmod(0o755)
        conf = wal.primary_conf(
            self.server, OS_USER, self.root / "wal", synchronous=self.synchronous
        )
        conf += "wal_sender_timeout = 5s\nwal_receiver_timeout = 5s\n"
        self.primary = _PairPrimary(
            "platform", f"{self.root.name}-primary", self.root / "p", "pg", self.primary_port, conf
        )
        self.standby = _PairStandby(
            "standby",
            f"{self.root.name}-standby",
            self.root / "s",
            "pg_standby",
            self.primary,
            "backup_dr_standby",
            self.standby_port,
        )

    @property
    def primary_conn(self) -> str:
        return f"pg_{self.server}_primary"

    @property
    def standby_conn(self) -> str:
        return f"pg_{self.server}_standby"

    def policy_entries(self, *, rebuild: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The pair as a policy server (continuous, with the local fence and, if asked, rebuild
        commands) and one production database target on it. The rebuilt standby takes the old
        primary's port, so the old primary's connection reaches it (the README's contract)."""
        local = [sys.executable, "-m", "local.failover"]
        server: dict[str, Any] = {
            "name": self.server,
            "conn_id": self.primary_conn,
            "dump_pool": "default_pool",
            "standby": {"conn_id": self.standby_conn, "slot": "backup_dr_standby"},
            "fence_command": [*local, "fence", "--data-dir", str(self.primary.data_dir)],
        }
        if rebuild:
            server["rebuild_command"] = [
                *local, "rebuild", "--data-dir", str(self.root / "r"),
                "--primary-port", str(self.standby_port), "--port", str(self.primary_port),
                "--slot", "{slot}",
            ]  # fmt: skip
        target = {
            "name": f"{self.server}_db",
            "category": "platform",
            "environment": "production",
            "server": self.server,
            "database": "postgres",
            "priority": 8,
        }
        return server, target

    def connection_env(self) -> dict[str, str]:
        """Airflow connections to both servers, as environment variables."""
        return {
            f"AIRFLOW_CONN_{self.primary_conn.upper()}": self.airflow_uri(self.primary_port),
            f"AIRFLOW_CONN_{self.standby_conn.upper()}": self.airflow_uri(self.standby_port),
        }

    def conninfo(self, port: int, dbname: str = "postgres") -> str:
        return f"host={HOST} port={port} user={PG_USER} password={PG_PASSWORD} dbname={dbname}"

    def airflow_uri(self, port: int) -> str:
        return f"postgres://{PG_USER}:{PG_PASSWORD}@{HOST}:{port}/postgres"

    def start(self) -> None:
        self.primary.init_cluster()
        self.primary.start()
        self.standby.init_cluster()
        self.standby.start()

    def primary_pid(self) -> int:
        pid = self.primary.postmaster_pid()
        if pid is None:
            raise StackError(f"the pair's primary in {self.primary.data_dir} is not running")
        return pid

    def kill_primary(self) -> None:
        """SIGKILL the postmaster and every backend: the server is gone, mid-commit."""
        pid = self.primary_pid()
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        for victim in [pid, *(int(c) for c in found.stdout.split())]:
            with suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)

    def stop(self) -> None:
        """Stop whatever of the pair still runs (immediate: nothing here is kept)."""
        for data_dir in sorted(p for p in self.root.iterdir() if (p / "PG_VERSION").exists()):
            if _running(data_dir):
                _as_owner(
                    [str(pg_bin("pg_ctl")), "-D", str(data_dir), "-m", "immediate", "stop"],
                    data_dir,
                )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


#: How often the lag probe looks at the standby.
PROBE_POLL_S = 0.001


def lag_now(pair: Pair, probes: int = 5) -> float:
    """Commit-to-visible lag on the standby, the worst of a few probes (seconds)."""
    worst = 0.0
    with (
        psycopg.connect(pair.conninfo(pair.primary_port), autocommit=True) as primary,
        psycopg.connect(pair.conninfo(pair.standby_port), autocommit=True) as standby,
    ):
        primary.execute("CREATE TABLE IF NOT EXISTS lag_probe (id bigserial PRIMARY KEY)")
        time.sleep(0.2)  # the table reaches the standby
        for _ in range(probes):
            row = primary.execute("INSERT INTO lag_probe DEFAULT VALUES RETURNING id").fetchone()
            committed = time.monotonic()
            while True:
                with suppress(psycopg.errors.UndefinedTable):
                    seen = standby.execute("SELECT 1 FROM lag_probe WHERE id = %s", row)
                    if seen.fetchone():
                        break
                time.sleep(PROBE_POLL_S)
            worst = max(worst, time.monotonic() - committed)
    return worst


@dataclass
class Kill:
    """What a kill -9 under load left: every acknowledged commit, when, and the lag measured
    just before."""

    acks: list[Ack]
    killed_at: float
    lag_seconds: float
    rate: float

    def within_lag(self) -> int:
        """Acknowledged commits inside the lag before the kill: what may be lost."""
        return sum(1 for a in self.acks if a.at >= self.killed_at - self.lag_seconds)

    def lost_ms(self, missing: list[Ack]) -> float:
        """The span of lost time: from the oldest lost commit to the newest acknowledged one."""
        if not missing:
            return 0.0
        return (self.acks[-1].at - min(a.at for a in missing)) * 1000


def load_until_kill(pair: Pair, rate: float, settle: float) -> Kill:
    """Write `rate` commits/s for `settle` s, measure the lag, kill -9 the primary."""
    load = LoadGenerator(
        rate=rate,
        conninfo=pair.conninfo(pair.primary_port),
        database="postgres",
        record=True,
        expect_loss=True,
    )
    with load:
        time.sleep(settle)
        lag = lag_now(pair)
        pair.kill_primary()
        killed_at = time.time()
    return Kill(list(load.acks), killed_at, lag, load.achieved_rate)


def missing_on(pair: Pair, port: int, acks: list[Ack]) -> list[Ack]:
    """The acknowledged commits the server on `port` does not have."""
    with psycopg.connect(pair.conninfo(port), autocommit=True) as conn:
        present = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM loadgen_orders WHERE id = ANY(%s)", ([a.id for a in acks],)
            )
        }
    return [a for a in acks if a.id not in present]


def add_to_policy(pair: Pair, data: dict[str, Any], *, rebuild: bool) -> None:
    """Add the pair to a policy document (parsed YAML) as a server and a target."""
    server_entry, target_entry = pair.policy_entries(rebuild=rebuild)
    data["servers"].append(server_entry)
    data["targets"].append(target_entry)


def write_policy(pair: Pair, source: Path, *, rebuild: bool) -> Path:
    """`source` (a policy file) with the pair added as a server and a target, written into the
    pair's directory; returns its path (point BACKUP_POLICY_PATH at it)."""
    data = yaml.safe_load(source.read_text())
    add_to_policy(pair, data, rebuild=rebuild)
    path = pair.root / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def forget(stores: Any, server: str) -> int:
    """Delete every object version a throwaway pair left under `server` in each region: its
    WAL archive, base backups, monitor and failover evidence, and its state records."""
    deleted = 0
    for store in stores:
        for prefix in (
            f"wal/{server}/",
            f"platform/{server}/",
            f"evidence/continuous_monitor/{server}/",
            f"evidence/failover/{server}/",
            f"state/servers/{server}.json",
            f"state/continuous_monitor/{server}.json",
        ):
            deleted += store.delete_all_versions(prefix)
    return deleted


def heartbeat_sample(
    doc: dict[str, Any], index: int | None = None, following: dict[str, Any] | None = None
) -> Any:
    """The monitor run's heartbeat at `index` (default: the middle one) of `doc` (a monitor
    evidence document) as a PITR sample: T is half a second after it. The next heartbeat is
    the run's next one, or, for its last, the first of `following` (a later run)."""
    from include.backup_dr.pitr.heartbeat import HeartbeatSample

    beats = [s for s in doc["samples"] if s.get("seq") is not None]
    later = [s for s in (following or {}).get("samples", []) if s.get("seq") is not None]
    position = (len(beats) // 2 - 1 if index is None else index) % len(beats)
    this = beats[position]
    after = beats[position + 1] if position + 1 < len(beats) else later[0]
    return HeartbeatSample(
        int(this["seq"]),
        datetime.fromisoformat(this["written_at"]),
        datetime.fromisoformat(after["written_at"]),
        doc["key"],
    )


def switch_and_archive(pair: Pair, port: int, stores: Any, wait_seconds: float) -> str:
    """Close the current WAL segment of the server on `port` and wait until every region's
    archive holds it (what a recovery to a recent second needs); returns the segment."""
    from include.backup_dr.wal_segments import archive_prefix

    with psycopg.connect(pair.conninfo(port), autocommit=True) as conn:
        (segment,) = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    deadline = time.monotonic() + wait_seconds
    while not all(
        any(segment in o.key for o in store.list_objects(archive_prefix(pair.server)))
        for store in stores
    ):
        if time.monotonic() > deadline:
            raise StackError(f"{segment} of {pair.server} not archived in every region")
        time.sleep(0.5)
    return segment


#: How long HandlerApprover waits after the task parks before answering.
SETTLE_S = 10.0


class HandlerApprover(threading.Thread):
    """Answers the first pending Human-in-the-loop action of `dag_id` as user `name`, by
    calling the handler of Airflow's REST API (`PATCH .../taskInstances/{task}/{map}/
    hitlDetails`) in this process: the same function and the same rows as a click under
    Required Actions, without an api-server. For a demo that runs no Airflow services; the
    fault test approves through a real api-server (tests/faults/airflow_api.py)."""

    def __init__(
        self, dag_id: str, name: str, choice: str = "Approve", timeout: float = 300
    ) -> None:
        super().__init__(name="approver", daemon=True)
        self.dag_id, self.user_name, self.choice, self.timeout = dag_id, name, choice, timeout
        self.pending: dict[str, Any] | None = None
        self.response: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Stop waiting (the run ended without asking): answer nothing, fail nothing."""
        self._stopped.set()
        self.join(timeout=10)

    def run(self) -> None:
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload

        with warnings.catch_warnings():  # the API's models warn of a pydantic alias at import
            warnings.simplefilter("ignore")
            from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select, update

        try:
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                if self._stopped.is_set():
                    return
                with create_session() as session:
                    found = session.execute(
                        select(TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index)
                        .add_columns(HITLDetail.subject, HITLDetail.body, HITLDetail.options)
                        .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
                        .where(
                            TaskInstance.dag_id == self.dag_id,
                            TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                            HITLDetail.responded_at.is_(None),
                        )
                    ).first()
                    if found is not None:
                        # As a person: not within a second of the park, which races the
                        # executor's report of the parked worker (the scheduler then fails it).
                        time.sleep(SETTLE_S)
                        run_id, task_id, map_index, subject, body, options = found
                        self.pending = {
                            "run_id": run_id,
                            "task_id": task_id,
                            "subject": subject,
                            "body": body,
                            "options": list(options or []),
                        }
                        response = update_hitl_detail(
                            dag_id=self.dag_id,
                            dag_run_id=run_id,
                            task_id=task_id,
                            update_hitl_detail_payload=UpdateHITLDetailPayload(
                                chosen_options=[self.choice]
                            ),
                            user=SimpleAuthManagerUser(username=self.user_name, role="admin"),
                            session=session,
                            map_index=map_index,
                        )
                        self.response = response.model_dump(mode="json")
                        return
                time.sleep(0.5)
            raise TimeoutError(f"no pending approval of {self.dag_id} appeared")
        except BaseException as exc:
            self.error = exc
            # dag.test() waits for an answer for ever: fail what waits, so the run ends.
            with create_session() as session:
                session.execute(
                    update(TaskInstance)
                    .where(
                        TaskInstance.dag_id == self.dag_id,
                        TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                    )
                    .values(state=TaskInstanceState.FAILED)
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fence_args = sub.add_parser("fence", help="stop a local server for good")
    fence_args.add_argument("--data-dir", type=Path, required=True)
    rebuild_args = sub.add_parser("rebuild", help="a fresh standby of a local primary")
    rebuild_args.add_argument("--data-dir", type=Path, required=True)
    rebuild_args.add_argument("--primary-port", type=int, required=True)
    rebuild_args.add_argument("--port", type=int, required=True)
    rebuild_args.add_argument("--slot", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "fence":
            print(fence(args.data_dir))
        else:
            print(rebuild(args.data_dir, args.primary_port, args.port, args.slot))
    except StackError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
