"""The compliance page as one HTML document: server-rendered, no script, so it shows the same
thing in any browser and in Airflow's iframe. Links open Airflow's own pages in the top window
(`target="_top"`), not inside the iframe."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape
from typing import Any

from include.backup_dr.monitor.output import summary
from include.backup_dr.ui.view import Snapshot, record_age

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 16px; color: #1a202c; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #cbd5e0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #edf2f7; }
.small { font-size: 12px; color: #4a5568; }
.status-OK { background: #c6f6d5; } .status-WARNING { background: #fefcbf; }
.status-CRITICAL { background: #fed7d7; } .status-UNKNOWN { background: #e9d8fd; }
.badge { display: inline-block; padding: 1px 6px; border-radius: 4px; font-weight: 600; }
.banner { padding: 8px 12px; border-radius: 4px; margin: 8px 0; }
a { color: #2b6cb0; }
"""


def render(
    snapshot: Snapshot | None,
    rows: Sequence[dict[str, Any]],
    others: Sequence[dict[str, Any]],
    report: Sequence[dict[str, str]],
    *,
    now: datetime,
    ui: str,
    error: str | None = None,
    failovers: Sequence[dict[str, Any]] = (),
) -> str:
    """The whole page. `ui` is the Airflow UI's base path, for links to DAG runs."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Backup compliance</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Backup compliance</h1>",
        _banner(snapshot, now, ui, error),
    ]
    if snapshot is not None:
        parts += [
            "<h2>Targets</h2>",
            _targets(rows, ui),
            "<h2>Continuous, replication and re-hash checks</h2>",
            _others(others, ui),
            "<h2>Failovers (ISO 27001 A.5.29 / A.5.30)</h2>",
            _failovers(failovers, ui),
        ]
    parts += ["<h2>Policy report</h2>", _report(report), _audit_form(now)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _banner(snapshot: Snapshot | None, now: datetime, ui: str, error: str | None) -> str:
    if snapshot is None:
        return (
            "<div class='banner status-UNKNOWN' data-status='UNKNOWN'>UNKNOWN: cannot read "
            f"the store: {escape(error or '')}</div>"
        )
    worst = summary(snapshot.checks).split(":", 1)[0]
    if snapshot.source == "record":
        run_id = snapshot.run.get("run_id", "")
        run = _link(f"{ui}dags/backup_compliance/runs/{run_id}", run_id) if run_id else ""
        where = (
            f"from the record of backup_compliance {run} at "
            f"{snapshot.evaluated_at:%Y-%m-%d %H:%M:%S} UTC ({record_age(snapshot, now)} ago): "
            f"<code>{escape(snapshot.evidence or '')}</code>"
        )
    else:
        where = f"recomputed from the store at {snapshot.evaluated_at:%Y-%m-%d %H:%M:%S} UTC"
    stale = (
        "<div class='banner status-UNKNOWN' data-status='UNKNOWN'>This record is stale: "
        "backup_compliance has not run for two of its periods. Recompute now, or check the "
        "DAG.</div>"
        if snapshot.stale
        else ""
    )
    return (
        f"<div class='banner status-{worst}' data-status='{worst}' id='summary'>"
        f"<strong>{escape(summary(snapshot.checks))}</strong><br>"
        f"<span class='small'>{where}. <a href='?live=true'>Recompute now</a> (reads the "
        "whole store: a few seconds) &middot; JSON: <a href='api/checks'>checks</a>, "
        "<a href='api/targets'>targets</a>, <a href='api/policy-report'>policy report</a>"
        f"</span></div>{stale}"
    )


def _link(href: str, text: str) -> str:
    return f"<a href='{escape(href)}' target='_top'>{escape(text)}</a>"


def _cell(check: dict[str, Any] | None, *, rowspan: int = 1) -> str:
    if check is None:
        return f"<td rowspan='{rowspan}'>-</td>"
    status = check["status"]
    return (
        f"<td rowspan='{rowspan}' class='status-{status}' data-status='{status}' "
        f"data-check='{escape(check['id'])}'>"
        f"<span class='badge'>{status}</span> {escape(check['measured'])}"
        f"<div class='small'>limit {escape(check['limit'])}</div>"
        f"<div class='small'>{escape(check['detail'])}</div></td>"
    )


def _targets(rows: Sequence[dict[str, Any]], ui: str) -> str:
    regions = list(rows[0]["regions"]) if rows else []
    head = "".join(f"<th>newest verified backup: {escape(r)}</th>" for r in regions)
    lines = [
        "<table id='targets'><tr><th>status</th><th>target</th><th>tier</th>"
        f"{head}<th>last restore drill</th><th>projected RTO</th><th>runs</th></tr>"
    ]
    drill_runs = _link(f"{ui}dags/restore_verification/runs", "restore_verification")
    span = Counter(row["subject"] for row in rows)
    seen: set[str] = set()
    for row in rows:
        status, subject = row["status"], row["subject"]
        tier_runs = f"{ui}dags/{row['dag_id']}/runs"
        cells = "".join(_cell(row["regions"][r]) for r in regions)
        # The drill and RTO are the target's, not the tier's: one cell over its tiers' rows.
        target_cells = ""
        if subject not in seen:
            seen.add(subject)
            rowspan = span[subject]
            target_cells = _cell(row["drill"], rowspan=rowspan) + _cell(
                row["projected_rto"], rowspan=rowspan
            )
        lines.append(
            f"<tr data-subject='{escape(subject)}' data-tier='{escape(row['tier'])}' "
            f"data-status='{status}'>"
            f"<td class='status-{status}'><span class='badge'>{status}</span></td>"
            f"<td>{escape(subject)}</td><td>{escape(row['tier'])}</td>{cells}{target_cells}"
            f"<td>{_link(tier_runs, row['dag_id'])}<br>{drill_runs}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _others(checks: Sequence[dict[str, Any]], ui: str) -> str:
    lines = [
        "<table id='others'><tr><th>status</th><th>check</th><th>measured</th><th>limit</th>"
        "<th>detail</th><th>runs</th></tr>"
    ]
    for check in checks:
        status = check["status"]
        dag = check["dag_id"]
        lines.append(
            f"<tr data-check='{escape(check['id'])}' data-status='{status}'>"
            f"<td class='status-{status}'><span class='badge'>{status}</span></td>"
            f"<td>{escape(check['id'])}</td><td>{escape(check['measured'])}</td>"
            f"<td>{escape(check['limit'])}</td><td class='small'>{escape(check['detail'])}</td>"
            f"<td>{_link(f'{ui}dags/{dag}/runs', dag) if dag else '-'}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _failovers(rows: Sequence[dict[str, Any]], ui: str) -> str:
    """The newest dr_failover per server: when, who approved, the loss, what is left."""
    lines = [
        "<table id='failovers'><tr><th>server</th><th>primary / standby now</th>"
        "<th>newest failover</th><th>approved by</th><th>approval to writable</th>"
        "<th>loss measured</th><th>left to do</th><th>runs</th></tr>"
    ]
    for row in rows:
        record = row["failover"] or {}
        loss = record.get("loss") or {}
        writable = record.get("approval_to_writable_seconds")
        lines.append(
            f"<tr data-server='{escape(row['server'])}'><td>{escape(row['server'])}</td>"
            f"<td>{escape(row['primary'])} / {escape(row['standby'] or 'none')}"
            f"{' (timeline ' + str(row['timeline']) + ')' if row['timeline'] else ''}</td>"
            f"<td class='small'>{escape(record.get('writable_at') or 'none on record')}</td>"
            f"<td>{escape(record.get('approved_by') or '-')}</td>"
            f"<td>{'-' if writable is None else f'{writable:.1f} s'}</td>"
            f"<td>{'-' if not loss else escape(_loss(loss))}</td>"
            f"<td class='small'>{escape('; '.join(record.get('problems') or []) or '-')}</td>"
            f"<td>{_link(f'{ui}dags/dr_failover/runs', 'dr_failover')}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _loss(loss: dict[str, Any]) -> str:
    beats = loss.get("heartbeats")
    return f"{loss.get('seconds', 0):.3f} s" + (f", {beats} heartbeat(s)" if beats else "")


def _report(report: Sequence[dict[str, str]]) -> str:
    lines = [
        "<table id='policy-report'><tr><th>promise</th><th>by configuration</th>"
        "<th>verdict</th><th>measured</th></tr>"
    ]
    for row in report:
        verdict = row["verdict"]
        colour = {"met": "OK", "partly": "WARNING", "NOT MET": "CRITICAL"}.get(verdict, "")
        lines.append(
            f"<tr><td>{escape(row['promise'])}</td><td class='small'>"
            f"{escape(row['configured'])}</td><td class='status-{colour}'>{escape(verdict)}</td>"
            f"<td class='small'>{escape(row['measured'])}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _audit_form(now: datetime) -> str:
    """The yearly audit report for a date range, as a download."""
    return (
        "<h2>Audit report</h2><form id='audit' action='api/audit' method='get'>"
        f"from <input type='date' name='from' value='{now - timedelta(days=365):%Y-%m-%d}'> "
        f"to <input type='date' name='to' value='{now:%Y-%m-%d}'> "
        "<select name='format'><option value='html'>HTML</option>"
        "<option value='md'>Markdown</option></select> "
        "<button type='submit'>Download</button></form>"
    )
