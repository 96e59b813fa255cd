"""Every minute, as an Airflow DAG: heartbeat-measured standby lag and WAL archive health.

Structure only; see include/backup_dr/factory/monitoring.py and include/backup_dr/monitor/.
"""

from include.backup_dr.factory.monitoring import build_continuous_monitor_dag
from include.backup_dr.policy import load_policy

platform_continuous_monitor = build_continuous_monitor_dag(load_policy())
