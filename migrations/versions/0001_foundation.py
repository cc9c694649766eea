"""Foundation: the pgvector extension and the jobs table.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from models.migrate import refuse_to_discard

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every later table with an embedding needs pgvector; create it first, once.
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table('jobs',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('queue', sa.String(length=32), server_default='default', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='queued', nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('progress_done', sa.Integer(), server_default='0', nullable=False),
    sa.Column('progress_total', sa.Integer(), nullable=True),
    sa.Column('progress_message', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('worker', sa.String(length=255), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_jobs_status_valid')),
    sa.CheckConstraint('attempts >= 0', name=op.f('ck_jobs_attempts_non_negative')),
    sa.CheckConstraint('progress_done >= 0', name=op.f('ck_jobs_progress_done_non_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    op.create_index(op.f('ix_jobs_created_at_id'), 'jobs', ['created_at', 'id'], unique=False)
    op.create_index(op.f('ix_jobs_kind_created_at_id'), 'jobs', ['kind', 'created_at', 'id'], unique=False)
    op.create_index('ix_jobs_queued_enqueued_at', 'jobs', ['enqueued_at'], unique=False, postgresql_where=sa.text("status = 'queued'"))
    op.create_index(op.f('ix_jobs_status_created_at_id'), 'jobs', ['status', 'created_at', 'id'], unique=False)


def downgrade() -> None:
    refuse_to_discard(revision, 'jobs')
    op.drop_index(op.f('ix_jobs_status_created_at_id'), table_name='jobs')
    op.drop_index('ix_jobs_queued_enqueued_at', table_name='jobs', postgresql_where=sa.text("status = 'queued'"))
    op.drop_index(op.f('ix_jobs_kind_created_at_id'), table_name='jobs')
    op.drop_index(op.f('ix_jobs_created_at_id'), table_name='jobs')
    op.drop_table('jobs')
    op.execute("DROP EXTENSION IF EXISTS vector")
