"""The local estate's policy: valid, 12+ production databases on two servers, tenants first,
and named like the stack's settings (connections, pool, ports). No services."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from include.backup_dr.policy import DEFAULT_POLICY_PATH, load_policy
from local import estate
from local.config import Ports
from local.settings import read_settings


def _production_databases(policy) -> dict[str, list[str]]:
    """server -> its production database targets (dump engine), as the DR DAGs see them."""
    by_server: dict[str, list[str]] = {}
    for target in policy.targets:
        if target.is_production and target.database is not None:
            assert policy.categories[target.category].engine == "pg_dump"
            by_server.setdefault(target.server, []).append(target.name)
    return by_server


def test_written_policy_loads_with_12_production_databases_on_two_servers(tmp_path: Path) -> None:
    path = estate.write_policy(tmp_path / "estate.yaml")
    assert path == tmp_path / "estate.yaml"
    policy = load_policy(path)
    by_server = _production_databases(policy)
    assert sorted(by_server) == ["platform_primary", estate.SERVER]
    assert sum(len(names) for names in by_server.values()) >= 12
    assert by_server["platform_primary"] == ["platform_core", "platform_billing"]
    assert by_server[estate.SERVER] == list(estate.TENANT_DATABASES)
    server = policy.server(estate.SERVER)
    assert (server.conn_id, server.dump_pool) == (estate.CONN_ID, estate.DUMP_POOL)
    assert server.standby is not None and server.standby.conn_id == estate.STANDBY_CONN_ID
    assert estate.SERVER in {s.name for s in policy.continuous_servers()}


def test_live_client_instances_restore_first(tmp_path: Path) -> None:
    policy = load_policy(estate.write_policy(tmp_path / "estate.yaml"))
    production = sorted(
        (t for t in policy.targets if t.is_production), key=lambda t: (t.priority, t.name)
    )
    tenants = len(estate.TENANT_DATABASES)
    assert [t.name for t in production[:tenants]] == list(estate.TENANT_DATABASES)
    assert [t.name for t in production[tenants:]] == [
        "platform_core",
        "platform_billing",
        "media_documents",
    ]


def test_the_names_match_the_stack_settings() -> None:
    """The policy's connections and pool exist in airflow_settings.yaml, on the estate's ports."""
    ports = Ports.from_env()
    local = read_settings(ports=ports)
    conns = {c.conn_id: c for c in local.connections}
    assert conns[estate.CONN_ID].port == ports.pg_tenants
    assert conns[estate.STANDBY_CONN_ID].port == ports.pg_tenants_standby
    assert estate.DUMP_POOL in {p.name for p in local.pools}
    assert len({ports.pg, ports.pg_sandbox, ports.pg_standby, ports.pg_tenants}) == 4


_NAMES = st.lists(
    st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(
        lambda n: n not in {"platform_core", "platform_billing", "uat_core", "media_documents"}
    ),
    min_size=1,
    max_size=30,
    unique=True,
)


@settings(max_examples=50, deadline=None)
@given(tenants=_NAMES)
def test_tenants_come_first_and_every_shipped_target_keeps_its_order(tenants: list[str]) -> None:
    base = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    before = yaml.safe_dump(base)
    data = estate.estate_policy(base, tuple(tenants))
    assert yaml.safe_dump(base) == before  # pure: the base document is untouched
    added = [t for t in data["targets"] if t.get("server") == estate.SERVER]
    shipped = [t for t in data["targets"] if t.get("server") != estate.SERVER]
    assert [t["name"] for t in added] == tenants
    assert max(t["priority"] for t in added) < min(t["priority"] for t in shipped)
    old = {t["name"]: t.get("priority", 100) for t in base["targets"]}
    assert sorted(shipped, key=lambda t: t["priority"]) == sorted(
        shipped, key=lambda t: old[t["name"]]
    )
