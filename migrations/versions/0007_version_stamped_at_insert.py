"""Stamp each version when it is inserted (``clock_timestamp()``), not at its transaction's start.

A root-only ledger digest is checked by recomputing the heads of the versions stamped at or
before its ``as_of``; ``models.ledger.versions_held`` makes that exact, provided a version
written after a digest is stamped after it, even when its transaction began before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column('entity_versions', 'created_at', server_default=sa.text('clock_timestamp()'))


def downgrade() -> None:
    op.alter_column('entity_versions', 'created_at', server_default=sa.text('now()'))
