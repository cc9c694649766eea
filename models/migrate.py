"""Schema management through Alembic, the only thing that creates the schema.

``upgrade_head`` is safe on a fresh database and on an up-to-date one (Alembic records
the applied revision, so nothing is created twice). ``check_schema`` fails when the
models and the migrated database disagree (autogenerate would emit operations).

A downgrade that would drop a table holding rows, or a column holding a value, refuses
(:func:`refuse_to_discard`, first in each such migration's ``downgrade``): most of
what Plant stores is signed evidence (chains, digests, audit records, report
signatures) that nothing can recreate. ``discard_data=True`` (``-x discard-data=yes`` for
an Alembic command run with :func:`alembic_config`; the repository has no ``alembic.ini``)
lets it go. The whole downgrade is one transaction
(``migrations/env.py``), so a refusal undoes the steps it already took.

Each lock a migration waits for is bounded by :data:`MIGRATION_LOCK_TIMEOUT_MS`, so a long
transaction of the running release cannot make the API and the workers queue behind an
``ALTER TABLE`` for as long as it lasts; an upgrade or downgrade that times out changed nothing
and is tried again, up to :data:`MIGRATION_ATTEMPTS` times in all
(:class:`MigrationLockTimeout` after the last).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
import functools
import logging
from pathlib import Path

import psycopg
from alembic import command, context, op
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import exc, text
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

from models.constitution import GUARDS_FINGERPRINT, GUARDS_SQL
from models.db_roles import GUARD_LIFTER_SQL, HOLDINGS_SQL, NO_SCHEMA, PLANT_SCHEMA_SQL, lifter_params, lifts_guards_because
from models.settings import libpq_url, sqlalchemy_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
DISCARD_DATA = "discard-data"
# The transaction-level advisory lock every schema change takes (migrations/env.py) and the
# runtime role's grant with it: several `plant db upgrade` at once (replicas, two deploys)
# run one after the other.
MIGRATION_LOCK_ID = 0x504C414E54  # "PLANT"
# How long a migration may wait for one table's lock (``-x lock-timeout-ms=N``): an ALTER TABLE
# waiting behind a transaction of the running release makes every later statement on that table
# wait behind it too, so the API and the workers stand still for as long as it waits.
LOCK_TIMEOUT_OPTION = "lock-timeout-ms"
MIGRATION_LOCK_TIMEOUT_MS = 5_000
# Attempts in all of an upgrade or downgrade whose lock waits timed out, 1 s, 2 s, ... apart.
MIGRATION_ATTEMPTS = 5

log = logging.getLogger(__name__)


class DowngradeRefused(RuntimeError):
    """A downgrade would drop data; nothing was changed."""


class MigrationLockTimeout(RuntimeError):
    """Every attempt of a migration waited too long for a table's lock; nothing was changed."""


