"""Test-wide Airflow settings: set before anything imports Airflow, so no test touches ~/airflow."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Under pytest-xdist (`make test` runs two workers) each worker has a stack of its own: its own
#: state directory here, and its own ports (tests/stack.py). "gw0" keeps the plain names.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
TEST_HOME = REPO / ".local" / ("test" if WORKER == 0 else f"test{WORKER}")

os.environ.setdefault("AIRFLOW_HOME", str(TEST_HOME / "airflow"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)

#: The local stack's fixtures (tests/integration and tests/faults share one stack per session).
pytest_plugins = ["tests.stack", "tests.browser"]


def pytest_collection_modifyitems(items: list) -> None:
    """Keep each file on one worker (its module fixtures run once), and every test that runs
    Airflow as a service on the same worker: standalone's log server ports are fixed, so two
    cannot run at once, and the session's standalone is then started once."""
    import pytest

    for item in items:
        serves_airflow = {"airflow_scheduler", "ui_page"} & set(item.fixturenames)
        if serves_airflow or item.path.name == "test_celery.py":
            item.add_marker(pytest.mark.xdist_group("airflow"))
        else:
            item.add_marker(pytest.mark.xdist_group(item.path.name))
