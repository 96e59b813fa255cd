"""What every fault test shares: kill and bring back a part of the stack, fire a fault at the
right moment of a running DAG, prove nothing committed was lost, and record the numbers.

"Nothing lost" is proven twice, and never against the code under test's word alone: each copy
committed before the fault passes a fresh check against its manifest (`lost`), and the backups
restored into the sandbox server hold the same rows as the source did before the fault
(`content_lost`, row checksums per table).

Alert counts are deterministic: a canary goes through the same alert path before the fault
(`open_alert_path`: the control, proving a mail would arrive) and after it (`alerts_sent`: every
mail sent before it has arrived once it has), so "no alert" or "one alert" is counted, not hoped
for after a sleep.

Each test writes one row to tests/artifacts/faults.json: the fault, when it was injected, what
was lost as measured (must be nothing), the alert, and how long recovery took (measured, never
asserted). A test's rows are cleared when it starts (tests/faults/conftest.py), so a test that
crashed leaves no row from an earlier green run.
"""

from __future__ import annotations

import email
import html
import json
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from include.backup_dr.backup.steps import check_integrity, copy_to_secondary, take_snapshot
from include.backup_dr.catalogue import BackupId, Debris, Manifest, Verification, build_catalogue
from include.backup_dr.engines import engine_for
from include.backup_dr.integrity import check_copy
from tests.stack import REPO, _stack, mail_text, run_dag

if TYPE_CHECKING:
    from local.pg import ServerName

ARTIFACT = REPO / "tests" / "artifacts" / "faults.json"
#: A production target big enough (a dump of ~24 MB, two 16 MiB parts) that an upload or a
#: copy is visibly in progress for a second or more: the moment a fault must hit.
BULK_DATABASE = "fault_bulk"
BULK_MB = 20
#: Retry delays of the DAGs compressed from minutes to this, so every retry runs in the test.
RETRY_DELAY_SECONDS = 1
#: The DAG and the target a single-run fault case works on.
DAG_ID = "platform_backup_daily"
TARGET = "platform_billing"
#: Today's and yesterday's daily windows: both within retention whenever the test runs.
WINDOW = datetime.now(UTC).replace(hour=0, minute=30, second=0, microsecond=0)
EARLIER = WINDOW - timedelta(days=1)


# --- the stack's processes ----------------------------------------------------------------------


def kill(part: str) -> None:
    """SIGKILL a part of the local stack (e.g. "s3-primary", "kms") and its process group."""
    from local.proc import alive, running_pid

    pid = running_pid(part)
    assert pid is not None, f"{part} is not running"
    os.killpg(pid, signal.SIGKILL)  # spawn() starts each part in its own session
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), f"{part} (pid {pid}) survived SIGKILL"


def bring_back() -> float:
    """Start whatever part of the S3 group is down and wait until it answers; returns seconds."""
    started = time.monotonic()
    _stack("up", "--only", "s3")
    return time.monotonic() - started


@pytest.fixture
def outage(stack) -> Iterator[Callable[[str], None]]:
    """`outage(part)` kills a part of the S3 group (KMS or a region); the test brings it back
    with `bring_back()`, and if it did not (a failed assertion), this does, so later tests
    find the stack healthy."""
    killed: list[str] = []

    def inject(part: str) -> None:
        killed.append(part)
        kill(part)

    yield inject
    if killed:
        bring_back()


# --- firing a fault at the right moment -----------------------------------------------------------


@dataclass
class _Trigger:
    """A fault fired by a background thread once `condition` holds (the DAG runs meanwhile)."""

    condition: Callable[[], bool]
    action: Callable[[], None]
    fired: bool = False
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        try:
            while not self.stop.is_set():
                if self.condition():
                    self.action()
                    self.fired = True
                    return
                time.sleep(0.01)
        except BaseException as exc:  # raised in the test's thread by `fault_when`
            self.error = exc


