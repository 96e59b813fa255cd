"""DAG parse time with a large policy, against the shipped policy, measured in the same run.

The DAG files read only the local policy file at parse time, so parse cost should grow with the
number of DAGs and servers, not with the number of targets (targets are mapped at run time).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from include.backup_dr.policy import DEFAULT_POLICY_PATH

REPO = Path(__file__).resolve().parent.parent

_PARSE = """
import json, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
imported = time.perf_counter()
bag = DagBag(dag_folder={dags!r})
done = time.perf_counter()
print(json.dumps({{"errors": len(bag.import_errors), "dags": len(bag.dag_ids),
    "import_s": imported - started, "parse_s": done - imported}}))
"""


def policy_with_targets(count: int, servers: int = 5) -> dict[str, Any]:
    """The shipped policy with `count` platform targets spread over `servers` servers (one in
    ten UAT, which is never backed up)."""
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["servers"] = [
        {
            "name": f"server_{i}",
            "conn_id": f"pg_{i}",
            "dump_pool": f"pg_{i}_dumps",
            "standby": {"conn_id": f"pg_{i}_standby"},
        }
        for i in range(servers)
    ]
    data["targets"] = [
        {
            "name": f"db_{i:03d}",
            "category": "platform",
            "environment": "production" if i % 10 else "uat",
            "server": f"server_{i % servers}",
            "database": f"db_{i:03d}",
        }
        for i in range(count)
    ]
    return data


def _parse(policy: Path | None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if policy is not None:
        env["BACKUP_POLICY_PATH"] = str(policy)
    done = subprocess.run(
        [sys.executable, "-c", _PARSE.format(dags=str(REPO / "dags"))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"DAG import errors while benchmarking: {done.stderr[-2000:]}")
    return result


def bench_parse(rounds: int = 5) -> list[tuple[str, str, str]]:
    """Median DagBag parse time (imports excluded) of the shipped policy and of 200 targets."""
    with tempfile.TemporaryDirectory() as tmp:
        large = Path(tmp) / "policy.yaml"
        large.write_text(yaml.safe_dump(policy_with_targets(200)))
        shipped = statistics.median(_parse(None)["parse_s"] for _ in range(rounds))
        many = statistics.median(_parse(large)["parse_s"] for _ in range(rounds))
    return [
        (
            "DAG parse, 200 targets on 5 servers vs the shipped policy",
            f"{many:.2f} s vs {shipped:.2f} s",
            f"{many / shipped:.2f}x (goal < 2 s absolute)",
        )
    ]
