"""TarMember: a base backup's backup_manifest, found in its tar however the stream is cut."""

from __future__ import annotations

import io
import tarfile
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.engines.wal import TarMember

MANIFEST = b'{"PostgreSQL-Backup-Manifest-Version": 1, "WAL-Ranges": []}\n' * 20


def archive(files: dict[str, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def fed(stream: bytes, cuts: list[int]) -> TarMember:
    member = TarMember("backup_manifest")
    edges = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    for low, high in pairwise(edges):
        member.feed(stream[low:high])
    return member


@settings(max_examples=200)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
    long_name=st.booleans(),
    pax=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12),
)
def test_the_member_is_found_whole_however_the_stream_is_cut(
    sizes: list[int], long_name: bool, pax: bool, cuts: list[int]
) -> None:
    files = {f"base/{n}": bytes([n % 251]) * size for n, size in enumerate(sizes)}
    if long_name:  # a GNU long-name or pax header is one more member to step over
        files["pg_tblspc/" + "x" * 150] = b"y" * 700
    files["backup_manifest"] = MANIFEST
    files["after"] = b"z" * 10
    member = fed(archive(files, tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT), cuts)
    assert member.error is None
    assert member.found() == MANIFEST


@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=6))
def test_no_member_and_a_cut_short_member_are_not_found(cuts: list[int]) -> None:
    assert fed(archive({"PG_VERSION": b"16\n"}), cuts).found() is None
    whole = archive({"backup_manifest": MANIFEST})
    assert fed(whole[: 512 + len(MANIFEST) // 2], cuts).found() is None


def test_a_damaged_header_is_an_error_not_a_silent_miss() -> None:
    stream = bytearray(archive({"PG_VERSION": b"16\n", "backup_manifest": MANIFEST}))
    stream[148:156] = b"0000000\0"  # the first header's checksum
    member = fed(bytes(stream), [])
    assert member.error is not None and "bad header at byte 0" in member.error
    assert member.found() is None
