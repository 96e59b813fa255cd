"""An alert is never lost to a configuration mistake: a second channel, then the task log."""

from __future__ import annotations

import logging

import pytest

from include.backup_dr.alerts import send_message
from tests.stack import mail_text, wait_for_mail

pytestmark = pytest.mark.integration


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
