"""Check recorded S3 and KMS calls against the IAM policies in deploy/iam/.

The local S3 servers enforce no IAM, so this is the check: every call the code made (recorded
by tests/iam_recorder.py, one JSON object a line) is mapped to the IAM actions and resources
AWS would authorize it against, attributed to the role that makes it, and evaluated against
that role's policy document (placeholders filled with the local stack's buckets and keys).

Attribution. A call signed with the break-glass connection's identity is the break-glass role
(IAM judges the principal, and only `unlock` holds that connection). Otherwise the code path
decides: a call made under `check`, `audit` or `policy report` of the CLI, or under the UI's
app, or by a test calling the audit itself, is the read-only role (the API server and an
operator's shell hold read-only credentials for the same connection ids); everything else the project's code does is the backup role.
A call with no frame of the project's code on its stack (the stack's own tooling, a test's
direct boto3 setup), or one where a test called the store itself (include/backup_dr/store/
is the outermost project frame: planting debris, emptying buckets, tests of the store as a
library), is harness and not judged.

A bucket the shipped policy does not name is one a test made for itself (a policy variant's
bucket): its calls are judged as if on the primary backup bucket (the action is checked, the
resource cannot be), and the report lists those buckets.

A denial is tolerated, not failed, only where the code is built to survive it: the read-only
role cannot write the catalogue cache (`_write_catalogue_cache` logs a warning and the next
listing reads the manifests again). Granting it would let a read-only principal rewrite what
prune believes a manifest says. The report lists these.

Not modelled: policy Conditions (MFA, secure transport) and bucket or key policies.

    python -m tests.iam_policy FILE.jsonl...     # exit 1 on a call the role does not allow
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IAM_DIR = REPO / "deploy" / "iam"
#: Role name -> its policy document.
ROLE_FILES = {
    "backup": "backup-role.json",
    "break-glass": "break-glass-role.json",
    "read-only": "read-only-role.json",
}
#: A call whose outermost project frame is here was made by a test driving the store directly.
HARNESS_ENTRY = "include/backup_dr/store/"
#: A call whose outermost project frame is the audit package was made by a test calling the
#: audit itself: judged as its CLI and UI callers run it; but its evidence write is the DAG's.
READ_ONLY_ENTRY = "include/backup_dr/audit/"
AUDIT_EVIDENCE_WRITER = "include/backup_dr/audit/reader.py:write_evidence"
#: (role, function) pairs whose refused calls the code catches on purpose (see the docstring).
TOLERATED = {("read-only", "_write_catalogue_cache")}
#: The local stand-in account: every local key ARN is made in it.
LOCAL_ACCOUNT = "000000000000"

#: S3 operation -> the IAM actions it needs on the object (o) or the bucket (b). Parameters that
#: add or change an action are handled in `needs`.
S3_ACTIONS: dict[str, tuple[str, ...]] = {
    "PutObject": ("o:s3:PutObject",),
    "CreateMultipartUpload": ("o:s3:PutObject",),
    "UploadPart": ("o:s3:PutObject",),
    "CompleteMultipartUpload": ("o:s3:PutObject",),
    "AbortMultipartUpload": ("o:s3:AbortMultipartUpload",),
    "ListParts": ("o:s3:ListMultipartUploadParts",),
    "CopyObject": ("o:s3:PutObject",),
    "UploadPartCopy": ("o:s3:PutObject",),
    "GetObject": ("o:s3:GetObject",),
    "HeadObject": ("o:s3:GetObject",),
    "GetObjectRetention": ("o:s3:GetObjectRetention",),
    "PutObjectRetention": ("o:s3:PutObjectRetention",),
    "GetObjectLegalHold": ("o:s3:GetObjectLegalHold",),
    "PutObjectLegalHold": ("o:s3:PutObjectLegalHold",),
    "GetObjectAttributes": ("o:s3:GetObject", "o:s3:GetObjectAttributes"),
    "DeleteObject": ("o:s3:DeleteObject",),
    "DeleteObjects": ("o:s3:DeleteObject",),
    "ListObjects": ("b:s3:ListBucket",),
    "ListObjectsV2": ("b:s3:ListBucket",),
    "HeadBucket": ("b:s3:ListBucket",),
    "ListObjectVersions": ("b:s3:ListBucketVersions",),
    "ListMultipartUploads": ("b:s3:ListBucketMultipartUploads",),
    "GetBucketLocation": ("b:s3:GetBucketLocation",),
    "GetBucketVersioning": ("b:s3:GetBucketVersioning",),
    "GetObjectLockConfiguration": ("b:s3:GetBucketObjectLockConfiguration",),
    "GetBucketEncryption": ("b:s3:GetEncryptionConfiguration",),
}
#: Versioned variants: the same operation on a named version needs the *Version action.
VERSIONED = {
    "s3:GetObject": "s3:GetObjectVersion",
    "s3:DeleteObject": "s3:DeleteObjectVersion",
    "s3:GetObjectAttributes": "s3:GetObjectVersionAttributes",
}
#: Writes to an SSE-KMS bucket need a data key; a multipart one also decrypts it per part.
KMS_ON_WRITE = {
    "PutObject": ("kms:GenerateDataKey",),
    "CopyObject": ("kms:GenerateDataKey",),
    "CreateMultipartUpload": ("kms:GenerateDataKey", "kms:Decrypt"),
    "UploadPart": ("kms:GenerateDataKey", "kms:Decrypt"),
    "UploadPartCopy": ("kms:GenerateDataKey", "kms:Decrypt"),
    "CompleteMultipartUpload": ("kms:GenerateDataKey", "kms:Decrypt"),
}


class PolicyCheckError(RuntimeError):
    """A recorded call cannot be judged (an operation with no mapping, a policy we cannot read)."""


@dataclass(frozen=True)
class Need:
    """One authorization a call needs: what AWS evaluates against the caller's policies."""

    action: str
    resource: str


