"""Which backup a restore reads: the chosen window, or the newest verified copy in a region."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from include.backup_dr.catalogue import BackupId, Manifest, Verification, build_catalogue
from include.backup_dr.policy import Policy
from include.backup_dr.restore.errors import RestoreRefused
from include.backup_dr.store import ObjectStore
from include.backup_dr.stores import backup_ref, from_ref


@dataclass(frozen=True)
class Selection:
    """The backup chosen for a restore, where it is read from, and why it was chosen."""

    backup: BackupId
    region: str
    reason: str

    def to_ref(self) -> dict[str, str]:
        """The backup's ref, with the region it is read from and why it was chosen."""
        return {**backup_ref(self.backup), "region": self.region, "reason": self.reason}

    @classmethod
    def from_ref(cls, ref: dict[str, str]) -> Selection:
        return cls(from_ref(ref), ref["region"], ref["reason"])


def select_backup(
    policy: Policy,
    store: ObjectStore,
    target: str,
    tier: str,
    window: datetime | None = None,
) -> Selection:
    """The chosen window, or else the newest backup whose copy in `store`'s region passed."""
    category = policy.target(target).category
    backups, _ = build_catalogue([store.listing(f"{category}/{target}/{tier}/")])
    region = store.region.name
    if window is not None:
        chosen = next((b for b in backups if b.id.window == window), None)
        if chosen is None:
            raise RestoreRefused(f"no backup of {target}/{tier} for window {window} in {region}")
        state = chosen.copies[region].verification.value
        return Selection(chosen.id, region, f"window {window.isoformat()} requested ({state})")
    verified = [b for b in backups if b.copies[region].verification is Verification.PASSED]
    if not verified:
        raise RestoreRefused(
            f"no verified backup of {target}/{tier} in {region} ({len(backups)} unverified)"
        )
    newest = max(verified, key=lambda b: b.id.window)
    return Selection(
        newest.id,
        region,
        f"newest of {len(verified)} verified backups of {target}/{tier} in {region} "
        f"(window {newest.id.window.isoformat()})",
    )


def manifest_of(store: ObjectStore, selection: Selection) -> Manifest:
    manifest = store.manifest(selection.backup)
    if manifest is None:
        raise RestoreRefused(f"{selection.backup}: no manifest in {selection.region}")
    return manifest


def is_media(policy: Policy, category: str) -> bool:
    return policy.categories[category].engine == "media"
