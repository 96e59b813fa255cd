"""A tiny persistent stand-in for AWS KMS, used by the local S3 servers for SSE-KMS.

Why: weed's built-in ``local`` KMS provider invents fresh key material at every start,
so SSE-KMS objects become unreadable after a restart. weed's ``aws`` provider pointed at
this server keeps the master keys in a JSON file instead. Keys are regional, as in AWS:
the region comes from the SigV4 credential scope, so a key of one region is unknown in
another. Served: the calls weed makes (GenerateDataKey, Decrypt, DescribeKey) and
CreateKey, so tests can make extra keys (e.g. for re-encryption) as they would in AWS.
Aliases are real, as in AWS (CreateAlias, UpdateAlias, DeleteAlias, ListAliases): a key
reference ``alias/<name>`` (or an alias ARN) names whatever key the alias points at, and
responses report the key's ARN, never the alias. Aliases persist beside the key file.

Run: ``python -m local.kms_server --port P --keys FILE --key REGION/KEY_ID ...``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ACCOUNT_ID = "000000000000"
_REGION_RE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/kms/aws4_request")


class KmsError(Exception):
    """An error that AWS KMS would return, named like its exception type."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def key_arn(region: str, key_id: str) -> str:
    """The ARN AWS would report for a key, so clients see realistic key ids."""
    return f"arn:aws:kms:{region}:{ACCOUNT_ID}:key/{key_id}"


def alias_arn(region: str, alias_name: str) -> str:
    return f"arn:aws:kms:{region}:{ACCOUNT_ID}:{alias_name}"


class Kms:
    """Envelope encryption of data keys under regional master keys (AES-256-GCM).

    Master keys live in a JSON file ``{region: {key_id: base64 material}}``; aliases in a
    sibling file ``{region: {"alias/<name>": key_id}}``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.alias_path = path.with_name(f"{path.stem}.aliases.json")
        self.lock = threading.Lock()
        stored = json.loads(path.read_text()) if path.exists() else {}
        self.keys: dict[str, dict[str, bytes]] = {
            region: {kid: base64.b64decode(material) for kid, material in keys.items()}
            for region, keys in stored.items()
        }
        self.aliases: dict[str, dict[str, str]] = (
            json.loads(self.alias_path.read_text()) if self.alias_path.exists() else {}
        )

    def add_key(self, region: str, key_id: str) -> None:
        """Create a master key unless it exists, and persist the key file atomically."""
        with self.lock:
            if key_id in self.keys.setdefault(region, {}):
                return
            self.keys[region][key_id] = os.urandom(32)
            stored = {
                reg: {kid: base64.b64encode(material).decode() for kid, material in keys.items()}
                for reg, keys in self.keys.items()
            }
            _write_atomically(self.path, stored)

    def resolve(self, region: str, key_ref: str) -> str:
        """Accept a key id, a key ARN, ``alias/<name>`` or an alias ARN (of this region), as
        AWS does; an alias names the key it points at."""
        arn_region = key_ref.split(":")[3] if key_ref.count(":") >= 5 else region
        name = key_ref.split(":", 5)[-1] if key_ref.startswith("arn:") else key_ref
        if name.startswith("alias/"):
            key_id = self.aliases.get(region, {}).get(name, "")
        else:
            key_id = name.removeprefix("key/")
        if arn_region != region or key_id not in self.keys.get(region, {}):
            raise KmsError("NotFoundException", f"Key '{key_ref}' does not exist in {region}")
        return key_id

    def generate_data_key(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        key_id = self.resolve(region, body.get("KeyId", ""))
        size = {"AES_256": 32, "AES_128": 16}.get(
            body.get("KeySpec", ""), body.get("NumberOfBytes")
        )
        if not isinstance(size, int) or not 1 <= size <= 1024:
            raise KmsError("ValidationException", "KeySpec or NumberOfBytes is required")
        plaintext = os.urandom(size)
        nonce = os.urandom(12)
        sealed = AESGCM(self.keys[region][key_id]).encrypt(
            nonce, plaintext, _aad(body.get("EncryptionContext"))
        )
        blob = json.dumps(
            {"region": region, "key": key_id, "nonce": nonce.hex(), "data": sealed.hex()}
        )
        return {
            "KeyId": key_arn(region, key_id),
            "Plaintext": base64.b64encode(plaintext).decode(),
            "CiphertextBlob": base64.b64encode(blob.encode()).decode(),
        }

    def decrypt(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            blob = json.loads(base64.b64decode(body.get("CiphertextBlob", "")))
            nonce, sealed = bytes.fromhex(blob["nonce"]), bytes.fromhex(blob["data"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KmsError("InvalidCiphertextException", "Ciphertext is not from this KMS") from exc
        if blob.get("region") != region:
            raise KmsError("InvalidCiphertextException", "Ciphertext belongs to another region")
        key_id = self.resolve(region, blob.get("key", ""))
        if "KeyId" in body and self.resolve(region, body["KeyId"]) != key_id:
            raise KmsError("IncorrectKeyException", "Ciphertext was encrypted under another key")
        try:
            plaintext = AESGCM(self.keys[region][key_id]).decrypt(
                nonce, sealed, _aad(body.get("EncryptionContext"))
            )
        except Exception as exc:  # cryptography raises InvalidTag
            raise KmsError("InvalidCiphertextException", "Decryption failed") from exc
        return {"KeyId": key_arn(region, key_id), "Plaintext": base64.b64encode(plaintext).decode()}

    def create_key(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        key_id = str(uuid.uuid4())
        self.add_key(region, key_id)
        return self.describe_key(region, {"KeyId": key_id})

    def describe_key(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        key_id = self.resolve(region, body.get("KeyId", ""))
        return {
            "KeyMetadata": {
                "AWSAccountId": ACCOUNT_ID,
                "KeyId": key_id,
                "Arn": key_arn(region, key_id),
                "Enabled": True,
                "KeyState": "Enabled",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "KeySpec": "SYMMETRIC_DEFAULT",
                "Origin": "AWS_KMS",
                "KeyManager": "CUSTOMER",
                "Description": f"local stand-in key {key_id}",
                "CreationDate": time.time(),
            }
        }

    def create_alias(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        name = _alias_name(body)
        key_id = self.resolve(region, body.get("TargetKeyId", ""))
        with self.lock:
            if name in self.aliases.get(region, {}):
                raise KmsError("AlreadyExistsException", f"An alias with the name {name} exists")
            self.aliases.setdefault(region, {})[name] = key_id
            _write_atomically(self.alias_path, self.aliases)
        return {}

    def update_alias(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        name = _alias_name(body)
        key_id = self.resolve(region, body.get("TargetKeyId", ""))
        with self.lock:
            if name not in self.aliases.get(region, {}):
                raise KmsError("NotFoundException", f"Alias {name} does not exist in {region}")
            self.aliases[region][name] = key_id
            _write_atomically(self.alias_path, self.aliases)
        return {}

    def delete_alias(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        name = _alias_name(body)
        with self.lock:
            if self.aliases.get(region, {}).pop(name, None) is None:
                raise KmsError("NotFoundException", f"Alias {name} does not exist in {region}")
            _write_atomically(self.alias_path, self.aliases)
        return {}

    def list_aliases(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        wanted = body.get("KeyId")
        key_id = self.resolve(region, wanted) if wanted else None
        entries = [
            {"AliasName": name, "AliasArn": alias_arn(region, name), "TargetKeyId": target}
            for name, target in sorted(self.aliases.get(region, {}).items())
            if key_id is None or target == key_id
        ]
        return {"Aliases": entries, "Truncated": False}


def _alias_name(body: dict[str, Any]) -> str:
    """AWS's rules for a customer alias name: ``alias/`` then a name not reserved for AWS."""
    name = body.get("AliasName", "")
    if not re.fullmatch(r"alias/[a-zA-Z0-9/_-]{1,250}", name) or name.startswith("alias/aws/"):
        raise KmsError("ValidationException", f"Invalid alias name {name!r}")
    return name


