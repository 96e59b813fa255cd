"""What the failover fault test and the bench share: a throwaway primary + standby in a policy
of their own, the load at the kill, and an approval given through Airflow's REST API."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from local.failover import Pair
from local.loadgen import Ack, LoadGenerator

PRIMARY_CONN = "pg_failover_test_primary"
STANDBY_CONN = "pg_failover_test_standby"
#: How often the lag probe looks at the standby.
PROBE_POLL_S = 0.001


def add_server(data: dict[str, Any], pair: Pair, *, rebuild: bool) -> None:
    """Policy edit: the pair as a continuous server with one production database, and the
    local fence (and rebuild) commands. The rebuilt standby takes the old primary's port, so
    the old primary's connection reaches it (the README's rebuild contract)."""
    server: dict[str, Any] = {
        "name": pair.server,
        "conn_id": PRIMARY_CONN,
        "dump_pool": "default_pool",
        "standby": {"conn_id": STANDBY_CONN, "slot": "backup_dr_standby"},
        "fence_command": [
            sys.executable,
            "-m",
            "local.failover",
            "fence",
            "--data-dir",
            str(pair.primary.data_dir),
        ],
    }
    if rebuild:
        server["rebuild_command"] = [
            sys.executable,
            "-m",
            "local.failover",
            "rebuild",
            "--data-dir",
            str(pair.root / "r"),
            "--primary-port",
            str(pair.standby_port),
            "--port",
            str(pair.primary_port),
            "--slot",
            "{slot}",
        ]
    data["servers"].append(server)
    data["targets"].append(
        {
            "name": f"{pair.server}_db",
            "category": "platform",
            "environment": "production",
            "server": pair.server,
            "database": "postgres",
            "priority": 8,
        }
    )


def connection_env(pair: Pair) -> dict[str, str]:
    return {
        f"AIRFLOW_CONN_{PRIMARY_CONN.upper()}": pair.airflow_uri(pair.primary_port),
        f"AIRFLOW_CONN_{STANDBY_CONN.upper()}": pair.airflow_uri(pair.standby_port),
    }


def lag_now(pair: Pair, probes: int = 3) -> float:
    """Commit-to-visible lag on the standby, the worst of a few probes (seconds)."""
    worst = 0.0
    with (
        psycopg.connect(pair.conninfo(pair.primary_port), autocommit=True) as primary,
        psycopg.connect(pair.conninfo(pair.standby_port), autocommit=True) as standby,
    ):
        primary.execute("CREATE TABLE IF NOT EXISTS lag_probe (id bigserial PRIMARY KEY)")
        time.sleep(0.2)
        for _ in range(probes):
            (probe,) = primary.execute(
                "INSERT INTO lag_probe DEFAULT VALUES RETURNING id"
            ).fetchone()
            committed = time.monotonic()
            while True:
                try:
                    if standby.execute(
                        "SELECT 1 FROM lag_probe WHERE id = %s", (probe,)
                    ).fetchone():
                        break
                except psycopg.errors.UndefinedTable:
                    pass
                time.sleep(PROBE_POLL_S)
            worst = max(worst, time.monotonic() - committed)
    return worst


@dataclass
class Kill:
    """What the kill left: every acknowledged commit, when, and the lag just before."""

    acks: list[Ack]
    killed_at: float
    lag_seconds: float
    rate: float

    def within_lag(self) -> int:
        return sum(1 for a in self.acks if a.at >= self.killed_at - self.lag_seconds)


def missing_on(pair: Pair, port: int, acks: list[Ack]) -> list[int]:
    with psycopg.connect(pair.conninfo(port), autocommit=True) as conn:
        present = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM loadgen_orders WHERE id = ANY(%s)", ([a.id for a in acks],)
            )
        }
    return sorted(a.id for a in acks if a.id not in present)


@contextmanager
def api_server(env: dict[str, str], port: int, home: Path) -> Iterator[tuple[str, str]]:
    """Airflow's core REST API on the session's metadata DB (what dag.test() writes to), with
    one admin user, `oncall`; yields (base URL, bearer token)."""
    password = secrets.token_hex(8)
    passwords = home / "api-passwords.json"
    passwords.write_text(json.dumps({"oncall": password}))
    log = (home / "api-server.log").open("ab")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "airflow"),
            "api-server",
            "--apps",
            "core",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env={
            **env,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "oncall:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        token = None
        while token is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the api-server did not start; see {home / 'api-server.log'}")
            try:
                token = _call(
                    base, "POST", "/auth/token", {"username": "oncall", "password": password}
                )["access_token"]
            except OSError:
                time.sleep(1)
        yield base, token
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 (a local http URL)
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


class Approver(threading.Thread):
    """Waits for the dr_failover approval to be pending, then answers it through the REST
    API, as on-call would from Required Actions; keeps the response."""

    def __init__(
        self, base: str, token: str, dag_id: str, choice: str = "Approve", timeout: float = 300
    ) -> None:
        super().__init__(name="approver", daemon=True)
        self.base, self.token, self.dag_id, self.choice, self.timeout = (
            base,
            token,
            dag_id,
            choice,
            timeout,
        )
        self.pending: dict[str, Any] | None = None
        self.response: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                found = _call(
                    self.base,
                    "GET",
                    f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails",
                    token=self.token,
                )
                waiting = [
                    d for d in found.get("hitl_details", []) if not d.get("response_received")
                ]
                if waiting:
                    self.pending = waiting[0]
                    ti = self.pending["task_instance"]
                    self.response = _call(
                        self.base,
                        "PATCH",
                        f"/api/v2/dags/{self.dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                        f"{ti['task_id']}/{ti['map_index']}/hitlDetails",
                        {"chosen_options": [self.choice]},
                        token=self.token,
                    )
                    return
                time.sleep(0.5)
            raise TimeoutError("no pending approval appeared")
        except BaseException as exc:
            self.error = exc


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
