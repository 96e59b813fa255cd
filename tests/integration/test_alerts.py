"""Alerts on every channel, over real SMTP and real HTTP: the fallback, and a compliance breach
that pages once and resolves once on smtp, Slack (incoming webhook) and PagerDuty (Events API v2,
one incident per condition, closed by its own `resolve`).

Each count is deterministic: a canary sent through the same path marks where a channel's
messages stand, and every sender has returned (the sinks record before they answer) before
anything is counted.
"""

from __future__ import annotations

import email
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup_dr.alerts import send_message
from local.http_sink import HttpSink
from tests.integration.helpers import LEAN_IDS as IDS
from tests.integration.helpers import age_manifests, lean_policy
from tests.stack import airflow_cli, mail_text, run_dag, wait_for_mail

pytestmark = pytest.mark.integration

CHANNELS = ("smtp", "slack", "pagerduty")
#: How long the scheduler and triggerer get to handle a missed deadline (s).
DEADLINE_WAIT = float(os.environ.get("BACKUP_TEST_DEADLINE_WAIT", "240"))
#: The Slack webhook's token: the path under the sink's /slack/ the hook posts to.
SLACK_TOKEN = "T00000000/B00000000/local"


@pytest.fixture(scope="module")
def http_sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


@pytest.fixture
def on_call(http_sink: HttpSink, smtp_sink: Path, monkeypatch: pytest.MonkeyPatch) -> HttpSink:
    """Slack and PagerDuty connections pointed at the sink, as an operator would set them."""
    conns = {
        "SLACK_ONCALL": {
            "conn_type": "slackwebhook",
            "host": f"{http_sink.url}/slack",
            "password": SLACK_TOKEN,
        },
        "PAGERDUTY_ONCALL": {
            "conn_type": "pagerduty_events",
            "host": http_sink.url,
            "password": "local-routing-key",
        },
    }
    for name, conn in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps(conn))
    http_sink.requests.clear()
    return http_sink


