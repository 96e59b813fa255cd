"""What every check gives: a status on the Nagios scale and one row of the compliance table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

#: "Within a year": 366 days, so a yearly job on the same date is never late in a leap year.
YEAR = timedelta(days=366)


class Status(IntEnum):
    """A check's verdict; the value is the Nagios plugin exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def is_red(self) -> bool:
        """Pages on-call: a promise is broken, or nobody can tell whether it holds."""
        return self in (Status.CRITICAL, Status.UNKNOWN)

    @property
    def severity(self) -> int:
        """Worst first when combined: CRITICAL > UNKNOWN > WARNING > OK."""
        return (0, 1, 3, 2)[self.value]


@dataclass(frozen=True)
class CheckResult:
    """One row of the compliance table: what was measured, against what, and the verdict."""

    id: str  # stable: "<kind>:<subject>[/<tier>][@<region>]"
    kind: str
    subject: str
    status: Status
    measured: str
    limit: str
    detail: str
    #: The figure for machines: seconds, or a share in [0, 1] for coverage; None if unmeasured.
    value: float | None = None
    tier: str | None = None
    region: str | None = None

    def to_document(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "tier": self.tier,
            "region": self.region,
            "status": self.status.name,
            "measured": self.measured,
            "limit": self.limit,
            "detail": self.detail,
            "value": self.value,
        }


def overall(statuses: Iterable[Status]) -> Status:
    """The worst status (CRITICAL > UNKNOWN > WARNING > OK); OK when there is none."""
    return max(statuses, key=lambda status: status.severity, default=Status.OK)


def unknown(check_id: str, kind: str, subject: str, limit: str, error: str) -> CheckResult:
    """The row of a check whose input could not be read: nobody can tell whether it holds."""
    return CheckResult(check_id, kind, subject, Status.UNKNOWN, "-", limit, f"cannot read: {error}")
