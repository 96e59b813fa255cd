"""The checks as people and Nagios read them: durations as said aloud, the tally, the aligned
table (the CLI's output and the page's body) and the plugin's one line and exit code."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from include.backup_dr.monitor.checks.result import CheckResult, Status, overall


def counts(checks: Iterable[CheckResult]) -> dict[str, int]:
    found = {status.name.lower(): 0 for status in Status}
    for check in checks:
        found[check.status.name.lower()] += 1
    return found


def summary(checks: Sequence[CheckResult]) -> str:
    tally = counts(checks)
    return (
        f"{overall(c.status for c in checks).name}: {len(checks)} checks, "
        f"{tally['critical']} critical, {tally['unknown']} unknown, "
        f"{tally['warning']} warning, {tally['ok']} ok"
    )


def render_table(checks: Sequence[CheckResult]) -> str:
    """The checks as an aligned text table (the CLI's output and the page's body)."""
    header = ("STATUS", "CHECK", "MEASURED", "LIMIT", "DETAIL")
    rows = [header] + [(c.status.name, c.id, c.measured, c.limit, c.detail) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def nagios_line(checks: Sequence[CheckResult], shown: int = 5) -> str:
    """One line in the Nagios plugin format, `SERVICE STATUS - text | perfdata`: the tally,
    then the worst `shown` checks that are not OK, with their figures."""
    worst = overall(c.status for c in checks)
    tally = counts(checks)
    bad = sorted((c for c in checks if c.status is not Status.OK), key=lambda c: -c.status.severity)
    text = "; ".join(f"{c.status.name} {c.id} ({c.measured}, limit {c.limit})" for c in bad[:shown])
    if len(bad) > shown:
        text += f"; and {len(bad) - shown} more"
    perf = " ".join(f"{name}={count}" for name, count in tally.items())
    return (
        f"BACKUP_DR {worst.name} - {tally['critical']} critical, {tally['unknown']} unknown, "
        f"{tally['warning']} warning, {tally['ok']} ok of {len(checks)} checks"
        + (f": {text}" if text else "")
        + f" | {perf}"
    )


def nagios_exit(checks: Iterable[CheckResult]) -> int:
    """The plugin exit code for a set of checks: the worst status's code."""
    return overall(check.status for check in checks).value
