"""The "Backup compliance" page and the dr_restore trigger form, in a real headless Chromium
against the session's Airflow standalone (plugins loaded from plugins/), on real backups."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from local.failover import SETTLE_S
from tests.browser import ARTIFACTS
from tests.integration.helpers import LEAN_TARGET, age_manifests, back_up, sandbox_databases
from tests.stack import airflow_cli, dag_runs, primary_setting

pytestmark = pytest.mark.integration

RUN = {"dag_id": "test_compliance_page", "run_id": "manual"}
#: The page's colours (include/backup_dr/ui/page.py), as the browser computes them.
GREEN, RED = "rgb(198, 246, 213)", "rgb(254, 215, 215)"


def _backup(stores: Any, tier: str, window: datetime, *, age: timedelta | None = None) -> None:
    """A real backup of platform_core: snapshot, copy, integrity check in both regions; `age`
    moves its restore point back (in both regions' manifests), as a tier whose runs stopped."""
    from include.backup_dr.policy import load_policy

    back_up(load_policy(), stores, LEAN_TARGET, tier, window, RUN)
    if age is not None:
        age_manifests(stores, window, age, tier)


def _monitor(stores: Any, run_id: str) -> None:
    """A 1 s continuous monitor run: its record holds the server's settings now."""
    from include.backup_dr.monitor.continuous import measure
    from include.backup_dr.policy import load_policy

    measure(load_policy(), stores, "platform_primary", 1, {**RUN, "run_id": run_id})


def _row(frame: Any, subject: str, tier: str) -> Any:
    return frame.locator(f"#targets tr[data-subject='{subject}'][data-tier='{tier}']")


def _background(locator: Any) -> str:
    return locator.evaluate("e => getComputedStyle(e).backgroundColor")


def test_page_shows_each_tier_and_refuses_anonymous(
    browser, ui_page, airflow_scheduler, stores
) -> None:
    base = airflow_scheduler["AIRFLOW__API__BASE_URL"]
    anonymous = browser.new_context()  # no sign-in: no `_token` cookie, no Bearer token
    for path in ("/backup-compliance/", "/backup-compliance/api/checks"):
        assert anonymous.request.get(base + path).status == 401, path
    anonymous.close()

    window = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    _backup(stores, "6h", window)
    _backup(stores, "daily", window, age=timedelta(days=3))  # past 1d + 2h grace
    _monitor(stores, "settings-as-policy")

    # Through Airflow's own navigation, as a user: Browse > Backup compliance (an iframe).
    page = ui_page
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Backup compliance").click()
    page.wait_for_url("**/plugin/backup-compliance")
    frame = page.frame_locator("iframe")
    summary = frame.locator("#summary")
    summary.wait_for(timeout=120_000)
    assert "recomputed from the store" in summary.inner_text()  # no DAG record yet

    fresh, stale = _row(frame, "platform_core", "6h"), _row(frame, "platform_core", "daily")
    assert fresh.get_attribute("data-status") == "OK"
    assert _background(fresh.locator("td").first) == GREEN
    for region in ("eu-west-1", "eu-central-1"):
        cell = fresh.locator(f"td[data-check='backup_age:platform_core/6h@{region}']")
        assert cell.get_attribute("data-status") == "OK"
        assert f"window {window:%Y-%m-%d %H:%M}" in cell.inner_text()
        cell = stale.locator(f"td[data-check='backup_age:platform_core/daily@{region}']")
        assert cell.get_attribute("data-status") == "CRITICAL"
        assert "3d" in cell.inner_text() and "limit 1d + 2h grace" in cell.inner_text()
    assert stale.get_attribute("data-status") == "CRITICAL"
    assert _background(stale.locator("td").first) == RED
    never = _row(frame, "platform_billing", "6h")
    assert never.get_attribute("data-status") == "CRITICAL" and "none" in never.inner_text()
    # The target's drill and RTO: once, over its tiers' rows.
    assert frame.locator("td[data-check='restore_drill:platform_core']").count() == 1
    link = fresh.get_by_role("link", name="platform_backup_6h")
    assert link.get_attribute("href") == "/dags/platform_backup_6h/runs"
    assert link.get_attribute("target") == "_top"
    assert "NOT MET" in frame.locator("#policy-report").inner_text()
    config = "#others tr[data-check='server_config:platform_primary']"
    assert frame.locator(config).get_attribute("data-status") == "OK"
    assert _background(frame.locator(config + " td").first) == GREEN
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "compliance_page_nav.png"))

    # The JSON endpoints serve the same rows, to a signed-in client (the UI's cookie).
    api = page.context.request
    targets = api.get(base + "/backup-compliance/api/targets").json()
    by_tier = {(r["subject"], r["tier"]): r["status"] for r in targets["targets"]}
    assert by_tier[("platform_core", "6h")] == "OK"
    assert by_tier[("platform_core", "daily")] == "CRITICAL"
    report = api.get(base + "/backup-compliance/api/policy-report").json()
    assert any(p["verdict"] == "NOT MET" for p in report["promises"])

    # The audit report, downloaded from the page's form as an auditor would (Markdown).
    audit = frame.locator("form#audit")
    audit.locator("select[name=format]").select_option("md")
    with page.expect_download() as download:
        audit.get_by_role("button", name="Download").click()
    saved = ARTIFACTS / download.value.suggested_filename
    download.value.save_as(saved)
    text = saved.read_text()
    assert saved.name.startswith("backup-audit-") and saved.suffix == ".md"
    assert "| platform_core | 6h |" in text and "A.8.13" in text

    # A DBA sets archive_timeout to 10 minutes (the policy says 60 s): server_config turns red.
    with primary_setting("archive_timeout", "600"):
        _monitor(stores, "settings-changed")
    page.goto(base + "/backup-compliance/")
    row = page.locator(config)
    assert row.get_attribute("data-status") == "CRITICAL"
    assert _background(row.locator("td").first) == RED
    assert "archive_timeout=10m" in row.inner_text() and "loses up to 10m" in row.inner_text()

    # Once backup_compliance has run, the page shows its record (not a recompute).
    before = {o.key for o in stores.primary.list_objects("evidence/compliance/")}
    airflow_cli(airflow_scheduler, "dags", "unpause", "backup_compliance")
    try:
        airflow_cli(airflow_scheduler, "dags", "trigger", "backup_compliance")
        deadline = time.monotonic() + 240
        while not {o.key for o in stores.primary.list_objects("evidence/compliance/")} - before:
            assert time.monotonic() < deadline, dag_runs(airflow_scheduler, "backup_compliance")
            time.sleep(3)
    finally:
        airflow_cli(airflow_scheduler, "dags", "pause", "backup_compliance")
    checks = api.get(base + "/backup-compliance/api/checks").json()
    assert checks["source"] == "record" and checks["run"]["dag_id"] == "backup_compliance"
    assert checks["evidence"] in {o.key for o in stores.primary.list_objects("evidence/")}
    page.goto(base + "/backup-compliance/")
    assert "from the record of backup_compliance" in page.locator("#summary").inner_text()
    assert _row(page, "platform_core", "daily").get_attribute("data-status") == "CRITICAL"
    page.screenshot(path=str(ARTIFACTS / "compliance_page.png"), full_page=True)
    live = api.get(base + "/backup-compliance/api/checks?live=true").json()
    assert live["source"] == "live"


