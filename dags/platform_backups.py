"""Platform database backups as Airflow DAGs: one DAG per tier of the policy's `platform` category.

Structure only; see include/backup_dr/factory/backups.py for the shape and include/policy.yaml for
the schedules, retention and targets.
"""

from include.backup_dr.factory.backups import build_tier_dags

globals().update(build_tier_dags("platform"))
