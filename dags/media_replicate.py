"""Hourly media replication to the secondary region as an Airflow DAG; pages past the 2 h RPO.

Structure only; see include/backup_dr/factory/backups.py and include/backup_dr/backup/replication.py.
"""

from include.backup_dr.factory.backups import build_replication_dag
from include.backup_dr.policy import load_policy

media_replicate = build_replication_dag(load_policy(), "media")
