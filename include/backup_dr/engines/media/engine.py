"""The media engine: opens snapshots, checks listings and blobs, copies blobs to the other
region, and plans garbage collection (sweep.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from include.backup_dr.catalogue import INTEGRITY_NAME, MANIFEST_NAME, BackupId, Manifest
from include.backup_dr.check import Check
from include.backup_dr.engines.base import ReadCheck, Sweep
from include.backup_dr.engines.media.layout import (
    SAMPLE_BUCKETS,
    blob_bucket,
    blob_key,
    blob_prefix,
    rehash_bucket,
)
from include.backup_dr.engines.media.listing import (
    EarlierListing,
    Entry,
    ListedAhead,
    parse_listing,
)
from include.backup_dr.engines.media.plan import BlobState, longest_holds, plan_copy
from include.backup_dr.engines.media.snapshot import COPY_WORKERS, MediaSnapshot
from include.backup_dr.engines.media.sweep import plan_sweep
from include.backup_dr.immutability import expiry, shared_hold
from include.backup_dr.policy import Policy, Target, load_policy
from include.backup_dr.store import ObjectStore


def _held_there(manifest: Manifest, source: ObjectStore, target: ObjectStore) -> dict[str, int]:
    """sha256 -> hold in the listing that `manifest`'s snapshot reused, if that snapshot's copy
    in `target` is complete (its manifest there, written last, vouches for the same listing):
    its copy then locked every blob it lists at least that long in `target`. Empty otherwise,
    so every blob's lock there is extended."""
    reused = manifest.source.get("reused_from")
    parsed = None if reused is None else BackupId.from_key(reused)
    if parsed is None:
        return {}
    earlier, there = source.manifest(parsed[0]), target.manifest(parsed[0])
    if earlier is None or there is None or there.artifact.sha256 != earlier.artifact.sha256:
        return {}
    return longest_holds(_listing(source, earlier))


def _listing(store: ObjectStore, manifest: Manifest) -> Iterator[Entry]:
    return parse_listing(store.iter_chunks(manifest.artifact.key))


def _blobs(store: ObjectStore, category: str) -> dict[str, tuple[int, datetime]]:
    return {
        obj.key.rsplit("/", 1)[-1]: (obj.size, obj.last_modified)
        for obj in store.list_objects(blob_prefix(category))
    }


