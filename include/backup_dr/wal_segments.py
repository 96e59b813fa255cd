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
from collections.abc import Iterable, Mapping
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
class TimelineHistory:
    """A timeline's ancestry, from its history file: each ancestor and the LSN where it ended."""

    timeline: int
    #: (ancestor timeline, switch LSN), oldest first: the ancestor's WAL counts up to there.
    ancestors: tuple[tuple[int, int], ...]


def parse_history(timeline: int, text: str) -> TimelineHistory:
    """Read a ``<TLI>.history`` file: one ``parent<TAB>switch LSN<TAB>reason`` line per ancestor."""
    ancestors = []
    for line in text.splitlines():
        fields = line.strip().split(maxsplit=2)
        if not fields or fields[0].startswith("#"):
            continue
        try:
            ancestors.append((int(fields[0]), parse_lsn(fields[1])))
        except (IndexError, ValueError):
            raise ValueError(
                f"{timeline:08X}.history: {line.strip()!r} is not 'timeline<TAB>LSN<TAB>reason'"
            ) from None
    return TimelineHistory(timeline, tuple(ancestors))


@dataclass(frozen=True)
class TimelinePath:
    """Which timeline owns each WAL position on the way to `timeline`.

    PostgreSQL's rule (``XLogFileReadAnyTLI``): a position is read from the newest timeline of
    the path that had begun by its segment, so the segment holding a switch point belongs to the
    new timeline. The old timeline's segments from there on are divergent: they hold writes the
    new timeline never saw, and they never count.
    """

    timeline: int
    #: (timeline, first segment number it owns), oldest first; the first begins at 0.
    begins: tuple[tuple[int, int], ...]

    def owner(self, number: int) -> int:
        owner = self.begins[0][0]
        for timeline, begin in self.begins:
            if begin <= number:
                owner = timeline
        return owner

    def owns(self, segment: Segment) -> bool:
        return self.owner(segment.number) == segment.timeline


