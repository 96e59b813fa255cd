"""Bad input gets a clear error and loses nothing: corruption, killed uploads, dead databases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from include.backup_dr.backup.steps import prune, take_snapshot
from include.backup_dr.catalogue import INTEGRITY_NAME, BackupId, build_catalogue
from include.backup_dr.postgres import SnapshotError
from tests.stack import REPO, mail_text, run_dag, wait_for_mail

pytestmark = pytest.mark.integration
WINDOW = datetime(2026, 11, 25, 0, 30, tzinfo=UTC)


def test_corrupted_copy_fails_the_check_and_pages_on_call(stores, smtp_sink) -> None:
    assert run_dag("platform_backup_daily", WINDOW).state == "success"
    backup = BackupId("platform", "platform_billing", "daily", WINDOW)
    manifest = stores.secondary.manifest(backup)
    # Bit rot in the secondary region: same key, same size, different bytes.
    body = stores.secondary.open(manifest.artifact.key).read()
    rotten = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
    stores.secondary.put_bytes(manifest.artifact.key, rotten, "application/octet-stream")

    run = run_dag("platform_backup_daily", WINDOW)
    assert run.state == "failed"

    evidence = stores.secondary.get_json(backup.key(INTEGRITY_NAME))
    assert evidence["ok"] is False
    failed = {c["name"] for c in evidence["checks"] if not c["ok"]}
    assert failed == {"sha256"}
    assert stores.primary.get_json(backup.key(INTEGRITY_NAME))["ok"] is True

    mails = wait_for_mail(smtp_sink)
    assert mails, "no alert reached the SMTP sink"
    text = "\n".join(m["Subject"] + "\n" + mail_text(m) for m in mails)
    assert "platform_backup_daily" in text
    assert "integrity_check" in text
    assert "platform_billing" in text
    assert "sha256: FAILED" in text
    # Nothing was pruned on a failed check: the corrupt copy is still there to investigate.
    assert stores.secondary.head(manifest.artifact.key) is not None


def test_killed_upload_leaves_no_manifest_and_is_pruned_later(stores, policy_file) -> None:
    policy = policy_file(lambda d: d["prune"].update(incomplete_upload_grace="2s"))
    script = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
from datetime import datetime
from include.backup_dr.backup.steps import Stores, take_snapshot
from include.backup_dr.policy import load_policy
policy = load_policy()
take_snapshot(policy, Stores.from_policy(policy), "platform_core", "daily",
              datetime.fromisoformat({WINDOW.isoformat()!r}), {{}})
"""
    child = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    deadline = time.monotonic() + 60
    uploads = []
    while time.monotonic() < deadline and not uploads:
        uploads = stores.primary.unfinished_uploads("platform/platform_core/")
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert uploads, "the snapshot finished before it could be killed"

    backup = BackupId("platform", "platform_core", "daily", WINDOW)
    assert stores.primary.manifest(backup) is None
    backups, debris = build_catalogue([stores.primary.listing("platform/platform_core/daily/")])
    assert backups == []
    # The open upload, and the globals object when the kill came after the dump ended.
    assert {d.upload_id for d in debris} - {None} == {uploads[0].upload_id}
    assert all(d.upload_id or d.key.endswith("data.globals.json") for d in debris)

    time.sleep(2.5)
    result = prune(policy, stores, "platform_core", "daily")
    assert result["deleted"] == len(debris)
    assert stores.primary.unfinished_uploads("platform/platform_core/") == []
    assert list(stores.primary.list_objects("platform/platform_core/daily/")) == []
    evidence = next(iter(stores.primary.list_objects("evidence/prune/platform/platform_core/")))
    decisions = stores.primary.get_json(evidence.key)["decisions"]
    assert any("unfinished multipart upload" in d["reason"] for d in decisions)


def test_unreachable_database_is_a_clear_error_and_stores_nothing(stores, policy_file) -> None:
    policy = policy_file(lambda d: d["targets"][0].update(database="no_such_database"))
    with pytest.raises(SnapshotError, match="cannot connect to database no_such_database"):
        take_snapshot(policy, stores, "platform_core", "daily", WINDOW, {})
    assert list(stores.primary.list_objects("platform/")) == []
    assert stores.primary.unfinished_uploads("platform/") == []


def test_failing_pg_dump_aborts_the_upload(stores, policy_file, monkeypatch) -> None:
    """pg_dump dying mid-stream must not leave a complete-looking object."""
    policy = policy_file()
    fake_bin = REPO / ".local" / "test" / "broken-bin"
    fake_bin.mkdir(parents=True, exist_ok=True)
    real = os.environ["BACKUP_PG_BIN_DIR"]
    dump = fake_bin / "pg_dump"
    # A real pg_dump whose output is cut short, then a failure exit, as a crash would do
    # (it still answers --version, which the client-version check asks first).
    dump.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && exec "{real}/pg_dump" --version\n'
        f'"{real}/pg_dump" "$@" | head -c 5000\nexit 1\n'
    )
    dump.chmod(0o755)
    monkeypatch.setenv("BACKUP_PG_BIN_DIR", str(fake_bin))
    with pytest.raises(SnapshotError, match=r"pg_dump of platform_core .* exited with 1"):
        take_snapshot(policy, stores, "platform_core", "daily", WINDOW, {})
    assert list(stores.primary.list_objects("platform/")) == []
    assert stores.primary.unfinished_uploads("platform/") == []


def test_client_older_than_the_server_is_refused_with_a_clear_error(
    stores, policy_file, monkeypatch
) -> None:
    """An image with pg_dump 15 against a PostgreSQL 16 server: refused before any upload,
    with a message that says what to install, for dumps and for base backups alike."""
    policy = policy_file()
    fake_bin = REPO / ".local" / "test" / "old-client-bin"
    fake_bin.mkdir(parents=True, exist_ok=True)
    real = os.environ["BACKUP_PG_BIN_DIR"]
    for tool in ("pg_dump", "pg_basebackup"):
        script = fake_bin / tool
        # The real tool, but it reports (as an old client would) major version 15.
        script.write_text(
            f'#!/bin/sh\n[ "$1" = --version ] && echo "{tool} (PostgreSQL) 15.8" && exit 0\n'
            f'exec "{real}/{tool}" "$@"\n'
        )
        script.chmod(0o755)
    monkeypatch.setenv("BACKUP_PG_BIN_DIR", str(fake_bin))
    with pytest.raises(SnapshotError, match=r"pg_dump 15 cannot back up .* PostgreSQL 16"):
        take_snapshot(policy, stores, "platform_core", "daily", WINDOW, {})
    with pytest.raises(SnapshotError, match=r"pg_basebackup 15 cannot back up .* PostgreSQL 16"):
        take_snapshot(policy, stores, "platform_primary", "continuous", WINDOW, {})
    assert list(stores.primary.list_objects("platform/")) == []
    assert stores.primary.unfinished_uploads("platform/") == []


def test_prune_never_deletes_the_last_good_copy(stores, policy_file) -> None:
    policy = policy_file()
    old = datetime.now(UTC) - timedelta(days=30)
    take_snapshot(policy, stores, "platform_billing", "daily", old, {})
    from include.backup_dr.backup.steps import check_integrity, copy_to_secondary
    from include.backup_dr.stores import backup_ref

    ref = backup_ref(BackupId("platform", "platform_billing", "daily", old))
    copy_to_secondary(policy, stores, ref)
    check_integrity(policy, stores, ref)
    result = prune(policy, stores, "platform_billing", "daily")
    assert result["deleted"] == 0
    for store in stores:
        assert store.manifest(BackupId("platform", "platform_billing", "daily", old)) is not None
