"""The IAM check's rules (tests/iam_policy.py) on a small recorded sample, and the documents in
deploy/iam against every S3 and KMS call the code can make (read from the source, so a call
made only by tests that did not run is covered too)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest

from tests.iam_policy import (
    IAM_DIR,
    REPO,
    ROLE_FILES,
    S3_ACTIONS,
    Need,
    PolicyCheckError,
    Site,
    allowed,
    check,
    load_statements,
    local_site,
    needs,
    read_calls,
    role_of,
)

SAMPLE = Path(__file__).parent / "data" / "iam_calls_sample.jsonl"


@pytest.fixture(scope="module")
def site() -> Site:
    return local_site()


def _call(op: str, **facts: object) -> dict[str, object]:
    return {
        "service": "s3",
        "op": op,
        "region": "eu-west-1",
        "principal": "backup-local",
        "bucket": "backups-eu-west-1",
        "key": "platform/x/*",
        "code": "include/backup_dr/store/objects.py:f",
        "entry": None,
        **facts,
    }


def _actions(call: dict[str, object], site: Site) -> set[str]:
    return {need.action for need in needs(call, site)}


def test_each_call_maps_to_the_actions_aws_authorizes(site: Site) -> None:
    assert _actions(_call("PutObject"), site) == {"s3:PutObject", "kms:GenerateDataKey"}
    assert _actions(_call("CreateMultipartUpload", lock=True), site) == {
        "s3:PutObject",
        "s3:PutObjectRetention",
        "kms:GenerateDataKey",
        "kms:Decrypt",
    }
    assert needs(_call("ListObjectsV2", key=None), site) == [
        Need("s3:ListBucket", "arn:aws:s3:::backups-eu-west-1")
    ]
    assert _actions(_call("ListMultipartUploads"), site) == {"s3:ListBucketMultipartUploads"}
    assert _actions(_call("HeadObject"), site) == {"s3:GetObject", "s3:GetObjectRetention"}
    assert _actions(_call("HeadObject", bucket="media-source"), site) == {"s3:GetObject"}
    assert _actions(_call("GetObject", version=True), site) == {
        "s3:GetObjectVersion",
        "kms:Decrypt",
    }
    assert _actions(_call("PutObjectRetention", bypass=True), site) == {
        "s3:PutObjectRetention",
        "s3:BypassGovernanceRetention",
    }
    assert _actions(_call("DeleteObjects", version=True, unversioned=True), site) == {
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
    }
    copy = _call(
        "CopyObject", bucket="backups-eu-central-1", copy_source="backups-eu-west-1/platform/x/*"
    )
    assert set(needs(copy, site)) == {
        Need("s3:PutObject", "arn:aws:s3:::backups-eu-central-1/platform/x/*"),
        Need("s3:GetObject", "arn:aws:s3:::backups-eu-west-1/platform/x/*"),
        Need("kms:Decrypt", site.bucket_keys["backups-eu-west-1"]),
        Need("kms:GenerateDataKey", site.bucket_keys["backups-eu-central-1"]),
    }
    kms = {"service": "kms", "op": "DescribeKey", "region": "eu-central-1", "code": "x"}
    assert needs(kms, site) == [Need("kms:DescribeKey", site.region_keys["eu-central-1"])]


def test_an_operation_with_no_mapping_is_an_error_not_a_pass(site: Site) -> None:
    with pytest.raises(PolicyCheckError, match="SelectObjectContent"):
        needs(_call("SelectObjectContent"), site)


def test_roles_follow_the_principal_then_the_code_path(site: Site) -> None:
    assert role_of(_call("GetObject"), site) == "backup"
    assert role_of(_call("GetObject", entry="read-only"), site) == "read-only"
    audit = _call("GetObject", outer="include/backup_dr/audit/__init__.py:build_audit")
    assert role_of(audit, site) == "read-only"
    kept = _call("PutObject", outer="include/backup_dr/audit/reader.py:write_evidence")
    assert role_of(kept, site) == "backup"  # the yearly DAG keeps the report as evidence
    assert role_of(_call("GetObject", principal="backup-local-admin"), site) == "break-glass"
    assert role_of(_call("CreateBucket", code=None), site) is None  # the harness's own
    # a test emptying a bucket through the store itself is set-up, not the code at work
    direct = _call(
        "ListMultipartUploads", outer="include/backup_dr/store/objects.py:unfinished_uploads"
    )
    assert role_of({**direct, "principal": "backup-local-admin"}, site) is None
    via_unlock = {**direct, "outer": "include/backup_dr/cli.py:main"}
    assert role_of({**via_unlock, "principal": "backup-local-admin"}, site) == "break-glass"


def test_an_explicit_deny_wins_over_an_allow(site: Site) -> None:
    backup = load_statements(IAM_DIR / ROLE_FILES["backup"], site.values)
    obj = "arn:aws:s3:::backups-eu-west-1/platform/x/y"
    assert allowed(backup, Need("s3:DeleteObjectVersion", obj))
    assert not allowed(backup, Need("s3:BypassGovernanceRetention", obj))
    assert not allowed(backup, Need("s3:PutObject", "arn:aws:s3:::someone-elses-bucket/x"))


def test_the_recorded_sample_is_allowed_and_unused_actions_are_listed(site: Site) -> None:
    verdict = check(read_calls([SAMPLE]), site)
    assert verdict.denied == [], verdict.report()
    assert (verdict.checked, verdict.harness) == (10, 1)
    assert ("s3:AbortMultipartUpload", "arn:aws:s3:::backups-eu-west-1/*") in verdict.unused[
        "backup"
    ]
    assert "break-glass" not in verdict.unused or all(
        action != "s3:BypassGovernanceRetention" or "eu-central-1" in resource
        for action, resource in verdict.unused["break-glass"]
    )


def test_a_call_the_role_does_not_allow_is_reported(site: Site, tmp_path: Path) -> None:
    written = _call("PutObject", entry="read-only", key="evidence/compliance/*")
    bypass = _call("DeleteObjects", version=True, bypass=True)
    recorded = tmp_path / "calls.jsonl"
    recorded.write_text("".join(json.dumps(c) + "\n" for c in (written, bypass)))
    verdict = check(read_calls([recorded]), site)
    assert {(f.role, f.need.action) for f in verdict.denied} == {
        ("read-only", "s3:PutObject"),
        ("read-only", "kms:GenerateDataKey"),
        ("backup", "s3:BypassGovernanceRetention"),
    }
    assert "DENIED (3)" in verdict.report()


def test_a_refusal_the_code_survives_by_design_is_listed_not_failed(
    site: Site, tmp_path: Path
) -> None:
    """`check` (read-only) may find the catalogue cache stale; its rewrite is refused, logged,
    and the next listing reads the manifests again."""
    cache = _call("PutObject", entry="read-only", key="catalogue-cache/platform/*")
    recorded = tmp_path / "calls.jsonl"
    recorded.write_text(json.dumps({**cache, "best_effort": "_write_catalogue_cache"}) + "\n")
    verdict = check(read_calls([recorded]), site)
    assert verdict.denied == []
    assert {f.need.action for f in verdict.tolerated} == {"s3:PutObject", "kms:GenerateDataKey"}
    assert "survived by design" in verdict.report()


def _code_operations() -> set[str]:
    """Every S3 and KMS operation include/ calls, by client method or paginator name;
    the managed `client.copy` stands for the calls boto3's transfer makes."""
    source = "\n".join(p.read_text() for p in (REPO / "include").rglob("*.py"))
    methods = set(re.findall(r"\bclient\.([a-z_0-9]+)\(", source))
    methods |= set(re.findall(r"get_paginator\(\"([a-z_0-9]+)\"\)", source))
    methods -= {"get_paginator"}
    s3 = boto3.client("s3", region_name="eu-west-1").meta.method_to_api_mapping
    operations = {s3[m] for m in methods - {"copy"}}
    if "copy" in methods:
        operations |= {"HeadObject", "CopyObject", "CreateMultipartUpload", "UploadPartCopy"}
        operations |= {"CompleteMultipartUpload", "AbortMultipartUpload"}
    return operations


def test_every_s3_call_in_the_code_is_allowed_for_the_backup_role(site: Site) -> None:
    """The integration run records what it exercises; this covers the rest: any operation the
    code names, on a backup bucket, versioned or not, locked or not."""
    operations = _code_operations()
    assert {"ListMultipartUploads", "PutObjectRetention", "DeleteObjects"} <= operations
    assert operations <= set(S3_ACTIONS), operations - set(S3_ACTIONS)
    backup = load_statements(IAM_DIR / ROLE_FILES["backup"], site.values)
    refused = {
        (op, need.action)
        for op in operations
        for variant in ({}, {"version": True}, {"lock": True})
        for need in needs(_call(op, **variant), site)
        if not allowed(backup, need)
    }
    assert not refused, sorted(refused)


def test_the_readme_points_to_deploy_iam_instead_of_listing_actions() -> None:
    readme = (REPO / "README.md").read_text()
    assert "deploy/iam/" in readme
    assert not re.search(r'"s3:[A-Za-z]+"', readme), "IAM actions belong in deploy/iam/ only"
