"""A server's globals kept beside every pg_dump backup, and put back around every restore.

pg_dump leaves out what lives outside one database: the roles, their attributes, memberships
and settings (`pg_dumpall --globals-only`), and, without --create, the database's own owner,
ACL (GRANT CONNECT ...) and `ALTER DATABASE / ALTER ROLE ... IN DATABASE ... SET` settings.
Restored without them, with `--no-owner --no-privileges`, a database passes validation as the
admin and then answers "permission denied" to the application on every table.

So each backup keeps them in a second small object beside its archive, `data.globals.json`,
named in the manifest (`source.globals`) with its own SHA-256, encrypted, copied, checked,
locked and pruned with the backup. Its name starts with `data.` like the archive's, so a copy
left without a manifest is debris the next prune removes, never an orphan.

A restore applies them in three steps (`restore_with_globals`): the roles (created when
missing, in one transaction), then pg_restore keeping owners and privileges, then the
database's owner, ACL and settings.

Role passwords: pg_dumpall keeps what pg_authid holds, the SCRAM (or MD5) verifiers, never
plaintext; inside an object encrypted at rest they let a DR restore bring the applications back
without re-keying. They are never logged (errors show `PASSWORD '***'`). A sandbox (the drill)
gets the roles without any password: no production credential works outside production. When
the backup user cannot read pg_authid (managed services), the roles are kept without passwords
(`--no-role-passwords`), and the manifest and the log say so. At the destination, the
connecting admin role and the bootstrap superuser are never changed, and a role that already
exists keeps its password and attributes: only the memberships and settings it lacks are added.
Tablespaces and security labels are left out: both name things of the source host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow.sdk.exceptions import AirflowFailException

from include.backup_dr.check import Check
from include.backup_dr.integrity import encryption_check
from include.backup_dr.postgres import PgConnectionInfo, SnapshotError, pg_tool

if TYPE_CHECKING:
    from include.backup_dr.catalogue import BackupId, Manifest
    from include.backup_dr.store import ObjectStore

log = logging.getLogger(__name__)

SCHEMA = "backup-dr/pg-globals/v1"
#: Beside the archive. "data." makes a copy without a manifest debris (catalogue.DATA_STEM).
OBJECT_NAME = "data.globals.json"
PASSWORDS_KEPT = "kept: the server's SCRAM-SHA-256 (or MD5) verifiers, never plaintext"
PASSWORDS_UNREADABLE = (
    "not kept: the backup user cannot read pg_authid (pg_dumpall --no-role-passwords); "
    "restored roles that are new at the destination need new passwords"
)
#: Settings whose value is a list of quoted elements (PostgreSQL's GUC_LIST_QUOTE; pg_dump's
#: variable_is_guc_list_quote), rendered one literal per element.
_LIST_QUOTED = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)
_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*")
_DATABASE_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})


class GlobalsFailed(AirflowFailException):
    """The globals could not be applied at the destination; none of that step was applied."""


# --- pure: the SQL pg_dumpall writes ------------------------------------------------------


class Kind(StrEnum):
    SESSION = "session"  # SET / RESET: pg_dumpall's session settings, not kept
    CREATE = "create"  # CREATE ROLE r
    ATTRIBUTES = "attributes"  # ALTER ROLE r WITH ... [PASSWORD '...']
    COMMENT = "comment"  # COMMENT ON ROLE r IS '...'
    SETTING = "setting"  # ALTER ROLE r SET name TO ...
    MEMBERSHIP = "membership"  # GRANT g TO r [WITH ...] [GRANTED BY x]
    PARAMETER = "parameter"  # GRANT/REVOKE ... ON PARAMETER p TO/FROM r


@dataclass(frozen=True)
class Statement:
    """One statement of the globals, with the role it changes (the member, the grantee)."""

    kind: Kind
    sql: str
    role: str | None = None
    #: MEMBERSHIP: the role granted; SETTING: the setting's name (lower case).
    subject: str | None = None


class _Token(NamedTuple):
    kind: str  # "ident" (quoted), "literal", "word", "other"
    text: str
    start: int
    end: int

    @property
    def name(self) -> str:
        """An identifier's value: unquoted, or a bare word as PostgreSQL folds it."""
        if self.kind == "ident":
            return self.text[1:-1].replace('""', '"')
        return self.text.lower()

    def keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


