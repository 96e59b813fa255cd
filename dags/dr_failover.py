"""Failover of a database server to its standby as an Airflow DAG (manual, approved by a human).

Structure only; see include/backup_dr/factory/failover.py and include/backup_dr/dr/.
"""

from include.backup_dr.factory.failover import build_failover_dag
from include.backup_dr.policy import load_policy

dr_failover = build_failover_dag(load_policy())