def alembic_config(database_url: str, *, discard_data: bool = False, lock_timeout_ms: int | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a literal % in a password.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    x = [f"{DISCARD_DATA}=yes"] if discard_data else []  # what `alembic -x discard-data=yes` would give
    if lock_timeout_ms is not None:
        x.append(f"{LOCK_TIMEOUT_OPTION}={int(lock_timeout_ms)}")
    config.cmd_opts = argparse.Namespace(x=x, quiet=False)
    return config


def upgrade_head(database_url: str, *, lock_timeout_ms: int | None = None, attempts: int | None = None) -> None:
    """Upgrade to head; :class:`MigrationLockTimeout`, with nothing changed, if every one of
    ``attempts`` (:data:`MIGRATION_ATTEMPTS`) waited more than ``lock_timeout_ms``
    (:data:`MIGRATION_LOCK_TIMEOUT_MS`) for a table's lock."""
    config = alembic_config(database_url, lock_timeout_ms=lock_timeout_ms or MIGRATION_LOCK_TIMEOUT_MS)
    _retrying_lock_timeouts(lambda: command.upgrade(config, "head"), attempts=attempts, what="upgrade to head")


def downgrade(database_url: str, revision: str, *, discard_data: bool = False, lock_timeout_ms: int | None = None,
              attempts: int | None = None) -> None:
    """Downgrade to ``revision``; :class:`DowngradeRefused`, with nothing changed, if that
    would drop data and ``discard_data`` is not set (and :class:`MigrationLockTimeout`, as
    :func:`upgrade_head`)."""
    config = alembic_config(database_url, discard_data=discard_data,
                            lock_timeout_ms=lock_timeout_ms or MIGRATION_LOCK_TIMEOUT_MS)
    _retrying_lock_timeouts(lambda: command.downgrade(config, revision), attempts=attempts,
                            what=f"downgrade to {revision}")


def _retrying_lock_timeouts(migrate: Callable[[], None], *, attempts: int | None, what: str) -> None:
    """Run ``migrate`` (one transaction: a timed-out attempt changed nothing) until no lock
    wait of it times out, ``attempts`` times at most, 1 s, 2 s, ... apart."""
    attempts = attempts or MIGRATION_ATTEMPTS

    def say_retrying(state: RetryCallState) -> None:
        log.warning("the %s waited too long for a table's lock (attempt %d of %d): nothing was changed; trying again "
                    "in %g s", what, state.attempt_number, attempts, state.upcoming_sleep)

    retrying = Retrying(retry=retry_if_exception(_lock_timed_out), stop=stop_after_attempt(attempts),
                        wait=wait_incrementing(start=1, increment=1), before_sleep=say_retrying, reraise=True)
    try:
        retrying(migrate)
    except exc.OperationalError as error:
        if not _lock_timed_out(error):
            raise
        raise MigrationLockTimeout(
            f"the {what} waited too long for a table's lock {attempts} times (a long transaction holds a table "
            "a migration alters): nothing was changed; end that transaction, or try again when it is over"
        ) from error


def _lock_timed_out(error: BaseException) -> bool:
    return isinstance(error, exc.OperationalError) and isinstance(error.orig, psycopg.errors.LockNotAvailable)


def downgrade_base(database_url: str, *, discard_data: bool = False) -> None:
    downgrade(database_url, "base", discard_data=discard_data)


def refuse_to_discard(revision: str, *holders: str) -> None:
    """In a migration's ``downgrade``, before it drops anything: refuse if any of
    ``holders`` holds a row, unless the run was told to discard data.

    Each holder is a table, or a table with a ``WHERE`` saying which rows hold what the
    downgrade drops (a column's values other than its default). Rows a migration wrote
    itself are not data to keep and are left out of the holders.
    """
    if context.get_x_argument(as_dictionary=True).get(DISCARD_DATA) == "yes":
        return
    bind = op.get_bind()
    # SHARE mode first: a row written but not committed yet is waited for, and none can be
    # written between the check and the drop (the drop's own lock waits for the transaction).
    for table in dict.fromkeys(holder.split(" WHERE ")[0] for holder in holders):
        bind.execute(text(f"LOCK TABLE {table} IN SHARE MODE"))
    held = [holder for holder in holders if bind.execute(text(f"SELECT EXISTS (SELECT FROM {holder})")).scalar()]
    if held:
        raise DowngradeRefused(
            f"downgrading past migration {revision} would discard what these hold: {'; '.join(held)}. "
            f"Nothing was changed. To discard it anyway, downgrade with discard_data=True (models.migrate.downgrade), "
            f"or pass -x {DISCARD_DATA}=yes to an alembic command configured by models.migrate.alembic_config")


def check_schema(database_url: str) -> None:
    """Raise ``alembic.util.exc.AutogenerateDiffsDetected`` on drift.

    Quiet: Alembic's own "No new upgrade operations detected." went to the stdout it bound at
    import, ahead of what ``plant db check --json`` prints there, which says the same."""
    config = alembic_config(database_url)
    config.cmd_opts.quiet = True
    command.check(config)


def _migrations() -> ScriptDirectory:
    """This code's migrations, read from their files (no database involved)."""
    return ScriptDirectory.from_config(alembic_config("postgresql://unused"))


def heads() -> list[str]:
    return list(_migrations().get_heads())


@functools.cache
def known_revisions() -> tuple[str, frozenset[str]]:
    """This code's head revision and every revision its migrations know (read once a process)."""
    script = _migrations()
    return script.get_current_head(), frozenset(revision.revision for revision in script.walk_revisions())


def schema_behind(revision: str | None) -> str | None:
    """Why a database at ``revision`` (its ``alembic_version``) is behind this code, if it is:
    a revision this code knows that is not its head (the code would query columns and tables
    not there yet). One it does not know is ahead of it (a newer release migrated, while this
    one still runs during a rollout): not behind."""
    head, known = known_revisions()
    if revision is None:
        return f"the database has no schema revision; this code needs {head}: run plant db upgrade"
    if revision == head or revision not in known:
        return None
    return f"the schema is at revision {revision}; this code needs {head}: run plant db upgrade"


# The runtime role: what the API, the workers and beat connect as, never the schema's owner.
# An owner (or a superuser, or a member of the owner, ...: models/db_roles.py) can lift every
# append-only guard with ALTER TABLE ... DISABLE TRIGGER; a role holding only these cannot.
RUNTIME_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
# Written by the migrations alone, read by the runtime: Alembic's bookkeeping (the runtime may
# read the schema's revision, never set it), and the one row saying when Plant began recording
# the reports it signs, which no trigger guards (ledger_digests_v2_began's does). Moved past a retired key's first signature
# made `plant signing-keys seal` write that key's seal with no list (models.key_seals), so
# what a leaked key then signed outside the chain was refused by none.
RUNTIME_READ_ONLY_TABLES = ("alembic_version", "signed_exports_began")
# store_digest ANALYZEs these after writing a digest's rows (models.ledger_store._analyze_digest_rows):
# the MAINTAIN privilege, PostgreSQL 17 and later. On 16 the ANALYZE is skipped with a warning.
RUNTIME_MAINTAINED_TABLES = ("ledger_digest_heads", "ledger_digest_tombstones")
MAINTAIN_SINCE = 170000


class RuntimeRoleRefused(RuntimeError):
    """The role named as the runtime role could lift or get around the guards, or the guards
    are not the migrations'; nothing was granted or changed."""


@dataclass(frozen=True)
class RuntimeGrant:
    role: str
    tables: int
    maintain: bool  # False on PostgreSQL 16: store_digest's ANALYZE is then skipped


def grant_runtime_role(database_url: str, role: str, *, password: str | None = None,
                       create: bool = False) -> RuntimeGrant:
    """Give ``role`` exactly what the API, workers and beat need on the migrated schema, as
    the owner connected by ``database_url``, in one transaction: every earlier privilege it
    held on the schema's tables and sequences is revoked first, so running this after each
    upgrade keeps the grants exact and covers the tables later migrations add.

    A missing role is created (LOGIN, no other attribute) when ``create`` is set or a
    ``password`` is given; a given password is set on it, once it has passed the checks below.
    The password never reaches the server: libpq turns it into a SCRAM-SHA-256 verifier first,
    which is what the statement carries (servers that log DDL, as Cloud SQL is configured to,
    would otherwise log it).

    Refused (:class:`RuntimeRoleRefused`, nothing granted or changed) for a role that is
    missing, is the migrating role, holds anything apart from this role's grants (an
    attribute, a membership, an object, a privilege: ``models/db_roles.py``), or would still
    hold more than these grants through PUBLIC or another grantor.
    """
    who = sql.Identifier(role)
    with psycopg.connect(libpq_url(database_url)) as conn:
        secret = sql.SQL("") if password is None else sql.SQL(" PASSWORD {}").format(sql.Literal(
            conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()))
        # Another upgrader granting at the same time saw the role missing too, and one CREATE ROLE
        # failed on the other's (a unique violation): the lock makes the second see the first's role.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        created = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
        if created and not (create or password is not None):
            raise RuntimeRoleRefused(f"the runtime role {role!r} does not exist: create it (LOGIN, no other attribute), "
                                     "or give it a password to have it created")
        if created:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN{}").format(who, secret))
        if conn.execute("SELECT current_user = %s", (role,)).fetchone()[0]:
            _refuse(role, "is the role running the migrations")
        found = conn.execute(PLANT_SCHEMA_SQL).fetchone()
        if found is None:
            _refuse(role, NO_SCHEMA + " (run the migrations first)")
        schema = found[0]
        where = sql.Identifier(schema)

        def each(names: tuple[str, ...]) -> sql.Composable:
            return sql.SQL(", ").join(sql.Identifier(schema, name) for name in names)

        # What this role granted before goes first; what it holds after that, it holds from
        # elsewhere (its own attributes, memberships, PUBLIC, other grantors) and is judged.
        conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(where, who))
        conn.execute(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(where, who))
        why = lifts_guards_because(conn.execute(GUARD_LIFTER_SQL, lifter_params(role, schema)).fetchone(), schema)
        if why is not None:
            held = [h for (h,) in conn.execute(HOLDINGS_SQL, {"role": role, "schema": schema})]
            _refuse(role, why + (f" ({'; '.join(held)})" if held else ""))
        if conn.execute(GUARDS_SQL).fetchone()[0] != GUARDS_FINGERPRINT:  # models/constitution.py, L0-03
            raise RuntimeRoleRefused(
                "the append-only guards are not what the migrations made them (a guard function, trigger, rule, "
                "policy or child table changed): nothing was granted; restore them from the migrations first")
        if password is not None and not created:
            conn.execute(sql.SQL("ALTER ROLE {}{}").format(who, secret))
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone()[0]
        maintain = conn.info.server_version >= MAINTAIN_SINCE
        statements = [
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(where, who),
            sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.SQL(", ").join(map(sql.SQL, RUNTIME_TABLE_PRIVILEGES)), where, who),
            sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {} FROM {}").format(each(RUNTIME_READ_ONLY_TABLES), who),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(where, who),
        ]
        if maintain:
            statements.append(sql.SQL("GRANT MAINTAIN ON {} TO {}").format(each(RUNTIME_MAINTAINED_TABLES), who))
        for statement in statements:
            conn.execute(statement)
        # Whatever it still holds beyond those grants (from PUBLIC or another grantor, which
        # REVOKE leaves alone) refuses the whole call.
        extra = [privilege for (privilege,) in conn.execute(_EXTRA_PRIVILEGES, {
            "role": role, "schema": schema, "read_only": list(RUNTIME_READ_ONLY_TABLES)})]
        if extra:
            raise RuntimeRoleRefused(
                f"the runtime role {role!r} would still hold {', '.join(extra[:5])}{' and more' if len(extra) > 5 else ''}"
                " through PUBLIC or another grantor: revoke those, then upgrade again")
    return RuntimeGrant(role=role, tables=tables, maintain=maintain)


def _refuse(role: str, why: str) -> None:
    raise RuntimeRoleRefused(
        f"the runtime role {role!r} {why}, so it could lift or get around the append-only guards: name a role "
        "that holds nothing but LOGIN (CREATE ROLE ... LOGIN) and connect the API, workers and beat as it")


# TRIGGER is not among them: a role holding it is refused before anything is granted.
_EXTRA_PRIVILEGES = """
SELECT p.privilege || ' on ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN unnest(ARRAY['TRUNCATE', 'REFERENCES']) AS p(privilege)
  WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND has_table_privilege(%(role)s, c.oid, p.privilege)
UNION ALL
SELECT p.privilege || ' on ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) AS p(privilege)
  WHERE n.nspname = %(schema)s AND c.relname = ANY(%(read_only)s) AND CASE p.privilege
    WHEN 'DELETE' THEN has_table_privilege(%(role)s, c.oid, 'DELETE') ELSE has_any_column_privilege(%(role)s, c.oid, p.privilege) END
UNION ALL
SELECT 'UPDATE on ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = %(schema)s AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(%(role)s, c.oid, 'UPDATE') END
ORDER BY 1
"""
