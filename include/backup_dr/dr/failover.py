"""`dr_failover`'s rules, pure: the preflight verdict, the loss estimate, the plan on-call
approves, the fence and rebuild commands, and the evidence record. I/O lives in
`dr/failover_steps.py`; the DAG in `factory.failover`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from include.backup_dr.policy import Policy

EVIDENCE_KIND = "failover"
SCHEMA = "backup-dr/failover/v1"
#: ISO 27001 controls a failover record answers: continuity during disruption (A.5.29) and
#: ICT readiness for business continuity (A.5.30).
CONTROLS = ("A.5.29", "A.5.30")


def failover_servers(policy: Policy) -> list[str]:
    """Servers `dr_failover` can act on: those with a standby in the policy."""
    return [s.name for s in policy.servers if s.standby is not None]


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat row: its sequence number and the primary's commit time."""

    seq: int
    written_at: datetime


@dataclass(frozen=True)
class Loss:
    """What promoting the standby now loses, from what is known.

    `seconds`: from the standby's newest heartbeat to the primary's last sign of life (the
    newest heartbeat the monitor recorded, or the newest WAL the standby heard of). Commits
    after the last sign of life cannot be seen by anyone but the old primary's disk.
    `heartbeats`: heartbeat commits recorded on the primary and missing on the standby.
    """

    seconds: float
    heartbeats: int | None
    standby_newest: str | None
    primary_last_seen: str | None
    basis: str
    #: The worst commit-to-visible lag of the monitor's newest run: what an asynchronous
    #: standby usually misses of the commits after the last sign of life.
    recent_max_lag_ms: float | None = None

    def describe(self) -> str:
        if self.standby_newest is None:
            return f"cannot be bounded ({self.basis})"
        counted = (
            "the monitor has no record to count against"
            if self.heartbeats is None
            else f"{self.heartbeats} heartbeat commit(s) missing on the standby"
        )
        text = f"{self.seconds:.3f} s known lost ({counted})"
        if self.primary_last_seen and self.recent_max_lag_ms is not None:
            text += (
                f"; commits after the primary's last sign of life ({self.primary_last_seen}) "
                f"cannot be seen from here: expect about the standby's recent max lag, "
                f"{self.recent_max_lag_ms} ms"
            )
        return text


def estimate_loss(
    standby_newest: Heartbeat | None,
    primary_heartbeats: Sequence[Heartbeat],
    primary_seen: Sequence[datetime] = (),
    recent_max_lag_ms: float | None = None,
) -> Loss:
    """The loss so far: never less than the gap between the standby's newest heartbeat and
    any later sign of the primary's life, and every recorded heartbeat the standby lacks."""
    signs = [h.written_at for h in primary_heartbeats] + list(primary_seen)
    last_seen = max(signs, default=None)
    if standby_newest is None:
        return Loss(
            seconds=math.inf if last_seen is not None else 0.0,
            heartbeats=len(primary_heartbeats) if primary_heartbeats else None,
            standby_newest=None,
            primary_last_seen=last_seen.isoformat() if last_seen else None,
            basis="no heartbeat on the standby: the loss cannot be bounded",
            recent_max_lag_ms=recent_max_lag_ms,
        )
    missing = [h for h in primary_heartbeats if h.seq > standby_newest.seq]
    gap = (last_seen - standby_newest.written_at).total_seconds() if last_seen else 0.0
    return Loss(
        seconds=max(0.0, gap),
        heartbeats=len(missing) if primary_heartbeats else None,
        standby_newest=standby_newest.written_at.isoformat(),
        primary_last_seen=last_seen.isoformat() if last_seen else None,
        basis=(
            "standby's newest heartbeat vs the primary's last sign of life"
            if last_seen
            else "no record of the primary: nothing to compare"
        ),
        recent_max_lag_ms=recent_max_lag_ms,
    )


@dataclass(frozen=True)
class Preflight:
    """What preflight measured, before anyone is asked."""

    server: str
    primary_conn_id: str
    standby_conn_id: str
    checked_at: str
    standby_reachable: bool
    standby_in_recovery: bool | None
    standby_replay_lsn: str | None
    standby_receive_lsn: str | None
    primary_answers: bool
    primary_error: str | None
    planned: bool
    loss: Loss
    standby_error: str | None = None
    primary_flush_lsn: str | None = None

    def to_document(self) -> dict[str, Any]:
        return asdict(self)