@contextmanager
def fault_when(condition: Callable[[], bool], action: Callable[[], None]) -> Iterator[None]:
    """Watch `condition` while the block runs; fire `action` the first time it holds."""
    trigger = _Trigger(condition, action)
    thread = threading.Thread(target=trigger.watch, name="fault-trigger", daemon=True)
    thread.start()
    try:
        yield
    finally:
        trigger.stop.set()
        thread.join(timeout=30)
    if trigger.error is not None:
        raise trigger.error
    assert trigger.fired, "the fault's moment never came: nothing was injected"


def upload_in_progress(store: Any, prefix: str) -> Callable[[], bool]:
    """True while the store lists an unfinished multipart upload under `prefix`."""
    return lambda: bool(store.unfinished_uploads(prefix))


# --- what was committed, and whether it still is ------------------------------------------------


def commit(policy: Any, stores: Any, target: str, tier: str, window: datetime) -> None:
    """Take, copy and check one backup the way the DAG's tasks do: committed and verified."""
    ref = take_snapshot(policy, stores, target, tier, window, {})
    copy_to_secondary(policy, stores, ref)
    check_integrity(policy, stores, ref)


def committed(stores: Any, prefix: str) -> dict[tuple[BackupId, str], Manifest]:
    """Every copy under `prefix` that is committed (manifest) and passed its integrity check,
    keyed by (backup, region), with the manifest the copy is checked against (the primary's,
    written when the backup was taken; the region's own where the primary has none)."""
    backups, _ = build_catalogue(store.listing(prefix) for store in stores)
    found = {}
    for backup in backups:
        for region, copy in backup.copies.items():
            if copy.verification is Verification.PASSED:
                own = stores.by_region(region)
                reference = stores.primary.manifest(backup.id) or own.manifest(backup.id)
                found[(backup.id, region)] = reference
    return found


def lost(stores: Any, before: dict[tuple[BackupId, str], Manifest]) -> list[str]:
    """Each copy committed before the fault that a fresh check (manifest, size, SSE-KMS key,
    re-hash, pg_restore --list) no longer passes, with the checks it failed."""
    problems = []
    for (backup, region), reference in sorted(before.items()):
        report = check_copy(stores.by_region(region), reference, engine_for(reference.engine))
        if not report.ok:
            problems.append(f"{backup}@{region}: {'; '.join(c.detail for c in report.failures())}")
    return problems


def window_state(stores: Any, backup: BackupId) -> tuple[list[str], list[Debris]]:
    """Where `backup` is committed and passes a fresh check, and the debris of its tier."""
    backups, debris = build_catalogue(store.listing(backup.prefix) for store in stores)
    reference = stores.primary.manifest(backup)
    verified = []
    for found in backups:
        assert found.id == backup and reference is not None, found
        for region in sorted(found.copies):
            store = stores.by_region(region)
            if check_copy(store, reference, engine_for(reference.engine)).ok:
                verified.append(region)
    return verified, debris


# --- what the backups hold, compared with the source ---------------------------------------------

#: The user tables whose rows are compared (md5 of their text is enough to compare, not to
#: protect).
_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname), c.oid::regclass::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""


def row_checksums(database: str, *, server: ServerName = "platform") -> dict[str, str]:
    """Per user table of `database`: its row count and the md5 of its rows' text in sorted
    order, so two databases compare equal only when every row does."""
    from local.pg import connect

    with connect(database, server=server) as conn:
        return checksums_on(conn)


def checksums_on(conn: Any) -> dict[str, str]:
    """`row_checksums` on an open connection (inside its transaction, if one is open)."""
    from psycopg import sql

    checksums = {}
    for name, regclass in conn.execute(_TABLES).fetchall():
        count, digest = conn.execute(
            sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '' ORDER BY t::text), ''))"
                " FROM {} t"
            ).format(sql.SQL(regclass))
        ).fetchone()
        checksums[name] = f"{count} rows, md5 {digest}"
    return checksums


