"""Engines turn a source into a backup artifact; the DAG shape is the same for all of them."""

from include.backup_dr.engines.base import Engine
from include.backup_dr.engines.media import MediaEngine
from include.backup_dr.engines.pg_dump import PgDumpEngine
from include.backup_dr.engines.wal import WalEngine

ENGINES: dict[str, Engine] = {"pg_dump": PgDumpEngine(), "media": MediaEngine(), "wal": WalEngine()}


def engine_for(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise KeyError(f"no engine named {name!r}; engines are {', '.join(ENGINES)}") from None
