"""Every version INSERT shares the ledger's versions lock before it reads the clock for its stamp.

``entity_version_stamp()``, the default of ``entity_versions.created_at``, takes the advisory
lock ``models.ledger.VERSIONS_LOCK`` (``"versions"`` in ASCII) shared until the transaction
ends, then returns ``clock_timestamp()``. A digest takes the lock alone at a moment when no
version write holds it (``models.ledger.versions_held``). An advisory lock, unlike a SHARE lock
on the table (0007's first use), does not conflict with VACUUM or ANALYZE of the table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

VERSIONS_LOCK = int.from_bytes(b"versions", "big")


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION entity_version_stamp() RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock_shared({VERSIONS_LOCK});
            RETURN clock_timestamp();
        END $$
        """
    )
    op.alter_column('entity_versions', 'created_at', server_default=sa.text('entity_version_stamp()'))


def downgrade() -> None:
    op.alter_column('entity_versions', 'created_at', server_default=sa.text('clock_timestamp()'))
    op.execute("DROP FUNCTION entity_version_stamp()")
