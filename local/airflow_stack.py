"""Airflow standalone on the local stack: its environment, preparation and readiness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from local.config import AIRFLOW_HOME, HOST, REPO_ROOT, VENV_BIN, Ports
from local.pg import OS_USER, pg_bin
from local.proc import StackError, log_file, log_tail


def log_server_ports(ports: Ports | None = None) -> tuple[int, int]:
    """Standalone's log servers (the scheduler's task logs, the triggerer's), bound to all
    interfaces by Airflow itself: Airflow's 8793/8794 unless BACKUP_AIRFLOW_LOG_PORT moves them."""
    first = (ports or Ports.from_env()).airflow_logs
    return first, first + 1


def airflow_env(ports: Ports | None = None) -> dict[str, str]:
    """The full process environment for Airflow commands, tests and the demo.

    Starts from os.environ. The venv's bin comes first on PATH because standalone spawns
    ``airflow`` from PATH; the repo root is on PYTHONPATH for ``import include.backup_dr``
    and ``import local``. API URLs use 127.0.0.1, not ``localhost``, which may resolve
    to ::1 where nothing listens.
    """
    ports = ports or Ports.from_env()
    port = ports.airflow
    worker_logs, trigger_logs = log_server_ports(ports)
    env = dict(os.environ)
    pythonpath = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_logs),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_logs),
            # New or edited DAG files show up within 30 s instead of 5 min.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # LocalExecutor starts one worker process per slot: 32 by default, too many for 2 cores.
            "AIRFLOW__CORE__PARALLELISM": "8",
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
            # pg_dump/pg_restore matching the local PostgreSQL 16 server.
            "BACKUP_PG_BIN_DIR": str(pg_bin("pg_dump").parent),
        }
    )
    if OS_USER is not None:  # the PITR drill's throwaway server: PostgreSQL refuses root
        env["BACKUP_PG_OS_USER"] = OS_USER
    return env


def prepare(env: dict[str, str]) -> None:
    """Migrate the metadata DB and load airflow_settings.yaml into it."""
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    log = log_file("airflow-setup")
    steps = [
        [str(VENV_BIN / "airflow"), "db", "migrate"],
        [sys.executable, "-m", "local.settings", "load"],
    ]
    with log.open("ab") as out:
        for argv in steps:
            done = subprocess.run(
                argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, check=False
            )
            if done.returncode != 0:
                raise StackError(
                    f"`{' '.join(argv[-3:])}` failed with exit code {done.returncode}.\n"
                    f"--- last lines of {log} ---\n{log_tail(log)}"
                )


def command() -> list[str]:
    return [str(VENV_BIN / "airflow"), "standalone"]


def probe(port: int, components: tuple[str, ...] | None = None) -> None:
    """Ready when the API answers and reports `components` (default: every one) healthy."""
    url = f"http://{HOST}:{port}/api/v2/monitor/health"
    with urllib.request.urlopen(url, timeout=5) as response:
        health = json.load(response)
    unhealthy = [
        name
        for name, part in health.items()
        if isinstance(part, dict)
        and (components is None or name in components)
        and part.get("status") != "healthy"
    ]
    if unhealthy:
        raise StackError(f"not healthy yet: {', '.join(unhealthy)}")


def login() -> tuple[str, str] | None:
    """The generated admin login, once standalone has written it."""
    path = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
    try:
        users = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return next(iter(users.items()), None)
