"""Which database roles can lift or get around Plant's append-only guards.

The guards are triggers (``models.constitution.APPEND_ONLY_TRIGGERS``) on tables in the
schema that holds ``entity_versions``. A role can lift or get around them when it:

- is a superuser, or a member of one (``SET ROLE``);
- owns, or is a member of a role that owns, the database, that schema, or any table or
  function in it: an owner disables triggers, drops and recreates tables, replaces the guard
  functions (the schema is ``public`` owned by ``pg_database_owner`` since PostgreSQL 15: the
  database's owner may drop any table in it);
- may CREATE in the database or in any schema: a schema of its own named like it comes
  first in the default ``search_path`` (``"$user", public``) and shadows Plant's tables, and
  a function of its own in a searched schema can shadow one Plant calls;
- may create triggers on Plant's tables (the TRIGGER privilege, from any grantor or PUBLIC):
  a BEFORE trigger returning NULL drops findings silently;
- may run programs or write files on the server (``pg_execute_server_program``,
  ``pg_write_server_files``): it can connect as anyone or rewrite the server's configuration;
- has CREATEROLE before PostgreSQL 16, which could make itself a member of any role but a
  superuser.

``plant db upgrade`` refuses to grant such a role as the runtime role
(``models.migrate.grant_runtime_role``), and every audit run's summary says whether the role it
closed under is one (``models.audit_runs.database_role``).
"""

from __future__ import annotations

from typing import Any

CREATEROLE_CONFINED_SINCE = 160000

# The schema Plant's tables live in (the migrations create them in current_schema()).
PLANT_SCHEMA_SQL = ("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.oid = to_regclass('entity_versions')")

# One row for the role named %(role)s (none if it does not exist): one boolean per way
# listed in the module's docstring, in LIFTER_REASONS' order.
GUARD_LIFTER_SQL = f"""
WITH r AS (SELECT oid, rolcreaterole FROM pg_roles WHERE rolname = %(role)s),
     s AS (SELECT c.relnamespace AS nsp FROM pg_class c WHERE c.oid = to_regclass('entity_versions'))
SELECT
  EXISTS (SELECT FROM pg_roles su WHERE su.rolsuper AND pg_has_role(r.oid, su.oid, 'MEMBER')),
  pg_has_role(r.oid, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'MEMBER')
    OR EXISTS (SELECT FROM pg_namespace n JOIN s ON n.oid = s.nsp WHERE pg_has_role(r.oid, n.nspowner, 'MEMBER'))
    OR EXISTS (SELECT FROM pg_class c JOIN s ON c.relnamespace = s.nsp WHERE pg_has_role(r.oid, c.relowner, 'MEMBER'))
    OR EXISTS (SELECT FROM pg_proc p JOIN s ON p.pronamespace = s.nsp WHERE pg_has_role(r.oid, p.proowner, 'MEMBER')),
  has_database_privilege(r.oid, current_database(), 'CREATE')
    OR EXISTS (SELECT FROM pg_namespace n WHERE left(n.nspname, 3) <> 'pg_' AND n.nspname <> 'information_schema'
               AND has_schema_privilege(r.oid, n.oid, 'CREATE')),
  EXISTS (SELECT FROM pg_class c JOIN s ON c.relnamespace = s.nsp
          WHERE c.relkind IN ('r', 'p') AND has_table_privilege(r.oid, c.oid, 'TRIGGER')),
  EXISTS (SELECT FROM pg_roles p WHERE p.rolname IN ('pg_execute_server_program', 'pg_write_server_files')
          AND pg_has_role(r.oid, p.oid, 'MEMBER')),
  r.rolcreaterole AND current_setting('server_version_num')::int < {CREATEROLE_CONFINED_SINCE}
FROM r
"""

LIFTER_REASONS = (
    "is a superuser, or a member of one",
    "owns, or is a member of a role that owns, the database, Plant's schema or something in it",
    "may CREATE in the database or in a schema, where it could shadow Plant's tables or functions",
    "may create triggers on Plant's tables",
    "may run programs or write files on the server (pg_execute_server_program, pg_write_server_files)",
    "has CREATEROLE, which before PostgreSQL 16 can make it a member of the owner",
)


def lifts_guards_because(row: Any) -> str | None:
    """Why the role of a :data:`GUARD_LIFTER_SQL` row can lift or get around the guards, or None."""
    return next((why for why, found in zip(LIFTER_REASONS, row, strict=True) if found), None)
