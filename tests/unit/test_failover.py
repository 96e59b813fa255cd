"""dr_failover's pure rules: the loss estimate never under-reports what is known, preflight
refuses a split brain, the plan says what on-call approves, commands fill in their fields,
and the policy refuses a bad fence or rebuild command by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from include.backup_dr.dr.failover import (
    FailoverRecord,
    Heartbeat,
    Loss,
    Preflight,
    estimate_loss,
    failover_servers,
    new_slot,
    plan_text,
    refusal,
    render,
)
from include.backup_dr.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from include.backup_dr.roles import ServerRoles, follow

T0 = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


def _beats(gaps: list[float]) -> list[Heartbeat]:
    at, out = T0, []
    for seq, gap in enumerate(gaps, start=1):
        at += timedelta(seconds=gap)
        out.append(Heartbeat(seq, at))
    return out


@given(
    gaps=st.lists(st.floats(0.001, 5), min_size=1, max_size=60),
    received=st.integers(0, 60),
    extra_seen=st.lists(st.floats(0, 30), max_size=3),
)
def test_loss_never_under_reports_what_is_known(gaps, received, extra_seen) -> None:
    """Whatever prefix of the primary's heartbeats reached the standby, and whatever other
    signs of life are known, the estimate counts every missing heartbeat and covers the time
    from the standby's newest commit to the newest sign of life."""
    beats = _beats(gaps)
    received = min(received, len(beats))
    standby = beats[received - 1] if received else Heartbeat(0, T0)
    seen = [T0 + timedelta(seconds=s) for s in extra_seen]
    loss = estimate_loss(standby, beats, seen)
    missing = beats[received:]
    assert loss.heartbeats == len(missing)
    for sign in [b.written_at for b in missing] + seen:
        assert loss.seconds >= (sign - standby.written_at).total_seconds() - 1e-9
    assert loss.seconds >= 0


def test_loss_is_zero_when_the_standby_has_everything_and_unbounded_without_a_heartbeat():
    beats = _beats([1, 1, 1])
    assert estimate_loss(beats[-1], beats).seconds == 0
    assert estimate_loss(beats[-1], beats).heartbeats == 0
    assert estimate_loss(None, beats).seconds == float("inf")
    assert estimate_loss(beats[-1], []).heartbeats is None  # no monitor record: not countable


def _preflight(**changes) -> Preflight:
    base = {
        "server": "platform_primary",
        "primary_conn_id": "pg_platform",
        "standby_conn_id": "pg_platform_standby",
        "checked_at": T0.isoformat(),
        "standby_reachable": True,
        "standby_in_recovery": True,
        "standby_replay_lsn": "0/3000060",
        "standby_receive_lsn": "0/3000060",
        "primary_answers": False,
        "primary_error": "connection refused",
        "planned": False,
        "loss": estimate_loss(_beats([1])[0], _beats([1, 1]), recent_max_lag_ms=4.2),
    }
    return Preflight(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"primary_answers": True, "planned": True}, None),
        ({"primary_answers": True}, "still answers"),
        ({"standby_reachable": False, "standby_error": "timeout"}, "cannot be reached"),
        ({"standby_in_recovery": False}, "not in recovery"),
    ],
)
def test_preflight_refuses_a_split_brain_and_a_missing_standby(changes, reason) -> None:
    said = refusal(_preflight(**changes))
    assert (said is None) if reason is None else (reason in (said or ""))


def test_the_plan_names_server_standby_loss_and_the_old_primarys_fate() -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    text = plan_text(policy, _preflight())
    assert "platform_primary" in text and "pg_platform_standby" in text
    assert "1 heartbeat commit(s) missing" in text and "4.2 ms" in text
    assert "no fence command in the policy" in text  # the shipped policy names none
    planned = plan_text(policy, _preflight(primary_answers=True, planned=True))
    assert "planned switchover" in planned and "Loss so far: nothing" in planned


def test_commands_fill_in_their_fields_and_slots_name_the_timeline() -> None:
    argv = render(
        ["/fence", "--host={old_primary_conn_id}", "{server}"], server="s", old_primary_conn_id="pg"
    )
    assert argv == ["/fence", "--host=pg", "s"]
    assert new_slot("backup_dr_standby", 2) == "backup_dr_standby_tl2"


