"""Record the signatures over reports Plant hands out, and the lists key seals commit to.

A finished run's audit report is signed once per key, when first exported, and the
signature is kept (``signed_exports``: the report's SHA-256, the JWS and its signature's
SHA-256) and handed out again on later exports, from the moment in ``signed_exports_began``
on, so that sealing a retired key can list everything that key signed outside the chain. The list a seal commits to (by count and root, in the
seal file) is kept in ``key_seal_signatures`` (``models.key_seals``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa
from models.migrate import refuse_to_discard

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signed_exports',
    sa.Column('kid', sa.String(length=128), nullable=False),
    sa.Column('document_sha256', sa.LargeBinary(length=32), nullable=False),
    sa.Column('jws', sa.Text(), nullable=False),
    sa.Column('signature_sha256', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('kid', 'document_sha256', name=op.f('pk_signed_exports'))
    )
    op.create_table('signed_exports_began',
    sa.Column('one', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('began_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('one', name=op.f('ck_signed_exports_began_one_row')),
    sa.PrimaryKeyConstraint('one', name=op.f('pk_signed_exports_began'))
    )
    op.execute("INSERT INTO signed_exports_began DEFAULT VALUES")
    op.create_table('key_seal_signatures',
    sa.Column('kid', sa.String(length=128), nullable=False),
    sa.Column('signature_sha256', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('kid', 'signature_sha256', name=op.f('pk_key_seal_signatures'))
    )


def downgrade() -> None:
    refuse_to_discard(revision, 'signed_exports', 'key_seal_signatures')
    op.drop_table('key_seal_signatures')
    op.drop_table('signed_exports_began')
    op.drop_table('signed_exports')
