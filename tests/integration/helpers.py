"""What several integration and fault tests share: the lean policy the compliance tests run,
WAL switched and archived on the continuous primary, the media source bucket, evidence read
back, the policy under Object Lock (and its `locked` fixture: a plugin, see tests/conftest.py).
Tests import these from here, never from another test module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.backup_dr import wal_segments
from include.backup_dr.backup import steps
from include.backup_dr.engines.wal import archive_files
from include.backup_dr.immutability import LockRule
from include.backup_dr.policy import load_policy
from include.backup_dr.store import ObjectStore
from include.backup_dr.stores import Stores
from tests.stack import mail_text, wait_for_mail

#: The one production database the lean policy keeps, and its two backup_age checks.
LEAN_TARGET = "platform_core"
LEAN_IDS = [f"backup_age:{LEAN_TARGET}/6h@eu-west-1", f"backup_age:{LEAN_TARGET}/6h@eu-central-1"]
#: The continuous tier's server, and the media target.
SERVER = "platform_primary"
MEDIA_TARGET = "media_documents"
RUN = {"dag_id": "test", "run_id": "test"}
#: The shipped daily retention (7d) plus the margin `lock_policy` locks with (1d).
HELD = timedelta(days=8)


def lean_policy(data: dict) -> None:
    """One production database with one scheduled tier, drilled from it: every check the policy
    then asks for can be green after one backup and one drill (a couple of minutes). The other
    targets become UAT, and the continuous tier moves to a category without production targets
    (no server to watch), so every DAG file still builds."""
    platform = data["categories"]["platform"]
    data["categories"]["standby_only"] = {
        "description": "no production target",
        "engine": "pg_dump",
        "rpo": "1s",
        "tiers": {"continuous": platform["tiers"]["continuous"]},
    }
    data["continuous"]["category"] = "standby_only"
    platform["tiers"] = {"6h": platform["tiers"]["6h"]}
    for target in data["targets"]:
        if target["name"] != LEAN_TARGET:
            target["environment"] = "uat"
    data["restore_verification"]["tier"] = "6h"


def daily_far_from_now(data: dict) -> None:
    """A policy mutation: the platform daily fires twelve hours from now, and the weekly that
    promotes it an hour later (the monthly goes). A weekly window taken now then never waits
    for a daily window that is due (one within its max_skew): the test decides which exists."""
    hour = (datetime.now(UTC).hour + 12) % 24
    tiers = data["categories"]["platform"]["tiers"]
    del tiers["monthly"]
    tiers["daily"]["schedule"] = f"30 {hour} * * *"
    tiers["weekly"]["schedule"] = f"30 {(hour + 1) % 24} * * 0"


def daily_window(policy: Any, now: datetime) -> datetime:
    """The platform daily's newest window at `now`."""
    from croniter import croniter

    return croniter(policy.categories["platform"].tiers["daily"].schedule, now).get_prev(datetime)


def age_manifests(stores: Any, window: datetime, by: timedelta, tier: str = "6h") -> None:
    """Make the window's backup look `by` older in both regions (its restore point moves)."""
    from include.backup_dr.catalogue import BackupId

    key = BackupId("platform", LEAN_TARGET, tier, window).key("manifest.json")
    for store in stores:
        manifest = store.get_json(key)
        for field in ("started_at", "finished_at"):
            manifest[field] = (datetime.fromisoformat(manifest[field]) - by).isoformat()
        store.put_json(key, manifest)


def primary_connection():
    from local import pg

    return pg.connect("platform_core")


def switch_wal(rows: int = 50) -> str:
    """Write something, close the segment, and return its name (what the archiver must send)."""
    with primary_connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.wal_probe (id serial, at timestamptz)")
        conn.execute(
            "INSERT INTO public.wal_probe (at) SELECT clock_timestamp() FROM generate_series(1, %s)",
            (rows,),
        )
        name = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
    return name


def wait_archived(store, segment: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = {
            f.segment.name()
            for f in archive_files(store, SERVER, wal_segments.DEFAULT_SEGMENT_SIZE)
            if f.kind == "segment" and f.segment
        }
        if segment in names:
            return
        time.sleep(0.5)
    raise AssertionError(f"{segment} did not reach {store.region.name} within {timeout}s")


def base_backup(stores) -> dict:
    policy = load_policy()
    window = datetime.now(UTC).replace(microsecond=0)
    ref = steps.take_snapshot(policy, stores, SERVER, "continuous", window, RUN)
    steps.copy_to_secondary(policy, stores, ref)
    return ref


def media_source():
    from local.config import s3_sites
    from local.s3 import s3_client

    return s3_client(s3_sites()[0])


def evidence(store, kind: str, target: str) -> list[dict]:
    keys = sorted(
        o.key for o in store.list_objects(f"evidence/{kind}/{target}/") if o.key.endswith(".json")
    )
    return [store.get_json(key) for key in keys]


def back_up(policy, stores, target: str, tier: str, window: datetime, run: dict) -> dict:
    """One backup through the tier's own steps: snapshot, copy to the second region, integrity
    check in both; its ref."""
    ref = steps.take_snapshot(policy, stores, target, tier, window, run)
    steps.copy_to_secondary(policy, stores, ref)
    steps.check_integrity(policy, stores, ref)
    return ref


def sql(database: str, statement: str, *, server: str = "platform") -> list[tuple]:
    """Run one statement on a local server's database; its rows (none for a command)."""
    from local.pg import connect

    with connect(database, server=server) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def sandbox_databases() -> list[str]:
    """The databases a restore left on the sandbox server (postgres and templates aside)."""
    rows = sql(
        "postgres", "SELECT datname FROM pg_database WHERE NOT datistemplate", server="sandbox"
    )
    return sorted(name for (name,) in rows if name != "postgres")


def mail_texts(folder: Path, settle: float = 2.0) -> list[str]:
    """Every mail in the sink as subject + text, after giving a late one time to land."""
    time.sleep(settle)
    return [m["Subject"] + "\n" + mail_text(m) for m in wait_for_mail(folder, timeout=0.1)]


def lock_policy(data: dict) -> None:
    """Governance locks in both regions, with a 1-day margin and the break-glass connections."""
    for role in ("primary", "secondary"):
        data["regions"][role]["object_lock"] = {
            "mode": "governance",
            "margin": "1d",
            "bypass_conn_id": f"s3_{role}_break_glass",
        }


def locked_stores(policy) -> Iterator[tuple[Any, Stores]]:
    """The policy and its stores; after, every locked object removed through the break-glass
    connections (the only way to)."""
    yield policy, Stores.from_policy(policy)
    for region in policy.iter_regions():
        glass = ObjectStore.for_break_glass(region, LockRule.for_region(policy, region))
        for upload in glass.unfinished_uploads(""):
            glass.abort_upload(upload.key, upload.upload_id)
        glass.delete_all_versions("")


@pytest.fixture
def locked(stores, policy_file):
    """The policy with governance locks in both regions; every locked object removed after."""
    yield from locked_stores(policy_file(lock_policy))
