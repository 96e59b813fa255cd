"""On-call alerting: one notifier for every task, delivering through the configured channel.

The channel is chosen when the alert fires, from Airflow Variables, so DAG parsing never reads
configuration from the database and switching email -> PagerDuty needs no deploy:

- `backup_alert_notifier`: `smtp` (default), `slack` or `pagerduty`;
- `backup_alert_to`: email recipients (smtp) or channel (slack);
- `backup_alert_conn_id`: the connection of that channel (defaults per channel below).
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


def send_message(title: str, text: str, context: Any = None, *, source: str = "backup-dr") -> str:
    """Send a free-form message through the configured on-call channel; returns the channel.

    One place chooses the channel (Variables, read when the message is sent), so task-failure
    alerts and the monitors' own de-duplicated pages always go the same way.
    """
    channel = Variable.get("backup_alert_notifier", default="smtp")
    conn_id = Variable.get("backup_alert_conn_id", default=DEFAULT_CONN_IDS.get(channel, ""))
    to = Variable.get("backup_alert_to", default="oncall@localhost")
    context = context if context is not None else {}
    log.info("Alerting on-call via %s: %s", channel, title)
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
        raise ValueError(
            f"Variable backup_alert_notifier={channel!r}; use smtp, slack or pagerduty"
        )
    return channel


class OnCallNotifier(BaseNotifier):
    """Failure callback for every backup task; picks its channel at alert time."""

    def notify(self, context: Any) -> None:
        alert = alert_from_context(context)
        send_message(alert.title, alert.text(), context, source=alert.dag_id)
