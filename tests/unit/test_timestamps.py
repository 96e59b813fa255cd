"""The store's timestamp parser: botocore's answer, without dateutil, for every form S3 sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from botocore.utils import parse_timestamp
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.store.client import _timestamp

moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(moments, st.sampled_from([0, 3, 6]), st.integers(-14 * 60, 14 * 60))
def test_an_iso_time_parses_as_botocore_parses_it(moment, digits, offset_minutes) -> None:
    """Listings carry ISO 8601 with a zone ("2026-12-02T00:47:10.513Z"): same instant, aware."""
    moment = moment.replace(
        microsecond=moment.microsecond // 10 ** (6 - digits) * 10 ** (6 - digits)
    )
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    for text in (
        moment.isoformat(timespec={0: "seconds", 3: "milliseconds", 6: "microseconds"}[digits]),
        moment.strftime("%Y-%m-%dT%H:%M:%S")
        + (f".{moment.microsecond:06d}"[: digits + 1] if digits else "")
        + "Z",
        local.isoformat(),
    ):
        parsed = _timestamp(text)
        assert parsed == parse_timestamp(text) == moment
        assert parsed.utcoffset() is not None


def test_other_forms_are_left_to_botocore() -> None:
    """Headers (RFC 1123), epoch numbers, and a time without a zone: botocore's own answer."""
    for value in ("Wed, 02 Dec 2026 00:47:10 GMT", 1796172430, 1796172430.5, "2026-12-02T00:47:10"):
        assert _timestamp(value) == parse_timestamp(value)
    assert _timestamp("2026-12-02T00:47:10").tzinfo == parse_timestamp("2026-12-02T00:47:10").tzinfo
