"""Alembic environment: runs migrations online against ``sqlalchemy.url``.

The URL is set by ``models.migrate.alembic_config``; there is no alembic.ini to keep in
sync. Migrations take a transaction-level advisory lock so two concurrent upgraders
(e.g. several containers starting at once) run one after the other; the runtime role's
grant (``models.migrate.grant_runtime_role``) takes the same lock.

Once it holds that lock, every lock a migration waits for is bounded by ``lock_timeout``
(``models.migrate.MIGRATION_LOCK_TIMEOUT_MS``, or ``-x lock-timeout-ms=N``): an ``ALTER TABLE``
queued behind a long transaction of the running release made every later statement on that
table queue behind it, so the API and the workers stopped for as long as that transaction
lasted. A migration that times out rolls back whole, and ``models.migrate.upgrade_head`` tries
again. ``statement_timeout`` is off for the migrations (a role default meant for the API would
cancel a backfill halfway, and its lock waits are bounded by ``lock_timeout`` instead), and so
is ``lock_timeout`` while waiting for the advisory lock: a second upgrader waits for the first.
"""

from alembic import context
from sqlalchemy import create_engine, pool, text

from models.migrate import LOCK_TIMEOUT_OPTION, MIGRATION_LOCK_ID, MIGRATION_LOCK_TIMEOUT_MS
from models.schema import metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Server defaults too: a column whose default the models and the migrations disagree on (a
        # clock_timestamp() for entity_version_stamp(), say) is drift `plant db check` must report.
        context.configure(connection=connection, target_metadata=metadata, compare_type=True,
                          compare_server_default=True)
        lock_timeout_ms = int(context.get_x_argument(as_dictionary=True).get(LOCK_TIMEOUT_OPTION,
                                                                             MIGRATION_LOCK_TIMEOUT_MS))
        with context.begin_transaction():
            connection.execute(text("SET LOCAL statement_timeout = 0"))
            connection.execute(text("SET LOCAL lock_timeout = 0"))
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.execute(text(f"SET LOCAL lock_timeout = {lock_timeout_ms}"))
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
run_migrations_online()
