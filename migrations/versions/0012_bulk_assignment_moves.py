"""What a bulk assignment job did with each agent, across its attempts: ``bulk_assignment_moves``.

A bulk job commits batch by batch; a retry (a lost connection, a lapsed lease, a dead
worker) plans again from what is left, so its result used to cover only its last attempt.
Each batch now records its agents (seated, or refused and why) in its own transaction, and
the result is read from these rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from models.migrate import refuse_to_discard

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bulk_assignment_moves',
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('agent_id', postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column('agent_name', sa.String(length=255), nullable=False),
    sa.Column('placed', sa.Boolean(), nullable=False),
    sa.Column('team_id', postgresql.UUID(as_uuid=True), nullable=True),
    sa.Column('similarity', sa.Float(), nullable=True),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_bulk_assignment_moves_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'agent_id', name=op.f('pk_bulk_assignment_moves'))
    )


def downgrade() -> None:
    refuse_to_discard(revision, 'bulk_assignment_moves')
    op.drop_table('bulk_assignment_moves')
