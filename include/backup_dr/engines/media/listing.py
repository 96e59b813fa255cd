"""A snapshot's listing: one JSON line per source object (`Entry`), parsed as a stream; the
earlier listing looked up by key as the source is listed again; and the source listed ahead."""

from __future__ import annotations

import json
import queue
import sqlite3
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from include.backup_dr.catalogue import StoredObject

#: A snapshot's source listing runs ahead of the snapshot by up to this many pages of PAGE_SIZE
#: objects (about 3 MB), so listing and indexing overlap.
PAGES_AHEAD = 8
PAGE_SIZE = 1000
#: Lines of the earlier listing read ahead: how far ahead an object listed out of order (after
#: deletions) may be found, so that lookups go on in order from there.
LOOKAHEAD = 64


@dataclass(frozen=True)
class Entry:
    """One source object in a snapshot listing."""

    key: str
    version_id: str
    etag: str
    size: int
    sha256: str
    #: Object Lock: the blob is locked until this hold (epoch seconds) plus the margin in every
    #: region that locks (`include.backup_dr.immutability`); absent when no region locks.
    hold: int | None = None

    def line(self) -> bytes:
        fields = {name: value for name, value in asdict(self).items() if value is not None}
        return (json.dumps(fields, separators=(",", ":")) + "\n").encode()


def listing_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a JSONL listing, each with its newline, streamed across chunk boundaries
    (constant memory)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line + b"\n"
    if pending.strip():
        yield pending + b"\n"


def parse_listing(chunks: Iterable[bytes]) -> Iterator[Entry]:
    """Entries of a JSONL listing, streamed across chunk boundaries (constant memory)."""
    for line in listing_lines(chunks):
        yield Entry(**json.loads(line))


class Known(NamedTuple):
    """An object of the earlier listing: what tells whether it changed, and its listing line."""

    etag: str
    size: int
    line: bytes
    #: The entry's hold (epoch seconds), if it has one.
    hold: int | None = None

    def entry(self) -> Entry:
        return Entry(**json.loads(self.line))


class ListingIndex:
    """An earlier listing, looked up by key from a temporary SQLite file: memory stays flat.

    S3 lists keys in byte order but some servers (seaweedfs) list in directory order, so a
    merge-join of two sorted listings is not safe; an on-disk index is, at any object count.
    """

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="listing-index-")
        self._db = sqlite3.connect(Path(self._scratch.name) / "index.db", check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
            "CREATE TABLE entry (key TEXT PRIMARY KEY, etag TEXT, size INTEGER, line BLOB,"
            " hold INTEGER) WITHOUT ROWID;"
        )
        rows = ((key, *known) for key, known in map(_known, lines))
        self._db.executemany("INSERT OR REPLACE INTO entry VALUES (?, ?, ?, ?, ?)", rows)

    def get(self, key: str) -> Known | None:
        query = "SELECT etag, size, line, hold FROM entry WHERE key = ?"
        row = self._db.execute(query, (key,)).fetchone()
        return None if row is None else Known(*row)

    def close(self) -> None:
        self._db.close()
        self._scratch.cleanup()


class EarlierListing:
    """A target's earlier listing, to look each object up in as the source is listed again.

    A source lists in the same order every time (byte order in S3, directory order in some
    servers), so the earlier line after the last one found is tried first: an unchanged bucket
    needs no index at all. A key listed out of that order (a new one, or the next after a
    deletion) is looked up in a `ListingIndex` of the whole earlier listing, built the first time
    one is needed. The listing is spooled to a local file first, so no download stays open.
    Each line is kept as it was, so an unchanged object's line is written again as is.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="earlier-listing-")
        self._path = Path(self._scratch.name) / "listing.jsonl"
        #: Objects in the earlier listing.
        self.total = 0
        with self._path.open("wb") as spool:
            for line in listing_lines(chunks):
                spool.write(line)
                self.total += 1
        self._file = self._path.open("rb")
        self._upcoming = map(_known, self._file)
        self._ahead = deque(islice(self._upcoming, LOOKAHEAD))
        self._index: ListingIndex | None = None
        self._found = 0

    def get(self, key: str) -> Known | None:
        """The earlier object at `key`. A listing names each key once, so what is never found
        was deleted since (see `unseen`)."""
        ahead = self._ahead
        if ahead and ahead[0][0] == key:  # in order: the common case, kept short
            known: Known | None = ahead.popleft()[1]
            following = next(self._upcoming, None)
            if following is not None:
                ahead.append(following)
        else:
            known = self._indexed(key)
        if known is not None:
            self._found += 1
        return known

    def _advance(self, count: int) -> Known:
        """Pass the next `count` earlier lines; the last one passed."""
        for _ in range(count):
            _, known = self._ahead.popleft()
        self._ahead.extend(islice(self._upcoming, count))
        return known

    def _indexed(self, key: str) -> Known | None:
        if self._index is None:
            with self._path.open("rb") as lines:
                self._index = ListingIndex(lines)
        known = self._index.get(key)
        if known is not None:  # back in order after a deletion? then go on from there
            ahead = next((n for n, (upcoming, _) in enumerate(self._ahead) if upcoming == key), -1)
            if ahead >= 0:
                self._advance(ahead + 1)
        return known

    def unseen(self) -> int:
        """Earlier objects not found since (each key looked up once): deleted from the source."""
        return self.total - self._found

    def close(self) -> None:
        self._file.close()
        if self._index is not None:
            self._index.close()
        self._scratch.cleanup()


#: Decodes one listing line. `raw_decode` skips what `json.loads` does first (sniff the bytes'
#: encoding, strip whitespace), half its cost: a snapshot of an unchanged bucket reads a line per
#: object, and the listing is ours (UTF-8, one object per line, no padding).
_LINE_DECODER = json.JSONDecoder()


def _known(line: bytes) -> tuple[str, Known]:
    fields = _LINE_DECODER.raw_decode(line.decode())[0]
    return fields["key"], Known(fields["etag"], fields["size"], line, fields.get("hold"))


class ListedAhead:
    """A listing read by a thread of its own, up to PAGES_AHEAD pages ahead of its reader, so
    the server lists while the reader works. Order is kept, memory bounded, and the thread's
    error is raised to the reader."""

    def __init__(self, objects: Iterator[StoredObject]) -> None:
        self._pages: queue.Queue[list[StoredObject] | BaseException | None]
        self._pages = queue.Queue(PAGES_AHEAD)
        self._gone = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(objects,), daemon=True)
        self._thread.start()

    def _read(self, objects: Iterator[StoredObject]) -> None:
        try:
            while page := list(islice(objects, PAGE_SIZE)):
                if not self._put(page):
                    return
            self._put(None)
        except BaseException as exc:  # the reader's to raise
            self._put(exc)

    def _put(self, item: list[StoredObject] | BaseException | None) -> bool:
        """Hand `item` to the reader; False if the reader has gone."""
        while not self._gone.is_set():
            try:
                self._pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[StoredObject]:
        while (page := self._pages.get()) is not None:
            if isinstance(page, BaseException):
                raise page
            yield from page

    def __enter__(self) -> ListedAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._gone.set()
        self._thread.join()
