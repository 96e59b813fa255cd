"""Every 15 minutes, as an Airflow DAG: is every promise of the policy kept? Read from the store.

Structure only; see include/backup_dr/factory/monitoring.py and include/backup_dr/monitor/.
"""

from include.backup_dr.factory.monitoring import build_compliance_dag
from include.backup_dr.policy import load_policy

backup_compliance = build_compliance_dag(load_policy())
