"""Celery mode of the local Airflow (`make up EXECUTOR=celery`): Redis as the broker, the
PostgreSQL metadata database `airflow` on the platform server (SQLite cannot serve Celery),
and Airflow's parts as separate processes: api-server, scheduler, dag-processor, triggerer and
two Celery workers, one per queue, so any run of a backup DAG uses both.

A triggerer runs too: `dr_failover`'s approval (a Human-in-the-loop operator) defers. Each
worker serves its task logs on a port of its own (BACKUP_CELERY_LOG_PORT and the next one),
and the triggerer on the one after, never standalone's (8793/8794 by default), so the two modes' log
servers never meet on one machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from include.backup_dr.deployment import DEFAULT_QUEUE, IO_QUEUE
from local.airflow_stack import airflow_env
from local.config import HOST, PG_PASSWORD, PG_USER, STATE_DIR, VENV_BIN, Ports
from local.proc import StackError

#: `BACKUP_AIRFLOW_EXECUTOR`: how `up` runs Airflow (`make up EXECUTOR=...`).
MODES = ("standalone", "celery")
METADATA_DB = "airflow"
REDIS_PACKAGE = "redis-server"  # Debian's
REDIS_DIR = STATE_DIR / "redis"
#: Task slots per worker: enough for the pool's two dumps and a drill's three restores.
CONCURRENCY = 4


def mode() -> str:
    raw = os.environ.get("BACKUP_AIRFLOW_EXECUTOR", "").strip() or MODES[0]
    if raw not in MODES:
        raise StackError(f"BACKUP_AIRFLOW_EXECUTOR={raw!r}: choose one of {', '.join(MODES)}")
    return raw


@dataclass(frozen=True)
class Worker:
    """One Celery worker: its name (the task instances' hostname), queue and log port offset."""

    name: str
    queue: str
    log_port_offset: int

    def log_port(self, ports: Ports) -> int:
        return ports.celery_logs + self.log_port_offset


WORKERS = (
    Worker("celery-default", DEFAULT_QUEUE, 0),
    Worker("celery-backup-io", IO_QUEUE, 1),
)


def metadata_db_url(ports: Ports) -> str:
    return f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@{HOST}:{ports.pg}/{METADATA_DB}"


def ensure_metadata_db() -> None:
    """Create the `airflow` database on the platform server if it is not there yet."""
    from local.pg import connect

    with connect() as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (METADATA_DB,))
        if found.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{METADATA_DB}"')


def celery_env(ports: Ports | None = None) -> dict[str, str]:
    """Airflow's environment in celery mode: every part of it reads the same settings."""
    ports = ports or Ports.from_env()
    env = airflow_env(ports)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db_url(ports),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:{ports.redis}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_db_url(ports)}",
            "AIRFLOW__API__WORKERS": "1",  # 4 by default: too many for 2 cores
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.celery_logs + len(WORKERS)),
        }
    )
    return env


def worker_env(worker: Worker, ports: Ports | None = None) -> dict[str, str]:
    ports = ports or Ports.from_env()
    return {
        **celery_env(ports),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker.log_port(ports)),
        # Both workers share this machine's name: each task instance records the worker's own.
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "local.celery_stack.worker_hostname",
        "BACKUP_CELERY_WORKER": worker.name,
    }


def worker_hostname() -> str:
    """Airflow's `hostname_callable` for the local workers (a real deployment keeps the default:
    each worker is a host or pod of its own)."""
    return os.environ.get("BACKUP_CELERY_WORKER") or socket.getfqdn()


def worker_command(worker: Worker) -> list[str]:
    return [
        str(VENV_BIN / "airflow"),
        "celery",
        "worker",
        "-H",
        f"{worker.name}@%h",
        "-q",
        worker.queue,
        "-c",
        str(CONCURRENCY),
    ]


def ping_worker(worker: Worker, ports: Ports) -> None:
    """Ready when the worker answers a Celery ping through the broker."""
    from celery import Celery

    with Celery(broker=celery_env(ports)["AIRFLOW__CELERY__BROKER_URL"]) as app:
        replies = app.control.ping(timeout=1.0)
    names = [name for reply in replies for name in reply]
    if not any(name.startswith(f"{worker.name}@") for name in names):
        raise StackError(f"{worker.name} does not answer a ping yet (answering: {names})")


def redis_server() -> Path:
    """Debian's redis-server, installed with apt-get when missing (we run as root here)."""
    found = shutil.which("redis-server")
    if found is None and shutil.which("apt-get") is not None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", REDIS_PACKAGE],
        ):
            subprocess.run(argv, capture_output=True, check=False, timeout=900, env=env)
        found = shutil.which("redis-server")
    if found is None:
        raise StackError(
            f"redis-server is missing and could not be installed: celery mode needs Debian's "
            f"package '{REDIS_PACKAGE}' (apt-get install -y {REDIS_PACKAGE})"
        )
    return Path(found)


def redis_command(port: int) -> list[str]:
    """A broker on loopback that keeps nothing on disk: queued work lives in Airflow's DB."""
    return [
        str(redis_server()),
        "--bind", HOST,
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(REDIS_DIR),
        "--daemonize", "no",
    ]  # fmt: skip


def ping_redis(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=3) as conn:
        conn.sendall(b"PING\r\n")
        answer = conn.recv(64)
    if not answer.startswith(b"+PONG"):
        raise StackError(f"redis answered {answer!r} to PING")