class MediaEngine:
    """Engine: content-addressed media snapshots (listing artifact plus shared blobs)."""

    name = "media"
    extension = "jsonl"
    contents_keep_arriving = False

    @contextmanager
    def open_snapshot(
        self, policy: Policy, target: Target, primary: ObjectStore, backup: BackupId
    ) -> Iterator[MediaSnapshot]:
        assert target.source is not None
        locking = bool(policy.locked_regions())
        source = ObjectStore.for_bucket(target.source.conn_id, target.source.bucket)
        # The source is listed from now on, while the earlier listing is found and read.
        with ListedAhead(source.list_objects(target.source.prefix)) as listing:
            trusted, verify = self._previous(primary, target)
            earlier = () if trusted is None else primary.iter_chunks(trusted.artifact.key)
            previous = EarlierListing(earlier)
            try:
                yield MediaSnapshot(
                    target,
                    source,
                    primary,
                    previous,
                    policy.prune.incomplete_upload_grace,
                    listing=listing,
                    verify=verify,
                    holds=(expiry(policy, backup), shared_hold(policy, backup))
                    if locking
                    else None,
                    reused_from=None if trusted is None else trusted.backup,
                )
            finally:
                previous.close()

    def _previous(self, primary: ObjectStore, target: Target) -> tuple[Manifest | None, bool]:
        """The target's newest snapshot in any tier whose check passed (what need not be copied
        again), and whether a later one failed its check (its blobs must be checked on reuse).

        A listing whose check failed, or that was never checked, may refer to a blob that is lost
        or damaged: reusing its entries would carry the fault into every later snapshot.
        """
        backups = [
            parsed[0]
            for obj in primary.list_objects(f"{target.category}/{target.name}/")
            if (parsed := BackupId.from_key(obj.key)) is not None and parsed[1] == MANIFEST_NAME
        ]

        def read(backup: BackupId) -> tuple[Manifest | None, dict[str, Any] | None]:
            manifest = primary.manifest(backup)
            if manifest is None:
                return None, None
            return manifest, primary.get_json(backup.key(INTEGRITY_NAME))

        trusted: Manifest | None = None
        failed: list[datetime] = []
        # Two reads per retained snapshot, of every tier: in parallel, not one after another.
        with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
            for manifest, verdict in pool.map(read, backups):
                if manifest is None or verdict is None:
                    continue
                if verdict.get("artifact_sha256") != manifest.artifact.sha256:
                    continue  # checked before a re-take (or not yet): not evidence either way
                if not verdict.get("ok"):
                    failed.append(manifest.finished_at)
                elif trusted is None or manifest.finished_at > trusted.finished_at:
                    trusted = manifest
        verify = any(trusted is None or when > trusted.finished_at for when in failed)
        return trusted, verify

    def check_readable(self, chunks: Iterable[bytes]) -> ReadCheck:
        try:
            count = sum(1 for _ in parse_listing(chunks))
        except (ValueError, TypeError) as exc:
            return ReadCheck(False, f"the listing does not parse: {exc}")
        return ReadCheck(True, f"listing of {count} objects parses")

    def copy_contents(
        self,
        manifest: Manifest,
        source: ObjectStore,
        target: ObjectStore,
        *,
        gc_grace: timedelta | None = None,
    ) -> str:
        """Copy the blobs the other region lacks or holds damaged (one listing there), and
        refresh the old ones it holds, as a snapshot does, before the listing itself. Where the
        other region locks, each blob is locked there until its entry's hold plus the margin:
        copies and refreshes are written so, and a blob held longer than in the listing the
        snapshot reused (`_held_there`) has its lock extended, as the snapshot did here."""
        if gc_grace is None:  # the engine interface carries no policy: the one in force
            gc_grace = load_policy().prune.incomplete_upload_grace
        category = manifest.backup.category
        entries = list(_listing(source, manifest))
        wanted = {entry.sha256: entry.size for entry in entries}
        holds = longest_holds(entries)
        present = {
            sha: BlobState(size, written)
            for sha, (size, written) in _blobs(target, category).items()
        }
        plan = plan_copy(wanted, present, datetime.now(UTC), gc_grace)
        missing = [(sha, size) for sha, size in wanted.items() if plan[sha] == "copy"]
        damaged = sum(1 for sha, _ in missing if sha in present)
        stale = [sha for sha in wanted if plan[sha] == "refresh"]
        short = []
        if target.lock is not None and holds:
            earlier = _held_there(manifest, source, target)
            short = [s for s, h in holds.items() if plan[s] == "keep" and earlier.get(s, 0) < h]

        def until(sha: str) -> datetime | None:
            hold = holds.get(sha)
            if target.lock is None or hold is None:
                return None
            return target.lock.held_until(datetime.fromtimestamp(hold, UTC))

        with ThreadPoolExecutor(max_workers=COPY_WORKERS) as pool:
            for done in (
                [
                    pool.submit(
                        target.copy_from,
                        source,
                        blob_key(category, sha),
                        size,
                        lock_until=until(sha),
                    )
                    for sha, size in missing
                ]
                + [
                    pool.submit(target.touch, blob_key(category, sha), lock_until=until(sha))
                    for sha in stale
                ]
                + [
                    pool.submit(target.extend_lock, blob_key(category, sha), until(sha))
                    for sha in short
                ]
            ):
                done.result()
        copied = sum(size for _, size in missing)
        return (
            f"{len(missing)} of {len(wanted)} blobs copied ({copied} bytes; {damaged} of them "
            f"were there damaged), {len(stale)} refreshed, {len(short)} locks extended"
        )

    def check_contents(self, store: ObjectStore, manifest: Manifest, now: datetime) -> list[Check]:
        category = manifest.backup.category
        try:
            entries = list(_listing(store, manifest))
        except (ValueError, TypeError) as exc:  # the artifact checks say why; say it here too
            return [
                Check("blobs", False, f"the listing does not parse, so no blob is known: {exc}")
            ]
        blobs = _blobs(store, category)
        missing = [e for e in entries if e.sha256 not in blobs]
        wrong = [e for e in entries if e.sha256 in blobs and blobs[e.sha256][0] != e.size]
        unique = sorted({e.sha256 for e in entries})
        checks = [
            Check(
                "blobs",
                not missing and not wrong,
                f"{len(entries)} objects reference {len(unique)} blobs; "
                f"{len(missing)} missing, {len(wrong)} with the wrong size"
                + (f" (e.g. {(missing or wrong)[0].key})" if missing or wrong else ""),
            )
        ]
        bucket = rehash_bucket(now)
        sample = [sha for sha in unique if blob_bucket(sha) == bucket]
        bad = []
        for sha in sample:
            if sha not in blobs:
                continue
            if store.sha256(blob_key(category, sha)) != sha:
                bad.append(sha)
        checks.append(
            Check(
                "sample_rehash",
                not bad,
                f"re-hashed {len(sample)} of {len(unique)} blobs: those with int(sha256[:8]) mod "
                f"{SAMPLE_BUCKETS} = day-of-year mod {SAMPLE_BUCKETS} = {bucket}; a blob's turn "
                f"comes once every {SAMPLE_BUCKETS} days, so a daily check re-hashes every blob "
                f"at least once a year; {len(bad)} mismatched"
                + (f" (e.g. {bad[0]})" if bad else ""),
            )
        )
        return checks

    def plan_garbage(
        self, policy: Policy, store: ObjectStore, category: str, now: datetime
    ) -> AbstractContextManager[list[Sweep]]:
        return plan_sweep(policy, store, category, now)
