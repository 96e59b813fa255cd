"""airflow_settings.yaml (Astro CLI schema) as environment variables or metadata-DB rows.

The YAML names the local stack's default ports; when a BACKUP_*_PORT variable moves a
service, every default port in it (``conn_port`` and ``127.0.0.1:PORT`` in extras) is
rewritten, so one file serves any port layout.

CLI: ``python -m local.settings env`` prints ``export`` lines for a shell;
``python -m local.settings load`` writes everything into the Airflow DB of $AIRFLOW_HOME.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from local.config import REPO_ROOT, Ports

SETTINGS_FILE = REPO_ROOT / "airflow_settings.yaml"
_HOST_PORT = re.compile(r"\b(127\.0\.0\.1|localhost):(\d+)\b")


@dataclass(frozen=True)
class Conn:
    conn_id: str
    conn_type: str
    host: str | None
    schema: str | None
    login: str | None
    password: str | None
    port: int | None
    extra: dict[str, Any]

    def to_json(self) -> str:
        """Airflow's JSON connection format, as accepted in AIRFLOW_CONN_<ID>."""
        fields = {
            "conn_type": self.conn_type,
            "host": self.host,
            "schema": self.schema,
            "login": self.login,
            "password": self.password,
            "port": self.port,
            "extra": self.extra,
        }
        return json.dumps({k: v for k, v in fields.items() if v not in (None, "", {})})


@dataclass(frozen=True)
class Pool:
    name: str
    slots: int
    description: str


@dataclass(frozen=True)
class AirflowSettings:
    connections: tuple[Conn, ...]
    variables: dict[str, str]
    pools: tuple[Pool, ...]


def _retarget(value: Any, moves: dict[int, int]) -> Any:
    """Replace default ports by the ports in force, in ints, URLs and nested extras."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return moves.get(value, value)
    if isinstance(value, str):
        return _HOST_PORT.sub(lambda m: f"{m[1]}:{moves.get(int(m[2]), int(m[2]))}", value)
    if isinstance(value, dict):
        return {k: _retarget(v, moves) for k, v in value.items()}
    if isinstance(value, list):
        return [_retarget(v, moves) for v in value]
    return value


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def read_settings(path: Path = SETTINGS_FILE, ports: Ports | None = None) -> AirflowSettings:
    """Parse the YAML and apply the BACKUP_*_PORT overrides."""
    doc = (yaml.safe_load(path.read_text()) or {}).get("airflow") or {}
    moves = (ports or Ports.from_env()).retarget()
    connections = []
    for raw in doc.get("connections") or []:
        extra = raw.get("conn_extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra)
        port = raw.get("conn_port")
        connections.append(
            Conn(
                conn_id=raw["conn_id"],
                conn_type=raw["conn_type"],
                host=_text(raw.get("conn_host")),
                schema=_text(raw.get("conn_schema")),
                login=_text(raw.get("conn_login")),
                password=_text(raw.get("conn_password")),
                port=None if port in (None, "") else _retarget(int(port), moves),
                extra=_retarget(extra, moves),
            )
        )
    variables = {
        v["variable_name"]: _retarget(str(v["variable_value"]), moves)
        for v in doc.get("variables") or []
    }
    pools = tuple(
        Pool(p["pool_name"], int(p["pool_slot"]), p.get("pool_description") or "")
        for p in doc.get("pools") or []
    )
    return AirflowSettings(tuple(connections), variables, pools)


def airflow_env_vars(path: Path = SETTINGS_FILE, ports: Ports | None = None) -> dict[str, str]:
    """AIRFLOW_CONN_<ID> (JSON) and AIRFLOW_VAR_<NAME> variables, for tests and dag.test().

    Pools have no environment form; use load_into_airflow() where a pool must exist.
    """
    settings = read_settings(path, ports)
    env = {f"AIRFLOW_CONN_{c.conn_id.upper()}": c.to_json() for c in settings.connections}
    env.update({f"AIRFLOW_VAR_{k.upper()}": v for k, v in settings.variables.items()})
    return env


def load_into_airflow(path: Path = SETTINGS_FILE, ports: Ports | None = None) -> None:
    """Upsert connections, variables and pools into the metadata DB of the current AIRFLOW_HOME.

    Needs a migrated DB (``airflow db migrate``). Imports Airflow lazily: its configuration
    is read at import time, so the caller's environment must already point at the home.
    """
    from airflow.models import Pool as AirflowPool
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    settings = read_settings(path, ports)
    with create_session() as session:
        for c in settings.connections:
            session.execute(delete(Connection).where(Connection.conn_id == c.conn_id))
            session.add(
                Connection(
                    conn_id=c.conn_id,
                    conn_type=c.conn_type,
                    host=c.host,
                    schema=c.schema,
                    login=c.login,
                    password=c.password,
                    port=c.port,
                    extra=json.dumps(c.extra) if c.extra else None,
                )
            )
        for key, value in settings.variables.items():
            Variable.set(key, value, session=session)
        for pool in settings.pools:
            AirflowPool.create_or_update_pool(
                pool.name, pool.slots, pool.description, include_deferred=False, session=session
            )


def main() -> None:
    parser = argparse.ArgumentParser(description="airflow_settings.yaml for the local stack")
    parser.add_argument("action", choices=["env", "load"])
    args = parser.parse_args()
    if args.action == "env":
        for name, value in airflow_env_vars().items():
            print(f"export {name}={shlex.quote(value)}")
    else:
        load_into_airflow()
        settings = read_settings()
        print(
            f"loaded {len(settings.connections)} connections, {len(settings.variables)} variables, "
            f"{len(settings.pools)} pools"
        )


if __name__ == "__main__":
    main()