def refusal(preflight: Preflight) -> str | None:
    """Why the failover must not go ahead, or None. A live primary is refused unless the run
    is a planned switchover (which then loses nothing: see `planned_plan`)."""
    name = preflight.server
    if not preflight.standby_reachable:
        return (
            f"{name}: the standby ({preflight.standby_conn_id}) cannot be reached "
            f"({preflight.standby_error}); there is nothing to promote"
        )
    if not preflight.standby_in_recovery:
        return (
            f"{name}: the standby ({preflight.standby_conn_id}) is not in recovery: it is "
            "already a primary (an earlier failover?); read state/servers/ in the store"
        )
    if preflight.primary_answers and not preflight.planned:
        return (
            f"{name}: the primary ({preflight.primary_conn_id}) still answers: refusing to "
            "split the server in two. For a switchover, trigger again with planned: true"
        )
    return None


def old_primary_fate(policy: Policy, server: str) -> str:
    command = policy.server(server).fence_command
    if command is None:
        return "no fence command in the policy: dr_failover refuses to promote"
    return f"fenced by `{' '.join(command)}` before the standby is promoted"


def plan_text(policy: Policy, preflight: Preflight) -> str:
    """The approval's body (Markdown): server, standby, loss so far, the old primary's fate."""
    loss = preflight.loss
    if preflight.planned:
        lost = "nothing: a planned switchover stops the primary and waits until the standby has replayed all it flushed"
    else:
        lost = f"**{loss.describe()}**"
    rebuild = policy.server(preflight.server).rebuild_command
    return "\n".join(
        [
            f"**Fail over `{preflight.server}`** ({'planned switchover' if preflight.planned else 'primary lost'})",
            "",
            f"- Old primary: `{preflight.primary_conn_id}` "
            f"({'answers' if preflight.primary_answers else 'does not answer: ' + str(preflight.primary_error)})",
            f"- Standby to promote: `{preflight.standby_conn_id}`, replayed up to "
            f"{preflight.standby_replay_lsn} (received {preflight.standby_receive_lsn})",
            f"- Loss so far: {lost}",
            f"- The old primary: {old_primary_fate(policy, preflight.server)}",
            "- Then: promote, wait until it takes writes, archive the new timeline in both "
            "regions, switch backups and the monitor to it, take a base backup, and "
            + (
                f"rebuild a standby with `{' '.join(rebuild)}`"
                if rebuild
                else "**no rebuild command: make a new standby by hand**"
            ),
            "",
            "Reject, or no answer before the timeout, changes nothing (a timeout pages on-call).",
        ]
    )


def render(command: Sequence[str], **fields: str) -> list[str]:
    """A policy command with its `{fields}` filled in (the policy checked their names)."""
    return [argument.format(**fields) for argument in command]


def new_slot(base: str, timeline: int) -> str:
    """The new standby's slot: named after the timeline it starts on, so it is never an old
    slot that would pin WAL from before the fork."""
    return f"{base}_tl{timeline}"


@dataclass
class FailoverRecord:
    """The evidence of one failover: the times, who approved, what was lost, what became of
    the old primary, and the new timeline."""

    server: str
    failover_id: str
    run: dict[str, str]
    planned: bool
    preflight_at: str
    approved_at: str | None
    approved_by: str | None
    fenced_at: str | None
    old_primary: str
    promoted_at: str | None
    writable_at: str | None
    timeline: int | None
    history_file: str | None
    history_regions: list[str] = field(default_factory=list)
    new_primary_conn_id: str | None = None
    standby_conn_id: str | None = None
    loss: dict[str, Any] = field(default_factory=dict)
    base_backup_run: str | None = None
    outcome: str = "promoted"
    problems: list[str] = field(default_factory=list)

    def approval_to_writable_seconds(self) -> float | None:
        if not self.approved_at or not self.writable_at:
            return None
        delta = datetime.fromisoformat(self.writable_at) - datetime.fromisoformat(self.approved_at)
        return round(delta.total_seconds(), 3)

    def to_document(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": EVIDENCE_KIND,
            "controls": list(CONTROLS),
            **asdict(self),
            "approval_to_writable_seconds": self.approval_to_writable_seconds(),
        }