@dataclass(frozen=True)
class Finding:
    role: str
    need: Need
    call: Mapping[str, Any]

    def __str__(self) -> str:
        where = self.call.get("code") or "?"
        return (
            f"{self.role}: {self.need.action} on {self.need.resource} "
            f"({self.call.get('service')} {self.call.get('op')} from {where})"
        )


@dataclass(frozen=True)
class Site:
    """What the policy placeholders stand for here, and which buckets are SSE-KMS (whose key)."""

    values: Mapping[str, str]
    #: bucket -> the ARN of the KMS key its objects are written with.
    bucket_keys: Mapping[str, str]
    #: AWS region name -> the ARN of that region's backup key.
    region_keys: Mapping[str, str]
    #: access keys of the break-glass connections.
    break_glass_principals: frozenset[str]

    @property
    def buckets(self) -> frozenset[str]:
        return frozenset(v for k, v in self.values.items() if k.endswith("_BUCKET"))

    def stand_in(self, call: Mapping[str, Any]) -> tuple[Mapping[str, Any], set[str]]:
        """`call` with a test-made bucket replaced by the primary backup bucket, and which."""
        primary = self.values["PRIMARY_BUCKET"]
        outside: set[str] = set()
        changed = dict(call)
        if call.get("bucket") and call["bucket"] not in self.buckets:
            outside.add(call["bucket"])
            changed["bucket"] = primary
        source_bucket, _, source_key = (call.get("copy_source") or "").partition("/")
        if source_bucket and source_bucket not in self.buckets:
            outside.add(source_bucket)
            changed["copy_source"] = f"{primary}/{source_key}"
        return changed, outside


def local_site() -> Site:
    """The local stack's values: buckets and keys from the shipped policy and Airflow settings."""
    from include.backup_dr.policy import load_policy
    from local.config import S3_ADMIN_KEY

    policy = load_policy()
    primary, secondary = policy.regions.primary, policy.regions.secondary
    sources = sorted(t.source.bucket for t in policy.targets if t.source is not None)
    sandbox = policy.restore_verification.sandbox_bucket
    values = {
        "ACCOUNT_ID": LOCAL_ACCOUNT,
        "PRIMARY_REGION": primary.name,
        "SECONDARY_REGION": secondary.name,
        "PRIMARY_BUCKET": primary.bucket,
        "SECONDARY_BUCKET": secondary.bucket,
        "PRIMARY_KMS_KEY_ID": primary.kms_key_id,
        "SECONDARY_KMS_KEY_ID": secondary.kms_key_id,
        "MEDIA_SOURCE_BUCKET": sources[0] if sources else "no-media-source",
        "RESTORE_SANDBOX_BUCKET": sandbox.bucket if sandbox else "no-restore-sandbox",
    }
    region_keys = {
        r.name: f"arn:aws:kms:{r.name}:{LOCAL_ACCOUNT}:key/{r.kms_key_id}"
        for r in (primary, secondary)
    }
    return Site(
        values=values,
        bucket_keys={r.bucket: region_keys[r.name] for r in (primary, secondary)},
        region_keys=region_keys,
        break_glass_principals=frozenset({S3_ADMIN_KEY}),
    )


