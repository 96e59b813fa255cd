"""The SQL pg_dumpall writes, read without a server: split into statements (a `;` inside
quotes ends none), classified by what each changes (refusing any other, so a backup fails
rather than its restore), passwords redacted for logs or left out for a sandbox, and names,
literals and settings quoted as pg_dump quotes them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

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
