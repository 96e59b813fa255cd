"""Is every promise kept? The compliance checks, without I/O: plain facts read from the store
go in (`checks/inputs.py`), one status per check comes out (`checks/result.py`); each check's
rule lives in `checks/<kind>.py`, and `output.py` draws the table and the Nagios line.

Statuses follow the Nagios / Icinga plugin convention (`barman check --nagios` does too): OK 0,
WARNING 1, CRITICAL 2, UNKNOWN 3. CRITICAL and UNKNOWN are "red": a promise is broken, or
nobody can tell whether it holds; red pages on-call once (see `record.py`). WARNING is amber:
the promise holds today but the evidence says it will not, or cannot back a figure.

The checks (one row each; ids are stable, so paging state survives between runs):

- `backup_age` per production target (or continuous server), tier and region: the newest
  backup VERIFIED in that region, by its restore point (the manifest's start), against the
  tier's schedule period plus `compliance.grace`.
- `standby_lag` / `wal_archive` per continuous server: the continuous monitor's newest
  evidence (lag p99 over the RPO for the alert run length, the standby gone; archiver failing
  or the last archived WAL older than twice archive_timeout while segments wait), which must
  itself be recent.
- `server_config` per continuous server: the primary's settings, as the continuous monitor
  last read them, against the policy's `continuous` section: `archive_mode` on (or always),
  `wal_level` replica or logical, `archive_timeout` not off and not longer than the policy's
  (shorter is amber: the promise holds, the policy's figure is not what runs); with
  `synchronous: true` also `synchronous_standby_names` set, `synchronous_commit` waiting for
  the standby and the standby's `sync_state` sync or quorum. Without this, a server left
  asynchronous or archiving every 10 minutes reads as the policy's promise kept.
- `recovery_window` per continuous server and region, measured from the store (verified base
  backups plus WAL continuity across timelines, `pitr.recovery_range`): red when the oldest
  reachable second is later than now minus the tier's retention (once the tier has run that
  long), when the newest is older than twice archive_timeout, or when any hole lies inside
  the window. `wal_archive` alone cannot say this: it reads the server's archiver, which is
  green at any archive age while nothing waits.
- `replication_lag` per media target: the lag media_replicate measured at its last run, and
  how far behind the secondary can be now (time since that run began), against the RPO.
- `restore_drill` per production target and continuous server: the newest drill passed and is
  at most a year old (366 days, so a drill on the same date every year always passes).
- `projected_rto` per drilled target, and for all targets restored as `dr_restore` runs them
  (in parallel by priority, within the configured concurrency and pool): the drill's measured
  restore rate applied to the newest backup's size.
- `rehash_coverage` per media target and region: the share of the target's blobs whose
  rolling re-hash (one day-of-year bucket a day, see engines/media/layout.py) passed within a year.
"""

from __future__ import annotations

from datetime import datetime

from include.backup_dr.monitor.checks import (
    backup_age,
    drill,
    projected_rto,
    recovery_window,
    rehash,
    replication,
    server_config,
    streaming,
)
from include.backup_dr.monitor.checks.inputs import StoreFacts
from include.backup_dr.monitor.checks.result import CheckResult
from include.backup_dr.policy import Policy


def evaluate(policy: Policy, facts: StoreFacts, now: datetime) -> list[CheckResult]:
    """Every check the policy asks for, in table order, from the facts alone."""
    return [
        *backup_age.checks(policy, facts, now),
        *streaming.checks(policy, facts, now),
        *server_config.checks(policy, facts, now),
        *recovery_window.checks(policy, facts, now),
        *replication.checks(policy, facts, now),
        *drill.checks(policy, facts, now),
        *projected_rto.checks(policy, facts),
        *rehash.checks(policy, facts, now),
    ]
