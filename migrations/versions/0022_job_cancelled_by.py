"""Who asked to cancel a job: ``jobs.cancelled_by``.

A cancel recorded when it was asked (``cancel_requested_at``) but not by whom: only the
request's log line named the key. For an audit job (beat's daily audit included) that is
evidence: the job now names the key, as ``requested_by`` names the one that submitted it.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from models.migrate import refuse_to_discard

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('cancelled_by', sa.Text(), nullable=True))


def downgrade() -> None:
    refuse_to_discard(revision, 'jobs WHERE cancelled_by IS NOT NULL')
    op.drop_column('jobs', 'cancelled_by')
