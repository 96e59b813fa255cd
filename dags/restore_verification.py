"""Yearly restore drill as an Airflow DAG: restore, validate with Great Expectations, time it.

Structure only; see include/backup_dr/factory/drill.py and include/backup_dr/drill/.
"""

from include.backup_dr.factory.drill import build_restore_verification_dag
from include.backup_dr.policy import load_policy

restore_verification = build_restore_verification_dag(load_policy())
