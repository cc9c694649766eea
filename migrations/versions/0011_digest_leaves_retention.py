"""Let old digests' leaf rows go: ``ledger_digests.keep_leaves``.

Every stored digest keeps one leaf row per entity; hourly, at 200,000 entities, that was
4.8 million rows a day, kept for ever, though only the latest digest's leaves and a key
seal's digest's are ever read. Beat's digest task now deletes the leaves of digests older
than the newest ``PLANT_DIGEST_LEAVES_KEPT`` unless ``keep_leaves`` is set, which sealing
sets on the seal's digest. Digests stored before this revision keep theirs (any of them
may be a seal's digest: the database cannot tell).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa
from models.migrate import refuse_to_discard

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('ledger_digests', sa.Column('keep_leaves', sa.Boolean(), server_default='false', nullable=False))
    op.execute("UPDATE ledger_digests SET keep_leaves = true")


def downgrade() -> None:
    refuse_to_discard(revision, 'ledger_digests WHERE keep_leaves')
    op.drop_column('ledger_digests', 'keep_leaves')
