"""Test-wide Airflow settings: set before anything imports Airflow, so no test touches ~/airflow."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_HOME = REPO / ".local" / "test"
#: Under pytest-xdist (`make test` runs two workers) each worker has a stack of its own: worker
#: N > 0 moves the state directory it inherited from the controller (`test` -> `testN`) and
#: its ports (tests/stack.py). Worker gw0, and a run without xdist, keep the plain ones.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)

os.environ.setdefault("AIRFLOW_HOME", str(TEST_HOME / "airflow"))
if WORKER:
    _home = Path(os.environ["AIRFLOW_HOME"])
    os.environ["AIRFLOW_HOME"] = str(
        _home.parent.with_name(f"{_home.parent.name}{WORKER}") / _home.name
    )
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)

#: The local stack's fixtures (tests/integration and tests/faults share one stack per session);
#: every S3 and KMS call recorded and checked against deploy/iam (tests/iam_recorder.py); the
#: integration helpers' shared fixtures (tests/integration/helpers.py).
pytest_plugins = [
    "tests.stack",
    "tests.browser",
    "tests.iam_recorder",
    "tests.integration.helpers",
]
