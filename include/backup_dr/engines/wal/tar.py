"""Reading a tar as a stream: one member found as the chunks pass by (`TarMember`, pure), a
pass-through that reads the base backup's backup_manifest on its way to the store (`TarTee`),
and a file over stored chunks for tarfile's stream mode (`ChunkReader`)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

from include.backup_dr.postgres import SnapshotError


class TarMember:
    """Finds one member of a tar stream (its bytes) as the stream passes by in chunks, however
    they are cut. Only the 512-byte headers and that member's own bytes are looked at: the
    rest of the stream is neither copied nor parsed. Pure: `feed` takes bytes, no I/O."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: str | None = None
        self._fed = 0  # stream offset of the next byte fed
        self._next = 0  # stream offset of the next header
        self._header = bytearray()  # the part of that header fed so far
        self._span: tuple[int, int] | None = None  # the member's bytes, when its header passed
        self._data = bytearray()
        self._ended = False  # the end-of-archive block passed, or the stream is not a tar

    def feed(self, chunk: bytes) -> None:
        start = self._fed
        self._fed += len(chunk)
        self._take(chunk, start)
        while not self._ended and self._next + len(self._header) < self._fed:
            begin = self._next + len(self._header) - start
            self._header += chunk[begin : min(self._next + tarfile.BLOCKSIZE, self._fed) - start]
            if len(self._header) < tarfile.BLOCKSIZE:
                return  # the rest of the header comes in the next chunk
            block, self._header = bytes(self._header), bytearray()
            if not block.strip(b"\0"):
                self._ended = True
                return
            try:
                info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
            except tarfile.HeaderError as exc:
                self.error, self._ended = f"bad header at byte {self._next}: {exc}", True
                return
            first = self._next + tarfile.BLOCKSIZE
            self._next = first + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if info.name.removeprefix("./") == self.name and info.isfile():
                self._span = (first, first + info.size)
                self._take(chunk, start)

    def _take(self, chunk: bytes, start: int) -> None:
        """The member's bytes within `chunk` (which starts at stream offset `start`)."""
        if self._span is None:
            return
        low = max(self._span[0] + len(self._data), start)
        high = min(self._span[1], start + len(chunk))
        if low < high:
            self._data += chunk[low - start : high - start]

    def found(self) -> bytes | None:
        """The member's bytes, None if the stream (so far) has no such member whole."""
        if self._span is None or len(self._data) < self._span[1] - self._span[0]:
            return None
        return bytes(self._data)


class TarTee:
    """Passes pg_basebackup's tar through unchanged while reading its backup_manifest (the WAL
    range the backup needs) from the chunks as they pass: no copy of the stream, no thread."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._manifest = TarMember("backup_manifest")

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._manifest.feed(data)
        return data

    def finish(self) -> dict[str, Any]:
        body = self._manifest.found()
        if self._manifest.error is not None:
            raise SnapshotError(f"the base backup is not a readable tar: {self._manifest.error}")
        if body is None:
            return {}
        try:
            return dict(json.loads(body))
        except ValueError as exc:
            raise SnapshotError(f"the base backup's backup_manifest does not parse: {exc}") from exc

    def close(self) -> None:
        self._source.close()


class ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]  # a view: no copy of the rest
        return size

    def drain(self) -> None:
        for _ in self._chunks:
            pass
