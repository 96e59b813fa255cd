"""The S3 and KMS clients a store talks through, tuned for this process, and what their errors say.

Clients come from the Amazon provider's hooks, so credentials and endpoints live in Airflow
connections. Every session of the process shares botocore's parsed service models and a faster
timestamp parser; every botocore error becomes a StoreError that says what was being done where.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserFactory
from botocore.utils import parse_timestamp

from include.backup_dr.policy import Region

#: HTTP connections per client: enough for the media engine's pool of copy workers.
MAX_CONNECTIONS = 32
#: A KMS key ARN needs no lookup; key ids, aliases and alias ARNs are resolved with DescribeKey.
KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/.+")


class StoreError(RuntimeError):
    """A store operation failed; the message says which region, bucket and key."""


def _timestamp(value: Any) -> datetime:
    """botocore's timestamp parser for an ISO 8601 time with a zone (every LastModified of a
    listing), without dateutil: `datetime.fromisoformat` is about 100 times faster, and dateutil
    took a third of a listing's time. Anything else goes to botocore's own parser."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    return parse_timestamp(value)


class _SessionParts:
    """What every botocore session of this process can share: the loader of service models
    (a new session's loader scans botocore's data folder and parses the model again, 0.1-0.4 s
    per client here, before a task lists a single key) and a response parser factory using
    `_timestamp`. Credentials, region and endpoint stay per session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loader: Any = None
        self._parsers = ResponseParserFactory()
        self._parsers.set_parser_defaults(timestamp_parser=_timestamp)

    def install(self, botocore_session: Any) -> None:
        with self._lock:
            if self._loader is None:  # the first session's, with the search paths boto3 added
                self._loader = botocore_session.get_component("data_loader")
            botocore_session.register_component("data_loader", self._loader)
        botocore_session.register_component("response_parser_factory", self._parsers)


_SESSION_PARTS = _SessionParts()


def _tuned(hook: Any) -> Any:
    """`hook`, whose sessions take this process's shared parts (see `_SessionParts`)."""
    open_session = hook.get_session

    def get_session(*args: Any, **kwargs: Any) -> Any:
        session = open_session(*args, **kwargs)
        _SESSION_PARTS.install(session._session)  # boto3 keeps its botocore session there
        return session

    hook.get_session = get_session
    return hook


def s3_client(region: Region, region_name: str | None) -> tuple[Any, str | None]:
    """A client from the region's connection, keeping its botocore settings, with a larger
    pool; and the connection's endpoint URL."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = _tuned(S3Hook(aws_conn_id=region.conn_id, region_name=region_name))
    config = (hook.config or Config()).merge(Config(max_pool_connections=MAX_CONNECTIONS))
    client = hook.get_client_type(region_name=region_name, config=config)
    return client, hook.conn_config.endpoint_url


def describe_key(region: Region, kms_region: str, reference: str) -> str:
    """The ARN of the enabled KMS key `reference` names in `kms_region`, found with DescribeKey
    through the region's connection (so `service_config.kms.endpoint_url` applies)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    action = (
        f"resolving KMS key {reference} in {kms_region} for {region.name} "
        f"(connection {region.conn_id}) with DescribeKey"
    )
    with translated(action):
        hook = _tuned(AwsBaseHook(aws_conn_id=region.conn_id, client_type="kms"))
        kms = hook.get_client_type(region_name=kms_region)
        metadata = kms.describe_key(KeyId=reference)["KeyMetadata"]
    if metadata.get("KeyState", "Enabled") != "Enabled":
        raise StoreError(f"{action}: the key {metadata['Arn']} is {metadata['KeyState']}")
    return str(metadata["Arn"])


@contextmanager
def translated(action: str, *, missing_ok: bool = False) -> Iterator[None]:
    """Turn botocore errors into a StoreError saying what was being done where.

    With `missing_ok`, a 404 is swallowed and the caller carries on after the block.
    """
    try:
        yield
    except ClientError as exc:
        if missing_ok and http_status(exc) == 404:
            return
        raise StoreError(f"{action} failed: {_describe(exc)}") from exc
    except BotoCoreError as exc:
        raise StoreError(f"{action} failed: {exc}") from exc


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _describe(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', str(exc))}"