def _write_atomically(path: Path, document: Any) -> None:
    """Replace a state file in one step, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(document, indent=2))
    tmp.replace(path)


def _aad(context: dict[str, str] | None) -> bytes | None:
    """Bind the encryption context to the ciphertext, as AWS KMS does."""
    return json.dumps(context, sort_keys=True).encode() if context else None


def make_handler(kms: Kms) -> type[BaseHTTPRequestHandler]:
    operations = {
        "GenerateDataKey": kms.generate_data_key,
        "Decrypt": kms.decrypt,
        "DescribeKey": kms.describe_key,
        "CreateKey": kms.create_key,
        "CreateAlias": kms.create_alias,
        "UpdateAlias": kms.update_alias,
        "DeleteAlias": kms.delete_alias,
        "ListAliases": kms.list_aliases,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            target = self.headers.get("X-Amz-Target", "").removeprefix("TrentService.")
            match = _REGION_RE.search(self.headers.get("Authorization", ""))
            try:
                if match is None:
                    raise KmsError("MissingAuthenticationTokenException", "Request is not signed")
                if target not in operations:
                    raise KmsError("UnsupportedOperationException", f"{target} is not supported")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._reply(HTTPStatus.OK, operations[target](match.group(1), body))
            except KmsError as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"__type": exc.kind, "message": str(exc)})

        def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys", type=Path, required=True, help="JSON file holding key material")
    parser.add_argument("--key", action="append", default=[], help="REGION/KEY_ID to ensure")
    args = parser.parse_args()
    kms = Kms(args.keys)
    for spec in args.key:
        region, _, key_id = spec.partition("/")
        kms.add_key(region, key_id)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(kms))
    print(f"local KMS on 127.0.0.1:{args.port}, keys: {args.key}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
