"""Count a job's hand-backs apart from its attempts.

``attempts`` is the fencing token, so every claim raises it, including the claim after a
hand-back (a worker shutting down, or a bulk job's lease lapsing between batches). A
hand-back is not a failure: ``PLANT_JOB_MAX_ATTEMPTS`` now counts ``attempts - handbacks``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa
from models.migrate import refuse_to_discard

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('handbacks', sa.Integer(), server_default='0', nullable=False))
    op.create_check_constraint(op.f('ck_jobs_handbacks_within_attempts'), 'jobs', 'handbacks >= 0 AND handbacks <= attempts')


def downgrade() -> None:
    refuse_to_discard(revision, 'jobs WHERE handbacks <> 0')
    op.drop_constraint(op.f('ck_jobs_handbacks_within_attempts'), 'jobs', type_='check')
    op.drop_column('jobs', 'handbacks')
