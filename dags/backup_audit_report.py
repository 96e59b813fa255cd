"""Every 2 January, as an Airflow DAG: the previous year's audit report, kept as evidence.

Structure only; see include/backup_dr/factory/monitoring.py and include/backup_dr/audit/.
"""

from include.backup_dr.factory.monitoring import build_audit_dag
from include.backup_dr.policy import load_policy

backup_audit_report = build_audit_dag(load_policy())
