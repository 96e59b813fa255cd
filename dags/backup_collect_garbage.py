"""Garbage collection as an Airflow DAG, once a day per category: unreferenced media blobs, and
WAL that no kept base backup needs.

Structure only; see include/backup_dr/factory/backups.py and include/backup_dr/backup/gc.py.
"""

from include.backup_dr.factory.backups import build_gc_dag
from include.backup_dr.policy import load_policy

backup_collect_garbage = build_gc_dag(load_policy())
