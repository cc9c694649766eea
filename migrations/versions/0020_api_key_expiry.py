"""API keys can expire: ``api_keys.expires_at``.

A key made with an expiry (``POST /api/v1/api-keys {"expires_in_days": N}``) stops working
at that time as a revoked one does. Keys from before this migration, and keys made without
one, hold NULL and never expire. Like every time Plant stores, it lies between the years 1
and 9999 (migration 0016).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from models.migrate import refuse_to_discard

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('api_keys', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(
        op.f('ck_api_keys_expires_at_loadable'), 'api_keys',
        "expires_at BETWEEN '0001-01-02 00:00:00+00'::timestamptz AND '9999-12-30 00:00:00+00'::timestamptz")


def downgrade() -> None:
    refuse_to_discard(revision, 'api_keys WHERE expires_at IS NOT NULL')
    op.drop_constraint(op.f('ck_api_keys_expires_at_loadable'), 'api_keys')
    op.drop_column('api_keys', 'expires_at')
