"""Media (documents and files) backups as Airflow DAGs: one DAG per tier of the `media` category.

Structure only; see include/backup_dr/factory/backups.py for the shape and include/policy.yaml for
the schedules, retention and source buckets.
"""

from include.backup_dr.factory.backups import build_tier_dags

globals().update(build_tier_dags("media"))
