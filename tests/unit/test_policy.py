"""Policy validation: the shipped file is valid, and each kind of mistake gets a clear message."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from include.backup_dr.policy import (
    DEFAULT_POLICY_PATH,
    PolicyError,
    format_duration,
    load_policy,
    parse_duration,
)


def _base() -> dict:
    return yaml.safe_load(DEFAULT_POLICY_PATH.read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_policy_matches_the_customer_table() -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    platform = policy.categories["platform"]
    media = policy.categories["media"]
    retention = {name: format_duration(t.retention) for name, t in platform.tiers.items()}
    assert retention == {
        "continuous": "1w",
        "6h": "1d",
        "daily": "1w",
        "weekly": "4w",
        "monthly": "365d",
    }
    assert platform.rpo == timedelta(seconds=1)
    assert platform.rpo_after is not None and platform.rpo_after.rpo == timedelta(hours=6)
    assert "continuous" not in media.tiers and media.rpo == timedelta(hours=2)
    assert policy.objectives.rto == timedelta(hours=4)
    assert list(platform.scheduled_tiers()) == ["6h", "daily", "weekly", "monthly"]
    assert media.replication_schedule == "5 * * * *"  # hourly: well inside the 2 h RPO


def test_uat_targets_are_never_backed_up_and_say_why() -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    uat = policy.target("uat_core")
    assert not uat.is_production
    assert "We do not take any backups of UAT data" in (uat.skip_reason() or "")
    assert policy.target("platform_core").skip_reason() is None


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (
            lambda d: d["categories"]["platform"]["tiers"].update(
                dialy=d["categories"]["platform"]["tiers"]["daily"]
            ),
            "categories.platform.tiers",
            "unknown tier dialy",
        ),
        (
            lambda d: d["categories"]["platform"]["tiers"]["daily"].update(retention="12h"),
            "categories.platform.tiers.daily",
            "retention 12h is shorter than the schedule period 1d",
        ),
        (lambda d: d["regions"].pop("secondary"), "regions.secondary", "is required but missing"),
        (
            lambda d: d["targets"].append(dict(d["targets"][0])),
            "targets",
            "duplicate target 'platform_core'",
        ),
        (
            lambda d: d["targets"][0].update(since="last week"),
            "targets.0.since",
            "'last week' is not a date such as 2026-11-01 (when the target entered the policy)",
        ),
        (
            lambda d: d["targets"][0].update(since="2026-11-01T10:00:00"),
            "targets.0.since",
            "is not a date such as 2026-11-01",
        ),
        (
            lambda d: d["targets"][0].update(server="nowhere"),
            "targets[0] (platform_core)",
            "unknown server 'nowhere'",
        ),
        (
            lambda d: d["categories"]["platform"]["tiers"]["6h"].update(schedule="every 6 hours"),
            "categories.platform.tiers.6h.schedule",
            "is not a cron expression",
        ),
        (
            lambda d: d["categories"]["platform"]["tiers"]["weekly"].update(retention="4 weeks"),
            "categories.platform.tiers.weekly.retention",
            "is not a duration",
        ),
        (
            lambda d: d["regions"]["primary"].update(bucket_name="x"),
            "regions.primary.bucket_name",
            "is not a known field",
        ),
        (
            lambda d: d["regions"]["secondary"].update(name=d["regions"]["primary"]["name"]),
            "regions",
            "primary and secondary must be different regions",
        ),
        (
            lambda d: d["categories"]["platform"].update(replication_schedule="5 * * * *"),
            "categories.platform",
            "replication_schedule is built for the media engine",
        ),
        (
            lambda d: d["restore_verification"]["sandbox_bucket"].update(bucket="media-source"),
            "restore_verification.sandbox_bucket.bucket 'media-source'",
            "is a backup or media source bucket",
        ),
        (
            lambda d: d["restore_verification"].pop("sandbox_bucket"),
            "restore_verification.sandbox_bucket",
            "is required: production media targets (media_documents)",
        ),
        (
            lambda d: d.pop("continuous"),
            "categories.platform.tiers.continuous",
            "needs a top-level 'continuous' section",
        ),
        (
            lambda d: d["servers"][0].pop("standby"),
            "servers (platform_primary)",
            "the continuous tier needs a streaming standby",
        ),
        (
            lambda d: d["servers"][0]["standby"].update(conn_id="pg_platform"),
            "servers (platform_primary)",
            "standby.conn_id must not be the primary's connection",
        ),
        (
            lambda d: d["prune"].update(gc_schedule="daily"),
            "prune.gc_schedule",
            "is not a cron expression",
        ),
        (
            lambda d: d["continuous"].update(archive_timeout="2h"),
            "continuous.archive_timeout",
            "must be between 1s and 1h",
        ),
        (
            lambda d: d["continuous"]["monitor"].update(schedule="each minute"),
            "continuous.monitor.schedule",
            "is not a cron expression",
        ),
        (
            lambda d: d["continuous"].update(category="media"),
            "continuous.category 'media'",
            "has no continuous tier",
        ),
        (
            lambda d: d["categories"]["platform"]["tiers"]["weekly"].pop("max_skew"),
            "categories.platform.tiers.weekly",
            "derive_from and max_skew go together",
        ),
        (
            lambda d: d["categories"]["platform"]["tiers"]["weekly"].update(derive_from="dialy"),
            "categories.platform",
            "tier weekly: derive_from 'dialy' is not another tier of this category",
        ),
        (
            lambda d: d["categories"]["platform"]["tiers"]["weekly"].update(derive_from="monthly"),
            "categories.platform",
            "it must take its own backups (not continuous, not derived itself)",
        ),
        (
            lambda d: d["categories"]["platform"]["tiers"]["weekly"].update(max_skew="10m"),
            "categories.platform",
            "daily (30 0 * * *) never fires within 10m of this tier's window "
            "2026-01-04T01:00:00+00:00 (0 1 * * 0): every run would dump",
        ),
        (
            lambda d: d["categories"]["media"]["tiers"]["weekly"].update(
                derive_from="daily", max_skew="2h"
            ),
            "categories.media",
            "the media engine cannot promote a backup (engines that can: pg_dump)",
        ),
    ],
    ids=[
        "unknown-tier",
        "retention-shorter-than-period",
        "missing-secondary-region",
        "duplicate-target",
        "since-not-a-date",
        "since-with-a-time",
        "unknown-server",
        "bad-cron",
        "bad-duration",
        "unknown-field",
        "same-region-twice",
        "replication-not-media",
        "sandbox-bucket-holds-data",
        "media-without-sandbox-bucket",
        "continuous-tier-without-settings",
        "server-without-standby",
        "standby-is-the-primary",
        "gc-bad-cron",
        "archive-timeout-too-long",
        "monitor-bad-cron",
        "continuous-on-media",
        "derive-without-skew",
        "derive-from-unknown-tier",
        "derive-from-a-derived-tier",
        "source-never-near-the-window",
        "derive-on-media",
    ],
)
def test_invalid_policy_names_file_and_field(
    tmp_path: Path, mutate, field: str, message: str
) -> None:
    data = _base()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    text = str(caught.value)
    assert str(path) in text
    assert field in text
    assert message in text


def test_unreadable_and_malformed_files_are_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("regions: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(broken)
    broken.write_text("- just a list\n")
    with pytest.raises(PolicyError, match="expected a mapping"):
        load_policy(broken)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("6h", timedelta(hours=6)),
        ("7d", timedelta(days=7)),
        ("4w", timedelta(weeks=4)),
    ],
)
def test_durations_round_trip(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected
