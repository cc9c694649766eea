"""Alembic environment: runs migrations online against ``sqlalchemy.url``.

The URL is set by ``models.migrate.alembic_config``; there is no alembic.ini to keep in
sync. Migrations take a transaction-level advisory lock so two concurrent upgraders
(e.g. several containers starting at once) run one after the other; the runtime role's
grant (``models.migrate.grant_runtime_role``) takes the same lock.
"""

from alembic import context
from sqlalchemy import create_engine, pool, text

from models.migrate import MIGRATION_LOCK_ID
from models.schema import metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
run_migrations_online()
