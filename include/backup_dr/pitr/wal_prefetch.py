"""WAL for a recovering server at PostgreSQL's speed: one long-lived prefetch process per
recovery, and a restore_command in POSIX sh that never starts Python.

A restore_command runs once per WAL segment; when it is a Python tool (barman-cloud-wal-restore)
its start-up alone costs ~0.4 s a segment, half an hour for a busy day. Here one process
(`run`) downloads the segments PostgreSQL will ask for, several ahead and in parallel, checks
each one's header exactly as the integrity check does (`wal.check_segment`), and only then
publishes it in a spool directory (temp name, fsync, rename). The restore_command
(`restore_script`) moves a published file into place, or exits 1 when a marker says the file
is not to be had, so PostgreSQL ends recovery there and never replays unchecked WAL.

The spool protocol, all in the spool directory (owned by the server's OS user):
``<name>``            a checked file, ready (the restore_command moves it out: consumed)
``<name>.wanted``     the restore_command asks for a name the prefetcher has not published
``<name>.missing``    not in the archive (past its end, or a name no timeline path needs)
``<name>.refused``    in the span but not to be served: missing (a gap), gone, or damaged;
                      the file holds why
``.pid``              the prefetcher's pid, written once it is ready
``.failed``           the prefetcher stopped on an error; the file holds why
Credentials never reach the spool: they live only in the prefetcher's environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from include.backup_dr import wal_segments

if TYPE_CHECKING:
    from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)

#: Segments kept ready ahead of PostgreSQL (spooled or being fetched): 8 x 16 MB of disk.
DEFAULT_DEPTH = 8
#: Parallel downloads; each holds one compressed and one raw segment in memory.
DEFAULT_THREADS = 4
#: How long the restore_command waits for one file before it fails the recovery.
DEFAULT_WAIT_SECONDS = 300
#: The restore_command's exit code for "the prefetcher failed or is gone": above 125, which
#: PostgreSQL treats like a shell error and aborts recovery on (exit 1 would end it quietly).
EXIT_FAILED = 128
PID_NAME = ".pid"
FAILED_NAME = ".failed"
MARKERS = (".wanted", ".missing", ".refused")
#: How often the prefetcher looks at the spool for requests and consumed files.
POLL_SECONDS = 0.005


# ---- pure: what to fetch ----------------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    """One file PostgreSQL may ask for, and the archive object that holds it."""

    name: str
    key: str
    segment: wal_segments.Segment | None = None  # None: a timeline history file
    #: For a timeline's first segment: the parent timeline its first pages may carry.
    parent: int | None = None


@dataclass(frozen=True)
class ArchivePlan:
    """What one recovery can be served: the timeline path's segments from the base backup's
    start in replay order, every history file, and the positions of that span the archive
    lacks (gaps)."""

    segments: tuple[Fetch, ...]
    histories: tuple[Fetch, ...]
    gaps: tuple[str, ...]
    segment_size: int
    system_identifier: int | None
    major_version: int

    @cached_property
    def _index(self) -> dict[str, Fetch]:
        return {f.name: f for f in (*self.segments, *self.histories)}

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.segments)

    @property
    def newest(self) -> str | None:
        return self.segments[-1].name if self.segments else None

    def answer(self, name: str) -> Fetch | Refusal:
        """What a request for `name` gets: the file to fetch, or why there is none."""
        if name in self._index:
            return self._index[name]
        if name in self.gaps:
            return Refusal(
                "refused",
                f"missing from the archive, which goes on to {self.newest}: a gap in the WAL",
            )
        return Refusal("missing", "not in the archive")

    def to_json(self) -> str:
        return json.dumps(
            {
                "segment_size": self.segment_size,
                "system_identifier": self.system_identifier,
                "major_version": self.major_version,
                "segments": [[f.name, f.key, f.parent] for f in self.segments],
                "histories": [[f.name, f.key] for f in self.histories],
                "gaps": list(self.gaps),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ArchivePlan:
        data = json.loads(text)
        size = int(data["segment_size"])
        return cls(
            tuple(
                Fetch(n, k, wal_segments.Segment.parse(n, size), p) for n, k, p in data["segments"]
            ),
            tuple(Fetch(n, k) for n, k in data["histories"]),
            tuple(data["gaps"]),
            size,
            data["system_identifier"],
            int(data["major_version"]),
        )


@dataclass(frozen=True)
class Refusal:
    """No file for a name: `kind` is the marker written ("missing" or "refused") and why."""

    kind: str
    reason: str


def plan_archive(
    files: Iterable[wal_segments.ArchivedFile],
    start: wal_segments.Segment,
    histories: Mapping[int, wal_segments.TimelineHistory],
    *,
    segment_size: int,
    system_identifier: int | None,
    major_version: int,
) -> ArchivePlan:
    """The segments to serve from `start`, position by position on the timeline that owns each
    (the same path `wal.continuity` checks), up to the newest one archived on that path."""
    items = list(files)
    known = wal_segments.known_histories(items, histories, segment_size)
    path = wal_segments.path_from(start, known, segment_size)
    keys: dict[wal_segments.Segment, str] = {}
    for item in items:
        segment = item.segment
        if (
            item.kind == "segment"
            and segment is not None
            and segment.number >= start.number
            and path.owns(segment)
        ):
            keys.setdefault(segment, item.key)
    numbers = sorted(s.number for s in keys)
    segments, gaps = [], []
    for number in range(start.number, numbers[-1] + 1 if numbers else start.number):
        segment = wal_segments.Segment(path.owner(number), number)
        name = segment.name(segment_size)
        if segment in keys:
            parent = wal_segments.fork_parent(segment, known, segment_size)
            segments.append(Fetch(name, keys[segment], segment, parent))
        else:
            gaps.append(name)
    history_files = {
        f"{item.history_timeline:08X}.history": Fetch(
            f"{item.history_timeline:08X}.history", item.key
        )
        for item in items
        if item.kind == "history" and item.history_timeline is not None
    }
    return ArchivePlan(
        tuple(segments),
        tuple(history_files[name] for name in sorted(history_files)),
        tuple(gaps),
        segment_size,
        system_identifier,
        major_version,
    )


def schedule(
    order: Sequence[str], cursor: int, done: Collection[str], busy: Collection[str], depth: int
) -> tuple[list[str], int]:
    """The next names to prefetch, in replay order from `cursor`, while fewer than `depth` are
    `busy` (spooled ahead or being fetched); and where the next call starts. Names already
    `done` (served once) are passed over: a second request for one comes as a `.wanted`."""
    room = depth - len(busy)
    picked: list[str] = []
    while room > 0 and cursor < len(order):
        name = order[cursor]
        cursor += 1
        if name in done or name in busy:
            continue
        picked.append(name)
        room -= 1
    return picked, cursor


@dataclass(frozen=True)
class SpoolState:
    """One look at the spool: files ready (published, not yet consumed) and names asked for."""

    ready: frozenset[str]
    wanted: frozenset[str]

    @classmethod
    def of(cls, entries: Iterable[str]) -> SpoolState:
        ready, wanted = set(), set()
        for entry in entries:
            if entry.startswith("."):
                continue  # temp files, .pid, .failed
            if entry.endswith(".wanted"):
                wanted.add(entry.removesuffix(".wanted"))
            elif not entry.endswith(MARKERS):
                ready.add(entry)
        return cls(frozenset(ready), frozenset(wanted))

    def ahead(self, order_index: Mapping[str, int], frontier: int) -> set[str]:
        """Ready segments PostgreSQL has yet to reach: what counts against the depth. A file
        behind the frontier (re-fetched for a request that was served meanwhile) does not."""
        return {name for name in self.ready if order_index.get(name, -1) > frontier}


def decompress(data: bytes) -> bytes:
    """A segment or history file as barman-cloud archives it: gzip (what this project writes)
    or plain. Other compressions are refused by name, never guessed at."""
    if data[:2] == b"\x1f\x8b":
        return zlib.decompress(data, wbits=47)
    if data[:3] == b"BZh" or data[:6] == b"\xfd7zXZ\x00" or data[:4] == b"\x28\xb5\x2f\xfd":
        raise ValueError("compressed with bzip2, xz or zstd, which only gzip is read here")
    return data


def check_file(item: Fetch, data: bytes, plan: ArchivePlan) -> tuple[bytes | None, str]:
    """The bytes to publish for `item`, or None and why not: a segment must pass the integrity
    check's header test, a history file must parse."""
    try:
        raw = decompress(data)
    except (zlib.error, ValueError) as exc:
        return None, f"does not decompress ({exc})"
    if item.segment is None:
        timeline = int(item.name.split(".")[0], 16)
        try:
            wal_segments.parse_history(timeline, raw.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            return None, f"not a timeline history file ({exc})"
        return raw, "history file parses"
    result = wal_segments.check_segment(
        raw,
        item.segment,
        system_identifier=plan.system_identifier,
        segment_size=plan.segment_size,
        major_version=plan.major_version,
        parent=item.parent,
    )
    return (raw if result.ok else None), result.detail


# ---- the restore_command -----------------------------------------------------------------------


def restore_script(script: Path, spool: Path, wait_seconds: int = DEFAULT_WAIT_SECONDS) -> str:
    """Write the restore_command (POSIX sh; no Python, no credentials); returns its setting."""
    spool_q = shlex.quote(str(spool))
    polls = wait_seconds * 100
    script.write_text(
        f"""#!/bin/sh
# restore_command of a throwaway PITR server: serves only WAL the backup_dr prefetcher has
# fetched and checked. 0: served; 1: not to be had (recovery ends here); {EXIT_FAILED}: the
# prefetcher failed or is gone (PostgreSQL aborts the recovery rather than end it quietly).
spool={spool_q}
f=$1
p=$2
polls=0
while :; do
    if [ -f "$spool/$f" ] && mv -f "$spool/$f" "$p"; then
        rm -f "$spool/$f.wanted"
        exit 0
    fi
    if [ -f "$spool/$f.missing" ]; then
        exit 1
    fi
    if [ -f "$spool/$f.refused" ]; then
        echo "backup_dr WAL prefetch refused $f: $(cat "$spool/$f.refused")" >&2
        exit 1
    fi
    if [ -f "$spool/{FAILED_NAME}" ]; then
        echo "backup_dr WAL prefetch failed: $(cat "$spool/{FAILED_NAME}")" >&2
        exit {EXIT_FAILED}
    fi
    pid=$(cat "$spool/{PID_NAME}" 2>/dev/null)
    state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)
    if [ -z "$pid" ] || [ -z "$state" ] || [ "$state" = Z ] || [ "$state" = X ]; then
        echo "backup_dr WAL prefetcher (pid ${{pid:-none}}) is gone: $f not served" >&2
        exit {EXIT_FAILED}
    fi
    if [ "$polls" -eq 0 ]; then
        : > "$spool/$f.wanted"
    fi
    polls=$((polls + 1))
    if [ "$polls" -gt {polls} ]; then
        echo "backup_dr WAL prefetcher did not serve $f within {wait_seconds} s" >&2
        exit {EXIT_FAILED}
    fi
    sleep 0.01 2>/dev/null || sleep 1
done
"""
    )
    script.chmod(0o700)
    return f"{script} %f %p"


# ---- the prefetch process ----------------------------------------------------------------------


class Spool:
    """The spool directory as the prefetcher writes it: every file appears whole, owned by the
    server's OS user."""

    def __init__(self, path: Path, owner: tuple[int, int] | None) -> None:
        self.path = path
        self.owner = owner

    def state(self) -> SpoolState:
        return SpoolState.of(entry.name for entry in os.scandir(self.path))

    def publish(self, name: str, data: bytes, mode: int = 0o600) -> None:
        temp = self.path / f".{name}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if self.owner is not None:
                os.fchown(fd, *self.owner)
        finally:
            os.close(fd)
        temp.rename(self.path / name)

    def mark(self, name: str, refusal: Refusal) -> None:
        self.publish(f"{name}.{refusal.kind}", refusal.reason.encode(), 0o644)

    def answered(self, name: str) -> None:
        (self.path / f"{name}.wanted").unlink(missing_ok=True)


def run(
    store: ObjectStore,
    plan: ArchivePlan,
    spool: Spool,
    *,
    depth: int = DEFAULT_DEPTH,
    threads: int = DEFAULT_THREADS,
) -> None:
    """Serve `plan` into `spool` until stopped (SIGTERM) or orphaned: requests first, then
    prefetch in replay order while fewer than `depth` files are ahead of PostgreSQL."""
    parent = os.getppid()
    order = plan.order
    order_index = {name: i for i, name in enumerate(order)}
    segments = {item.name: item for item in plan.segments}
    done: set[str] = set()
    in_flight: dict[str, Future[bool]] = {}
    published: set[str] = set()
    cursor, frontier = 0, -1
    log.info(
        "Serving %d segment(s) %s .. %s and %d history file(s); %d gap(s); depth %d, %d threads",
        len(order),
        order[0] if order else "-",
        plan.newest or "-",
        len(plan.histories),
        len(plan.gaps),
        depth,
        threads,
    )
    with ThreadPoolExecutor(threads, thread_name_prefix="wal-fetch") as pool:
        while os.getppid() == parent:
            state = spool.state()
            for name in published - state.ready:  # moved out by the restore_command
                frontier = max(frontier, order_index.get(name, -1))
            published &= state.ready
            for name in sorted(state.wanted - state.ready - in_flight.keys()):
                answer = plan.answer(name)
                if isinstance(answer, Refusal):
                    spool.mark(name, answer)
                    spool.answered(name)
                    log.info("%s: %s (%s)", name, answer.kind, answer.reason)
                else:
                    in_flight[name] = pool.submit(_serve, store, answer, plan, spool)
            busy = state.ahead(order_index, frontier) | in_flight.keys()
            ahead, cursor = schedule(order, max(cursor, frontier + 1), done, busy, depth)
            for name in ahead:
                in_flight[name] = pool.submit(_serve, store, segments[name], plan, spool)
            for name, future in [(n, f) for n, f in in_flight.items() if f.done()]:
                del in_flight[name]
                done.add(name)
                if future.result():  # a worker's exception stops the prefetcher: .failed
                    published.add(name)
            time.sleep(POLL_SECONDS)
    log.warning("The recovery that started this prefetcher is gone; stopping")


def _serve(store: ObjectStore, item: Fetch, plan: ArchivePlan, spool: Spool) -> bool:
    """Download, check and publish one file, or mark it refused (in a worker thread, so the
    writes and fsyncs of several run at once); True when published."""
    data, detail = _fetch(store, item, plan)
    if data is None:
        spool.mark(item.name, Refusal("refused", detail))
        log.warning("%s refused: %s", item.name, detail)
    else:
        spool.publish(item.name, data)
        log.info("%s ready (%d bytes)", item.name, len(data))
    spool.answered(item.name)
    return data is not None


def _fetch(store: ObjectStore, item: Fetch, plan: ArchivePlan) -> tuple[bytes | None, str]:
    """Download and check one file; a file that vanished since the listing is a gap, not an
    error of the prefetcher."""
    from botocore.exceptions import BotoCoreError

    from include.backup_dr.store import StoreError

    try:
        with store.open(item.key) as body:
            data = body.read()
    except (StoreError, BotoCoreError) as exc:
        if store.head(item.key) is None:
            return None, f"listed, then gone from {store.where(item.key)}: a gap in the WAL"
        return None, f"could not be read: {exc}"
    return check_file(item, data, plan)


# ---- the parent's side -----------------------------------------------------------------------


class Prefetcher:
    """A running prefetch process, seen from the recovery that started it."""

    def __init__(self, process: subprocess.Popen[bytes], spool: Path, log_path: Path) -> None:
        self.process = process
        self.spool = spool
        self.log_path = log_path

    @classmethod
    def start(
        cls,
        plan: ArchivePlan,
        *,
        work: Path,
        spool: Path,
        bucket: str,
        region: str,
        endpoint: str | None,
        credentials: Mapping[str, str],
        owner: tuple[int, int] | None,
        depth: int = DEFAULT_DEPTH,
    ) -> Prefetcher:
        """Start `python wal_prefetch.py` with the region's credentials in its environment only
        (not inherited by PostgreSQL, not on disk), its log in `work`. Run by path, not with
        -m: the pitr package would import Airflow first (seconds of start-up)."""
        plan_path = work / "prefetch-plan.json"
        plan_path.write_text(plan.to_json())
        log_path = work / "prefetch.log"
        root = Path(__file__).resolve().parents[3]
        argv = [sys.executable, "-P", __file__, "--plan", str(plan_path)]
        argv += ["--bucket", bucket, "--region", region, "--spool", str(spool)]
        argv += ["--depth", str(depth)]
        argv += ["--endpoint-url", endpoint] if endpoint else []
        argv += ["--owner", f"{owner[0]}:{owner[1]}"] if owner else []
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(root),
            "LC_ALL": "C",
            **credentials,
        }
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        return cls(process, spool, log_path)

    def wait_ready(self, timeout: float) -> None:
        """Until the prefetcher has written its pid (it serves from then on)."""
        deadline = time.monotonic() + timeout
        while not (self.spool / PID_NAME).exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the WAL prefetcher did not start: {self.log_tail()}")
            time.sleep(0.05)

    def failure(self) -> str | None:
        """Why the prefetcher is no longer serving, or None while it is."""
        failed = self.spool / FAILED_NAME
        if failed.exists():
            return failed.read_text(errors="replace")
        code = self.process.poll()
        if code is not None:
            how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
            return f"the WAL prefetcher {how} during recovery: {self.log_tail()}"
        return None

    def refused(self, names: Collection[str] | None = None) -> dict[str, str]:
        """Files refused so far (among `names` if given), and why."""
        found = {}
        for marker in sorted(self.spool.glob("*.refused")):
            name = marker.name.removesuffix(".refused")
            if names is None or name in names:
                found[name] = marker.read_text(errors="replace")
        return found

    def summary(self) -> str:
        """What the prefetcher refused or failed at, in words, for a recovery's failure."""
        parts = [f"{name} refused: {why}" for name, why in self.refused().items()]
        if failure := self.failure():
            parts.append(failure)
        return "; ".join(parts) or "every file asked for was served"

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no prefetch log)"
        return " | ".join(text.splitlines()[-lines:]) or "(empty prefetch log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---- the command line ------------------------------------------------------------------------


