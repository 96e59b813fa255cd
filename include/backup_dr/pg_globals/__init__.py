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

statements.py reads pg_dumpall's SQL (split, classify, redact, quote); plan.py plans what a
destination gets; document.py is the object kept beside a backup; capture.py takes the globals
at backup time and keeps, copies and checks them with the backup; apply.py puts them back
around a restore.
"""

from include.backup_dr.pg_globals.apply import GlobalsFailed, apply_roles, restore_with_globals
from include.backup_dr.pg_globals.capture import (
    capture,
    check_beside,
    copy_beside,
    entry_of,
    keep_beside,
    read_entry,
)
from include.backup_dr.pg_globals.document import (
    OBJECT_NAME,
    PASSWORDS_KEPT,
    PASSWORDS_UNREADABLE,
    Globals,
)
from include.backup_dr.pg_globals.plan import (
    DatabaseFacts,
    Destination,
    Grant,
    database_statements,
    plan_roles,
)
from include.backup_dr.pg_globals.statements import (
    Kind,
    parse_globals,
    redacted,
    setting_clause,
    split_guc_list,
    split_statements,
    without_password,
)

__all__ = [
    "OBJECT_NAME",
    "PASSWORDS_KEPT",
    "PASSWORDS_UNREADABLE",
    "DatabaseFacts",
    "Destination",
    "Globals",
    "GlobalsFailed",
    "Grant",
    "Kind",
    "apply_roles",
    "capture",
    "check_beside",
    "copy_beside",
    "database_statements",
    "entry_of",
    "keep_beside",
    "parse_globals",
    "plan_roles",
    "read_entry",
    "redacted",
    "restore_with_globals",
    "setting_clause",
    "split_guc_list",
    "split_statements",
    "without_password",
]