def timeline_path(
    timeline: int, histories: Mapping[int, TimelineHistory], segment_size: int
) -> TimelinePath:
    """The path from the first timeline to `timeline`, from its history (known or derived)."""
    history = histories.get(timeline)
    if history is None or not history.ancestors:
        return TimelinePath(timeline, ((timeline, 0),))
    begins = [(history.ancestors[0][0], 0)]
    for index, (_, switch) in enumerate(history.ancestors):
        successor = (
            history.ancestors[index + 1][0] if index + 1 < len(history.ancestors) else timeline
        )
        begins.append((successor, switch // segment_size))
    return TimelinePath(timeline, tuple(begins))


def fork_parent(
    segment: Segment, histories: Mapping[int, TimelineHistory], segment_size: int
) -> int | None:
    """The parent timeline when `segment` is its timeline's first (the one holding the switch
    point, which begins with the parent's pages); None for any other segment."""
    history = histories.get(segment.timeline)
    if history is None or not history.ancestors:
        return None
    parent, switch = history.ancestors[-1]
    return parent if switch // segment_size == segment.number else None


def known_histories(
    files: Iterable[ArchivedFile],
    read: Mapping[int, TimelineHistory] | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> dict[int, TimelineHistory]:
    """Each listed timeline's history: as read where given, else derived from the listing.

    Derived, a timeline's parent is the next older timeline listed and it begins at its first
    segment: what PostgreSQL writes on promotion. Read histories are exact; callers that can
    read the (tiny) history files do (`engines.wal.read_histories`).
    """
    items = list(files)
    read = dict(read or {})
    first_of: dict[int, int] = {}
    for item in items:
        if item.kind in ("segment", "partial") and item.segment is not None:
            timeline, number = item.segment.timeline, item.segment.number
            first_of[timeline] = min(first_of.get(timeline, number), number)
    listed = sorted({i.history_timeline for i in items if i.history_timeline} | read.keys())
    histories: dict[int, TimelineHistory] = {}
    for timeline in listed:
        if timeline in read:
            histories[timeline] = read[timeline]
            continue
        parents = [t for t in {*first_of, *histories} if t < timeline]
        if not parents or timeline not in first_of:
            continue  # nothing to place it by: a history alone restores nothing
        parent = max(parents)
        inherited = histories[parent].ancestors if parent in histories else ()
        switch = first_of[timeline] * segment_size
        histories[timeline] = TimelineHistory(timeline, (*inherited, (parent, switch)))
    return histories


@dataclass(frozen=True)
class Continuity:
    """Whether the archive holds every segment from a start to its newest, along one timeline
    path (a base backup's start, followed through every later switch the history files name)."""

    first: Segment
    newest: Segment | None
    missing: tuple[Segment, ...]
    missing_history: tuple[int, ...]
    #: Segments of the path's timelines written after their timeline ended (never counted).
    divergent: tuple[Segment, ...] = ()
    #: The last segment reachable from `first` without a gap (None: not even `first`).
    reach: Segment | None = None

    @property
    def ok(self) -> bool:
        return self.newest is not None and not self.missing and not self.missing_history

    def gaps(self) -> list[tuple[Segment, Segment]]:
        """The missing segments as (first, last) runs."""
        runs: list[tuple[Segment, Segment]] = []
        for segment in self.missing:
            if runs and runs[-1][1].number + 1 == segment.number:
                runs[-1] = (runs[-1][0], segment)
            else:
                runs.append((segment, segment))
        return runs

    def describe(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        if self.newest is None:
            return f"no segment from {self.first.name(segment_size)} onward is archived"
        span = f"{self.first.name(segment_size)} .. {self.newest.name(segment_size)}"
        problems = []
        if self.missing:
            runs = self.gaps()
            shown = ", ".join(
                a.name(segment_size)
                if a == b
                else f"{a.name(segment_size)}..{b.name(segment_size)}"
                for a, b in runs[:5]
            )
            more = f" and {len(runs) - 5} more gap(s)" if len(runs) > 5 else ""
            problems.append(f"missing segment(s) {shown}{more} ({len(self.missing)} in all)")
        if self.missing_history:
            problems.append(
                "missing timeline history "
                + ", ".join(f"{t:08X}.history" for t in self.missing_history)
            )
        divergent = (
            f"; {len(self.divergent)} divergent segment(s) of an ended timeline ignored"
            if self.divergent
            else ""
        )
        count = self.newest.number - self.first.number + 1
        if problems:
            return f"{span}: " + "; ".join(problems) + divergent
        return f"{span}: all {count} segment(s) present, no gap{divergent}"


def continuity(
    files: Iterable[ArchivedFile],
    first: Segment,
    histories: Mapping[int, TimelineHistory] | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> Continuity:
    """Check the archive from `first` (a base backup's start) to the newest segment it leads to.

    The path is the newest timeline whose history descends from `first` before its fork; a
    position counts only on the timeline that owns it there (`TimelinePath`). `histories` are
    the history files as read; unread ones are derived from the listing (`known_histories`).
    """
    items = list(files)
    known = known_histories(items, histories, segment_size)
    path = path_from(first, known, segment_size)
    present: set[Segment] = set()
    divergent: list[Segment] = []
    newer_timelines: set[int] = set()
    for item in items:
        segment = item.segment
        if item.kind != "segment" or segment is None or segment.number < first.number:
            continue
        if path.owns(segment):
            present.add(segment)
        elif segment.timeline > path.timeline and segment.timeline not in known:
            newer_timelines.add(segment.timeline)  # a switch whose history is not archived
        else:
            divergent.append(segment)  # an ended timeline's, or another branch's
    if not present:
        return Continuity(first, None, (), (), tuple(sorted(divergent)))
    newest = max(present, key=lambda s: s.number)
    missing = []
    reach = None
    for number in range(first.number, newest.number + 1):
        expected = Segment(path.owner(number), number)
        if expected not in present:
            missing.append(expected)
        elif not missing:
            reach = expected
    return Continuity(
        first,
        newest,
        tuple(missing),
        tuple(sorted(newer_timelines)),
        tuple(sorted(divergent)),
        reach,
    )


def path_from(
    first: Segment, histories: Mapping[int, TimelineHistory], segment_size: int
) -> TimelinePath:
    """The newest timeline path on which `first` is not divergent."""
    for timeline in sorted(histories, reverse=True):
        path = timeline_path(timeline, histories, segment_size)
        if path.owns(first):
            return path
    return TimelinePath(first.timeline, ((first.timeline, 0),))


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
    parent: int | None = None,
) -> HeaderCheck:
    """Decompress one archived segment and check its long page header against its name.

    A segment passes when it decompresses (gzip CRC), is exactly one segment long, and its
    first page says it is this segment of this timeline of this cluster. The first segment of
    a timeline (the one holding the switch point) begins with a copy of the `parent`
    timeline's pages, so there the parent's timeline is accepted too.
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
    if timeline not in (expected.timeline, parent) or pageaddr != expected.start_lsn(segment_size):
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
