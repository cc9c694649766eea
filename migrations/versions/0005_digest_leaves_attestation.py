"""A stored digest's attestation of its leaf rows, so checking them needs no re-hashing.

``store_digest`` signs (digest id, heads_root, entity_count, the transaction id that
wrote the leaf rows). While every leaf row still carries that ``xmin`` (any UPDATE,
DELETE or INSERT would give it another), the leaves are exactly the ones the root was
computed from; otherwise the root is recomputed from them (``models.ledger_trust``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa
from models.migrate import refuse_to_discard

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('ledger_digests', sa.Column('leaves_xmin', sa.String(length=20), nullable=True))
    op.add_column('ledger_digests', sa.Column('leaves_attestation', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    refuse_to_discard(revision, 'ledger_digests WHERE leaves_xmin IS NOT NULL OR leaves_attestation IS NOT NULL')
    op.drop_column('ledger_digests', 'leaves_attestation')
    op.drop_column('ledger_digests', 'leaves_xmin')
