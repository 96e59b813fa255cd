"""A local estate for DR rehearsals: 12 production databases on two servers.

    python -m local.estate up       start the tenants server, fill its databases, write the policy
    python -m local.estate policy   only write the policy (servers untouched); prints its path

The stack's platform server holds two production databases (platform_core, platform_billing).
The estate adds a second production server, ``platform_tenants`` (stack group ``estate``:
``pg-tenants`` on ``$BACKUP_PG_TENANTS_PORT`` and its streaming standby ``pg-tenants-standby``
on ``$BACKUP_PG_TENANTS_STANDBY_PORT``; Airflow connections ``pg_tenants`` and
``pg_tenants_standby``; dump pool ``pg_tenants_dumps``), holding ten tenant databases made by
the sample generator. It starts only when asked (not with every test stack), archives its WAL
like the platform server (the policy's continuous tier covers every platform server), and
stops with ``python -m local.stack down --only estate`` (or ``--all``).

The policy written (include/policy.yaml plus that server and the tenant targets) restores live
client instances first: each tenant database has priority 1, every shipped target moves one
down. Point BACKUP_POLICY_PATH at it.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from include.backup_dr.policy import DEFAULT_POLICY_PATH, load_policy
from local.config import STATE_DIR

SERVER = "platform_tenants"  # the policy's name for the server (and its WAL prefix)
CONN_ID = "pg_tenants"
STANDBY_CONN_ID = "pg_tenants_standby"
STANDBY_SLOT = "backup_dr_standby"
DUMP_POOL = "pg_tenants_dumps"
STACK_GROUP = "estate"
#: The tenant databases (each a target of the same name, category platform) and their size.
TENANT_DATABASES = tuple(f"tenant_{n:02d}" for n in range(1, 11))
TENANT_SIZE_MB = 3.0
TENANT_PRIORITY = 1
DEFAULT_POLICY_FILE = STATE_DIR / "estate-policy.yaml"  # beside the stack it names


def estate_policy(
    base: dict[str, Any], tenants: tuple[str, ...] = TENANT_DATABASES
) -> dict[str, Any]:
    """`base` (a parsed policy) with the tenants server and one production target per tenant
    database on it, first in restore order; `base` itself is left unchanged."""
    data = copy.deepcopy(base)
    data["servers"].append(
        {
            "name": SERVER,
            "conn_id": CONN_ID,
            "dump_pool": DUMP_POOL,
            "standby": {"conn_id": STANDBY_CONN_ID, "slot": STANDBY_SLOT},
        }
    )
    for target in data["targets"]:
        target["priority"] = target.get("priority", 100) + TENANT_PRIORITY
    data["targets"][:0] = [
        {
            "name": name,
            "category": "platform",
            "environment": "production",
            "server": SERVER,
            "database": name,
            "priority": TENANT_PRIORITY,
        }
        for name in tenants
    ]
    return data


def write_policy(path: Path = DEFAULT_POLICY_FILE, source: Path = DEFAULT_POLICY_PATH) -> Path:
    """Write the estate's policy (`source` plus the tenants) to `path`, checked by the policy
    loader so a bad file fails here, not at DAG parse time; returns `path`."""
    data = estate_policy(yaml.safe_load(source.read_text()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_policy(path)  # raises PolicyError naming the file and field
    return path


def ensure_estate(
    policy_path: Path = DEFAULT_POLICY_FILE,
    *,
    size_mb: float = TENANT_SIZE_MB,
    log: Callable[[str], None] = print,
) -> Path:
    """Start the stack with the tenants server (idempotent), create each missing tenant
    database with the sample generator, and write the estate's policy; returns its path."""
    from local import sampledb, stack

    stack.up(["s3", "pg", STACK_GROUP])  # WAL archiving needs S3; platform_* live on pg
    for name in TENANT_DATABASES:
        if not sampledb.exists(name, server="tenants"):
            sampledb.create(name, size_mb, "platform", log, server="tenants")
    return write_policy(policy_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local.estate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "policy"])
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY_FILE, help="where to write")
    args = parser.parse_args(argv)
    path = ensure_estate(args.policy) if args.command == "up" else write_policy(args.policy)
    print(f"estate policy: {path}  (export BACKUP_POLICY_PATH={path})")


if __name__ == "__main__":
    main()
