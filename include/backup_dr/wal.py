"""The WAL archive as data: segment names, LSNs, continuity and the segment header check.

barman-cloud writes one object per WAL segment under ``wal/<server>/wals/<TLI+LOG>/`` in each
region's bucket (gzip-compressed, SSE-KMS). Everything here is pure: it takes names, bytes and
numbers and returns facts, so the rules that decide whether a recovery window is whole are
tested without a server.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

#: Prefix of the archive in each region's bucket (barman-cloud's destination path).
ARCHIVE_PREFIX = "wal"
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
#: XLOG_PAGE_MAGIC of PostgreSQL 16: the first two bytes of every WAL page.
PAGE_MAGIC = {16: 0xD113}
XLP_LONG_HEADER = 0x0002

_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_NAME = re.compile(
    r"^(?P<segment>[0-9A-F]{24})(?P<backup>\.[0-9A-F]{8}\.backup)?(?P<partial>\.partial)?"
    r"(?:\.(?:gz|bz2|xz|snappy|zst|lz4))?$"
)
_HISTORY = re.compile(r"^(?P<tli>[0-9A-F]{8})\.history(?:\.(?:gz|bz2|xz|snappy|zst|lz4))?$")


def archive_prefix(server: str) -> str:
    """Where one server's WAL segments live in a region's bucket."""
    return f"{ARCHIVE_PREFIX}/{server}/wals/"


def parse_lsn(text: str) -> int:
    """'0/5000028' -> an integer LSN."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True, order=True)
