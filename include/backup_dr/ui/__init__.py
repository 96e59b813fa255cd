"""The "Backup compliance" page of the Airflow UI (mounted by plugins/backup_compliance.py)."""
