"""Count the lost-message sweep's republishes of a queued job: ``jobs.republishes``.

The sweep could not tell a lost message from one waiting in a backlog, and published every
job queued longer than ``PLANT_REQUEUE_AFTER_SECONDS`` again, each time that long had passed:
a backlog draining over T minutes got about T more messages per waiting job. Each republish
now doubles the wait before the next (capped), so the count is kept; it restarts at 0
whenever the job is queued again (a retry, a hand-back, a rescue).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('republishes', sa.Integer(), server_default='0', nullable=False))
    op.create_check_constraint(op.f('ck_jobs_republishes_non_negative'), 'jobs', 'republishes >= 0')


def downgrade() -> None:
    # Only a sweep's count of its own republishes goes: no one's data.
    op.drop_constraint(op.f('ck_jobs_republishes_non_negative'), 'jobs')
    op.drop_column('jobs', 'republishes')
