"""Test-wide Airflow settings: set before anything imports Airflow, so no test touches ~/airflow."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_HOME = REPO / ".local" / "test"

os.environ.setdefault("AIRFLOW_HOME", str(TEST_HOME / "airflow"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)

#: The local stack's fixtures (tests/integration and tests/faults share one stack per session).
pytest_plugins = ["tests.stack", "tests.browser"]