class Segment:
    """One WAL segment: a timeline and a position (segment number) on it."""

    timeline: int
    number: int

    def name(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        per_log = 0x100000000 // segment_size
        return f"{self.timeline:08X}{self.number // per_log:08X}{self.number % per_log:08X}"

    @classmethod
    def parse(cls, name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        match = _SEGMENT.match(name)
        if match is None:
            raise ValueError(f"{name!r} is not a WAL segment name")
        timeline, log, seg = (int(part, 16) for part in match.groups())
        return cls(timeline, log * (0x100000000 // segment_size) + seg)

    @classmethod
    def of_lsn(cls, timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        return cls(timeline, lsn // segment_size)

    def start_lsn(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        return self.number * segment_size


@dataclass(frozen=True)
class ArchivedFile:
    """An object of the archive, classified by its name."""

    key: str
    size: int
    #: "segment", "partial" (a timeline's unfinished last segment), "backup" (a base backup's
    #: label), "history" (a timeline history file) or "other".
    kind: str
    segment: Segment | None = None  # the position, for every kind but history and other
    history_timeline: int | None = None


def classify(key: str, size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> ArchivedFile:
    """Name an archive object by its file name."""
    name = key.rsplit("/", 1)[-1]
    if match := _HISTORY.match(name):
        return ArchivedFile(key, size, "history", history_timeline=int(match["tli"], 16))
    match = _NAME.match(name)
    if match is None:
        return ArchivedFile(key, size, "other")
    kind = "backup" if match["backup"] else "partial" if match["partial"] else "segment"
    return ArchivedFile(key, size, kind, Segment.parse(match["segment"], segment_size))


@dataclass(frozen=True)
class Continuity:
    """Whether the archive holds every segment from a start to its newest, on one timeline."""

    first: Segment
    newest: Segment | None
    missing: tuple[Segment, ...]
    missing_history: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.newest is not None and not self.missing and not self.missing_history

    def describe(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        if self.newest is None:
            return f"no segment from {self.first.name(segment_size)} onward is archived"
        span = f"{self.first.name(segment_size)} .. {self.newest.name(segment_size)}"
        problems = []
        if self.missing:
            shown = ", ".join(s.name(segment_size) for s in self.missing[:5])
            more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
            problems.append(f"missing segment(s) {shown}{more}")
        if self.missing_history:
            problems.append(
                "missing timeline history "
                + ", ".join(f"{t:08X}.history" for t in self.missing_history)
            )
        count = self.newest.number - self.first.number + 1
        if problems:
            return f"{span}: " + "; ".join(problems)
        return f"{span}: all {count} segment(s) present, no gap"


def continuity(files: Iterable[ArchivedFile], first: Segment) -> Continuity:
    """Check the archive from `first` (a base backup's start) to the newest segment.

    Segments of later timelines continue the chain (after a promotion): a position counts as
    present on any timeline from the start's onward, and each later timeline needs its history.
    """
    present: dict[int, int] = {}  # position -> highest timeline holding it
    histories: set[int] = set()
    for item in files:
        if item.kind == "history" and item.history_timeline is not None:
            histories.add(item.history_timeline)
        segment = item.segment
        if (
            item.kind == "segment"
            and segment is not None
            and segment.timeline >= first.timeline
            and segment.number >= first.number
        ):
            present[segment.number] = max(present.get(segment.number, 0), segment.timeline)
    if not present:
        return Continuity(first, None, (), ())
    newest_number = max(present)
    newest = Segment(present[newest_number], newest_number)
    missing = []
    timeline = first.timeline
    for number in range(first.number, newest_number + 1):
        if number in present:
            timeline = present[number]
        else:
            missing.append(Segment(timeline, number))
    missing_history = tuple(
        tli for tli in range(first.timeline + 1, newest.timeline + 1) if tli not in histories
    )
    return Continuity(first, newest, tuple(missing), missing_history)


@dataclass(frozen=True)
class HeaderCheck:
    ok: bool
    detail: str


def check_segment(
    data: bytes,
    expected: Segment,
    *,
    system_identifier: int | None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    major_version: int = 16,
) -> HeaderCheck:
    """Decompress one archived segment and check its long page header against its name.

    A segment passes when it decompresses (gzip CRC), is exactly one segment long, and its
    first page says it is this segment of this timeline of this cluster.
    """
    try:
        raw = zlib.decompress(data, wbits=47) if data[:2] == b"\x1f\x8b" else data
    except zlib.error as exc:
        return HeaderCheck(False, f"does not decompress ({exc})")
    if len(raw) != segment_size:
        return HeaderCheck(False, f"{len(raw)} bytes, a segment is {segment_size}")
    magic, info, timeline, pageaddr = struct.unpack_from("<HHIQ", raw, 0)
    if magic != PAGE_MAGIC.get(major_version, magic):
        return HeaderCheck(False, f"page magic {magic:#06x} is not PostgreSQL {major_version}'s")
    if not info & XLP_LONG_HEADER:
        return HeaderCheck(False, "first page has no long header")
    if timeline != expected.timeline or pageaddr != expected.start_lsn(segment_size):
        return HeaderCheck(
            False,
            f"header says timeline {timeline} at {format_lsn(pageaddr)}, the name says "
            f"timeline {expected.timeline} at {format_lsn(expected.start_lsn(segment_size))}",
        )
    sysid, seg_size = struct.unpack_from("<QI", raw, 24)
    if seg_size != segment_size:
        return HeaderCheck(False, f"header segment size {seg_size}, expected {segment_size}")
    if system_identifier is not None and sysid != system_identifier:
        return HeaderCheck(
            False, f"from cluster {sysid}, the base backup is of cluster {system_identifier}"
        )
    return HeaderCheck(True, "header matches")


def removable(files: Iterable[ArchivedFile], oldest_needed: Segment | None) -> list[ArchivedFile]:
    """Archive files older than the oldest segment a kept base backup needs.

    History files are never removed (they are tiny, and recovery across a timeline switch
    needs them). With no kept base backup nothing is removable: WAL alone restores nothing,
    but deleting it could turn a base backup that is still committing into a useless one.
    """
    if oldest_needed is None:
        return []
    return [
        item
        for item in files
        if item.segment is not None and item.segment.number < oldest_needed.number
    ]
