"""A policy that names its KMS keys by alias (as the README allows), on the real local stack.

S3 reports the key ARN of an SSE-KMS object, never the alias, so the integrity check must compare
against the alias resolved with KMS DescribeKey. The aliases here point at keys of their own, so
no suffix of an alias can pass for the key it names.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from include.backup_dr.backup.steps import check_integrity, copy_to_secondary, take_snapshot
from include.backup_dr.catalogue import INTEGRITY_NAME
from include.backup_dr.integrity import check_copy
from include.backup_dr.store import ObjectStore, StoreError
from include.backup_dr.stores import Stores, from_ref

pytestmark = pytest.mark.integration

WINDOW = datetime(2021, 3, 4, 6, 0, tzinfo=UTC)
RUN = {"dag_id": "test_kms_alias", "run_id": "manual"}


@pytest.fixture
def aliases(stack) -> Iterator[dict[str, dict[str, Any]]]:
    """Per region: a fresh key and an alias naming it, deleted afterwards."""
    from local.config import s3_sites
    from local.s3 import kms_client

    made: dict[str, dict[str, Any]] = {}
    for role, site in zip(("primary", "secondary"), s3_sites(), strict=True):
        kms = kms_client(site)
        key = kms.create_key()["KeyMetadata"]
        alias = f"alias/backup-dr-test-{role}-{uuid.uuid4().hex[:8]}"
        kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
        made[role] = {"kms": kms, "alias": alias, "arn": key["Arn"], "key_id": key["KeyId"]}
    yield made
    for entry in made.values():
        entry["kms"].delete_alias(AliasName=entry["alias"])


@pytest.fixture
def aliased_stores(stores, policy_file, aliases) -> Stores:
    def use_aliases(data: dict[str, Any]) -> None:
        for role in ("primary", "secondary"):
            data["regions"][role]["kms_key_id"] = aliases[role]["alias"]

    return Stores.from_policy(policy_file(use_aliases))


def test_backup_under_aliased_keys_passes_integrity_in_both_regions(
    aliased_stores: Stores, aliases
) -> None:
    from include.backup_dr.policy import load_policy

    policy = load_policy()
    ref = take_snapshot(policy, aliased_stores, "platform_billing", "6h", WINDOW, RUN)
    copy_to_secondary(policy, aliased_stores, ref)
    result = check_integrity(policy, aliased_stores, ref)  # raised IntegrityError before the fix

    assert result["verified_regions"] == ["eu-west-1", "eu-central-1"]
    backup = from_ref(ref)
    for role, store in (
        ("primary", aliased_stores.primary),
        ("secondary", aliased_stores.secondary),
    ):
        manifest = store.manifest(backup)
        assert manifest is not None
        head = store.head(manifest.artifact.key)
        assert head["SSEKMSKeyId"] == aliases[role]["arn"]  # S3 reports the key, not the alias
        evidence = store.get_json(backup.key(INTEGRITY_NAME))
        encrypted = next(c for c in evidence["checks"] if c["name"] == "encrypted")
        assert encrypted["ok"] is True
        assert aliases[role]["arn"] in encrypted["detail"]
        assert aliases[role]["alias"] in encrypted["detail"]


def test_alias_is_resolved_once_per_store_and_a_repointed_alias_is_caught(
    aliased_stores: Stores, aliases
) -> None:
    """The store keeps the key it resolved for its whole life (writes and checks agree); a new
    store sees the alias's new target, and a copy under the old key then fails its check."""
    from include.backup_dr.engines import engine_for
    from include.backup_dr.policy import load_policy

    policy = load_policy()
    primary = aliased_stores.primary
    assert primary.kms_key_arn == aliases["primary"]["arn"]
    ref = take_snapshot(policy, aliased_stores, "platform_billing", "6h", WINDOW, RUN)
    reference = primary.manifest(from_ref(ref))
    assert reference is not None

    entry = aliases["primary"]
    other = entry["kms"].create_key()["KeyMetadata"]
    entry["kms"].update_alias(AliasName=entry["alias"], TargetKeyId=other["KeyId"])
    assert primary.kms_key_arn == entry["arn"]  # cached: no second DescribeKey
    engine = engine_for(reference.engine)
    assert check_copy(primary, reference, engine).ok

    fresh = Stores.from_policy(policy).primary
    assert fresh.kms_key_arn == other["Arn"]
    report = check_copy(fresh, reference, engine)
    failed = {check.name: check.detail for check in report.failures()}
    assert set(failed) == {"encrypted", "globals encrypted"}, report.summary()
    assert entry["arn"] in failed["encrypted"] and other["Arn"] in failed["encrypted"]


def test_unknown_alias_is_a_clear_error_naming_alias_and_region(stores) -> None:
    from include.backup_dr.policy import Region

    region = stores.primary.region
    missing = ObjectStore.for_region(
        Region(
            name=region.name,
            conn_id=region.conn_id,
            bucket=region.bucket,
            kms_key_id="alias/backup-dr-no-such-alias",
        )
    )
    with pytest.raises(StoreError, match=r"alias/backup-dr-no-such-alias.*eu-west-1"):
        missing.put_json("probe/never.json", {})
    assert missing.head("probe/never.json") is None