def role_of(call: Mapping[str, Any], site: Site) -> str | None:
    """The role a recorded call runs as; None for harness calls (no project code made it)."""
    if not call.get("code") or str(call.get("outer", "")).startswith(HARNESS_ENTRY):
        return None
    if call.get("principal") in site.break_glass_principals:
        return "break-glass"
    outer = str(call.get("outer", ""))
    if call.get("entry") == "read-only" or (
        outer.startswith(READ_ONLY_ENTRY) and not outer.startswith(AUDIT_EVIDENCE_WRITER)
    ):
        return "read-only"
    return "backup"


def needs(call: Mapping[str, Any], site: Site) -> list[Need]:
    """Every IAM authorization the call needs (its own action, and KMS behind SSE-KMS)."""
    service, op = call.get("service"), call.get("op", "")
    if service == "kms":
        key = site.region_keys.get(call.get("region") or "", f"arn:aws:kms:?:?:key/{op}")
        return [Need(f"kms:{op}", key)]
    if service != "s3":
        raise PolicyCheckError(f"no IAM mapping for service {service!r} ({op})")
    if op not in S3_ACTIONS:
        raise PolicyCheckError(f"no IAM mapping for s3 {op}: add it to S3_ACTIONS")
    bucket, key = call.get("bucket") or "", call.get("key") or ""
    found: list[Need] = []
    for spec in S3_ACTIONS[op]:
        scope, action = spec.split(":", 1)
        if call.get("version") and action in VERSIONED:
            action = VERSIONED[action]
        resource = f"arn:aws:s3:::{bucket}" + (f"/{key}" if scope == "o" else "")
        found.append(Need(action, resource))
    if op == "DeleteObjects":  # one call, many objects: versioned and current alike
        found = []
        object_arn = f"arn:aws:s3:::{bucket}/{key}"
        if call.get("version"):
            found.append(Need("s3:DeleteObjectVersion", object_arn))
        if call.get("unversioned") or not call.get("version"):
            found.append(Need("s3:DeleteObject", object_arn))
    object_arn = f"arn:aws:s3:::{bucket}/{key}"
    if call.get("lock") and op in ("PutObject", "CreateMultipartUpload", "CopyObject"):
        found.append(Need("s3:PutObjectRetention", object_arn))
    if call.get("bypass"):
        found.append(Need("s3:BypassGovernanceRetention", object_arn))
    source = call.get("copy_source")
    if source:
        source_bucket = source.split("/", 1)[0]
        found.append(Need("s3:GetObject", f"arn:aws:s3:::{source}"))
        if source_bucket in site.bucket_keys:
            found.append(Need("kms:Decrypt", site.bucket_keys[source_bucket]))
    if bucket in site.bucket_keys:
        kms_key = site.bucket_keys[bucket]
        if op == "HeadObject":
            # HEAD returns an object's lock headers only to a caller with s3:GetObjectRetention,
            # and the code reads backups' locks from HEAD (`locked_until`): without it a lock
            # would silently read as none.
            found.append(Need("s3:GetObjectRetention", object_arn))
        found += [Need(action, kms_key) for action in KMS_ON_WRITE.get(op, ())]
        if op == "GetObject":  # reading an SSE-KMS object decrypts its data key (HEAD does not)
            found.append(Need("kms:Decrypt", kms_key))
    return found


# --- policy documents --------------------------------------------------------------------------


def _pattern(glob: str) -> re.Pattern[str]:
    """An IAM wildcard (`*` any run, `?` one character) as a regular expression."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    )


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def grants(self, need: Need) -> set[tuple[str, str]]:
        """The (action, resource) entries of this statement that match `need`."""
        actions = [a for a in self.actions if _pattern(a.lower()).fullmatch(need.action.lower())]
        resources = [r for r in self.resources if _pattern(r).fullmatch(need.resource)]
        return {(a, r) for a in actions for r in resources}


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill `${NAME}` placeholders (as envsubst would); an unknown one is an error."""

    def fill(match: re.Match[str]) -> str:
        if match[1] not in values:
            raise PolicyCheckError(f"no value for the placeholder ${{{match[1]}}}")
        return values[match[1]]

    return re.sub(r"\$\{([A-Z0-9_]+)\}", fill, text)


