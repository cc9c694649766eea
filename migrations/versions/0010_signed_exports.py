"""Record the signatures over documents Plant hands out without keeping them.

An exported audit report and a digest from ``GET /ledger/digest`` are signed on the way
out. Each signature's SHA-256 is now kept, with the key's ``kid``, so that sealing a
retired key can list everything that key signed outside the chain (``models.key_seals``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signed_exports',
    sa.Column('signature_sha256', sa.LargeBinary(length=32), nullable=False),
    sa.Column('kid', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('signature_sha256', name=op.f('pk_signed_exports'))
    )
    op.create_index(op.f('ix_signed_exports_kid'), 'signed_exports', ['kid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_signed_exports_kid'), table_name='signed_exports')
    op.drop_table('signed_exports')