def _store(bucket: str, region: str, endpoint: str | None, threads: int) -> ObjectStore:
    """The region's bucket through the project's ObjectStore, on credentials from the
    environment (the standard AWS chain). Reads name no key: S3 decrypts SSE-KMS for a caller
    allowed to use it, and without a key name the store never reaches for an Airflow
    connection, which this process does not have."""
    import boto3
    from botocore.config import Config

    from include.backup_dr.policy import Region
    from include.backup_dr.store import ObjectStore

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=Config(
            max_pool_connections=threads * 2,
            retries={"mode": "standard", "max_attempts": 5},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    return ObjectStore(
        Region(name=region, conn_id="", bucket=bucket, kms_key_id=""), client, endpoint
    )


def _listed_plan(store: ObjectStore, args: argparse.Namespace) -> ArchivePlan:
    """By hand, without a plan file: list the archive and read its history files here."""
    from include.backup_dr.engines.wal import archive_files, read_histories

    files = archive_files(store, args.server, args.segment_size)
    return plan_archive(
        files,
        wal_segments.Segment.parse(args.start, args.segment_size),
        read_histories(store, files),
        segment_size=args.segment_size,
        system_identifier=args.system_identifier,
        major_version=args.major_version,
    )


def _return_big_buffers() -> None:
    """Each thread allocates and frees 16 MB buffers; glibc's adaptive threshold would soon keep
    them in per-thread heaps for good (a third more peak memory here). A fixed 1 MiB threshold
    maps them and gives them back. Elsewhere than glibc, nothing to do."""
    import ctypes

    m_mmap_threshold = -3
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 1 << 20)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m include.backup_dr.pitr.wal_prefetch",
        description="Prefetch and check WAL for one recovery; serve it to restore-wal_segments.sh.",
    )
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--endpoint-url")
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--plan", type=Path, help="written by recover(); else --server, --start")
    parser.add_argument("--server", help="the archive's server name (wal/<server>/wals/)")
    parser.add_argument("--start", help="the base backup's start WAL segment (backup_label)")
    parser.add_argument("--system-identifier", type=int, help="the cluster's (pg_controldata)")
    parser.add_argument("--major-version", type=int, default=16)
    parser.add_argument("--segment-size", type=int, default=wal_segments.DEFAULT_SEGMENT_SIZE)
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--owner", help="uid:gid of the server's OS user (when run as root)")
    parser.add_argument(
        "--restore-script", type=Path, help="write the restore_command here once serving"
    )
    args = parser.parse_args(argv)
    _return_big_buffers()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    owner = tuple(int(part) for part in args.owner.split(":")) if args.owner else None
    spool = Spool(args.spool, owner)  # type: ignore[arg-type]
    try:
        store = _store(args.bucket, args.region, args.endpoint_url, args.threads)
        if args.plan:
            plan = ArchivePlan.from_json(args.plan.read_text())
        elif args.server and args.start:
            plan = _listed_plan(store, args)
        else:
            parser.error("give --plan, or --server and --start")
        spool.publish(PID_NAME, str(os.getpid()).encode(), 0o644)  # ready: serving from here
        if args.restore_script:
            print(f"restore_command = '{restore_script(args.restore_script, args.spool)}'")
        run(store, plan, spool, depth=args.depth, threads=args.threads)
    except Exception as exc:
        spool.publish(FAILED_NAME, f"{type(exc).__name__}: {exc}".encode(), 0o644)
        log.exception("The WAL prefetcher failed")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
