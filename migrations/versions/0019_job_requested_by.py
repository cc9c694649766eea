"""Record who asked for each job: ``jobs.requested_by``.

Chain versions a job writes carry actor ``job:<id>``; the API key that started the job was
kept only with an ``Idempotency-Key``. The API now writes ``api-key:<id>`` of the submitting
key into the job's row, in the INSERT that creates it, and beat's scheduled jobs write
``beat:<schedule>``. Rows from before this migration, and jobs other code inserts, hold NULL.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from models.migrate import refuse_to_discard

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('requested_by', sa.Text(), nullable=True))


def downgrade() -> None:
    refuse_to_discard(revision, 'jobs WHERE requested_by IS NOT NULL')
    op.drop_column('jobs', 'requested_by')
