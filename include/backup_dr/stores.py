"""Both regions' stores, and a backup id as the small dict the steps and restores pass around.

Every task of a DAG gets its backup as a ref (`backup_ref`): JSON-able, so it travels as an
XCom and lands in evidence records as it is. `from_ref` reads it back, whatever else the dict
carries (the region a restore reads, why that backup was chosen, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from include.backup_dr.catalogue import BackupId, backup_window
from include.backup_dr.immutability import LockRule
from include.backup_dr.policy import Policy
from include.backup_dr.store import ObjectStore


@dataclass(frozen=True)
class Stores:
    """The policy's two regions, each with its own store (client, bucket, key and lock rule)."""

    primary: ObjectStore
    secondary: ObjectStore

    @classmethod
    def from_policy(cls, policy: Policy) -> Stores:
        primary, secondary = policy.regions.primary, policy.regions.secondary
        return cls(
            ObjectStore.for_region(primary, LockRule.for_region(policy, primary)),
            ObjectStore.for_region(secondary, LockRule.for_region(policy, secondary)),
        )

    def __iter__(self) -> Iterator[ObjectStore]:
        return iter((self.primary, self.secondary))

    def role(self, name: str) -> ObjectStore:
        """The store playing `name` ("primary" or "secondary") in the policy."""
        return self.primary if name == "primary" else self.secondary

    def by_region(self, name: str) -> ObjectStore:
        return next(store for store in self if store.region.name == name)


def backup_ref(backup: BackupId) -> dict[str, str]:
    """A backup id as a small JSON-able dict, the XCom passed between the steps."""
    return {
        "category": backup.category,
        "target": backup.target,
        "tier": backup.tier,
        "window": backup.window.isoformat(),
    }


def from_ref(ref: dict[str, str]) -> BackupId:
    """The backup id a ref names (`backup_ref`'s inverse); extra keys are ignored."""
    return BackupId(
        ref["category"],
        ref["target"],
        ref["tier"],
        backup_window(datetime.fromisoformat(ref["window"])),
    )