def restored_checksums(stores: Any, backup: BackupId, region: str) -> dict[str, str]:
    """Restore `backup`'s copy in `region` into a scratch database on the sandbox server, with
    the package's own restore path (bytes proven against the manifest, then pg_restore), and
    return its `row_checksums`; the scratch database is dropped afterwards."""
    from include.backup_dr.restore.database import (
        create_database,
        drop_database,
        pg_restore,
        server_info,
    )
    from include.backup_dr.restore.download import download_verified

    store = stores.by_region(region)
    manifest = store.manifest(backup)
    assert manifest is not None, f"{backup} has no manifest in {region}"
    sandbox = server_info("pg_sandbox")
    scratch = f"fault_check_{uuid.uuid4().hex[:12]}"
    create_database(sandbox, scratch)
    try:
        with tempfile.TemporaryDirectory(prefix="fault-check-") as folder:
            download = download_verified(store, manifest, Path(folder) / "archive.pgdump")
            pg_restore(download.path, sandbox, scratch, 2, owners=False)
        return row_checksums(scratch, server="sandbox")
    finally:
        drop_database(sandbox, scratch)


def content_lost(
    stores: Any, baseline: dict[str, str], backups: list[BackupId], region: str
) -> list[str]:
    """Each table of each backup (restored from `region`) whose rows differ from `baseline`,
    the source's checksums taken before the fault. One region suffices: `lost` proves every
    region's bytes equal the manifest's SHA-256, so every copy restores alike."""
    problems = []
    for backup in backups:
        restored = restored_checksums(stores, backup, region)
        for table in sorted(baseline.keys() | restored.keys()):
            want, got = baseline.get(table, "absent"), restored.get(table, "absent")
            if want != got:
                problems.append(f"{backup}@{region} {table}: source {want}, restored {got}")
    return problems


# --- alerts --------------------------------------------------------------------------------------


#: The subject of a canary: a mail the test sends itself, through the alert path under test.
CANARY = "[fault-suite canary]"
#: How long a canary may take to reach the sink (it is written before the sink says 250).
CANARY_TIMEOUT_SECONDS = float(os.environ.get("BACKUP_FAULT_CANARY_TIMEOUT", "30"))


def _canary(folder: Path, label: str, timeout: float) -> None:
    """Send a canary through `alerts.send_message` (the path every page takes) and wait until
    the sink holds it: the path works, and every mail sent before it has arrived."""
    from include.backup_dr.alerts import send_message

    title = f"{CANARY} {label} {uuid.uuid4().hex[:8]}"
    assert send_message(title, "A control: the fault suite checks its alert path.") is not None
    deadline = time.monotonic() + timeout
    while not any(title in (m["Subject"] or "") for m in _mails(folder)):
        assert time.monotonic() < deadline, f"the canary {title!r} never reached the sink"
        time.sleep(0.05)


def _mails(folder: Path) -> list[email.message.Message]:
    return [email.message_from_bytes(path.read_bytes()) for path in sorted(folder.glob("*.eml"))]


def open_alert_path(folder: Path, timeout: float = CANARY_TIMEOUT_SECONDS) -> None:
    """The control before a fault: a canary reaches the sink, so "no alert" later means none
    was sent, not that none could arrive."""
    _canary(folder, "before the fault", timeout)


def alerts_sent(folder: Path, timeout: float = CANARY_TIMEOUT_SECONDS) -> list[str]:
    """Every alert in the sink (subject and text), canaries aside, counted once a closing
    canary has arrived (within `timeout`): whatever was sent before it is in by then."""
    _canary(folder, "after the fault", timeout)
    return [
        m["Subject"] + "\n" + mail_text(m)
        for m in _mails(folder)
        if not (m["Subject"] or "").startswith(CANARY)
    ]


def alerts(folder: Path, timeout: float = CANARY_TIMEOUT_SECONDS) -> str:
    """The alerts in the sink as one text ("" when none), counted as `alerts_sent` does."""
    return "\n\n".join(alerts_sent(folder, timeout))


def alert_summary(alert: str) -> str:
    """An alert's subject and reason (the mail's HTML unescaped), for the table."""
    lines = html.unescape(alert).splitlines()
    reason = next((line for line in lines if line.startswith("Reason: ")), "")
    return f"{lines[0]} -- {reason}" if lines else "none"


