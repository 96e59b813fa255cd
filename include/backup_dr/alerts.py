"""On-call alerting: one notifier for every task, delivering through the configured channel.

The channel is chosen when the alert fires, from Airflow Variables, so DAG parsing never reads
configuration from the database and switching email -> PagerDuty needs no deploy:

- `backup_alert_notifier`: `smtp` (default), `slack` or `pagerduty`;
- `backup_alert_to`: email recipients (smtp); a Slack incoming webhook and a PagerDuty routing
  key carry their own destination;
- `backup_alert_conn_id`: the connection of that channel (defaults per channel below);
- `backup_alert_fallback_notifier` (default `smtp`), `_fallback_to`, `_fallback_conn_id`: the
  channel tried when the first one is misconfigured or down. If both fail, the alert goes to
  the task log at ERROR, marked `BACKUP ALERT NOT DELIVERED`.

Every page names the conditions it is about (`keys`, e.g. `backup-dr/compliance/<check>`).
PagerDuty gets one event per key as its `dedup_key`, so each condition is one incident, a repeat
joins it, and the `resolve` sent when the condition clears closes it. smtp and Slack get one
message per call, the RESOLVED one included.

Endpoints: a `slackwebhook` connection's host may be a full URL (the provider's own rule); a
`pagerduty_events` connection's host, when set, replaces https://events.pagerduty.com (for
PagerDuty's EU region, or the local sink). The provider's sync hook cannot be pointed anywhere
else (its client is built with the default URL, and that client accepts only https), so events
go through its async hook, whose `base_url` is HttpAsyncHook's own setting.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow.sdk import BaseNotifier, Connection, Variable

#: Context key each task sets to its target's name; also the mapped task's label in the UI.
TARGET_KEY = "backup_target"

log = logging.getLogger(__name__)

DEFAULT_CONN_IDS = {
    "smtp": "smtp_oncall",
    "slack": "slack_oncall",
    "pagerduty": "pagerduty_oncall",
}


def condition_key(*parts: str) -> str:
    """The key of one alerting condition, e.g. `backup-dr/compliance/<check id>`."""
    return "/".join(("backup-dr", *parts))


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
    def key(self) -> str:
        """The condition: this task failing for this target (a retry's page joins it)."""
        return condition_key("task", self.dag_id, self.task_id, self.target)

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
    channel: str,
    to: str,
    conn_id: str,
    title: str,
    text: str,
    context: Any,
    source: str,
    keys: Sequence[str],
    resolve: bool,
) -> None:
    """Send through one channel; raises when the channel is unknown or delivery fails."""
    if channel == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        body = "<pre>" + html.escape(text) + "</pre>"
        SmtpNotifier(to=to, smtp_conn_id=conn_id, subject=title, html_content=body).notify(context)
    elif channel == "slack":
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        SlackWebhookNotifier(slack_webhook_conn_id=conn_id, text=f"*{title}*\n```{text}```").notify(
            context
        )
    elif channel == "pagerduty":
        asyncio.run(_pagerduty(conn_id, title, text, source, keys, resolve))
    else:
        raise ValueError(f"{channel!r} is not a channel; use {', '.join(DEFAULT_CONN_IDS)}")


async def _pagerduty(
    conn_id: str, title: str, text: str, source: str, keys: Sequence[str], resolve: bool
) -> None:
    """One Events API v2 event per key (its dedup_key); without keys, one trigger that
    PagerDuty keys itself."""
    from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsAsyncHook

    conn = Connection.get(conn_id)
    hook = PagerdutyEventsAsyncHook(integration_key=conn.password)
    if conn.host:
        hook.base_url = conn.host.rstrip("/")
    for key in keys or [None]:
        await hook.send_event(
            summary=title,
            severity="critical",
            source=source,
            action="resolve" if resolve else "trigger",
            dedup_key=key,
            custom_details={"alert": text},
        )


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
    title: str,
    text: str,
    context: Any = None,
    *,
    source: str = "backup-dr",
    keys: Sequence[str] = (),
    resolve: bool = False,
) -> str | None:
    """Send a message to on-call; returns the channel that delivered it, or None.

    `keys` name the conditions the message is about (PagerDuty's dedup_keys); `resolve` says
    they have cleared, which needs keys (an incident is closed by its key).

    One place chooses the channel (Variables, read when the message is sent), so task-failure
    alerts and the monitors' de-duplicated pages always go the same way. A mistake in one
    channel's configuration never loses the alert: the fallback channel
    (`backup_alert_fallback_notifier`, default smtp) is tried next, and as a last resort the
    alert is written to the task log at ERROR with a marker a log search can page on.
    """
    if resolve and not keys:
        raise ValueError("a resolve names the conditions it closes: pass keys")
    context = context if context is not None else {}
    problems = []
    for channel, to, conn_id in _channels():
        log.info("Alerting on-call via %s: %s", channel, title)
        try:
            _deliver(channel, to, conn_id, title, text, context, source, keys, resolve)
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
        send_message(alert.title, alert.text(), context, source=alert.dag_id, keys=[alert.key])


async def page_late_run(context: dict[str, Any], grace: str) -> str | None:
    """Deadline Alert callback of the tier DAGs, run by the triggerer: the run of a window has
    not finished by the window plus the grace, so that window's backup is late.

    A run queued after its deadline had already passed (a backfill, a re-run of an old window)
    is late by design and pages nobody. The channels block, so the sender runs in a thread.
    Returns the channel; raises when nothing delivered it (the callback then shows failed).
    """
    run, deadline = context["dag_run"], context["deadline"]
    due = _as_datetime(deadline["deadline_time"])
    queued = run.get("queued_at")
    if queued is None or _as_datetime(queued) >= due:
        log.info(
            "%s %s was queued after its deadline %s: not paged",
            run["dag_id"],
            run["dag_run_id"],
            due,
        )
        return None
    dag_id, run_id = run["dag_id"], run["dag_run_id"]
    title = f"[backup] {dag_id}: the run for {run['logical_date']} is not done within {grace}"
    text = (
        f"DAG: {dag_id}\nRun: {run_id}\nWindow: {run['logical_date']}\nState: {run['state']}\n"
        f"Deadline: {due.isoformat()} (the window plus the grace, {grace})\n"
        "Until it finishes, this window has no new backup.\n"
    )
    key = condition_key("deadline", dag_id, run_id)
    channel = await asyncio.to_thread(send_message, title, text, source=dag_id, keys=[key])
    if channel is None:
        raise RuntimeError(f"the late-run page for {dag_id} {run_id} was not delivered")
    return channel


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
