"""Signed, append-only records of entity rows restored to their head version.

``plant entity restore`` writes one per restore (``models.repair``). Like the chain,
the table refuses UPDATE, DELETE and TRUNCATE, with triggers enabled ALWAYS.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from models.migrate import refuse_to_discard

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('entity_repairs',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('entity_type', sa.String(length=16), nullable=False),
    sa.Column('entity_id', sa.UUID(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('head_link_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('finding', sa.String(length=64), nullable=False),
    sa.Column('row_before', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('repaired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kid', sa.String(length=128), nullable=False),
    sa.Column('signature', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_entity_repairs'))
    )
    op.create_index(op.f('ix_entity_repairs_entity_id'), 'entity_repairs', ['entity_id'], unique=False)
    op.execute(
        """
        CREATE FUNCTION entity_repairs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'entity_repairs is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER entity_repairs_no_update_delete BEFORE UPDATE OR DELETE ON entity_repairs "
        "FOR EACH ROW EXECUTE FUNCTION entity_repairs_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER entity_repairs_no_truncate BEFORE TRUNCATE ON entity_repairs "
        "FOR EACH STATEMENT EXECUTE FUNCTION entity_repairs_refuse_change()"
    )
    op.execute("ALTER TABLE entity_repairs ENABLE ALWAYS TRIGGER entity_repairs_no_update_delete")
    op.execute("ALTER TABLE entity_repairs ENABLE ALWAYS TRIGGER entity_repairs_no_truncate")


def downgrade() -> None:
    refuse_to_discard(revision, 'entity_repairs')
    op.drop_index(op.f('ix_entity_repairs_entity_id'), table_name='entity_repairs')
    op.drop_table('entity_repairs')
    op.execute("DROP FUNCTION IF EXISTS entity_repairs_refuse_change()")