def describe(debris: Debris) -> str:
    what = "unfinished multipart upload" if debris.upload_id else "object with no manifest"
    return f"{what} {debris.key} in {debris.region}"


# --- the numbers ---------------------------------------------------------------------------------


def _rows() -> dict[str, dict[str, Any]]:
    return json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}


def _write_rows(rows: dict[str, dict[str, Any]]) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(rows, indent=2) + "\n")


def clear_rows(test: str) -> None:
    """Remove the rows test `test` (a pytest node id) wrote: called as it starts, so a test
    that crashes leaves no row of an earlier run standing in for its result."""
    rows = _rows()
    kept = {fault: row for fault, row in rows.items() if row.get("test") != test}
    if kept != rows:
        _write_rows(kept)


def record(
    fault: str,
    *,
    injected_when: str,
    lost: list[str],
    alert: str,
    recovery_seconds: float,
    clean_run_seconds: float | None,
    **details: Any,
) -> None:
    """Write this fault's row into tests/artifacts/faults.json (one row per fault, replaced).

    `lost` is what the test measured (`lost`, `content_lost`), recorded before the test asserts
    it is empty, so a red run's row shows what went. Recovery runs from the fault's removal to
    the window committed and verified again; it is also given as a ratio to a clean run of the
    same DAG in the same test, which the machine's load affects alike (None where recovery is
    itself a clean run from scratch, e.g. a restore run again).
    """
    rows = _rows()
    rows[fault] = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0],
        "injected_when": injected_when,
        "lost": lost,
        "alert": alert,
        "recovery_seconds": round(recovery_seconds, 1),
        **(
            {
                "clean_run_seconds": round(clean_run_seconds, 1),
                "recovery_to_clean_run": round(recovery_seconds / clean_run_seconds, 2),
            }
            if clean_run_seconds is not None
            else {}
        ),
        **details,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_rows(rows)


def timed_run(dag_id: str, window: datetime, **options: Any) -> tuple[Any, float]:
    """Run the DAG for `window` (see `run_dag`); the finished DagRun and how long it took."""
    started = time.monotonic()
    run = run_dag(dag_id, window, **options)
    return run, time.monotonic() - started


# --- targets ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bulk_database(stack) -> Iterator[str]:
    """A production-like database of ~20 MB of incompressible rows, dropped afterwards."""
    from psycopg import sql

    from local.pg import connect

    name = sql.Identifier(BULK_DATABASE)
    with connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    with connect(BULK_DATABASE) as conn:
        conn.execute("CREATE TABLE payload (id int PRIMARY KEY, bytes bytea NOT NULL)")
        conn.execute(
            "ALTER TABLE payload ALTER COLUMN bytes SET STORAGE EXTERNAL"  # no TOAST compression
        )
        conn.execute(
            "INSERT INTO payload SELECT g, decode(string_agg(md5(random()::text), ''), 'hex') "
            "FROM generate_series(1, %s) g CROSS JOIN generate_series(1, 64) k GROUP BY g",
            (BULK_MB * 1024,),
        )
    yield BULK_DATABASE
    with connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def only_targets(*names: str, bulk: bool = False) -> Callable[[dict[str, Any]], None]:
    """A policy mutation: back up only these platform targets (and the bulk one if asked), so
    a fault run spends its time on the fault, not on unrelated targets."""

    def mutate(data: dict[str, Any]) -> None:
        data["targets"] = [
            t for t in data["targets"] if t["category"] != "platform" or t["name"] in names
        ]
        if bulk:
            data["targets"].append(
                {
                    "name": BULK_DATABASE,
                    "category": "platform",
                    "environment": "production",
                    "server": "platform_primary",
                    "database": BULK_DATABASE,
                    "priority": 5,
                }
            )

    return mutate


def connection_through(conn_id: str, endpoint: str) -> str:
    """The AIRFLOW_CONN_<ID> value of an S3 connection, with its endpoint moved to `endpoint`."""
    current = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
    current["extra"] = {**current.get("extra", {}), "endpoint_url": endpoint}
    return json.dumps(current)
