"""The proof of 1-second granularity: T is half a second after a heartbeat the continuous
monitor recorded; after recovery that heartbeat is there and none written after T is."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr.pitr.window import RecoveryRange
from include.backup_dr.store import ObjectStore
from include.backup_dr.wal_segments import Segment

MONITOR_EVIDENCE = "evidence/continuous_monitor"
HEARTBEAT_TABLE = "backup_dr.heartbeat"
#: T is this long after the chosen heartbeat: later than its commit, earlier than the next one.
SAMPLE_OFFSET = timedelta(milliseconds=500)
#: Monitor records read at most while looking for a usable heartbeat (each is one GET).
MAX_RECORDS_READ = 40


@dataclass(frozen=True)
class HeartbeatSample:
    """A heartbeat the monitor wrote and saw committed; T is half a second after it."""

    seq: int
    written_at: datetime
    next_written_at: datetime
    evidence_key: str

    @property
    def target_time(self) -> datetime:
        return self.written_at + SAMPLE_OFFSET

    def to_document(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "written_at": self.written_at.isoformat(),
            "next_written_at": self.next_written_at.isoformat(),
            "evidence": self.evidence_key,
        }


def eligible_samples(
    record: dict[str, Any], key: str, span: RecoveryRange
) -> list[HeartbeatSample]:
    """The heartbeats of one monitor run that a drill may aim at.

    The run's last WAL must be at or before the newest archived full segment (so every
    heartbeat of it is archived), T must be inside the range, and the next heartbeat must come
    after T: its commit is what tells recovery to stop, and what "nothing after T" is about.
    """
    end = record.get("end_segment")
    if not end or span.newest_segment is None or span.oldest is None or span.newest is None:
        return []
    try:
        if Segment.parse(end).number > Segment.parse(span.newest_segment).number:
            return []
    except ValueError:
        return []
    samples = sorted(
        (
            (int(s["seq"]), _utc(datetime.fromisoformat(s["written_at"])))
            for s in record.get("samples") or []
            if s.get("seq") is not None and s.get("written_at")
        ),
        key=lambda s: s[0],
    )
    chosen = []
    for (seq, written), (_, following) in itertools.pairwise(samples):
        target = written + SAMPLE_OFFSET
        if span.covers(written) and span.covers(target) and following > target:
            chosen.append(HeartbeatSample(seq, written, following, key))
    return chosen


def choose_sample(
    store: ObjectStore, span: RecoveryRange, rng: random.Random
) -> HeartbeatSample | None:
    """A random usable heartbeat from the monitor's evidence in this region, or None."""
    keys = [
        obj.key
        for obj in store.list_objects(f"{MONITOR_EVIDENCE}/{span.server}/")
        if obj.key.endswith(".json") and span.oldest is not None and obj.last_modified > span.oldest
    ]
    rng.shuffle(keys)
    for key in keys[:MAX_RECORDS_READ]:
        record = store.get_json(key)
        if isinstance(record, dict) and (samples := eligible_samples(record, key, span)):
            return rng.choice(samples)
    return None


def heartbeat_proof(connection: Any, sample: HeartbeatSample, target: datetime) -> dict[str, Any]:
    """What the recovered cluster says about the chosen heartbeat and everything after T."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT written_at FROM {HEARTBEAT_TABLE} WHERE seq = %s", (sample.seq,))
        row = cursor.fetchone()
        cursor.execute(
            f"SELECT count(*), max(written_at) FROM {HEARTBEAT_TABLE} WHERE written_at > %s",
            (target,),
        )
        after, _ = cursor.fetchone()
        cursor.execute(f"SELECT max(seq), max(written_at) FROM {HEARTBEAT_TABLE}")
        newest_seq, newest_at = cursor.fetchone()
    gap = (target - newest_at).total_seconds() if newest_at is not None else None
    present = row is not None
    return {
        "seq": sample.seq,
        "seq_present": present,
        "seq_written_at": row[0].isoformat() if present else None,
        "target_time": target.isoformat(),
        "heartbeats_after_target": int(after),
        "newest_restored_seq": newest_seq,
        "newest_restored_written_at": newest_at.isoformat() if newest_at else None,
        "seconds_between_newest_and_target": round(gap, 3) if gap is not None else None,
        "ok": present and after == 0 and gap is not None and 0 <= gap < 1,
    }


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
