"""The globals put back around a restore, at the destination server: the roles before
pg_restore, the database's owner, ACL and settings after it, each step in one transaction
(all of it, or none of it), and a failure that never quotes a password."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.pg_globals.document import Globals
from include.backup_dr.pg_globals.plan import (
    Destination,
    RolePlan,
    database_statements,
    plan_roles,
)
from include.backup_dr.pg_globals.statements import redacted
from include.backup_dr.postgres import PgConnectionInfo

log = logging.getLogger(__name__)


class GlobalsFailed(AirflowFailException):
    """The globals could not be applied at the destination; none of that step was applied."""


_DESTINATION_SQL = """
SELECT current_user,
       (SELECT rolname FROM pg_roles WHERE oid = 10),
       (SELECT array_agg(rolname) FROM pg_roles),
       coalesce((SELECT json_agg(json_build_array(pg_get_userbyid(m.roleid),
                                                  pg_get_userbyid(m.member)))
                 FROM pg_auth_members m), '[]'::json),
       coalesce((SELECT json_agg(json_build_array(pg_get_userbyid(s.setrole),
                                                  lower(split_part(c, '=', 1))))
                 FROM pg_db_role_setting s, unnest(s.setconfig) c
                 WHERE s.setdatabase = 0 AND s.setrole <> 0), '[]'::json)
"""


def read_destination(cursor: Any) -> Destination:
    cursor.execute(_DESTINATION_SQL)
    admin, bootstrap, roles, memberships, settings = cursor.fetchone()
    return Destination(
        admin,
        bootstrap,
        frozenset(roles),
        frozenset((granted, member) for granted, member in memberships),
        frozenset((role, name) for role, name in settings),
    )


@contextmanager
def _transaction(server: PgConnectionInfo) -> Iterator[Any]:
    """One transaction on the destination's admin database: all of it, or none of it."""
    connection = server.connect()
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SET LOCAL standard_conforming_strings = on")
            yield cursor
    finally:
        connection.close()


def _execute(cursor: Any, statements: Iterable[str], what: str, server: PgConnectionInfo) -> None:
    import psycopg2

    for sql in statements:
        try:
            cursor.execute(sql)
        except psycopg2.Error as exc:
            # Not the driver's text: a syntax error quotes the statement, password included.
            reason = exc.diag.message_primary or type(exc).__name__
            raise GlobalsFailed(
                f"applying {what} on {server.host}:{server.port} failed at "
                f"`{redacted(sql)[:300]}`: {reason}; none of {what} was applied"
            ) from None


def apply_roles(kept: Globals, server: PgConnectionInfo, *, passwords: bool) -> RolePlan:
    """Create the missing roles, memberships and settings at `server`, in one transaction."""
    with _transaction(server) as cursor:
        plan = plan_roles(kept.roles_sql, read_destination(cursor), passwords=passwords)
        _execute(cursor, plan.statements, f"the roles of {kept.database}'s server", server)
    log.info("Roles at %s:%s: %s", server.host, server.port, plan.summary())
    return plan


def apply_database(kept: Globals, server: PgConnectionInfo, database: str) -> int:
    """Give the restored `database` the source's owner, ACL and settings; one transaction."""
    with _transaction(server) as cursor:
        protected = read_destination(cursor).protected
        statements = database_statements(kept.facts, database, protected)
        _execute(cursor, statements, f"the owner, ACL and settings of {database}", server)
    log.info(
        "%s at %s:%s: owner %s, %s, %d setting(s), %d role setting(s) in it",
        database,
        server.host,
        server.port,
        kept.facts.owner,
        "default privileges" if kept.facts.acl is None else f"{len(kept.facts.acl)} grant(s)",
        len(kept.facts.settings),
        len(kept.facts.role_settings),
    )
    return len(statements)


def restore_with_globals(
    kept: Globals | None,
    server: PgConnectionInfo,
    database: str,
    restore: Callable[[bool], float],
    *,
    passwords: bool,
) -> float:
    """Roles first, then `restore(keep_owners)` (pg_restore into `database`), then the
    database's owner, ACL and settings; returns the restore's seconds. Without kept globals
    (an older backup), the restore runs with --no-owner --no-privileges as before."""
    if kept is None:
        return restore(False)
    apply_roles(kept, server, passwords=passwords)
    seconds = restore(True)
    apply_database(kept, server, database)
    return seconds
