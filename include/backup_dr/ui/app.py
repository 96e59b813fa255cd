"""The compliance page's FastAPI app, mounted on Airflow's API server by the plugin.

Airflow does not authenticate a plugin's app: `requires_authenticated` (the UI's `_token`
cookie or a Bearer token) guards every route, or anyone who reaches the API server could read
where the backups are. Building the app touches no network and no store: the dag processor
and the API server import plugins; the store is read per request only.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response

log = logging.getLogger(__name__)

URL_PREFIX = "/backup-compliance"

Live = Annotated[bool, Query(description="recompute from the store instead of the DAG's record")]


def ui_base() -> str:
    """The Airflow UI's base path ("/" unless `[api] base_url` has a path), for links."""
    from airflow.configuration import conf

    path = urlparse(conf.get("api", "base_url", fallback="/")).path
    return path.rstrip("/") + "/"


def _read(live: bool) -> tuple[Any, Any]:
    """The policy and a snapshot of the checks; 503 when no region of the store answers."""
    from include.backup_dr.monitor.record import StoreUnreadableError
    from include.backup_dr.policy import load_policy
    from include.backup_dr.stores import Stores
    from include.backup_dr.ui.view import read_snapshot

    policy = load_policy()
    try:
        return policy, read_snapshot(
            policy, list(Stores.from_policy(policy)), datetime.now(UTC), live=live
        )
    except StoreUnreadableError as exc:
        raise HTTPException(503, str(exc)) from exc


def audit_report(start: date, end: date, fmt: str) -> tuple[str, str]:
    """The audit report for [start, end] as (body, media type), built as the CLI builds it."""
    from include.backup_dr.audit import build_audit
    from include.backup_dr.policy import load_policy
    from include.backup_dr.store import StoreError
    from include.backup_dr.stores import Stores

    policy = load_policy()
    try:
        report = build_audit(policy, list(Stores.from_policy(policy)), start, end)
    except StoreError as exc:
        raise HTTPException(503, f"the store cannot be read: {exc}") from exc
    if fmt == "md":
        return report.markdown(), "text/markdown; charset=utf-8"
    return report.html(), "text/html; charset=utf-8"


def create_app() -> FastAPI:
    from airflow.api_fastapi.core_api.security import requires_authenticated

    app = FastAPI(
        title="Backup compliance",
        description="Is every promise of the backup policy kept? Read from the store.",
        dependencies=[Depends(requires_authenticated())],
    )

    @app.get("/", response_class=HTMLResponse)
    def page(live: Live = False) -> HTMLResponse:
        from include.backup_dr.policy import load_policy
        from include.backup_dr.stores import Stores
        from include.backup_dr.ui import page as html
        from include.backup_dr.ui.view import (
            newest_failovers,
            other_checks,
            policy_report,
            target_rows,
        )

        now = datetime.now(UTC)
        try:
            policy, snapshot = _read(live)
        except HTTPException as exc:  # the page still shows the policy, and why
            policy = load_policy()
            body = html.render(
                None, [], [], policy_report(policy, None), now=now, ui=ui_base(), error=exc.detail
            )
            return HTMLResponse(body, status_code=exc.status_code)
        body = html.render(
            snapshot,
            target_rows(policy, snapshot.checks),
            other_checks(policy, snapshot.checks),
            policy_report(policy, snapshot.checks),
            now=now,
            ui=ui_base(),
            failovers=newest_failovers(policy, list(Stores.from_policy(policy))),
        )
        return HTMLResponse(body)

    @app.get("/api/checks")
    def checks(live: Live = False) -> dict[str, Any]:
        """Every check, as the `check` CLI and the DAG's evidence record have them."""
        _, snapshot = _read(live)
        return snapshot.to_document()

    @app.get("/api/targets")
    def targets(live: Live = False) -> dict[str, Any]:
        """The page's rows: one per target (or server) and tier, with both regions."""
        from include.backup_dr.ui.view import other_checks, target_rows

        policy, snapshot = _read(live)
        document = snapshot.to_document()
        del document["checks"]
        return {
            **document,
            "targets": target_rows(policy, snapshot.checks),
            "others": other_checks(policy, snapshot.checks),
        }

    @app.get("/api/policy-report")
    def report(live: Live = False) -> dict[str, Any]:
        """Each promise: configured against measured (`policy report` of the CLI)."""
        from include.backup_dr.ui.view import policy_report

        policy, snapshot = _read(live)
        return {
            "evaluated_at": snapshot.evaluated_at.isoformat(),
            "source": snapshot.source,
            "promises": policy_report(policy, snapshot.checks),
        }

    @app.get("/api/audit")
    def audit(
        start: Annotated[date, Query(alias="from")],
        end: Annotated[date, Query(alias="to")],
        fmt: Annotated[str, Query(alias="format", pattern="^(md|html)$")] = "html",
    ) -> Response:
        if end < start:
            raise HTTPException(422, "'to' is before 'from'")
        body, media_type = audit_report(start, end, fmt)
        name = f"backup-audit-{start}-{end}.{fmt}"
        return Response(
            body,
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return app
