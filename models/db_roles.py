"""Whether a database role could lift or get around Plant's append-only guards.

The guards are triggers (``models.constitution.APPEND_ONLY_TRIGGERS``) on the tables of
Plant's schema. Their owner disables them with ``ALTER TABLE ... DISABLE TRIGGER``, and many
other holdings lead there or around them: a superuser role, membership of an owner, owning the
database (since PostgreSQL 15 it owns ``public`` and may drop any table in it), CREATE in a
schema of the search path (a schema named like the role comes first and shadows Plant's
tables), the TRIGGER privilege (a BEFORE trigger returning NULL drops findings), privileges on
server parameters or on functions that write files or reload the configuration, and so on.
A list of what is dangerous is never complete, so the check is the other way round: the
runtime role may hold only what ``models.migrate.grant_runtime_role`` gives it. It is refused
(and an audit run's summary signs ``can_lift_guards: true``) when it

- is a superuser, or has any other attribute than LOGIN (CREATEROLE, CREATEDB, REPLICATION,
  BYPASSRLS);
- owns anything, in any database;
- is a member of any role (a predefined ``pg_*`` role included);
- holds a privilege on anything but Plant's schema, its tables and sequences, and the current
  database (CONNECT, TEMPORARY), or PUBLIC holds default privileges (``ALTER DEFAULT
  PRIVILEGES``) that a later table would give it;
- may CREATE in the database or in any schema, or create triggers on Plant's tables, through
  PUBLIC;
- may execute a function that reads or writes the server's files or reloads its configuration,
  through PUBLIC.
"""

from __future__ import annotations

from typing import Any

from models.constitution import PLANT_SCHEMA_CTE

# The schema holding Plant's tables (models.constitution.PLANT_SCHEMA_CTE): the first schema of
# the session's search path with an entity_versions table, never pg_temp.
PLANT_SCHEMA_SQL = f"WITH {PLANT_SCHEMA_CTE} SELECT nspname FROM s"

# Superuser-only by default; PUBLIC or the role holding EXECUTE on one reaches the server's files.
SERVER_FUNCTIONS = (
    "lo_import(text)", "lo_import(text,oid)", "lo_export(oid,text)",
    "pg_read_file(text)", "pg_read_file(text,bigint,bigint)", "pg_read_file(text,bigint,bigint,boolean)",
    "pg_read_binary_file(text)", "pg_read_binary_file(text,bigint,bigint)",
    "pg_read_binary_file(text,bigint,bigint,boolean)", "pg_ls_dir(text)", "pg_ls_dir(text,boolean,boolean)",
    "pg_stat_file(text)", "pg_stat_file(text,boolean)", "pg_reload_conf()", "pg_rotate_logfile()",
)

# The role named %(role)s (r), Plant's schema %(schema)s (s), and what the role holds outside
# what grant_runtime_role gives it (elsewhere): every object it owns ('o'), and every privilege
# ('a') but those on Plant's schema, its tables and sequences, and the current database.
# Both statements below read it: the check, and the refusal's list of what to take away.
_HOLDINGS_CTE = """
WITH r AS (SELECT oid, rolsuper, rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls AS attributes
           FROM pg_roles WHERE rolname = %(role)s),
     s AS (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s),
     here AS (SELECT oid FROM pg_database WHERE datname = current_database()),
     elsewhere AS (
       SELECT d.* FROM pg_shdepend d, r
       WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype IN ('o', 'a')
         AND NOT (d.deptype = 'a' AND d.classid = 'pg_database'::regclass AND d.objid = (SELECT oid FROM here))
         AND NOT (d.deptype = 'a' AND d.dbid = (SELECT oid FROM here) AND d.classid = 'pg_namespace'::regclass
                  AND d.objid = (SELECT oid FROM s))
         AND NOT (d.deptype = 'a' AND d.dbid = (SELECT oid FROM here) AND d.classid = 'pg_class'::regclass
                  AND EXISTS (SELECT FROM pg_class c WHERE c.oid = d.objid AND c.relnamespace = (SELECT oid FROM s)
                              AND c.relkind IN ('r', 'p', 'S'))))
"""

# One row for the role (none if it does not exist): one boolean per LIFTER_REASONS entry, in
# its order.
GUARD_LIFTER_SQL = _HOLDINGS_CTE + """
SELECT
  r.rolsuper,
  EXISTS (SELECT FROM elsewhere WHERE deptype = 'o'),
  EXISTS (SELECT FROM pg_auth_members m WHERE m.member = r.oid),
  r.attributes,
  EXISTS (SELECT FROM elsewhere WHERE deptype = 'a')
    -- Any ALTER DEFAULT PRIVILEGES on functions or types writes PUBLIC's built-in EXECUTE/USAGE
    -- out: only PUBLIC's defaults on tables, sequences and schemas are more than PostgreSQL's own.
    OR EXISTS (SELECT FROM pg_default_acl a, aclexplode(a.defaclacl) x
               WHERE x.grantee = r.oid OR (x.grantee = 0 AND a.defaclobjtype IN ('r', 'S', 'n'))),
  has_database_privilege(r.oid, current_database(), 'CREATE')
    OR EXISTS (SELECT FROM pg_namespace n WHERE left(n.nspname, 3) <> 'pg_' AND n.nspname <> 'information_schema'
               AND has_schema_privilege(r.oid, n.oid, 'CREATE')),
  EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM s) AND c.relkind IN ('r', 'p')
          AND has_table_privilege(r.oid, c.oid, 'TRIGGER')),
  EXISTS (SELECT FROM unnest(%(server_functions)s::text[]) AS f(signature)
          WHERE has_function_privilege(r.oid, to_regprocedure(f.signature), 'EXECUTE'))
FROM r
"""

LIFTER_REASONS = (
    "is a superuser",
    "owns something (a database, a schema, a table, a function, ...)",
    "is a member of another role",
    "has CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS",
    "holds privileges beyond Plant's schema, tables and sequences, or PUBLIC holds default privileges",
    "may CREATE in the database or in a schema, where it could shadow Plant's tables or functions",
    "may create triggers on Plant's tables",
    "may execute a function that reads or writes the server's files or reloads its configuration",
)
NO_SCHEMA = "finds no Plant schema (no entity_versions table) in its search path"


def lifter_params(role: str, schema: str | None) -> dict[str, Any]:
    return {"role": role, "schema": schema, "server_functions": list(SERVER_FUNCTIONS)}


def lifts_guards_because(row: Any, schema: str | None) -> str | None:
    """Why the role of a :data:`GUARD_LIFTER_SQL` row could lift or get around the guards,
    or None. Without Plant's schema nothing can be judged: that fails closed."""
    if schema is None:
        return NO_SCHEMA
    return next((why for why, found in zip(LIFTER_REASONS, row, strict=True) if found), None)


# What the role holds elsewhere, named for the refusal's message (up to five): memberships,
# owned objects, privileges.
HOLDINGS_SQL = _HOLDINGS_CTE + """
SELECT held FROM (
  SELECT 'member of ' || m.roleid::regrole::text AS held FROM pg_auth_members m, r WHERE m.member = r.oid
  UNION ALL
  SELECT CASE deptype WHEN 'o' THEN 'owns ' ELSE 'privileges on ' END
         || coalesce(CASE WHEN dbid IN (0, (SELECT oid FROM here)) THEN pg_describe_object(classid, objid, objsubid) END,
                     'an object in another database')
    FROM elsewhere
) holdings ORDER BY held LIMIT 5
"""
