"""What a destination gets, planned from plain values: which roles to create and which
memberships and settings to add (never touching the restore's own login, the bootstrap
superuser, or an existing role's password), and the statements that give a restored database
its source's owner, ACL and settings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from include.backup_dr.pg_globals.statements import (
    Kind,
    parse_globals,
    quote_ident,
    setting_clause,
    without_grantor,
    without_password,
)


@dataclass(frozen=True)
class Destination:
    """What the destination server has, read in the transaction that applies the globals."""

    admin: str  # the role the restore connects as
    bootstrap: str  # the bootstrap superuser (oid 10)
    roles: frozenset[str]
    memberships: frozenset[tuple[str, str]]  # (role granted, member)
    settings: frozenset[tuple[str, str]]  # (role, setting name), database-independent

    @property
    def protected(self) -> frozenset[str]:
        """Roles the globals never change: the restore's own login and the bootstrap one."""
        return frozenset({self.admin, self.bootstrap})


@dataclass(frozen=True)
class RolePlan:
    """The statements to run at the destination, and what each role got, for the log."""

    statements: tuple[str, ...]
    created: tuple[str, ...]
    existing: tuple[str, ...]  # kept as they are: password and attributes untouched
    protected: tuple[str, ...]
    memberships: int
    settings: int
    passwords_stripped: int

    def summary(self) -> str:
        return (
            f"{len(self.created)} role(s) created ({_some(self.created)}); "
            f"{len(self.existing)} already there, kept as they are ({_some(self.existing)}); "
            f"never changed: {_some(self.protected)}; "
            f"{self.memberships} membership(s) and {self.settings} setting(s) added; "
            f"{self.passwords_stripped} password(s) left out"
        )


def _some(names: tuple[str, ...], shown: int = 10) -> str:
    """A few names for a log line (a server may have thousands of roles)."""
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(names[:shown]) or "-") + more


def plan_roles(sql: str, destination: Destination, *, passwords: bool) -> RolePlan:
    """Which globals to apply at `destination`: idempotent (planned again after it ran, it
    creates nothing), and never touching the protected roles or an existing role's password.
    `passwords` False (a sandbox) leaves every PASSWORD clause out."""
    statements = parse_globals(sql)
    protected = destination.protected
    created = [
        s.role
        for s in statements
        if s.kind is Kind.CREATE and s.role not in destination.roles | protected
    ]
    new = frozenset(created)
    chosen: list[str] = []
    memberships = settings = stripped = 0
    for statement in statements:
        role, kind = statement.role, statement.kind
        if kind is Kind.CREATE and role in new:
            chosen.append(statement.sql)
        elif kind in (Kind.ATTRIBUTES, Kind.COMMENT) and role in new:
            sql_out = statement.sql if passwords else without_password(statement.sql)
            stripped += sql_out != statement.sql
            chosen.append(sql_out)
        elif kind is Kind.SETTING and role not in protected:
            if role in new or (role, statement.subject) not in destination.settings:
                chosen.append(statement.sql)
                settings += 1
        elif kind is Kind.MEMBERSHIP and not {role, statement.subject} & protected:
            if (statement.subject, role) not in destination.memberships:
                chosen.append(without_grantor(statement.sql))
                memberships += 1
        elif kind is Kind.PARAMETER and role not in protected:
            chosen.append(statement.sql)
    named = [s.role for s in statements if s.kind is Kind.CREATE]
    return RolePlan(
        tuple(chosen),
        tuple(created),
        tuple(r for r in named if r in destination.roles and r not in protected),
        tuple(r for r in named if r in protected),
        memberships,
        settings,
        stripped,
    )


@dataclass(frozen=True)
class Grant:
    """One privilege on the database (an aclexplode row); grantee None is PUBLIC."""

    grantee: str | None
    privilege: str
    grantable: bool


@dataclass(frozen=True)
class DatabaseFacts:
    """What pg_dump --create would say about the database itself."""

    owner: str
    acl: tuple[Grant, ...] | None  # None: the default privileges (datacl IS NULL)
    settings: tuple[str, ...]  # ALTER DATABASE ... SET, as "name=value"
    role_settings: tuple[tuple[str, str], ...]  # ALTER ROLE r IN DATABASE ... SET: (r, config)


def database_statements(facts: DatabaseFacts, database: str, protected: Iterable[str]) -> list[str]:
    """The database's owner, ACL and settings, applied to the restored copy `database`."""
    db = quote_ident(database)
    owner = quote_ident(facts.owner)
    statements = [f"ALTER DATABASE {db} OWNER TO {owner}"]
    if facts.acl is not None:  # exactly the source's: nothing more, nothing less
        statements += [
            f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
            f"REVOKE ALL ON DATABASE {db} FROM {owner}",
        ]
        for grant in facts.acl:
            grantee = "PUBLIC" if grant.grantee is None else quote_ident(grant.grantee)
            option = " WITH GRANT OPTION" if grant.grantable else ""
            statements.append(f"GRANT {grant.privilege} ON DATABASE {db} TO {grantee}{option}")
    statements += [f"ALTER DATABASE {db} SET {setting_clause(c)}" for c in facts.settings]
    never = frozenset(protected)
    statements += [
        f"ALTER ROLE {quote_ident(role)} IN DATABASE {db} SET {setting_clause(config)}"
        for role, config in facts.role_settings
        if role not in never
    ]
    return statements
