"""The evidence writer (include/backup_dr/evidence.py): every record's key shape, and the one
failure rule (each region on its own; fail only when no region took the record)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from include.backup_dr.evidence import (
    evidence_key,
    refusals_key,
    write_everywhere,
    write_files_everywhere,
)
from include.backup_dr.store import StoreError

AT = datetime(2026, 12, 6, 13, 5, 9, 123456, tzinfo=UTC)
HEX = "[0-9a-f]{8}"

#: Every kind of record, as it is called, and the key shape its readers (the audit, the
#: monitors, the UI) expect: these are the shapes written since each kind's first release.
SHAPES = [
    (
        ("integrity", "platform/platform_billing", AT),
        {},
        rf"evidence/integrity/platform/platform_billing/20261206T130509Z-{HEX}\.json",
    ),
    (
        ("replication", "media/media_assets", AT),
        {},
        rf"evidence/replication/media/media_assets/20261206T130509Z-{HEX}\.json",
    ),
    (("gc", "platform", AT), {}, rf"evidence/gc/platform/20261206T130509Z-{HEX}\.json"),
    (("break-glass", "", AT), {}, rf"evidence/break-glass/20261206T130509Z-{HEX}\.json"),
    (("compliance", "", AT), {}, rf"evidence/compliance/20261206T130509Z-{HEX}\.json"),
    (
        ("prune", "platform/platform_billing/daily", AT),
        {},
        rf"evidence/prune/platform/platform_billing/daily/20261206T130509Z-{HEX}\.json",
    ),
    (
        ("recovery_window", "platform_primary/eu-west-1", AT),
        {},
        rf"evidence/recovery_window/platform_primary/eu-west-1/20261206T130509Z-{HEX}\.json",
    ),
    (  # stamped without the Z since its first release
        ("continuous_monitor", "platform_primary", AT),
        {},
        rf"evidence/continuous_monitor/platform_primary/20261206T130509-{HEX}\.json",
    ),
    (
        ("estate", "dr_restore", AT, "manual__2026-12-06T13:05:09+00:00"),
        {},
        r"evidence/estate/dr_restore/20261206T130509Z-manual__2026-12-06T13_05_09_00_00\.json",
    ),
    (
        ("failover", "platform_primary", AT, "scheduled__1"),
        {},
        r"evidence/failover/platform_primary/20261206T130509Z-scheduled__1\.json",
    ),
    (  # directory-style: report.json and report.md below it
        ("restore_verification", "platform_billing", AT),
        {"ending": ""},
        rf"evidence/restore_verification/platform_billing/20261206T130509Z-{HEX}",
    ),
    (
        ("dr_restore", "platform_primary", AT),
        {"ending": ""},
        rf"evidence/dr_restore/platform_primary/20261206T130509Z-{HEX}",
    ),
    (
        ("audit", "20261101-20261130", AT),
        {"ending": "/"},
        rf"evidence/audit/20261101-20261130/20261206T130509Z-{HEX}/",
    ),
]


@pytest.mark.parametrize(("args", "options", "shape"), SHAPES, ids=[s[0][0] for s in SHAPES])
def test_every_kind_keeps_its_key_shape(args, options, shape) -> None:
    assert re.fullmatch(shape, evidence_key(*args, **options))


def test_keys_are_utc_and_two_records_of_one_second_both_stay() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    first, second = evidence_key("gc", "platform", local), evidence_key("gc", "platform", AT)
    stamp = "evidence/gc/platform/20261206T130509Z-"
    assert first.startswith(stamp) and second.startswith(stamp)
    assert first != second
    assert evidence_key("failover", "s", AT, "r1") == evidence_key("failover", "s", AT, "r1")


def test_refusals_sit_beside_their_plan() -> None:
    plan = evidence_key("prune", "platform/platform_billing/daily", AT)
    assert refusals_key(plan) == plan.removesuffix(".json") + "-refused.json"


@dataclass(frozen=True)
class Region:
    name: str


@dataclass
class FakeStore:
    """A region's store that keeps what it is given, or fails every write when `down`."""

    name: str
    down: bool = False
    objects: dict[str, Any] = field(default_factory=dict)

    @property
    def region(self) -> Region:
        return Region(self.name)

    def put_json(self, key: str, document: Any) -> None:
        self.put_bytes(key, document, "application/json")

    def put_bytes(self, key: str, body: Any, content_type: str) -> None:
        if self.down:
            raise StoreError(f"writing {key} in {self.name} failed: Could not connect")
        self.objects[key] = body


def test_one_region_down_costs_nothing_in_the_other_and_is_named(caplog) -> None:
    primary, secondary = FakeStore("eu-west-1", down=True), FakeStore("eu-central-1")
    assert write_everywhere([primary, secondary], "evidence/x.json", {"a": 1}) == ["eu-central-1"]
    assert secondary.objects == {"evidence/x.json": {"a": 1}}
    assert "eu-west-1" in caplog.text


def test_the_write_fails_only_when_no_region_took_the_record() -> None:
    stores = [FakeStore("eu-west-1", down=True), FakeStore("eu-central-1", down=True)]
    with pytest.raises(StoreError, match=r"any region.*eu-west-1.*eu-central-1"):
        write_everywhere(stores, "evidence/x.json", {"a": 1})
    both = [FakeStore("eu-west-1"), FakeStore("eu-central-1")]
    assert write_everywhere(both, "evidence/x.json", {}) == ["eu-west-1", "eu-central-1"]


def test_a_directory_record_counts_in_a_region_once_all_its_files_are_there() -> None:
    class FailsOnMarkdown(FakeStore):
        def put_bytes(self, key: str, body: Any, content_type: str) -> None:
            if key.endswith(".md"):
                raise StoreError("refused")
            super().put_bytes(key, body, content_type)

    half, whole = FailsOnMarkdown("eu-west-1"), FakeStore("eu-central-1")
    files = {"report.json": (b"{}", "application/json"), "report.md": (b"# r", "text/markdown")}
    assert write_files_everywhere([half, whole], "evidence/k/s/t/", files) == ["eu-central-1"]
    assert sorted(whole.objects) == ["evidence/k/s/t/report.json", "evidence/k/s/t/report.md"]
