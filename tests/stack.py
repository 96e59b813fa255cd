"""The real local stack for integration and fault tests: PostgreSQL, two S3 servers (one per
region) with SSE-KMS, and an SMTP sink, started once per session on ports of their own, then stopped.
"""

from __future__ import annotations

import contextlib
import email
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ["AIRFLOW_HOME"]).parent  # .local/test, set by tests/conftest.py

#: Ports apart from the demo's defaults, so tests and a running demo stack can coexist. Each can
#: be overridden from the environment (with AIRFLOW_HOME), to run two test sessions side by side.
TEST_ENV = {
    "BACKUP_LOCAL_DIR": str(STATE),
    "BACKUP_PG_PORT": "16432",
    "BACKUP_PG_SANDBOX_PORT": "16532",
    "BACKUP_PG_STANDBY_PORT": "16632",
    "BACKUP_PG_TENANTS_PORT": "16832",  # the estate's servers: started only by tests that ask
    "BACKUP_PG_TENANTS_STANDBY_PORT": "16932",
    "BACKUP_S3_PRIMARY_PORT": "19333",
    "BACKUP_S3_SECONDARY_PORT": "19433",
    "BACKUP_KMS_PORT": "19533",
    "BACKUP_SMTP_PORT": "11025",
    "BACKUP_AIRFLOW_PORT": "18080",  # standalone; the Celery test's api-server takes the next
    "BACKUP_REDIS_PORT": "16379",
    "BACKUP_CELERY_LOG_PORT": "16793",
    "BACKUP_AIRFLOW_LOG_PORT": "18793",  # standalone's log servers, off Airflow's 8793/8794
    "BACKUP_SAMPLE_MEDIA_SMALL": "300",
    # A killed holder frees its subject one TTL after its last renewal: 20 s, not production's
    # minute, so fault tests that kill a run do not wait out a minute each (lease.py).
    "BACKUP_LEASE_TTL_SECONDS": "20",
}
for _name, _value in TEST_ENV.items():
    os.environ.setdefault(_name, _value)
#: xdist worker N's stack sits N x 1,000 ports above the ports it inherited from the controller
#: (clear of weed's port + 10,008), so two workers' stacks never meet.
PORT_OFFSET = 1000 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
for _name in TEST_ENV:
    if _name.endswith("_PORT") and PORT_OFFSET:
        os.environ[_name] = str(int(os.environ[_name]) + PORT_OFFSET)
os.environ["BACKUP_LOCAL_DIR"] = str(STATE)


def _stack(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "local.stack", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"local.stack {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def stack() -> Iterator[None]:
    """Start the services once; point Airflow connections and pg tools at them."""
    try:
        _stack("up")
    except RuntimeError:
        _stack("down", "--all")  # leave no half-started stack holding the ports
        raise
    from local.airflow_stack import airflow_env
    from local.settings import airflow_env_vars

    os.environ.update(airflow_env_vars())
    env = airflow_env()
    os.environ.update({k: v for k, v in env.items() if k.startswith("BACKUP_")})
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    from local.settings import load_into_airflow

    load_into_airflow()
    yield
    if not os.environ.get("BACKUP_KEEP_STACK"):
        _stack("down", "--all")


@pytest.fixture
def policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a variant of the shipped policy and make it the one in force for this test."""
    from include.backup_dr.policy import DEFAULT_POLICY_PATH, load_policy

    def write(mutate=None) -> Any:
        data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
        if mutate is not None:
            mutate(data)
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump(data))
        monkeypatch.setenv("BACKUP_POLICY_PATH", str(path))
        return load_policy(path)

    return write


def continuous_without_production(data: dict[str, Any]) -> None:
    """A `policy_file` mutation: the continuous tier moves to a category with no production
    target, so a drill of every production target drills dumps and media only (a PITR drill
    without a base backup fails; tests/integration/test_pitr.py drills it with one)."""
    platform = data["categories"]["platform"]
    data["categories"]["standby_only"] = {
        "description": "no production target",
        "engine": "pg_dump",
        "rpo": "1s",
        "tiers": {"continuous": platform["tiers"].pop("continuous")},
    }
    data["continuous"]["category"] = "standby_only"


@pytest.fixture
def stores(stack) -> Iterator[Any]:
    """Both regions' stores, emptied before and after the test (every version)."""
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores

    result = Stores.from_policy(load_policy())
    for store in result:
        empty_store(store)
    yield result
    for store in result:
        empty_store(store)


def empty_store(store) -> None:
    for upload in store.unfinished_uploads(""):
        store.abort_upload(upload.key, upload.upload_id)
    store.delete_all_versions("")


@pytest.fixture
def smtp_sink(stack) -> Path:
    """The sink's mail folder, emptied for this test."""
    from local.config import SMTP_DIR

    SMTP_DIR.mkdir(parents=True, exist_ok=True)
    for old in SMTP_DIR.glob("*.eml"):
        old.unlink()
    return SMTP_DIR


def wait_for_mail(folder: Path, timeout: float = 30.0) -> list[email.message.Message]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob("*.eml"))
        if found:
            return [email.message_from_bytes(path.read_bytes()) for path in found]
        time.sleep(0.5)
    return []


