"""The real local stack for integration and fault tests: PostgreSQL, two S3 servers (one per
region) with SSE-KMS, and an SMTP sink, started once per session on ports of their own, then stopped.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
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
    "BACKUP_S3_PRIMARY_PORT": "19333",
    "BACKUP_S3_SECONDARY_PORT": "19433",
    "BACKUP_KMS_PORT": "19533",
    "BACKUP_SMTP_PORT": "11025",
    "BACKUP_AIRFLOW_PORT": "18080",
    "BACKUP_SAMPLE_MEDIA_SMALL": "300",
}
for _name, _value in TEST_ENV.items():
    os.environ.setdefault(_name, _value)
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


@pytest.fixture
def stores(stack) -> Iterator[Any]:
    """Both regions' stores, emptied before and after the test (every version)."""
    from include.backup_dr.pipeline import Stores
    from include.backup_dr.policy import load_policy

    result = Stores.from_policy(load_policy())
    for store in result:
        _empty(store)
    yield result
    for store in result:
        _empty(store)


def _empty(store) -> None:
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


def run_dag(dag_id: str, logical_date: datetime, conf: dict[str, Any] | None = None):
    """Run one DAG for real with dag.test(); returns the finished DagRun."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id].test(logical_date=logical_date, run_conf=conf)