def test_dr_restore_form_submits_with_only_a_database_restore_and_is_approved_in_the_ui(
    ui_page, airflow_scheduler, stores
) -> None:
    """The trigger form needs only the targets; the plan then waits under Required Actions,
    where on-call reads it (target, backup and region, what is set aside, projected time
    against the RTO) and approves it; only then is anything restored."""
    window = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    _backup(stores, "daily", window)
    base = airflow_scheduler["AIRFLOW__API__BASE_URL"]
    page = ui_page
    page.goto(base + "/dags/dr_restore")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    submit = dialog.get_by_test_id("trigger-dag-submit")
    submit.wait_for(timeout=60_000)
    # What a database restore needs, and nothing else: the target.
    dialog.locator("input[name=element_targets]").locator("xpath=..").click()
    page.keyboard.type("platform_core")
    page.keyboard.press("Enter")
    page.screenshot(path=str(ARTIFACTS / "dr_restore_form.png"), full_page=True)
    assert submit.is_enabled()
    before = set(dag_runs(airflow_scheduler, "dr_restore"))
    submit.click()
    try:
        deadline = time.monotonic() + 300
        page.goto(base + "/required_actions")
        subject = page.get_by_text("Restore platform_core into pg_sandbox?").first
        while not subject.is_visible():
            assert time.monotonic() < deadline, dag_runs(airflow_scheduler, "dr_restore")
            assert sandbox_databases() == []  # nothing before the approval
            time.sleep(3)
            page.reload()
        subject.click()
        page.get_by_text("Projected wall time", exact=False).first.wait_for(timeout=60_000)
        assert page.get_by_text("creates platform_core").first.is_visible()
        page.screenshot(path=str(ARTIFACTS / "dr_restore_approval.png"), full_page=True)
        # Airflow's scheduler fails an approval answered within seconds of its parking (the
        # HITL race local/failover.py's approver waits out): on-call is never that quick.
        time.sleep(SETTLE_S)
        page.get_by_role("button", name="Approve").first.click()
        while True:
            runs = dag_runs(airflow_scheduler, "dr_restore")
            new = [r for d, r in runs.items() if d not in before]
            if new and new[0]["state"] in ("success", "failed"):
                break
            assert time.monotonic() < deadline, runs
            time.sleep(5)
        [run] = new
        assert run["state"] == "success", run
        assert "platform_core" in sandbox_databases()
        (record,) = [
            stores.secondary.get_json(o.key)
            for o in stores.secondary.list_objects("evidence/dr_restore/platform_core/")
            if o.key.endswith("report.json")
        ][-1:]
        assert record["run"]["approved_by"] not in (None, "-")
    finally:
        airflow_cli(airflow_scheduler, "dags", "pause", "dr_restore")
        from local.pg import connect

        with connect("postgres", server="sandbox") as conn:
            for name in sandbox_databases():
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
