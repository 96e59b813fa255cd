"""The command line: the same checks as the `backup_compliance` DAG, without Airflow running.

    python -m include.backup_dr check [--nagios]     is every promise kept? (exit 0/1/2/3)
    python -m include.backup_dr policy report        each promise: configured vs measured
    python -m include.backup_dr audit --from D --to D [--out DIR]   the audit report (Markdown)
    python -m include.backup_dr unlock --backup ID --region R --reason TEXT   break glass

It reads the policy file and the store (both regions) through the Airflow connections the
policy names: from `AIRFLOW_CONN_<ID>` environment variables (`python -m local.settings env`
prints them for the local stack) or Airflow's metadata database. It writes nothing and pages
nobody (the DAG does that), except `unlock`: the one deliberate deletion of a backup that a
governance Object Lock still holds, through the break-glass connection, recorded as evidence.
Exit codes follow the Nagios / Icinga plugin convention, like `barman check --nagios`: 0 OK,
1 WARNING, 2 CRITICAL, 3 UNKNOWN (the policy or the store cannot be read).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from include.backup_dr.policy import Policy, PolicyError, load_policy

UNKNOWN = 3


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, built without running it (docs/cli.md is generated from it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--policy",
        metavar="FILE",
        help="the policy file (default: $BACKUP_POLICY_PATH, else include/policy.yaml)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m include.backup_dr",
        description="Backups and disaster recovery: is every promise of the policy kept?",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        parents=[common],
        help="every compliance check, read from the store; exit 0 OK, 1 WARNING, 2 CRITICAL, "
        "3 UNKNOWN",
    )
    check.add_argument(
        "--nagios", action="store_true", help="print one line in the Nagios plugin format"
    )
    policy = commands.add_parser("policy", help="the policy itself")
    actions = policy.add_subparsers(dest="action", required=True)
    report = actions.add_parser(
        "report",
        parents=[common],
        help="each promise of the policy: what the configuration delivers, and what is measured",
    )
    report.add_argument(
        "--configured-only",
        action="store_true",
        help="do not read the store: only what the configuration can deliver",
    )
    audit = commands.add_parser(
        "audit",
        parents=[common],
        help="the audit report of a period, from the evidence in both regions (Markdown)",
    )
    audit.add_argument(
        "--from",
        dest="start",
        required=True,
        type=date.fromisoformat,
        metavar="DATE",
        help="first day of the period (UTC), e.g. 2026-01-01",
    )
    audit.add_argument(
        "--to",
        dest="end",
        required=True,
        type=date.fromisoformat,
        metavar="DATE",
        help="last day of the period (UTC), included",
    )
    audit.add_argument(
        "--out", metavar="DIR", type=Path, help="also write audit-<from>-<to>.md and .html into DIR"
    )
    unlock = commands.add_parser(
        "unlock",
        parents=[common],
        help="break glass: delete a backup its governance Object Lock still holds (recorded)",
    )
    unlock.add_argument(
        "--backup",
        required=True,
        metavar="ID",
        help="category/target/tier/window, e.g. platform/platform_core/daily/20261201T003000Z",
    )
    unlock.add_argument("--region", required=True, choices=["primary", "secondary"])
    unlock.add_argument("--reason", required=True, help="why: goes into the evidence record")
    unlock.add_argument(
        "--operator", default=os.environ.get("USER", "unknown"), help="who (default: $USER)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Airflow logs INFO to stdout once imported (connections found...): stdout is the report.
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"BACKUP_DR UNKNOWN - {exc}".replace("\n", " ") if _nagios(args) else exc)
        return UNKNOWN
    if args.command == "check":
        return _check(policy, nagios=args.nagios)
    if args.command == "audit":
        return _audit(policy, args.start, args.end, args.out)
    if args.command == "unlock":
        return _unlock(policy, args.backup, args.region, args.reason, args.operator)
    return _policy_report(policy, measure=not args.configured_only)


def _nagios(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "nagios", False))


def _read(policy: Policy, now: datetime) -> list:
    """Every check, read from the store; raises when neither region can be read."""
    from include.backup_dr.monitor.record import check, read_state
    from include.backup_dr.stores import Stores

    stores = list(Stores.from_policy(policy))
    checks, _ = check(policy, stores, now, read_state(stores))
    return checks


def _check(policy: Policy, *, nagios: bool) -> int:
    from include.backup_dr.monitor.output import nagios_exit, nagios_line, render_table, summary

    now = datetime.now(UTC)
    try:
        checks = _read(policy, now)
    except Exception as exc:  # no connection, no region answering: the state is unknown
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"BACKUP_DR UNKNOWN - cannot read the store: {reason}")
        return UNKNOWN
    if nagios:
        print(nagios_line(checks))
    else:
        print(f"backup compliance at {now:%Y-%m-%d %H:%M:%S} UTC: {summary(checks)}\n")
        print(render_table(checks))
    return nagios_exit(checks)


def _policy_report(policy: Policy, *, measure: bool) -> int:
    from include.backup_dr.monitor.promises import promises, render_report

    checks = None
    note = "measured: not read (--configured-only)"
    if measure:
        now = datetime.now(UTC)
        try:
            checks = _read(policy, now)
            note = f"measured: the store at {now:%Y-%m-%d %H:%M:%S} UTC"
        except Exception as exc:
            note = f"measured: cannot read the store ({str(exc).strip().splitlines()[0]})"
    print(f"Policy report ({note})\n")
    print(render_report(promises(policy), checks))
    return 0


def _audit(policy: Policy, start: date, end: date, out: Path | None) -> int:
    """Print the report; with `out`, write it as Markdown and HTML there too. Exit 0 when the
    report was made (its exceptions are the report's content), 3 when the store cannot be read."""
    from include.backup_dr.audit import build_audit
    from include.backup_dr.stores import Stores

    if end < start:
        print(f"--to {end} is before --from {start}")
        return UNKNOWN
    try:
        report = build_audit(policy, Stores.from_policy(policy), start, end)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"cannot read the store: {reason}")
        return UNKNOWN
    page = report.markdown()
    print(page)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"audit-{start:%Y%m%d}-{end:%Y%m%d}"
        stem.with_suffix(".md").write_text(page)
        stem.with_suffix(".html").write_text(report.html())
        print(f"written: {stem}.md, {stem}.html", file=sys.stderr)
    return 0


def _unlock(policy: Policy, backup: str, region: str, reason: str, operator: str) -> int:
    import json

    from include.backup_dr.backup.break_glass import delete_locked_backup
    from include.backup_dr.catalogue import BackupId

    parsed = BackupId.from_key(f"{backup.strip('/')}/x")
    if parsed is None:
        print(f"--backup {backup!r} is not category/target/tier/window")
        return UNKNOWN
    try:
        record = delete_locked_backup(policy, parsed[0], region, reason=reason, operator=operator)
    except Exception as exc:
        print(f"break glass failed: {exc}")
        return 2
    print(json.dumps(record, indent=2))
    return 0
