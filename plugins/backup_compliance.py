"""Airflow UI plugin: the "Backup compliance" page (nav entry, iframe) and its JSON endpoints.

Thin: the app and the page live in include/backup_dr/ui/. Importing this builds the FastAPI
app only; the store is read per request, never at import (the dag processor imports plugins).
"""

from airflow.plugins_manager import AirflowPlugin

from include.backup_dr.ui.app import URL_PREFIX, create_app, ui_base


class BackupCompliancePlugin(AirflowPlugin):
    name = "backup_compliance"
    fastapi_apps = [  # noqa: RUF012 (AirflowPlugin's own class attributes)
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Backup compliance"}
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Backup compliance",
            "href": f"{ui_base().rstrip('/')}{URL_PREFIX}/",
            "url_route": "backup-compliance",
            "destination": "nav",
            "category": "browse",
        }
    ]
