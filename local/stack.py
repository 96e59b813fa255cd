"""Start, stop and inspect the local stack.

    python -m local.stack up     [--only pg,s3,smtp,estate,airflow | --all]
    python -m local.stack down   [--only pg,s3,smtp,estate,airflow | --all]
    python -m local.stack status [--only pg,s3,smtp,estate,airflow]

The pg group is three PostgreSQL servers: the platform one (with the sample databases; it
archives WAL to both S3 regions), its streaming standby, and the restore sandbox (restore
tests run there, never on the platform server). Start order matters: the s3 group comes
first, because the platform server's archive_command writes there.

The estate group is a second production server (tenant databases) and its standby, for DR
rehearsals at scale; ``python -m local.estate up`` starts it and fills it.

Without --only, up and down handle pg, s3 and smtp; the estate and Airflow only when asked
(Airflow takes ~1 GB and half a minute). ``up`` is idempotent: running parts are left alone, stale PID
files replaced, and each part must answer a real request before ``up`` moves on.

The airflow group is `airflow standalone`, or with BACKUP_AIRFLOW_EXECUTOR=celery Redis, the
api-server, scheduler, dag-processor and two Celery workers (local/celery_stack.py). ``down``
stops the parts of either mode.
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from local import airflow_stack, celery_stack, pg, s3, sampledb, samplemedia
from local.config import (
    HOST,
    RESTORE_SANDBOX_BUCKET,
    SMTP_DIR,
    STATE_DIR,
    VENV_BIN,
    Ports,
    S3Site,
    s3_sites,
)
from local.proc import (
    StackError,
    log_file,
    pid_file,
    port_open,
    running_pid,
    spawn,
    stop,
    wait_ready,
    write_pid,
)

GROUPS = ("s3", "pg", "smtp", "estate", "airflow")
DEFAULT_GROUPS = ("s3", "pg", "smtp")


@dataclass
class Service(ABC):
    """One background process of the stack; subclasses say how to run and probe it."""

    name: str
    port: int
    ready_timeout: float = 60.0
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 20.0
    #: Starts beside the part before it rather than after it is ready (it does not need it).
    with_previous: bool = False

    def argv(self) -> list[str]:
        """The command line of a part that `start` spawns; parts that start otherwise override it."""
        raise TypeError(f"{self.name} has no command line of its own; it overrides start()")

    def env(self) -> dict[str, str] | None:
        return None

    def prepare(self) -> None:  # noqa: B027 (optional hook)
        """Create directories and config before the first start."""

    @abstractmethod
    def probe(self) -> None:
        """Make a real request; raise while the service is not ready."""

    def after_ready(self) -> None:  # noqa: B027 (optional hook)
        """Idempotent set-up that needs the running service (buckets, databases...)."""

    def detail(self) -> str:
        return f"{HOST}:{self.port}"

    def ports(self) -> list[int]:
        """Every TCP port the part listens on."""
        return [self.port]

    def pid(self) -> int | None:
        return running_pid(self.name)

    def start(self) -> subprocess.Popen[bytes] | None:
        return spawn(self.name, self.argv(), self.env())

    def stop(self) -> bool:
        return stop(self.name, self.stop_signal, self.stop_timeout)


@dataclass(kw_only=True)
class Postgres(Service):
    """One PostgreSQL server; the pg group holds two (platform and restore sandbox)."""

    server: pg.Server
    sample_data: bool = False

    def prepare(self) -> None:
        self.server.init_cluster()

    def pid(self) -> int | None:
        return self.server.postmaster_pid()

    def start(self) -> None:
        write_pid(self.name, self.server.start(self.port))

    def stop(self) -> bool:
        was_running = self.server.postmaster_pid() is not None
        if was_running:
            self.server.stop()
        pid_file(self.name).unlink(missing_ok=True)
        return was_running

    def probe(self) -> None:
        self.server.probe(self.port)

    def after_ready(self) -> None:
        if self.sample_data:
            sampledb.ensure_defaults(log=lambda line: print(f"  {line}"))

    def detail(self) -> str:
        url = f"postgresql://postgres:postgres@{HOST}:{self.port}/postgres"
        return f"{url}  {self.server.name}  data {self.server.data_dir}"


@dataclass(kw_only=True)
class Kms(Service):
    sites: tuple[S3Site, ...]

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "local.kms_server", f"--port={self.port}"]
        argv.append(f"--keys={STATE_DIR / 'kms' / 'keys.json'}")
        return argv + [f"--key={site.region}/{site.kms_key}" for site in self.sites]

    def probe(self) -> None:
        for site in self.sites:
            s3.kms_client(site, self.port).describe_key(KeyId=site.kms_key)

    def detail(self) -> str:
        keys = ", ".join(f"{site.region}/{site.kms_key}" for site in self.sites)
        return f"http://{HOST}:{self.port}  keys {keys}"


@dataclass(kw_only=True)
class WeedS3(Service):
    site: S3Site
    kms_port: int
    sample_media: bool = False  # the primary region also holds the sample media source
    scratch_buckets: tuple[str, ...] = ()  # e.g. the media restore sandbox (policy.yaml)

    def argv(self) -> list[str]:
        return s3.weed_command(self.site, self.kms_port)

    def env(self) -> dict[str, str]:
        # weed mini turns AWS_* credentials in its environment into an extra identity.
        return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def probe(self) -> None:
        s3.probe(self.site)

    def ports(self) -> list[int]:
        return list(s3.weed_ports(self.site).values())

    def after_ready(self) -> None:
        s3.ensure_bucket(self.site)
        for bucket in self.scratch_buckets:
            samplemedia.ensure_bucket(samplemedia.media_client(self.site), bucket)
        if self.sample_media:
            raw = os.environ.get("BACKUP_SAMPLE_MEDIA_SMALL", "").strip() or "2000"
            if not raw.isdigit():
                raise StackError(f"BACKUP_SAMPLE_MEDIA_SMALL={raw!r} is not a count")
            samplemedia.ensure_sample_media(
                samplemedia.media_client(self.site),
                small=int(raw),
                log=lambda line: print(f"  {line}"),
            )

    def detail(self) -> str:
        site = self.site
        return f"{site.endpoint}  {site.region}  bucket {site.bucket}  key {site.kms_key}"


@dataclass
class SmtpSink(Service):
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "local.smtp_sink", f"--port={self.port}", f"--dir={SMTP_DIR}"]

    def probe(self) -> None:
        with smtplib.SMTP(HOST, self.port, timeout=3) as smtp:
            code, _ = smtp.noop()
            if code != 250:
                raise StackError(f"NOOP answered {code}")

    def detail(self) -> str:
        count = len(list(SMTP_DIR.glob("*.eml"))) if SMTP_DIR.exists() else 0
        return f"smtp://{HOST}:{self.port}  {count} message(s) in {SMTP_DIR}"


@dataclass
class Airflow(Service):
    ready_timeout: float = 300.0
    stop_signal: signal.Signals = signal.SIGINT  # SIGTERM would orphan its children
    # Standalone sometimes waits forever on a LocalExecutor worker that missed its stop
    # message; after this long its process group gets SIGTERM (then SIGKILL).
    stop_timeout: float = 20.0

    def argv(self) -> list[str]:
        return airflow_stack.command()

    def env(self) -> dict[str, str]:
        return airflow_stack.airflow_env()

    def prepare(self) -> None:
        airflow_stack.prepare(self.env())

    def probe(self) -> None:
        airflow_stack.probe(self.port)

    def ports(self) -> list[int]:
        return [self.port, *airflow_stack.log_server_ports()]

    def after_ready(self) -> None:
        print(f"  Airflow UI/API: {self.detail()}")

    def detail(self) -> str:
        creds = airflow_stack.login()
        login = f"  login {creds[0]} / {creds[1]}" if creds else ""
        return f"http://{HOST}:{self.port}{login}"


@dataclass(kw_only=True)
class Redis(Service):
    """The Celery broker (celery mode only)."""

    def argv(self) -> list[str]:
        return celery_stack.redis_command(self.port)

    def prepare(self) -> None:
        celery_stack.redis_server()  # installs Debian's package when missing
        celery_stack.REDIS_DIR.mkdir(parents=True, exist_ok=True)

    def probe(self) -> None:
        celery_stack.ping_redis(self.port)

    def detail(self) -> str:
        return f"redis://{HOST}:{self.port}/0  (Celery broker)"


@dataclass(kw_only=True)
class AirflowPart(Service):
    """One Airflow component run on its own in celery mode, probed through the API's health
    endpoint (`port` is the api-server's; only the api-server itself listens on it)."""

    command: str  # api-server, scheduler, dag-processor or triggerer
    health: str  # its entry in /api/v2/monitor/health
    ready_timeout: float = 300.0

    def argv(self) -> list[str]:
        return [str(VENV_BIN / "airflow"), self.command]

    def env(self) -> dict[str, str]:
        return celery_stack.celery_env()

    def prepare(self) -> None:
        if self.command == "api-server":  # the first part up: the metadata DB is set up once
            celery_stack.ensure_metadata_db()
            airflow_stack.prepare(self.env())

    def probe(self) -> None:
        airflow_stack.probe(self.port, (self.health,))

    def ports(self) -> list[int]:
        if self.command == "triggerer":  # its log server
            return [int(self.env()["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"])]
        return [self.port] if self.command == "api-server" else []

    def after_ready(self) -> None:
        if self.command == "api-server":
            print(f"  Airflow UI/API: {self.detail()}")

    def detail(self) -> str:
        if self.command != "api-server":
            return f"executor CeleryExecutor, metadata DB {celery_stack.METADATA_DB}"
        creds = airflow_stack.login()
        login = f"  login {creds[0]} / {creds[1]}" if creds else ""
        return f"http://{HOST}:{self.port}{login}"


@dataclass(kw_only=True)
class CeleryWorker(Service):
    """`airflow celery worker` serving one queue; `port` is its log server's."""

    worker: celery_stack.Worker
    broker: Ports
    ready_timeout: float = 120.0

    def argv(self) -> list[str]:
        return celery_stack.worker_command(self.worker)

    def env(self) -> dict[str, str]:
        return celery_stack.worker_env(self.worker, self.broker)

    def probe(self) -> None:
        celery_stack.ping_worker(self.worker, self.broker)

    def detail(self) -> str:
        return f"queue {self.worker.queue}, log server :{self.port}"


def _airflow_parts(ports: Ports, mode: str) -> list[Service]:
    if mode == "standalone":
        return [Airflow("airflow", ports.airflow)]
    api = ports.airflow
    return [
        Redis("redis", ports.redis, ready_timeout=30),
        AirflowPart("airflow-api-server", api, command="api-server", health="metadatabase"),
        AirflowPart("airflow-scheduler", api, command="scheduler", health="scheduler"),
        AirflowPart(
            "airflow-dag-processor",
            api,
            with_previous=True,
            command="dag-processor",
            health="dag_processor",
        ),
        AirflowPart(
            "airflow-triggerer",
            api,
            with_previous=True,
            command="triggerer",
            health="triggerer",
        ),
        *(
            CeleryWorker(w.name, w.log_port(ports), with_previous=True, worker=w, broker=ports)
            for w in celery_stack.WORKERS
        ),
    ]


def services(groups: list[str], mode: str | None = None) -> list[Service]:
    """The processes of the selected groups, in start order (Airflow's of `mode`, by default
    the one BACKUP_AIRFLOW_EXECUTOR selects)."""
    ports = Ports.from_env()
    sites = s3_sites(ports)
    by_group: dict[str, list[Service]] = {
        "pg": [
            Postgres(pg.PLATFORM.part, ports.pg, server=pg.PLATFORM, sample_data=True),
            Postgres(pg.STANDBY.part, ports.pg_standby, server=pg.STANDBY),
            Postgres(pg.SANDBOX.part, ports.pg_sandbox, server=pg.SANDBOX),
        ],
        "s3": [
            Kms("kms", ports.kms, ready_timeout=15, sites=sites),
            *(
                WeedS3(
                    site.name,
                    site.port,
                    site=site,
                    kms_port=ports.kms,
                    sample_media=site is sites[0],
                    scratch_buckets=() if site is sites[0] else (RESTORE_SANDBOX_BUCKET,),
                )
                for site in sites
            ),
        ],
        "smtp": [SmtpSink("smtp", ports.smtp, ready_timeout=15)],
        "estate": [
            Postgres(pg.TENANTS.part, ports.pg_tenants, server=pg.TENANTS),
            Postgres(pg.TENANTS_STANDBY.part, ports.pg_tenants_standby, server=pg.TENANTS_STANDBY),
        ],
        "airflow": _airflow_parts(ports, mode or celery_stack.mode()),
    }
    owners: dict[int, str] = {}
    for svc in (svc for group in by_group.values() for svc in group):
        for port in svc.ports():
            if port in owners:
                raise StackError(
                    f"port {port} is wanted by both {owners[port]} and {svc.name}; move one with "
                    "the BACKUP_*_PORT variables (weed uses its S3 port .. +10 and +10008)"
                )
            owners[port] = svc.name
    return [svc for group in GROUPS if group in groups for svc in by_group[group]]


def running_groups() -> list[str]:
    """Groups whose every process is running (so a caller knows what it did not start)."""
    return [g for g in GROUPS if all(svc.pid() is not None for svc in services([g]))]


def up_one(svc: Service) -> None:
    started = time.monotonic()
    pid = svc.pid()
    if pid is not None:
        wait_ready(svc.name, svc.probe, svc.ready_timeout, log_file(svc.name))
        print(f"{svc.name}: already running (pid {pid})")
    else:
        for port in filter(port_open, svc.ports()):
            raise StackError(
                f"{svc.name}: port {port} is in use by a process this stack does not track "
                f"(an old stack whose .local was deleted?). Find it with `ss -ltnp | grep "
                f":{port}` or choose another port with the BACKUP_*_PORT variables."
            )
        svc.prepare()
        proc = svc.start()
        try:
            wait_ready(svc.name, svc.probe, svc.ready_timeout, log_file(svc.name), proc)
        except StackError:
            svc.stop()
            raise
        print(f"{svc.name}: started (pid {svc.pid()}) in {time.monotonic() - started:.1f}s")
    svc.after_ready()


def up(groups: list[str]) -> None:
    started = time.monotonic()
    batches: list[list[Service]] = []
    for svc in services(groups):
        if svc.with_previous and batches:
            batches[-1].append(svc)
        else:
            batches.append([svc])
    for batch in batches:
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            for done in [pool.submit(up_one, svc) for svc in batch]:
                done.result()
    print(f"up: {', '.join(groups)} ready in {time.monotonic() - started:.1f}s")


def down(groups: list[str]) -> None:
    # Parts stop independently and weed takes seconds to drain, so stop them all at once; but
    # Airflow's processes (of either mode) first, then the broker they use, then the rest.
    airflow = [svc for mode in celery_stack.MODES for svc in services(["airflow"], mode)]
    phases = [
        [svc for svc in airflow if not isinstance(svc, Redis)],
        [svc for svc in airflow if isinstance(svc, Redis)],
    ] if "airflow" in groups else []  # fmt: skip
    phases.append(list(reversed(services([g for g in groups if g != "airflow"]))))
    mine = {svc.name for svc in services(groups)}  # reported even when not running
    for selected in phases:
        if not selected:
            continue
        with ThreadPoolExecutor(max_workers=len(selected)) as pool:
            results = list(pool.map(lambda svc: svc.stop(), selected))
        for svc, stopped in zip(selected, results, strict=True):
            if stopped or svc.name in mine:
                print(f"{svc.name}: {'stopped' if stopped else 'not running'}")
    if "airflow" not in groups:
        for svc in airflow:
            if svc.pid() is not None:
                print(f"{svc.name}: still running (stop it with --only airflow or --all)")


def status(groups: list[str], shown: list[str]) -> int:
    """Print every shown part; return 0 only if all parts of ``groups`` answer."""
    in_scope = {svc.name for svc in services(groups)}
    failing = 0
    for svc in services(shown):
        pid = svc.pid()
        if pid is None:
            state = "stopped"
        else:
            try:
                svc.probe()
                state = "ready"
            except Exception as exc:  # any failure is reported, not raised
                state = f"NOT ANSWERING ({exc})"
        failing += svc.name in in_scope and state != "ready"
        pid_text = f"pid {pid}" if pid else "-"
        print(f"{svc.name:<21} {state:<8} {pid_text:<11} {svc.detail()}")
    return 3 if failing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.stack", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", help=f"comma-separated subset of {','.join(GROUPS)}")
    which.add_argument("--all", action="store_true", help="every part, Airflow included")
    args = parser.parse_args(argv)
    if args.all:
        groups = list(GROUPS)
    elif args.only:
        groups = [g.strip() for g in args.only.split(",") if g.strip()]
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    else:
        groups = list(DEFAULT_GROUPS)
    try:
        if args.command == "up":
            up(groups)
        elif args.command == "down":
            down(groups)
        else:
            return status(groups, groups if args.only or args.all else list(GROUPS))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # keep progress and errors in order in CI logs
    sys.exit(main())
