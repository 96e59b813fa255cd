"""Roles and grants kept with every dump (include/backup_dr/pg_globals/): what they cost.

With 1,000 extra roles on the production server (each LOGIN with a password, a member of one
group role, with one setting), in one run, medians of ROUNDS alternated rounds:
- capture (pg_dumpall, parse, the database's facts, the encrypted upload beside a backup)
  against bare `pg_dumpall --globals-only` to /dev/null;
- apply at a destination without those roles (plan in one transaction, then create them all)
  against bare `psql -f` of the same pg_dumpall output, and the second apply (all there:
  nothing to create) against the first;
- the capture's share of a whole snapshot step of platform_core (30 MB).

Usage: python -m bench.run --only globals (the stack is started if it is not running)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROLES = 1_000
ROUNDS = 3
PREFIX = "bench_globals_"

_CREATE = f"""
DO $$
BEGIN
  CREATE ROLE {PREFIX}group NOLOGIN;
  FOR n IN 1..{ROLES} LOOP
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', '{PREFIX}' || n, 'bench-' || n);
    EXECUTE format('GRANT {PREFIX}group TO %I', '{PREFIX}' || n);
    EXECUTE format('ALTER ROLE %I SET work_mem = %L', '{PREFIX}' || n, (n % 64 + 1) || 'MB');
  END LOOP;
END $$
"""
_DROP = f"""
DO $$
DECLARE r text;
BEGIN
  FOR r IN SELECT rolname FROM pg_roles WHERE starts_with(rolname, '{PREFIX}') LOOP
    EXECUTE format('DROP ROLE %I', r);
  END LOOP;
END $$
"""


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _admin(server: str, statement: str) -> None:
    from local.pg import connect

    with connect(server=server) as conn:  # type: ignore[arg-type]
        conn.execute(statement)


def bench_globals() -> list[tuple[str, str, str]]:
    from include.backup_dr import pg_globals
    from include.backup_dr.backup.steps import take_snapshot
    from include.backup_dr.catalogue import BackupId
    from include.backup_dr.policy import load_policy
    from include.backup_dr.postgres import PgConnectionInfo, pg_tool
    from include.backup_dr.restore.database import server_info
    from include.backup_dr.stores import Stores

    policy = load_policy()
    stores = Stores.from_policy(policy)
    production = PgConnectionInfo.from_airflow(policy.servers[0].conn_id, "platform_core")
    sandbox = server_info("pg_sandbox")
    base = datetime.now(UTC).replace(microsecond=0)
    bare_dump = [
        pg_tool("pg_dumpall"),
        "--globals-only",
        "--no-tablespaces",
        "--no-security-labels",
        *["-h", production.host, "-p", str(production.port), "-U", production.user],
        *["-l", production.database],
    ]
    env = {**os.environ, **production.env}
    times: dict[str, list[float]] = {
        k: [] for k in ("dumpall", "capture", "psql", "apply", "again")
    }
    _admin("platform", _DROP)
    _admin("sandbox", _DROP)
    _admin("platform", _CREATE)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-globals-") as scratch:
            script = Path(scratch) / "globals.sql"
            for n in range(ROUNDS):
                times["dumpall"].append(
                    _timed(
                        lambda: subprocess.run(
                            bare_dump, env=env, check=True, stdout=subprocess.DEVNULL
                        )
                    )
                )
                backup = BackupId("platform", "platform_core", "daily", base + timedelta(hours=n))
                times["capture"].append(
                    _timed(lambda b=backup: pg_globals.keep_beside(stores.primary, b, production))
                )
            kept = pg_globals.capture(production)
            # The bootstrap superuser's lines left out: the baseline must not change it either.
            lines = kept.roles_sql.splitlines(keepends=True)
            admin = (f"CREATE ROLE {sandbox.user};", f"ALTER ROLE {sandbox.user} ")
            script.write_text("".join(line for line in lines if not line.startswith(admin)))
            psql = [pg_tool("psql"), "-q", "-X", "-f", str(script)]
            psql += [
                "-h",
                sandbox.host,
                "-p",
                str(sandbox.port),
                "-U",
                sandbox.user,
                "-d",
                "postgres",
            ]
            sandbox_env = {**os.environ, **sandbox.env}
            for _ in range(ROUNDS):
                times["psql"].append(
                    _timed(
                        lambda: subprocess.run(
                            psql, env=sandbox_env, check=True, capture_output=True
                        )
                    )
                )
                _admin("sandbox", _DROP)
                times["apply"].append(
                    _timed(lambda: pg_globals.apply_roles(kept, sandbox, passwords=True))
                )
                times["again"].append(
                    _timed(lambda: pg_globals.apply_roles(kept, sandbox, passwords=True))
                )
                _admin("sandbox", _DROP)
        window = base + timedelta(days=1)
        started = time.perf_counter()
        take_snapshot(policy, stores, "platform_core", "daily", window, {"bench": "globals"})
        snapshot = time.perf_counter() - started
    finally:
        _admin("sandbox", _DROP)
        _admin("platform", _DROP)
        for store in stores:
            store.delete_all_versions("platform/platform_core/daily/")

    m = {k: statistics.median(v) for k, v in times.items()}
    size = len(kept.to_bytes())
    return [
        (
            f"globals capture beside a backup ({ROLES + 1:,} extra roles, {size / 1024:.0f} KiB "
            f"kept) vs bare pg_dumpall --globals-only, medians of {ROUNDS}",
            f"{m['capture']:.2f} s vs {m['dumpall']:.2f} s",
            f"{m['capture'] / m['dumpall']:.2f}x",
        ),
        (
            f"globals apply at a destination without those roles vs bare psql -f of the "
            f"same pg_dumpall output, medians of {ROUNDS}",
            f"{m['apply']:.2f} s vs {m['psql']:.2f} s",
            f"{m['apply'] / m['psql']:.2f}x",
        ),
        (
            "globals apply again (every role there: nothing created) vs the first apply",
            f"{m['again']:.2f} s vs {m['apply']:.2f} s",
            f"{m['again'] / m['apply']:.2f}x",
        ),
        (
            "globals capture's share of a whole snapshot step of platform_core (30 MB)",
            f"{m['capture']:.2f} s of {snapshot:.2f} s",
            f"{m['capture'] / snapshot:.2f}x",
        ),
    ]