def load_statements(path: Path, values: Mapping[str, str]) -> list[Statement]:
    document = json.loads(render(path.read_text(), values))
    statements = []
    for raw in document["Statement"]:
        if "NotAction" in raw or "NotResource" in raw:
            raise PolicyCheckError(f"{path.name}: NotAction/NotResource are not supported here")
        statements.append(
            Statement(raw["Effect"], tuple(_listed(raw["Action"])), tuple(_listed(raw["Resource"])))
        )
    return statements


def allowed(statements: Iterable[Statement], need: Need) -> bool:
    """IAM's rule: an explicit Deny wins, else an Allow must match (default deny)."""
    statements = list(statements)
    if any(s.effect == "Deny" and s.grants(need) for s in statements):
        return False
    return any(s.effect == "Allow" and s.grants(need) for s in statements)


# --- the check ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    denied: list[Finding]
    #: refused calls the code survives by design (TOLERATED): reported, not failed.
    tolerated: list[Finding]
    #: role -> (action, resource) pairs of Allow statements that no recorded call needed.
    unused: dict[str, list[tuple[str, str]]]
    checked: int
    harness: int
    #: buckets outside the shipped policy (a test's own), judged as the primary backup bucket.
    test_buckets: set[str]

    def report(self) -> str:
        lines = [f"IAM check: {self.checked} distinct calls checked, {self.harness} harness calls"]
        if self.test_buckets:
            buckets = ", ".join(sorted(self.test_buckets))
            lines.append(f"judged as the primary backup bucket (made by tests): {buckets}")
        if self.denied:
            lines.append(f"DENIED ({len(self.denied)}): calls the role's policy does not allow")
            lines += [f"  {finding}" for finding in self.denied]
        if self.tolerated:
            lines.append(f"refused and survived by design ({len(self.tolerated)}):")
            lines += [f"  {finding}" for finding in self.tolerated]
        for role, pairs in sorted(self.unused.items()):
            lines.append(f"allowed for {role} but used by no recorded call ({len(pairs)}):")
            lines += [f"  {action} on {resource}" for action, resource in pairs]
        return "\n".join(lines)


def read_calls(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with path.open() as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def check(calls: Iterable[Mapping[str, Any]], site: Site, iam_dir: Path = IAM_DIR) -> Verdict:
    policies = {
        role: load_statements(iam_dir / name, site.values) for role, name in ROLE_FILES.items()
    }
    used: dict[str, set[tuple[int, str, str]]] = {role: set() for role in policies}
    denied: dict[tuple[str, str, str], Finding] = {}
    tolerated: dict[tuple[str, str, str], Finding] = {}
    checked = harness = 0
    test_buckets: set[str] = set()
    seen: set[str] = set()
    for call in calls:
        identity = json.dumps(call, sort_keys=True)
        if identity in seen:
            continue
        seen.add(identity)
        role = role_of(call, site)
        if role is None:
            harness += 1
            continue
        checked += 1
        statements = policies[role]
        judged, outside = site.stand_in(call)
        test_buckets |= outside
        for need in needs(judged, site):
            if not allowed(statements, need):
                bucket_level = need.resource.split("/", 1)[0]
                survived = (role, call.get("best_effort")) in TOLERATED
                (tolerated if survived else denied).setdefault(
                    (role, need.action, bucket_level), Finding(role, need, call)
                )
                continue
            for index, statement in enumerate(statements):
                if statement.effect == "Allow":
                    used[role] |= {(index, *entry) for entry in statement.grants(need)}
    unused: dict[str, list[tuple[str, str]]] = {}
    for role, statements in policies.items():
        pairs = [
            (action, resource)
            for index, statement in enumerate(statements)
            if statement.effect == "Allow"
            for action in statement.actions
            for resource in statement.resources
            if (index, action, resource) not in used[role]
        ]
        if pairs:
            unused[role] = pairs
    return Verdict(
        list(denied.values()), list(tolerated.values()), unused, checked, harness, test_buckets
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="recorded calls (JSONL)")
    args = parser.parse_args(argv)
    verdict = check(read_calls(args.files), local_site())
    print(verdict.report())
    return 1 if verdict.denied else 0


if __name__ == "__main__":
    sys.exit(main())
