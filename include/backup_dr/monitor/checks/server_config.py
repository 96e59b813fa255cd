"""`server_config`: the primary's settings, as the continuous monitor last read them, against
the policy's `continuous` section."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from include.backup_dr.monitor.checks.inputs import MonitorFacts, StoreFacts
from include.backup_dr.monitor.checks.result import CheckResult, Status, unknown
from include.backup_dr.policy import ContinuousSettings, Policy, cron_period, human

#: The primary's settings the continuous tier depends on (pg_settings names; archive_timeout's
#: `setting` is in seconds).
SERVER_SETTINGS = (
    "archive_mode",
    "archive_timeout",
    "wal_level",
    "synchronous_standby_names",
    "synchronous_commit",
)


def server_config_status(
    settings: ContinuousSettings, found: Mapping[str, str], sync_state: str | None
) -> tuple[Status, list[str]]:
    """The server's settings against the policy's continuous section: the verdict and every
    mismatch, each naming the promise it breaks (pure)."""
    missing = [name for name in SERVER_SETTINGS if name not in found]
    if missing:
        return Status.UNKNOWN, [f"{', '.join(missing)} not read from the server"]
    problems: list[str] = []
    warnings: list[str] = []
    if found["archive_mode"] not in ("on", "always"):
        problems.append(
            f"archive_mode is {found['archive_mode']}: no WAL reaches the archive, so neither "
            "point-in-time recovery nor the loss bound of primary and standby together holds"
        )
    if found["wal_level"] not in ("replica", "logical"):
        problems.append(
            f"wal_level is {found['wal_level']}: replica or logical is needed to archive and "
            "stream WAL (point-in-time recovery, the standby)"
        )
    actual = timedelta(seconds=int(found["archive_timeout"]))
    expected = settings.archive_timeout
    if not actual:
        problems.append(
            f"archive_timeout is 0 (off): a quiet server keeps WAL unarchived without bound, "
            f"the policy bounds losing primary and standby together at {human(expected)}"
        )
    elif actual > expected:
        problems.append(
            f"archive_timeout is {human(actual)}, the policy's {human(expected)}: losing primary "
            f"and standby together loses up to {human(actual)}"
        )
    elif actual < expected:
        warnings.append(
            f"archive_timeout is {human(actual)}, shorter than the policy's {human(expected)}: "
            "the promise holds, but each switch archives a whole 16 MB segment; align the two"
        )
    if settings.synchronous:
        lost = "losing the primary can lose commits (policy: synchronous)"
        if not found["synchronous_standby_names"].strip(" '\""):
            problems.append(f"synchronous_standby_names is empty: commits do not wait; {lost}")
        if found["synchronous_commit"] in ("off", "local"):
            problems.append(
                f"synchronous_commit is {found['synchronous_commit']}: commits do not wait for "
                f"the standby; {lost}"
            )
        if sync_state is None:
            problems.append(f"no standby is streaming; {lost}")
        elif sync_state not in ("sync", "quorum"):
            problems.append(f"the standby's sync_state is {sync_state}, not sync; {lost}")
    if problems:
        return Status.CRITICAL, problems + warnings
    return (Status.WARNING if warnings else Status.OK), warnings


def checks(policy: Policy, facts: StoreFacts, now: datetime) -> Iterable[CheckResult]:
    settings = policy.continuous
    if settings is None:
        return
    stale_after = cron_period(settings.monitor.schedule) + policy.compliance.monitor_grace
    limit = f"archive_mode on, archive_timeout {human(settings.archive_timeout)}, wal_level " + (
        "replica or logical"
    )
    if settings.synchronous:
        limit += ", a synchronous standby (sync_state sync)"
    for server in policy.continuous_servers():
        check_id = f"server_config:{server.name}"
        found = facts.monitors.get(server.name, MonitorFacts())
        if found.error:
            yield unknown(check_id, "server_config", server.name, limit, found.error)
            continue
        age = now - found.measured_at if found.measured_at else None
        if age is None or age > stale_after:
            seen = "no continuous monitor evidence in the last day"
            if age is not None:
                seen = f"measured {human(age)} ago (stale after {human(stale_after)})"
            yield CheckResult(
                check_id,
                "server_config",
                server.name,
                Status.CRITICAL,
                "monitor stale",
                limit,
                seen,
            )
            continue
        seen = f"read {human(age)} ago: {found.evidence}"
        if found.settings is None:
            yield CheckResult(
                check_id,
                "server_config",
                server.name,
                Status.UNKNOWN,
                "-",
                limit,
                f"the monitor's record has no server settings; {seen}",
            )
            continue
        status, problems = server_config_status(settings, found.settings, found.sync_state)
        shown = dict(found.settings)
        timeout = shown.get("archive_timeout")
        value = float(timeout) if timeout is not None and timeout.isdigit() else None
        if value is not None:
            shown["archive_timeout"] = human(timedelta(seconds=value))
        names = ["archive_mode", "archive_timeout", "wal_level"]
        measured = ", ".join(f"{name}={shown.get(name, '?')}" for name in names)
        if settings.synchronous:
            measured += f", sync_state={found.sync_state or 'none'}"
        yield CheckResult(
            check_id,
            "server_config",
            server.name,
            status,
            measured,
            limit,
            "; ".join([*problems, seen] if problems else ["matches the policy", seen]),
            value,
        )