def mail_text(message: email.message.Message) -> str:
    parts = message.walk() if message.is_multipart() else [message]
    return "\n".join(
        part.get_payload(decode=True).decode(errors="replace")
        for part in parts
        if part.get_content_maintype() == "text"
    )


#: dag_id -> the file defining it, learnt by run_dag's first parse of the folder.
_DAG_FILES: dict[str, str] = {}


#: Who answers the approvals `run_dag(..., approve=...)` answers, through Airflow's own handler.
APPROVER = "oncall-test"


def run_dag(
    dag_id: str,
    logical_date: datetime,
    conf: dict[str, Any] | None = None,
    *,
    retry_delay: timedelta | None = None,
    approve: bool | None = None,
):
    """Run one DAG for real with dag.test(); returns the finished DagRun.

    `retry_delay` compresses the DAG's retry delays (minutes in production) so a fault test
    sees every retry of a failing task, and the alert after the last one, within seconds.
    `approve` answers the DAG's Human-in-the-loop approval (True: approve, False: reject), as
    on-call does under Required Actions; None leaves it unanswered.
    """
    from airflow.dag_processing.dagbag import DagBag

    # Parse only the file that defines the DAG (a tenth of the folder's parse time), learnt
    # from one parse of the whole folder; the policy in force is read again at every parse.
    if dag_id not in _DAG_FILES:
        whole = DagBag(dag_folder=str(REPO / "dags"))
        assert not whole.import_errors, whole.import_errors
        _DAG_FILES.update({found.dag_id: found.fileloc for found in whole.dags.values()})
    bag = DagBag(dag_folder=_DAG_FILES[dag_id])
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[dag_id]
    if retry_delay is not None:
        for task in dag.tasks:
            task.retry_delay = retry_delay
    if approve is None:
        return dag.test(logical_date=logical_date, run_conf=conf)
    from local.failover import HandlerApprover

    approver = HandlerApprover(dag_id, APPROVER, "Approve" if approve else "Reject")
    approver.start()
    try:
        return dag.test(logical_date=logical_date, run_conf=conf)
    finally:
        approver.stop()


# --- Airflow standalone: a real scheduler, started at most once per session ------------------


@pytest.fixture(scope="session")
def airflow_scheduler(stack) -> Iterator[dict[str, str]]:
    """Airflow standalone (scheduler, API, dag processor) with its own home and a fresh metadata
    DB, on the test stack; yields the environment for `airflow_cli`. Shared by the session's
    tests: each works on DAGs of its own and leaves them paused."""
    env = {
        **os.environ,
        "BACKUP_LOCAL_DIR": f"{STATE}-standalone",
        "BACKUP_AIRFLOW_EXECUTOR": "standalone",
        "PYTHONPATH": str(REPO),
        # Each critical section leaves markers in the store: the fault suite's own witness that
        # no two holders are ever inside at once (lease.py, BACKUP_LEASE_WITNESS).
        "BACKUP_LEASE_WITNESS": "witness",
        # PostgreSQL as the metadata DB, as in production: SQLite locks under a busy scheduler.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _metadata_db(),
    }
    # Connections come from its own metadata DB (loaded by `up`), as in a real deployment.
    env = {k: v for k, v in env.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    for command in ("down", "up"):  # a fresh metadata DB: only the store remembers backups
        if command == "up":
            shutil.rmtree(Path(env["BACKUP_LOCAL_DIR"]) / "airflow", ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "local.stack", command, "--only", "airflow"],
            env=env,
            check=True,
            cwd=REPO,
        )
    from local.airflow_stack import airflow_env

    cli_env = {
        **{
            k: v
            for k, v in airflow_env().items()
            if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))
        },
        "BACKUP_LOCAL_DIR": env["BACKUP_LOCAL_DIR"],
        "AIRFLOW_HOME": f"{env['BACKUP_LOCAL_DIR']}/airflow",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
    }
    yield cli_env
    subprocess.run(
        [sys.executable, "-m", "local.stack", "down", "--only", "airflow"],
        env=env,
        check=False,
        cwd=REPO,
    )


