"""Where tasks run at scale: heavy steps on the `backup-io` queue with their Kubernetes pod,
light ones on the default queue; and parsing never imports the kubernetes client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from include.backup_dr.deployment import DEFAULT_QUEUE, HEAVY, IO_QUEUE

REPO = Path(__file__).resolve().parents[2]

#: Parses every DAG in a fresh interpreter and prints each task's queue and executor_config,
#: the pod as the KubernetesExecutor gets it: after a round trip through DAG serialization.
PARSE = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
bag = DagBag(dag_folder={str(REPO / "dags")!r})
assert not bag.import_errors, bag.import_errors
tasks = {{}}
for dag in bag.dags.values():
    stored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    for task in stored.tasks:
        pod = task.executor_config.get("pod_override")
        if pod is not None:
            from kubernetes.client import ApiClient
            pod = ApiClient().sanitize_for_serialization(pod)
        tasks[f"{{dag.dag_id}}:{{task.task_id}}"] = {{"queue": task.queue, "pod": pod}}
print(json.dumps({{"tasks": tasks, "kubernetes": "kubernetes.client" in sys.modules}}))
"""


def _parse(executor: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PARSE],
        env={**os.environ, "PYTHONPATH": str(REPO), "AIRFLOW__CORE__EXECUTOR": executor},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _step(task_key: str) -> str:
    return task_key.rsplit(".", 1)[-1].split(":")[-1]


def test_heavy_steps_go_to_backup_io_and_light_ones_to_default() -> None:
    parsed = _parse("CeleryExecutor")
    assert not parsed["kubernetes"], "parsing imported the kubernetes client"
    steps_seen = set()
    for key, task in parsed["tasks"].items():
        step = _step(key)
        steps_seen.add(step)
        assert task["queue"] == (IO_QUEUE if step in HEAVY else DEFAULT_QUEUE), key
        assert task["pod"] is None, key
    assert set(HEAVY) <= steps_seen  # no entry names a task that does not exist
    for heavy in ("platform_backup_daily:platform_primary.snapshot", "restore_verification:pitr"):
        assert parsed["tasks"][heavy]["queue"] == IO_QUEUE


def test_every_heavy_step_gets_its_documented_pod_under_kubernetes() -> None:
    parsed = _parse("KubernetesExecutor")
    heavy = {key: task for key, task in parsed["tasks"].items() if _step(key) in HEAVY}
    assert {_step(key) for key in heavy} == set(HEAVY)
    for key, task in heavy.items():
        expected = HEAVY[_step(key)]
        assert task["queue"] == IO_QUEUE, key
        [container] = task["pod"]["spec"]["containers"]
        assert container["name"] == "base", key  # the task's own container, merged by Airflow
        assert container["resources"] == {
            "requests": expected.requests(),
            "limits": expected.limits(),
        }, key
    light = [key for key in parsed["tasks"] if key not in heavy]
    assert light and all(parsed["tasks"][key]["pod"] is None for key in light)
