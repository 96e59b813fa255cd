"""WAL archiving for the local platform server: barman-cloud to both S3 regions.

PostgreSQL runs ``archive_command`` as its own OS user (``pgserver`` when the stack runs as
root), which can read neither /root nor the project's virtualenv interpreter. So the stack
builds a small virtualenv of its own from the system Python (readable by every user), holding
barman-cloud at the version pinned in requirements.txt, precompiled because that user cannot
write ``__pycache__``. The credentials the archiver needs live in an env file only that user
can read; they never appear in postgresql.conf or in a process list.

What this sets up is what a production database host needs too (see the README): one
``barman-cloud-wal-archive`` call per region, each with the region's KMS key.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import stat
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path

from local.config import REPO_ROOT, S3_ACCESS_KEY, S3_SECRET_KEY, STATE_DIR, VENV_BIN, s3_sites
from local.proc import StackError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pgserver's import warns about a runtime dir we never use
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

WAL_DIR = STATE_DIR / "wal"
TOOLS_VENV = STATE_DIR / "wal-tools"
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
#: Where the archive lives in each region's bucket (barman-cloud's "destination URL" path).
ARCHIVE_PREFIX = "wal"
#: The replication slot the standby streams from (servers[].standby.slot in the policy).
STANDBY_SLOT = "backup_dr_standby"

#: Boto3 >= 1.36 sends checksum headers by default; these keep every S3 server happy (FACTS).
CHECKSUM_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def _pinned(name: str) -> str:
    """``name==version`` as pinned in requirements.txt (one lock for every environment)."""
    text = (REPO_ROOT / "requirements.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==(\S+)$", text, re.MULTILINE)
    if match is None:
        raise StackError(f"{name} is not pinned in requirements.txt")
    return f"{name}=={match[1]}"


def tools_bin() -> Path:
    """The bin/ holding barman-cloud-wal-archive and -wal-restore, built on first use."""
    bin_dir = TOOLS_VENV / "bin"
    stamp = TOOLS_VENV / ".installed"
    wanted = " ".join(_pinned(n) for n in ("barman", "boto3", "botocore", "psycopg2"))
    if stamp.exists() and stamp.read_text() == wanted:
        return bin_dir
    python = SYSTEM_PYTHON if SYSTEM_PYTHON.exists() else Path(sys.executable)
    uv = VENV_BIN / "uv"
    try:
        subprocess.run(
            [str(uv), "venv", "--quiet", "--allow-existing", "-p", str(python), str(TOOLS_VENV)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        subprocess.run(
            [str(uv), "pip", "install", "--quiet", "-p", str(bin_dir / "python"), *wanted.split()],
            check=True,
            capture_output=True,
            timeout=900,
        )
        subprocess.run(
            [str(bin_dir / "python"), "-m", "compileall", "-q", str(TOOLS_VENV / "lib")],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as exc:
        raise StackError(
            f"could not build the WAL tools virtualenv in {TOOLS_VENV}: "
            f"{exc.stderr.decode(errors='replace')[-2000:]}"
        ) from exc
    # PostgreSQL's OS user runs these: every directory on the way and every file readable.
    ensure_prefix_permissions(TOOLS_VENV)
    ensure_folder_permissions(TOOLS_VENV, stat.S_IRGRP | stat.S_IROTH)
    stamp.write_text(wanted)
    return bin_dir


def _chown(path: Path, os_user: str | None, mode: int) -> None:
    path.chmod(mode)
    if os_user is not None:
        entry = pwd.getpwnam(os_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def archive_command(server: str, os_user: str | None, directory: Path = WAL_DIR) -> str:
    """Write the archive script (and its private env file) into `directory` (one per server:
    the script names the server); return the archive_command."""
    bin_dir = tools_bin()
    directory.mkdir(parents=True, exist_ok=True)
    env_file = directory / "archive.env"
    env = {
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        **CHECKSUM_ENV,
    }
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    _chown(env_file, os_user, 0o600)
    lines = [
        "#!/bin/sh",
        "# archive_command of the local platform server: the segment goes to BOTH regions,",
        "# each encrypted with its own KMS key. A failure in either region fails the command,",
        "# so PostgreSQL keeps the segment in pg_wal and retries: WAL is never lost.",
        "set -e",
        f". {shlex.quote(str(env_file))}",
    ]
    for site in s3_sites():
        lines.append(
            f"AWS_DEFAULT_REGION={site.region} {bin_dir / 'barman-cloud-wal-archive'}"
            f" --endpoint-url {site.endpoint} -e aws:kms --sse-kms-key-id {site.kms_key}"
            f' --gzip s3://{site.bucket}/{ARCHIVE_PREFIX} {server} "$1"'
        )
    script = directory / "archive-wal.sh"
    script.write_text("\n".join(lines) + "\n")
    _chown(script, os_user, 0o700)
    return f"{script} %p"


def primary_conf(
    server: str,
    os_user: str | None,
    directory: Path = WAL_DIR,
    *,
    synchronous: bool | None = None,
) -> str:
    """postgresql.conf lines of the archiving primary (the policy's continuous settings;
    `synchronous` overrides the policy's, for a throwaway pair)."""
    from include.backup_dr.policy import load_policy

    settings = load_policy().continuous
    timeout = settings.archive_timeout if settings else timedelta(seconds=60)
    if synchronous is None:
        synchronous = bool(settings and settings.synchronous)
    names = "'*'" if synchronous else "''"
    return (
        "# Written by local.stack at every start: the continuous tier's primary settings.\n"
        "wal_level = replica\n"
        "archive_mode = on\n"
        f"archive_command = '{archive_command(server, os_user, directory)}'\n"
        f"archive_timeout = {int(timeout.total_seconds())}\n"
        "max_wal_senders = 10\n"
        "max_replication_slots = 10\n"
        f"synchronous_standby_names = {names}\n"
    )