def _policy_with(tmp_path: Path, **server_fields) -> Path:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    data["servers"][0].update(server_fields)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([], "must be a non-empty list"),
        ([""], "must be a non-empty list"),
        (["/fence", "{host}"], "uses host; known fields"),
        (["/fence", "{server"], "argument '{server'"),
        ("/fence --now", "Input should be a valid list"),
    ],
)
def test_a_bad_fence_command_is_refused_naming_the_field(tmp_path, command, message) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy(_policy_with(tmp_path, fence_command=command))
    assert "servers.0.fence_command" in str(raised.value) and message in str(raised.value)


def test_fence_and_rebuild_commands_load_and_servers_with_a_standby_can_fail_over(tmp_path):
    policy = load_policy(
        _policy_with(
            tmp_path,
            fence_command=["/usr/local/bin/fence", "{server}"],
            rebuild_command=["/usr/local/bin/rebuild", "--slot", "{slot}"],
        )
    )
    assert policy.server("platform_primary").fence_command == ["/usr/local/bin/fence", "{server}"]
    assert failover_servers(policy) == ["platform_primary"]


class _Store:
    """The one method `current_roles` reads, over a dict (the rule, not S3, is under test)."""

    def __init__(self, name: str, documents: dict) -> None:
        self.documents = documents
        self.region = type("Region", (), {"name": name})()

    def get_json(self, key: str):
        return self.documents.get(key)


def test_roles_follow_the_newest_failover_record_else_the_policy() -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    assert follow(policy, [_Store("a", {}), _Store("b", {})]) == policy
    old = ServerRoles("platform_primary", "pg_x", None, None, 2, "2026-12-01T00:00:00+00:00", "f1")
    new = ServerRoles(
        "platform_primary",
        "pg_platform_standby",
        "pg_platform",
        "s_tl3",
        3,
        "2026-12-05T00:00:00+00:00",
        "f2",
    )
    key = "state/servers/platform_primary.json"
    followed = follow(
        policy, [_Store("a", {key: old.to_document()}), _Store("b", {key: new.to_document()})]
    )
    server = followed.server("platform_primary")
    assert server.conn_id == "pg_platform_standby"
    assert server.standby is not None and server.standby.conn_id == "pg_platform"
    assert server.standby.slot == "s_tl3"
    alone = follow(policy, [_Store("a", {key: old.to_document()})]).server("platform_primary")
    assert alone.conn_id == "pg_x" and alone.standby is None  # promoted, none rebuilt yet


def test_the_record_says_approval_to_writable_and_names_its_controls() -> None:
    record = FailoverRecord(
        server="s",
        failover_id="f",
        run={"run_id": "r"},
        planned=False,
        preflight_at=T0.isoformat(),
        approved_at=T0.isoformat(),
        approved_by="oncall",
        fenced_at=None,
        old_primary="fenced",
        promoted_at=None,
        writable_at=(T0 + timedelta(seconds=2.5)).isoformat(),
        timeline=2,
        history_file=None,
    )
    document = record.to_document()
    assert document["approval_to_writable_seconds"] == 2.5
    assert document["controls"] == ["A.5.29", "A.5.30"]
    assert Loss(**estimate_loss(None, []).__dict__).seconds == 0


def test_a_failover_is_an_a529_a530_record_in_the_audit_report() -> None:
    from include.backup_dr.audit.controls import CONTINUITY_CONTROL
    from include.backup_dr.audit.join import build_report
    from include.backup_dr.audit.records import FailoverRecord as AuditFailover

    policy = load_policy(DEFAULT_POLICY_PATH)
    event = AuditFailover(
        server="platform_primary",
        key="evidence/failover/platform_primary/20261102T030000Z-run.json",
        recorded_at=datetime(2026, 11, 2, 3, tzinfo=UTC),
        planned=False,
        approved_by="oncall",
        approval_to_writable_seconds=1.6,
        loss_seconds=0.012,
        lost_heartbeats=1,
        timeline=2,
        old_primary="pg_platform: fenced",
        problems=("rebuild_standby: failed",),
    )
    outside = AuditFailover(**{**event.__dict__, "recorded_at": datetime(2026, 10, 1, tzinfo=UTC)})
    report = build_report(
        policy,
        [event, outside],
        datetime(2026, 11, 1).date(),
        datetime(2026, 11, 3).date(),
        datetime(2026, 11, 10, tzinfo=UTC),
    )
    assert report.failovers == (event,)
    finding = next(f for f in report.exceptions if "failover on" in f.text)
    assert finding.control == CONTINUITY_CONTROL
    assert "approved by oncall" in finding.text and "rebuild_standby: failed" in finding.text
    page = report.markdown()
    assert "## Failovers" in page and "oncall" in page and "0.012s, 1 heartbeat(s)" in page
