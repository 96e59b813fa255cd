"""Where each task runs when Airflow scales out: its Celery queue, and under the
KubernetesExecutor the pod it needs.

The steps that move a backup's bytes through the worker (dump, copy, re-hash, restore,
replicate, point-in-time recovery) go to the `backup-io` queue, so they can get workers of
their own, sized for them; everything else stays on Airflow's default queue. The pod sizes
follow the measured peak RSS of each step (README, Benchmarks) with headroom, and the CPU it
keeps busy (pg_dump's compression, SHA-256, `pg_restore -j 2`, the throwaway PostgreSQL).

Parsing stays cheap: importing the kubernetes client costs seconds, so the `pod_override` is
built only when the configured executor is the KubernetesExecutor, the only one that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Airflow's `[operators] default_queue`: light tasks (selection, prune, validation, reports).
DEFAULT_QUEUE = "default"
#: Heavy byte-moving tasks.
IO_QUEUE = "backup-io"


@dataclass(frozen=True)
class PodResources:
    """Kubernetes requests and limits of one step's pod, and why."""

    cpu: tuple[str, str]  # (request, limit)
    memory: tuple[str, str]
    why: str

    def requests(self) -> dict[str, str]:
        return {"cpu": self.cpu[0], "memory": self.memory[0]}

    def limits(self) -> dict[str, str]:
        return {"cpu": self.cpu[1], "memory": self.memory[1]}


#: The heavy steps by task name (the last part of the task id), with their pods.
HEAVY: dict[str, PodResources] = {
    "snapshot": PodResources(
        ("1", "2"),
        ("512Mi", "1Gi"),
        "pg_dump compresses on the worker; peak RSS 215 MB on 1.1 GB (docs/benchmarks.md)",
    ),
    "copy_to_secondary": PodResources(
        ("500m", "1"), ("512Mi", "1Gi"), "server-side in AWS, streamed otherwise; 262 MB"
    ),
    "integrity_check": PodResources(
        ("1", "2"), ("512Mi", "1Gi"), "SHA-256 of both regions' copies at ~620 MB/s; 188 MB"
    ),
    "replicate": PodResources(
        ("500m", "1"), ("512Mi", "1Gi"), "16 threads hash and copy new media objects"
    ),
    "restore": PodResources(
        ("2", "2"),
        ("2Gi", "4Gi"),
        "download + SHA-256, then pg_restore -j 2 from local disk; in dr_restore also a "
        "point-in-time recovery's throwaway PostgreSQL",
    ),
    "pitr": PodResources(
        ("2", "2"), ("2Gi", "4Gi"), "a throwaway PostgreSQL replays WAL on the worker; 235 MB"
    ),
}


def placement(step: str) -> dict[str, Any]:
    """Task arguments for a heavy `step`: its queue and, under Kubernetes, its pod."""
    resources = HEAVY[step]
    config = {"pod_override": pod_override(resources)} if kubernetes_executor() else {}
    return {"queue": IO_QUEUE, "executor_config": config}


def kubernetes_executor() -> bool:
    """True when the configured executors (a comma-separated list in Airflow 3) include it."""
    from airflow.sdk import conf

    return "KubernetesExecutor" in conf.get("core", "executor", fallback="")


def pod_override(resources: PodResources) -> Any:
    """The `base` container (the task's own) with the step's requests and limits."""
    from kubernetes.client import models as k8s

    return k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base",
                    resources=k8s.V1ResourceRequirements(
                        requests=resources.requests(), limits=resources.limits()
                    ),
                )
            ]
        )
    )
