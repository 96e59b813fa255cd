"""On-call alerting: one notifier for every task, delivering through the configured channel.

The channel is chosen when the alert fires, from Airflow Variables, so DAG parsing never reads
configuration from the database and switching email -> PagerDuty needs no deploy:

- `backup_alert_notifier`: `smtp` (default), `slack` or `pagerduty`;
- `backup_alert_to`: email recipients (smtp) or channel (slack);
- `backup_alert_conn_id`: the connection of that channel (defaults per channel below);
- `backup_alert_fallback_notifier` (default `smtp`), `_fallback_to`, `_fallback_conn_id`: the
  channel tried when the first one is misconfigured or down. If both fail, the alert goes to
  the task log at ERROR, marked `BACKUP ALERT NOT DELIVERED`.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseNotifier, Variable

#: Context key each task sets to its target's name; also the mapped task's label in the UI.
TARGET_KEY = "backup_target"

log = logging.getLogger(__name__)

DEFAULT_CONN_IDS = {
    "smtp": "smtp_oncall",
    "slack": "slack_oncall",
    "pagerduty": "pagerduty_oncall",
}


@dataclass(frozen=True)
class Alert:
    """What on-call needs to act: where it failed, on which target, and why."""

    dag_id: str
    task_id: str
    target: str
    window: str
    reason: str
    log_url: str

    @property
    def title(self) -> str:
        return f"[backup] {self.dag_id}.{self.task_id} failed for {self.target}"

    def text(self) -> str:
        return (
            f"DAG: {self.dag_id}\nTask: {self.task_id}\nTarget: {self.target}\n"
            f"Window: {self.window}\nReason: {self.reason}\nLog: {self.log_url}\n"
        )


def alert_from_context(context: Any) -> Alert:
    ti = context["ti"]
    target = context.get(TARGET_KEY) or getattr(ti, "rendered_map_index", None) or "(unknown)"
    return Alert(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        target=str(target),
        window=str(context.get("logical_date") or context.get("run_id")),
        reason=str(context.get("exception") or "unknown (see the task log)"),
        log_url=getattr(ti, "log_url", "") or "",
    )


def _deliver(
    channel: str, to: str, conn_id: str, title: str, text: str, context: Any, source: str
) -> None:
    """Send through one channel; raises when the channel is unknown or delivery fails."""
    if channel == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        body = "<pre>" + html.escape(text) + "</pre>"
        SmtpNotifier(to=to, smtp_conn_id=conn_id, subject=title, html_content=body).notify(context)
    elif channel == "slack":
        from airflow.providers.slack.notifications.slack import SlackNotifier

        SlackNotifier(slack_conn_id=conn_id, channel=to, text=f"*{title}*\n```{text}```").notify(
            context
        )
    elif channel == "pagerduty":
        from airflow.providers.pagerduty.notifications.pagerduty import PagerdutyNotifier

        PagerdutyNotifier(
            pagerduty_events_conn_id=conn_id,
            summary=title,
            severity="critical",
            source=source,
            custom_details={"alert": text},
        ).notify(context)
    else:
        raise ValueError(f"{channel!r} is not a channel; use {', '.join(DEFAULT_CONN_IDS)}")


def _channels() -> list[tuple[str, str, str]]:
    """(channel, recipient, connection) to try in order: the configured one, then the fallback."""
    tried = []
    for prefix, default in (("backup_alert", "smtp"), ("backup_alert_fallback", "smtp")):
        channel = Variable.get(f"{prefix}_notifier", default=default)
        to = Variable.get(f"{prefix}_to", default=None) or Variable.get(
            "backup_alert_to", default="oncall@localhost"
        )
        conn_id = Variable.get(f"{prefix}_conn_id", default=DEFAULT_CONN_IDS.get(channel, ""))
        if (channel, to, conn_id) not in tried:
            tried.append((channel, to, conn_id))
    return tried


def send_message(
    title: str, text: str, context: Any = None, *, source: str = "backup-dr"
) -> str | None:
    """Send a message to on-call; returns the channel that delivered it, or None.

    One place chooses the channel (Variables, read when the message is sent), so task-failure
    alerts and the monitors' de-duplicated pages always go the same way. A mistake in one
    channel's configuration never loses the alert: the fallback channel
    (`backup_alert_fallback_notifier`, default smtp) is tried next, and as a last resort the
    alert is written to the task log at ERROR with a marker a log search can page on.
    """
    context = context if context is not None else {}
    problems = []
    for channel, to, conn_id in _channels():
        log.info("Alerting on-call via %s: %s", channel, title)
        try:
            _deliver(channel, to, conn_id, title, text, context, source)
        except Exception as exc:  # the next channel must still be tried
            problems.append(f"{channel}: {exc}")
            log.warning("On-call alert via %s failed: %s", channel, exc)
            continue
        return channel
    log.error("BACKUP ALERT NOT DELIVERED (%s): %s\n%s", " | ".join(problems), title, text.rstrip())
    return None


class OnCallNotifier(BaseNotifier):
    """Failure callback for every backup task; picks its channel at alert time."""

    def notify(self, context: Any) -> None:
        alert = alert_from_context(context)
        send_message(alert.title, alert.text(), context, source=alert.dag_id)
