"""The document kept beside a backup (`data.globals.json`): a server's globals and one
database's own facts, written and read back whole, and refused at read time when a restore
could not run it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from include.backup_dr.pg_globals.plan import DatabaseFacts, Grant, database_statements
from include.backup_dr.pg_globals.statements import parse_globals

SCHEMA = "backup-dr/pg-globals/v1"
#: Beside the archive. "data." makes a copy without a manifest debris (catalogue.DATA_STEM).
OBJECT_NAME = "data.globals.json"
PASSWORDS_KEPT = "kept: the server's SCRAM-SHA-256 (or MD5) verifiers, never plaintext"
PASSWORDS_UNREADABLE = (
    "not kept: the backup user cannot read pg_authid (pg_dumpall --no-role-passwords); "
    "restored roles that are new at the destination need new passwords"
)
_DATABASE_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})


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
