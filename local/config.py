"""Paths, ports and credentials shared by every part of the local stack.

Everything derives from the repository root so that any clone works. A second stack
(e.g. the integration tests beside a demo) sets BACKUP_LOCAL_DIR, read at import time,
to keep its state apart, and BACKUP_*_PORT variables to take other ports.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("BACKUP_LOCAL_DIR") or REPO_ROOT / ".local").absolute()
PID_DIR = STATE_DIR / "pids"
LOG_DIR = STATE_DIR / "logs"
SMTP_DIR = STATE_DIR / "smtp"
AIRFLOW_HOME = STATE_DIR / "airflow"
# The bin/ of the running virtualenv: holds weed, airflow and this interpreter.
VENV_BIN = Path(sysconfig.get_path("scripts"))

HOST = "127.0.0.1"
PG_USER = "postgres"
PG_PASSWORD = "postgres"  # noqa: S105 (throw-away local stack)
#: The media restore sandbox (restore_verification.sandbox_bucket in include/policy.yaml).
RESTORE_SANDBOX_BUCKET = "restore-sandbox"
#: The backup role: reads and writes objects, never bypasses an object lock, creates no bucket.
S3_ACCESS_KEY = "backup-local"
S3_SECRET_KEY = "backup-local-secret"  # noqa: S105 (throw-away local stack)
#: The break-glass / administrator role: creates buckets and may bypass governance locks. The
#: stack's own tooling and the `s3_*_break_glass` connections use it; backups never do.
S3_ADMIN_KEY = "backup-local-admin"
S3_ADMIN_SECRET = "backup-local-admin-secret"  # noqa: S105 (throw-away local stack)

#: All below 32768: ports in the kernel's ephemeral range (32768-60999) can be taken at any moment
#: by an outgoing connection, and a server then fails to bind.
DEFAULT_PORTS = {
    "BACKUP_PG_PORT": 15432,
    "BACKUP_PG_SANDBOX_PORT": 15532,
    "BACKUP_PG_STANDBY_PORT": 15632,
    # The estate's second production server and its standby (`python -m local.estate up`).
    "BACKUP_PG_TENANTS_PORT": 15832,
    "BACKUP_PG_TENANTS_STANDBY_PORT": 15932,
    "BACKUP_S3_PRIMARY_PORT": 18333,
    "BACKUP_S3_SECONDARY_PORT": 18433,
    "BACKUP_KMS_PORT": 18533,
    "BACKUP_SMTP_PORT": 1025,
    "BACKUP_AIRFLOW_PORT": 8080,
    "BACKUP_REDIS_PORT": 15379,  # celery mode's broker
    "BACKUP_CELERY_LOG_PORT": 15793,  # celery mode's worker log servers: this one and the next
    # Standalone's log servers (scheduler's task logs, triggerer's: this one and the next),
    # Airflow's own defaults; tests move them so two standalones can run at once.
    "BACKUP_AIRFLOW_LOG_PORT": 8793,
}


def _port(var: str) -> int:
    """Read a port override, failing loudly on junk rather than binding somewhere odd."""
    raw = os.environ.get(var, "").strip()
    if not raw:
        return DEFAULT_PORTS[var]
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{var}={raw!r} is not a TCP port")
    return int(raw)


@dataclass(frozen=True)
class Ports:
    """The ports of one stack, read from the environment at call time (tests may patch it)."""

    pg: int  # the platform (production) PostgreSQL server
    pg_sandbox: int  # the restore sandbox: restore tests run here, never on pg
    pg_standby: int  # the platform server's streaming standby (continuous tier)
    pg_tenants: int  # the estate's second production server (tenant databases), on demand
    pg_tenants_standby: int  # its streaming standby
    s3_primary: int
    s3_secondary: int
    kms: int
    smtp: int
    airflow: int
    redis: int
    celery_logs: int
    airflow_logs: int

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            pg=_port("BACKUP_PG_PORT"),
            pg_sandbox=_port("BACKUP_PG_SANDBOX_PORT"),
            pg_standby=_port("BACKUP_PG_STANDBY_PORT"),
            pg_tenants=_port("BACKUP_PG_TENANTS_PORT"),
            pg_tenants_standby=_port("BACKUP_PG_TENANTS_STANDBY_PORT"),
            s3_primary=_port("BACKUP_S3_PRIMARY_PORT"),
            s3_secondary=_port("BACKUP_S3_SECONDARY_PORT"),
            kms=_port("BACKUP_KMS_PORT"),
            smtp=_port("BACKUP_SMTP_PORT"),
            airflow=_port("BACKUP_AIRFLOW_PORT"),
            redis=_port("BACKUP_REDIS_PORT"),
            celery_logs=_port("BACKUP_CELERY_LOG_PORT"),
            airflow_logs=_port("BACKUP_AIRFLOW_LOG_PORT"),
        )

    def retarget(self) -> dict[int, int]:
        """Map each default port to the port in force, to rewrite default-based settings."""
        current = {
            "BACKUP_PG_PORT": self.pg,
            "BACKUP_PG_SANDBOX_PORT": self.pg_sandbox,
            "BACKUP_PG_STANDBY_PORT": self.pg_standby,
            "BACKUP_PG_TENANTS_PORT": self.pg_tenants,
            "BACKUP_PG_TENANTS_STANDBY_PORT": self.pg_tenants_standby,
            "BACKUP_S3_PRIMARY_PORT": self.s3_primary,
            "BACKUP_S3_SECONDARY_PORT": self.s3_secondary,
            "BACKUP_KMS_PORT": self.kms,
            "BACKUP_SMTP_PORT": self.smtp,
            "BACKUP_AIRFLOW_PORT": self.airflow,
            "BACKUP_REDIS_PORT": self.redis,
            "BACKUP_CELERY_LOG_PORT": self.celery_logs,
            "BACKUP_AIRFLOW_LOG_PORT": self.airflow_logs,
        }
        return {DEFAULT_PORTS[var]: port for var, port in current.items()}


@dataclass(frozen=True)
class S3Site:
    """One S3 region: its own weed server, bucket and KMS key."""

    name: str
    region: str
    port: int
    bucket: str
    kms_key: str

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return STATE_DIR / self.name


def s3_sites(ports: Ports | None = None) -> tuple[S3Site, S3Site]:
    """The primary and secondary regions, in that order."""
    ports = ports or Ports.from_env()
    return (
        S3Site(
            "s3-primary", "eu-west-1", ports.s3_primary, "backups-eu-west-1", "backup-primary-key"
        ),
        S3Site(
            "s3-secondary",
            "eu-central-1",
            ports.s3_secondary,
            "backups-eu-central-1",
            "backup-secondary-key",
        ),
    )
