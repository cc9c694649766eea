"""Which database roles can lift Plant's append-only guards.

The guards are triggers (``models.constitution.APPEND_ONLY_TRIGGERS``). Whoever owns a
table can disable them (``ALTER TABLE ... DISABLE TRIGGER``), and so can a superuser and any
member of the owner; before PostgreSQL 16 a role with CREATEROLE could make itself a member
of any role but a superuser. ``plant db upgrade`` refuses to grant such a role as the
runtime role (``models.migrate.grant_runtime_role``), and every audit run's summary says
whether the role it ran as is one (``database_role``).
"""

from __future__ import annotations

from typing import Any

CREATEROLE_CONFINED_SINCE = 160000

# One row for the role named %(role)s (none if it does not exist): superuser, CREATEROLE
# that can still join any role, member of the owner of some table of the schema.
GUARD_LIFTER_SQL = (
    "SELECT r.rolsuper,"
    f" r.rolcreaterole AND current_setting('server_version_num')::int < {CREATEROLE_CONFINED_SINCE},"
    " EXISTS (SELECT FROM pg_tables t WHERE t.schemaname = 'public' AND pg_has_role(r.oid, t.tableowner, 'MEMBER'))"
    " FROM pg_roles r WHERE r.rolname = %(role)s"
)


def lifts_guards_because(row: Any) -> str | None:
    """Why the role of a :data:`GUARD_LIFTER_SQL` row can lift the guards, or None."""
    superuser, unconfined_createrole, owns = row
    if superuser:
        return "is a superuser"
    if owns:
        return "owns, or is a member of a role that owns, the schema's tables"
    if unconfined_createrole:
        return "has CREATEROLE, which before PostgreSQL 16 can make it a member of the owner"
    return None