def _metadata_db() -> str:
    from local.config import HOST, PG_PASSWORD, PG_USER, Ports
    from local.pg import connect

    with connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS airflow_backfill_test WITH (FORCE)")
        conn.execute("CREATE DATABASE airflow_backfill_test")
    port = Ports.from_env().pg
    return f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@{HOST}:{port}/airflow_backfill_test"


def airflow_cli(env: dict[str, str], *args: str) -> str:
    """Run `airflow ARGS` against the standalone scheduler; its stdout (fails on an error)."""
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "airflow"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def dag_runs(env: dict[str, str], dag_id: str) -> dict[str, dict]:
    """The DAG's runs by logical date (ISO 8601; the run id for a run without one), read from
    the scheduler's metadata database: a query, where `airflow dags list-runs` costs an Airflow
    start-up per poll."""
    from local.pg import connect

    database = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]
    with connect(database) as conn:
        rows = conn.execute(
            "SELECT run_id, logical_date, state, end_date FROM dag_run WHERE dag_id = %s",
            (dag_id,),
        ).fetchall()
    runs = {}
    for run_id, logical, state, end in rows:
        when = logical.astimezone(UTC).isoformat() if logical else None
        runs[when or run_id] = {
            "run_id": run_id,
            "logical_date": when,
            "state": state,
            "end_date": end.astimezone(UTC).isoformat() if end else None,
        }
    return runs


def wait_for_runs(
    env: dict[str, str], dag_id: str, dates: list[datetime], after: datetime, timeout: float = 300
) -> None:
    """Wait until the runs of `dates` have finished after `after`; assert they all succeeded."""
    wanted = {d.isoformat() for d in dates}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = dag_runs(env, dag_id)
        done = {
            date
            for date, run in runs.items()
            if run["state"] in ("success", "failed")
            and run["end_date"]
            and datetime.fromisoformat(run["end_date"]) > after
        }
        if wanted <= done:
            assert all(runs[d]["state"] == "success" for d in wanted), runs
            return
        time.sleep(1)
    raise AssertionError(f"runs for {sorted(wanted)} did not finish: {dag_runs(env, dag_id)}")


# --- the local platform primary's settings, changed as a DBA would -----------------------------


def _primary_setting(name: str) -> tuple[str, str]:
    """(setting, the file it comes from) of one server setting, from a fresh session."""
    from local import pg

    with pg.PLATFORM.connect() as conn:
        row = conn.execute(
            "SELECT setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = %s", (name,)
        ).fetchone()
    assert row is not None, name
    return row[0], row[1]


def _apply_setting(statement: Any, name: str, expected: str, timeout: float) -> None:
    """Run ALTER SYSTEM, reload, and wait until a new session sees `expected` (a reload is
    asynchronous: the postmaster applies it after pg_reload_conf returns)."""
    from local import pg

    with pg.PLATFORM.connect() as conn:
        conn.execute(statement)
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + timeout
    while (found := _primary_setting(name)[0]) != expected:
        assert time.monotonic() < deadline, f"{name} is {found}, not {expected}, after a reload"
        time.sleep(0.1)


@contextlib.contextmanager
def primary_setting(name: str, value: str, timeout: float = 30.0) -> Iterator[None]:
    """The platform primary with `name` set to `value` (pg_settings' unit, e.g. seconds) by
    ALTER SYSTEM and a reload; put back as it was on exit, whatever happens."""
    from psycopg import sql

    original, source = _primary_setting(name)
    setting = sql.SQL("ALTER SYSTEM SET {} = {}")
    _apply_setting(setting.format(sql.Identifier(name), sql.Literal(value)), name, value, timeout)
    try:
        yield
    finally:
        if source.endswith("postgresql.auto.conf"):  # an earlier ALTER SYSTEM: restore its value
            restore = setting.format(sql.Identifier(name), sql.Literal(original))
        else:
            restore = sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name))
        _apply_setting(restore, name, original, timeout)