_TOKEN = re.compile(
    r"""\s*(?:(?P<ident>"(?:[^"]|"")*")|(?P<literal>'(?:[^']|'')*')"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_$]*)|(?P<other>\S))"""
)
_LEXEME = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|;|[^'";-]+|[\s\S]""")


def _tokens(sql: str) -> list[_Token]:
    found = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "other"
        found.append(_Token(kind, match.group(kind), match.start(kind), match.end(kind)))
    return found


def split_statements(sql: str) -> list[str]:
    """The statements of a SQL script, without comments; a `;` inside quotes does not end one
    (a role's comment may hold `;`, `--` and new lines)."""
    statements, current = [], []
    for lexeme in _LEXEME.findall(sql):
        if lexeme.startswith("--"):
            continue
        if lexeme == ";":
            if statement := "".join(current).strip():
                statements.append(statement)
            current = []
        else:
            current.append(lexeme)
    if "".join(current).strip():
        raise ValueError(f"the globals end inside a statement: {redacted(''.join(current))[:200]}")
    return statements


def _password_literal(tokens: list[_Token]) -> tuple[int, int] | None:
    """Indexes of the PASSWORD keyword and its value ('...' or NULL), if the statement has one."""
    for index, token in enumerate(tokens[:-1]):
        value = tokens[index + 1]
        if token.keyword("PASSWORD") and (value.kind == "literal" or value.keyword("NULL")):
            return index, index + 1
    return None


def redacted(sql: str) -> str:
    """The statement as it may be logged: a password's value becomes '***'."""
    tokens = _tokens(sql)
    found = _password_literal(tokens)
    if found is None:
        return sql
    value = tokens[found[1]]
    return sql[: value.start] + "'***'" + sql[value.end :]


def without_password(sql: str) -> str:
    """The statement without its PASSWORD clause (a role restored into a sandbox)."""
    tokens = _tokens(sql)
    found = _password_literal(tokens)
    if found is None:
        return sql
    keyword, value = tokens[found[0]], tokens[found[1]]
    return sql[: keyword.start].rstrip() + sql[value.end :]


def without_grantor(sql: str) -> str:
    """A membership without GRANTED BY: the grantor may not exist at the destination (another
    bootstrap superuser), and the admin applying the globals grants it instead."""
    tokens = _tokens(sql)
    for index, token in enumerate(tokens[:-2]):
        if token.keyword("GRANTED") and tokens[index + 1].keyword("BY"):
            return sql[: token.start].rstrip() + sql[tokens[index + 2].end :]
    return sql


def _is_name(token: _Token) -> bool:
    return token.kind in ("ident", "word")


def _setting_name(tokens: list[_Token]) -> str:
    """A setting's name as written (`work_mem`, `"backup_dr.x"`, `backup_dr.x`), lower case."""
    parts, index = [], 0
    while index < len(tokens) and _is_name(tokens[index]):
        parts.append(tokens[index].name)
        if index + 1 < len(tokens) and tokens[index + 1].text == ".":
            index += 2
        else:
            break
    return ".".join(parts).lower()


def parse_statement(sql: str) -> Statement:
    """Classify one statement of `pg_dumpall --globals-only`; anything else is refused, so an
    unknown statement fails the backup that captured it rather than the restore that needs it."""
    tokens = _tokens(sql)
    words = [token.text.upper() if token.kind == "word" else "" for token in tokens]
    if words[:1] in (["SET"], ["RESET"]):
        return Statement(Kind.SESSION, sql)
    if len(tokens) == 3 and words[:2] == ["CREATE", "ROLE"] and _is_name(tokens[2]):
        return Statement(Kind.CREATE, sql, tokens[2].name)
    if len(tokens) >= 4 and words[:2] == ["ALTER", "ROLE"] and _is_name(tokens[2]):
        role = tokens[2].name
        if words[3] == "WITH":
            return Statement(Kind.ATTRIBUTES, sql, role)
        if words[3] == "SET" and len(tokens) >= 5:
            return Statement(Kind.SETTING, sql, role, _setting_name(tokens[4:]))
    if words[:3] == ["COMMENT", "ON", "ROLE"] and len(tokens) >= 4 and _is_name(tokens[3]):
        return Statement(Kind.COMMENT, sql, tokens[3].name)
    if words[:1] in (["GRANT"], ["REVOKE"]) and "PARAMETER" in words:
        direction = "TO" if words[0] == "GRANT" else "FROM"
        at = words.index(direction, words.index("PARAMETER")) if direction in words else -1
        if 0 < at < len(tokens) - 1 and _is_name(tokens[at + 1]):
            grantee = tokens[at + 1]
            role = None if grantee.keyword("PUBLIC") else grantee.name
            return Statement(Kind.PARAMETER, sql, role)
    if (
        len(tokens) >= 4
        and words[0] == "GRANT"
        and _is_name(tokens[1])
        and words[2] == "TO"
        and _is_name(tokens[3])
    ):
        return Statement(Kind.MEMBERSHIP, sql, tokens[3].name, tokens[1].name)
    raise ValueError(f"not a statement the globals hold: {redacted(sql)[:200]}")


def parse_globals(sql: str) -> list[Statement]:
    return [parse_statement(statement) for statement in split_statements(sql)]


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


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A standard-conforming string literal (the session applying it sets that on)."""
    return "'" + value.replace("'", "''") + "'"


def split_guc_list(value: str) -> list[str]:
    """The elements of a list setting as PostgreSQL stores it (`"$user", public`): elements
    apart by commas, double-quoted ones unquoted (as pg_dump's SplitGUCList)."""
    elements: list[str] = []
    rest = value.strip()
    if not rest:
        return elements
    while True:
        if rest.startswith('"'):
            match = re.match(r'"((?:[^"]|"")*)"', rest)
            if match is None:
                raise ValueError(f"unterminated quoted element in setting value {value!r}")
            elements.append(match.group(1).replace('""', '"'))
        else:
            match = re.match(r"[^,\s]*", rest)
            assert match is not None
            elements.append(match.group())
        rest = rest[match.end() :].lstrip()
        if not rest:
            return elements
        if not rest.startswith(","):
            raise ValueError(f"setting value {value!r} is not a list")
        rest = rest[1:].lstrip()


def setting_clause(config: str) -> str:
    """`name TO value` from one pg_db_role_setting entry `name=value`, quoted as pg_dump does:
    a list setting (search_path) gets one literal per element, any other one literal."""
    name, equals, value = config.partition("=")
    if not equals or _GUC_NAME.fullmatch(name) is None:
        raise ValueError(f"not a setting: {config[:100]!r}")
    values = split_guc_list(value) if name.lower() in _LIST_QUOTED else [value]
    rendered = ", ".join(quote_literal(v) for v in values) or "''"
    return f"{'.'.join(quote_ident(part) for part in name.split('.'))} TO {rendered}"


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


@dataclass(frozen=True)
class Globals:
    """A server's globals and one database's own facts, as kept beside its backup."""

    database: str  # the source database's name
    roles_sql: str  # pg_dumpall --globals-only --no-tablespaces --no-security-labels
    passwords: str  # PASSWORDS_KEPT, or why they were not kept
    facts: DatabaseFacts
    captured_at: str = ""

    def to_bytes(self) -> bytes:
        facts = self.facts
        document = {
            "schema": SCHEMA,
            "database": self.database,
            "captured_at": self.captured_at,
            "role_passwords": self.passwords,
            "roles_sql": self.roles_sql,
            "owner": facts.owner,
            "acl": None
            if facts.acl is None
            else [[g.grantee, g.privilege, g.grantable] for g in facts.acl],
            "settings": list(facts.settings),
            "role_settings": [list(pair) for pair in facts.role_settings],
        }
        return (json.dumps(document, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> Globals:
        """Parse and check everything a restore will run (ValueError naming what is wrong)."""
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} document")
        try:
            acl = document["acl"]
            facts = DatabaseFacts(
                str(document["owner"]),
                None if acl is None else tuple(Grant(g, str(p), bool(o)) for g, p, o in acl),
                tuple(str(c) for c in document["settings"]),
                tuple((str(r), str(c)) for r, c in document["role_settings"]),
            )
            kept = cls(
                str(document["database"]),
                str(document["roles_sql"]),
                str(document["role_passwords"]),
                facts,
                str(document.get("captured_at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a field is missing or malformed: {exc!r}") from None
        for grant in facts.acl or ():
            if grant.privilege not in _DATABASE_PRIVILEGES:
                raise ValueError(f"unknown database privilege {grant.privilege!r}")
        parse_globals(kept.roles_sql)
        database_statements(facts, kept.database, ())
        return kept


# --- I/O: capture at backup time -----------------------------------------------------------

_FACTS_SQL = """
SELECT pg_get_userbyid(d.datdba),
       d.datacl IS NULL,
       coalesce((SELECT json_agg(json_build_array(
                            CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                            a.privilege_type, a.is_grantable)
                        ORDER BY a.grantee, a.privilege_type)
                 FROM aclexplode(d.datacl) a), '[]'::json),
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                 WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}'),
       coalesce((SELECT json_agg(json_build_array(pg_get_userbyid(s.setrole), c)
                                 ORDER BY pg_get_userbyid(s.setrole), c)
                 FROM pg_db_role_setting s, unnest(s.setconfig) c
                 WHERE s.setdatabase = d.oid AND s.setrole <> 0), '[]'::json)
FROM pg_database d WHERE d.datname = current_database()
"""


def _pg_dumpall(info: PgConnectionInfo, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [pg_tool("pg_dumpall"), "--globals-only", "--no-tablespaces", "--no-security-labels"]
    return subprocess.run(
        [
            *argv,
            *extra,
            "-h",
            info.host,
            "-p",
            str(info.port),
            "-U",
            info.user,
            "-l",
            info.database,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **info.env},
        check=False,
    )


def capture(info: PgConnectionInfo) -> Globals:
    """The server's globals (the same libpq settings as the dump) and the database's facts."""
    done = _pg_dumpall(info)
    passwords = PASSWORDS_KEPT
    if done.returncode != 0 and "pg_authid" in done.stderr:
        log.warning(
            "pg_dumpall cannot read pg_authid as %s on %s (a managed service?): the roles are "
            "kept WITHOUT their passwords; new roles restored from this backup need new ones",
            info.user,
            info,
        )
        done = _pg_dumpall(info, "--no-role-passwords")
        passwords = PASSWORDS_UNREADABLE
    if done.returncode != 0:
        raise SnapshotError(
            f"pg_dumpall --globals-only of {info} exited with {done.returncode}: "
            f"{done.stderr[-2000:].strip()}"
        )
    try:
        statements = parse_globals(done.stdout)
    except ValueError as exc:
        raise SnapshotError(f"the globals of {info} cannot be restored: {exc}") from None
    connection = info.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(_FACTS_SQL)
            owner, default_acl, acl, settings, role_settings = cursor.fetchone()
    finally:
        connection.close()
    facts = DatabaseFacts(
        owner,
        None if default_acl else tuple(Grant(g, p, o) for g, p, o in acl),
        tuple(settings),
        tuple((role, config) for role, config in role_settings),
    )
    log.info(
        "Captured %d role(s) of %s:%s and the owner, ACL and settings of %s; passwords %s",
        sum(1 for s in statements if s.kind is Kind.CREATE),
        info.host,
        info.port,
        info.database,
        passwords,
    )
    return Globals(info.database, done.stdout, passwords, facts, datetime.now(UTC).isoformat())


def keep_beside(store: ObjectStore, backup: BackupId, info: PgConnectionInfo) -> dict[str, Any]:
    """Capture the globals and store them beside the backup's archive; returns the manifest's
    `source.globals` entry (key, size, SHA-256, how passwords were kept)."""
    kept = capture(info)
    body = kept.to_bytes()
    key = backup.key(OBJECT_NAME)
    store.put_bytes(key, body, "application/json")
    log.info("Kept the globals beside the backup: %s (%d bytes)", store.where(key), len(body))
    return {
        "key": key,
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "role_passwords": kept.passwords,
    }


# --- I/O: with the backup (copy, integrity) ------------------------------------------------


class Entry(NamedTuple):
    """Where a backup's globals object is, and what the manifest says it holds."""

    key: str
    size: int
    sha256: str


def entry_of(manifest: Manifest) -> Entry | None:
    entry = manifest.source.get("globals")
    if entry is None:
        return None
    return Entry(entry["key"], int(entry["size"]), entry["sha256"])


def copy_beside(manifest: Manifest, source: ObjectStore, target: ObjectStore) -> str:
    """Copy the globals object with its backup (before the manifest, like the archive)."""
    entry = entry_of(manifest)
    if entry is None:
        return "nothing besides the archive"
    mode = target.copy_from(source, entry.key, entry.size)
    return f"the roles and grants ({OBJECT_NAME}) too: {mode}"


def read_entry(store: ObjectStore, entry: Entry) -> tuple[dict[str, Any] | None, bytes]:
    """The object's head and, when its size is the manifest's, its bytes (it is small)."""
    head = store.head(entry.key)
    if head is None or int(head["ContentLength"]) != entry.size:
        return head, b""
    return head, b"".join(store.iter_chunks(entry.key))


def check_beside(store: ObjectStore, manifest: Manifest) -> list[Check]:
    """Integrity of the globals object in one region: present, size, SHA-256, readable by the
    restore, and encrypted with the region's key. A backup without it cannot be restored whole."""
    entry = entry_of(manifest)
    if entry is None:
        return [Check("globals", True, "none kept: the backup predates roles and grants kept")]
    head, body = read_entry(store, entry)
    if head is None:
        where = store.where(entry.key)
        return [Check("globals", False, f"{where} does not exist: roles and grants are lost")]
    size = int(head["ContentLength"])
    digest = hashlib.sha256(body).hexdigest() if body or size == 0 else ""
    detail = (
        f"{size} bytes, sha256 {digest[:16]}...; manifest says {entry.size} bytes, "
        f"sha256 {entry.sha256[:16]}..."
    )
    ok = size == entry.size and digest == entry.sha256
    if ok:
        try:
            Globals.from_bytes(body)
            detail += "; the restore can read it"
        except ValueError as exc:
            ok, detail = False, f"{detail}; the restore cannot read it: {exc}"
    encrypted = encryption_check(store, head)
    return [
        Check("globals", ok, detail),
        Check("globals encrypted", encrypted.ok, encrypted.detail),
    ]


# --- I/O: at the destination ----------------------------------------------------------------

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
