"""Which connection is a server's primary, and which its standby, now.

After `dr_failover` the old standby is the primary. Everything that connects to "the server's
primary" (the pg_dump engine, the continuous tier's base backup, the continuous monitor) asks
`current_roles`, which reads `state/servers/<server>.json` from the store (newest of both
regions) and falls back to the policy when no failover has happened. The store, not Airflow's
connections, holds the switch: connections may come from a secrets backend that a DAG cannot
rewrite, and the store is the project's single record of truth, readable from either region.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from include.backup_dr.policy import Policy, Standby
from include.backup_dr.store import ObjectStore, StoreError

log = logging.getLogger(__name__)

SCHEMA = "backup-dr/server-roles/v1"


def state_key(server: str) -> str:
    return f"state/servers/{server}.json"


@dataclass(frozen=True)
class ServerRoles:
    """A server's roles: from the policy until a failover records new ones in the store."""

    server: str
    primary_conn_id: str
    standby_conn_id: str | None
    slot: str | None
    timeline: int | None = None
    since: str | None = None
    failover_id: str | None = None

    @classmethod
    def from_policy(cls, policy: Policy, server: str) -> ServerRoles:
        entry = policy.server(server)
        standby = entry.standby
        return cls(
            server,
            entry.conn_id,
            standby.conn_id if standby else None,
            standby.slot if standby else None,
        )

    def to_document(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ServerRoles:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in document.items() if k in fields})


def current_roles(policy: Policy, stores: Iterable[ObjectStore], server: str) -> ServerRoles:
    """The server's roles now: the newest state record of any region, else the policy's.

    Raises StoreError when no region can be read: guessing the policy's primary then could
    connect to a fenced old primary."""
    found, problems, regions = [], [], 0
    for store in stores:
        regions += 1
        try:
            document = store.get_json(state_key(server))
        except StoreError as exc:
            problems.append(f"{store.region.name}: {exc}")
            continue
        if isinstance(document, dict):
            found.append(document)
    if regions and len(problems) == regions:
        raise StoreError(f"cannot read the roles of {server} in any region: {problems}")
    if not found:
        return ServerRoles.from_policy(policy, server)
    return ServerRoles.from_document(max(found, key=lambda d: d.get("since") or ""))


def record_roles(stores: Iterable[ObjectStore], roles: ServerRoles) -> list[str]:
    """Write the roles to every region (one down must not stop the other)."""
    from include.backup_dr.evidence import write_everywhere

    return write_everywhere(stores, state_key(roles.server), roles.to_document())


def follow(
    policy: Policy, stores: Iterable[ObjectStore], only: Iterable[str] | None = None
) -> Policy:
    """The policy with each server's connections (or those of the servers named in `only`) as
    `current_roles` says, standby None while none has been rebuilt. What the backup steps and
    the drill use, so they follow a failover."""
    stores = list(stores)
    wanted = None if only is None else set(only)
    servers = []
    for server in policy.servers:
        if wanted is not None and server.name not in wanted:
            servers.append(server)
            continue
        roles = current_roles(policy, stores, server.name)
        standby = (
            Standby(conn_id=roles.standby_conn_id, slot=roles.slot or "backup_dr_standby")
            if roles.standby_conn_id
            else None
        )
        servers.append(
            server.model_copy(update={"conn_id": roles.primary_conn_id, "standby": standby})
        )
    return policy.model_copy(update={"servers": servers})
