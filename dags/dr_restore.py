"""Disaster-recovery restore as an Airflow DAG (manual trigger only, needs confirmation).

Structure only; see include/backup_dr/factory/dr_restore.py and include/backup_dr/dr/.
"""

from include.backup_dr.factory.dr_restore import build_dr_restore_dag
from include.backup_dr.policy import load_policy

dr_restore = build_dr_restore_dag(load_policy())