def _received(channel: str, sink: HttpSink, mail: Path) -> list[str]:
    """What a channel has received, oldest first: titles (smtp, Slack) or PagerDuty events as
    `<action> <dedup_key>`."""
    if channel == "smtp":
        paths = sorted(mail.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
        return [email.message_from_bytes(p.read_bytes())["Subject"] for p in paths]
    if channel == "slack":
        return [b["text"].split("\n")[0].strip("*") for b in sink.received("/slack/")]
    return [f"{b['event_action']} {b.get('dedup_key')}" for b in sink.received("/v2/enqueue")]


def test_unknown_channel_falls_back_to_the_second_channel(
    smtp_sink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_BACKUP_ALERT_NOTIFIER", "pagerduty-typo")
    monkeypatch.setenv("AIRFLOW_VAR_BACKUP_ALERT_FALLBACK_NOTIFIER", "smtp")
    with caplog.at_level(logging.WARNING, logger="include.backup_dr.alerts"):
        channel = send_message("[backup] test: integrity_check failed", "Reason: sha256 FAILED")
    assert channel == "smtp"
    mails = wait_for_mail(smtp_sink)
    assert [m["Subject"] for m in mails] == ["[backup] test: integrity_check failed"]
    assert "sha256 FAILED" in mail_text(mails[0])
    assert "'pagerduty-typo' is not a channel" in caplog.text


def test_when_every_channel_fails_the_alert_is_logged_at_error_with_a_marker(
    smtp_sink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_BACKUP_ALERT_NOTIFIER", "bogus")
    monkeypatch.setenv("AIRFLOW_VAR_BACKUP_ALERT_FALLBACK_NOTIFIER", "also-bogus")
    with caplog.at_level(logging.WARNING, logger="include.backup_dr.alerts"):
        channel = send_message("[backup] test: prune failed", "Reason: circuit breaker")
    assert channel is None  # not delivered: a caller that de-duplicates must try again
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "BACKUP ALERT NOT DELIVERED" in errors[0].getMessage()
    assert "[backup] test: prune failed" in errors[0].getMessage()
    assert "circuit breaker" in errors[0].getMessage()
    assert wait_for_mail(smtp_sink, timeout=2) == []


def test_slack_and_pagerduty_are_real_http_posts_with_one_incident_per_condition(
    on_call: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ["backup-dr/test/a", "backup-dr/test/b"]
    monkeypatch.setenv("AIRFLOW_VAR_BACKUP_ALERT_NOTIFIER", "slack")
    assert send_message("[backup] test: 2 red", "Reason: stale", keys=keys) == "slack"
    [slack] = on_call.received(f"/slack/{SLACK_TOKEN}")
    assert slack["text"].startswith("*[backup] test: 2 red*") and "Reason: stale" in slack["text"]

    monkeypatch.setenv("AIRFLOW_VAR_BACKUP_ALERT_NOTIFIER", "pagerduty")
    assert send_message("[backup] test: 2 red", "Reason: stale", keys=keys) == "pagerduty"
    assert send_message("[backup] RESOLVED", "", keys=keys, resolve=True) == "pagerduty"
    events = on_call.received("/v2/enqueue")
    assert [(e["event_action"], e["dedup_key"]) for e in events] == [
        ("trigger", keys[0]),
        ("trigger", keys[1]),
        ("resolve", keys[0]),
        ("resolve", keys[1]),
    ]
    assert {e["routing_key"] for e in events} == {"local-routing-key"}
    assert events[0]["payload"]["summary"] == "[backup] test: 2 red"
    assert events[0]["payload"]["custom_details"] == {"alert": "Reason: stale"}


def test_a_compliance_breach_pages_once_and_resolves_once_on_every_channel(
    policy_file, stores, smtp_sink: Path, on_call: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.backup_dr.monitor import record

    policy, regions = policy_file(lean_policy), list(stores)
    now = datetime.now(UTC)
    window = now.replace(hour=now.hour - now.hour % 6, minute=0, second=0, microsecond=0)
    assert run_dag("platform_backup_6h", window).state == "success"
    run: dict[str, Any] = {"dag_id": "backup_compliance", "run_id": "test"}
    # Checks red from the start (no drill yet) page here, on smtp, and stay open throughout.
    record.run(policy, regions, run)
    keys = [f"backup-dr/compliance/{i}" for i in sorted(IDS)]

    for channel in CHANNELS:
        monkeypatch.setenv("AIRFLOW_VAR_BACKUP_ALERT_NOTIFIER", channel)

        def since_canary(n: int, channel: str = channel) -> list[str]:
            """Send canary `n`; what the channel received after canary `n - 1`, canary `n` last."""
            key = f"backup-dr/canary/{n}"
            assert send_message(f"[backup] canary {n}", "control", keys=[key]) == channel
            got = _received(channel, on_call, smtp_sink)
            return got[got.index(_canary(channel, n - 1)) + 1 :] if n else got[-1:]

        since_canary(0)
        age_manifests(stores, window, timedelta(hours=9))  # stale in both regions: 2 checks red
        document = record.run(policy, regions, run)
        assert [sorted(a["checks"]) for a in document["alerts"]] == [sorted(IDS)]
        breach = since_canary(1)
        record.run(policy, regions, run)  # still red: nothing more
        assert since_canary(2) == [_canary(channel, 2)]
        age_manifests(stores, window, -timedelta(hours=9))  # fresh again
        record.run(policy, regions, run)
        resolved = since_canary(3)
        if channel == "pagerduty":
            assert breach == [*(f"trigger {k}" for k in keys), _canary(channel, 1)]
            assert resolved == [*(f"resolve {k}" for k in keys), _canary(channel, 3)]
        else:
            assert len(breach) == 2 and "backup_compliance: 2 check(s) red" in breach[0]
            assert len(resolved) == 2
            assert resolved[0].startswith("[backup] RESOLVED: backup_compliance")


def _canary(channel: str, n: int) -> str:
    """How canary `n` shows in `_received`."""
    return f"trigger backup-dr/canary/{n}" if channel == "pagerduty" else f"[backup] canary {n}"


def _deadline_callbacks(env: dict[str, str], dag_id: str) -> dict[str, str | None]:
    """The state of each run's Deadline Alert callback (None until the deadline is missed),
    from the scheduler's metadata database."""
    from local.pg import connect

    database = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]
    with connect(database) as conn:
        rows = conn.execute(
            "SELECT r.run_id, CASE WHEN d.missed THEN c.state END FROM deadline d"
            " JOIN dag_run r ON r.id = d.dagrun_id JOIN callback c ON c.id = d.callback_id"
            " WHERE r.dag_id = %s",
            (dag_id,),
        ).fetchall()
    return dict(rows)


def test_a_tier_run_not_done_by_its_window_plus_the_grace_pages_once(
    airflow_scheduler: dict[str, str], smtp_sink: Path
) -> None:
    """Deadline Alerts, by a real scheduler and triggerer. The DAG stays paused, so its runs
    never finish; a run queued after its deadline had passed (a backfill) is the control."""
    from include.backup_dr.policy import format_duration, load_policy

    dag_id = "platform_backup_6h"
    grace = load_policy().compliance.grace
    logical = {}
    for name, offset in (
        ("backfill", -grace - timedelta(hours=1)),  # queued 1 h after its deadline
        ("late", -grace + timedelta(seconds=45)),  # its deadline: 45 s after the trigger
    ):
        for _ in range(30):  # the DAG processor may not have parsed the file yet
            logical[name] = datetime.now(UTC).replace(microsecond=0) + offset
            try:
                airflow_cli(
                    airflow_scheduler,
                    "dags", "trigger", dag_id,
                    "--logical-date", logical[name].isoformat(), "--run-id", f"deadline_{name}",
                )  # fmt: skip
                break
            except AssertionError:
                time.sleep(2)
    wait_until = time.monotonic() + DEADLINE_WAIT
    while (states := _deadline_callbacks(airflow_scheduler, dag_id)) != dict.fromkeys(
        ("deadline_late", "deadline_backfill"), "success"
    ):
        assert time.monotonic() < wait_until, (
            f"deadline callbacks after {DEADLINE_WAIT} s: {states}"
        )
        time.sleep(2)
    # Both callbacks have returned: every mail they sent is in the sink.
    pages = [m for m in wait_for_mail(smtp_sink, timeout=0.1) if dag_id in m["Subject"]]
    assert [m["Subject"] for m in pages] == [
        f"[backup] {dag_id}: the run for {logical['late'].isoformat().replace('+00:00', 'Z')} "
        f"is not done within {format_duration(grace)}"
    ]
    assert "Run: deadline_late" in mail_text(pages[0])
