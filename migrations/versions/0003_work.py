"""The work: certificate numbering, audit runs, chunks and findings, ledger digests, beat fires.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from models.migrate import refuse_to_discard

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('certificate_sequences',
    sa.Column('industry_code', sa.String(length=8), nullable=False),
    sa.Column('last_number', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('industry_code', name=op.f('pk_certificate_sequences'))
    )
    op.create_table('ledger_digests',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('as_of', sa.DateTime(timezone=True), nullable=False),
    sa.Column('entity_count', sa.Integer(), nullable=False),
    sa.Column('heads_root', sa.LargeBinary(length=32), nullable=False),
    sa.Column('kid', sa.String(length=128), nullable=False),
    sa.Column('signature', sa.Text(), nullable=False),
    sa.Column('document', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_digests'))
    )
    op.create_index(op.f('ix_ledger_digests_as_of'), 'ledger_digests', ['as_of'], unique=False)
    op.create_table('scheduled_fires',
    sa.Column('schedule', sa.String(length=64), nullable=False),
    sa.Column('fire_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('schedule', 'fire_at', name=op.f('pk_scheduled_fires'))
    )
    op.create_table('audit_runs',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('entities_total', sa.Integer(), server_default='0', nullable=False),
    sa.Column('chunks_total', sa.Integer(), server_default='0', nullable=False),
    sa.Column('chunks_done', sa.Integer(), server_default='0', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='running', nullable=False),
    sa.Column('summary', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_audit_runs_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_runs')),
    sa.UniqueConstraint('job_id', name=op.f('uq_audit_runs_job_id'))
    )
    op.create_table('ledger_digest_heads',
    sa.Column('digest_id', sa.BigInteger(), nullable=False),
    sa.Column('entity_id', sa.UUID(), nullable=False),
    sa.Column('entity_type', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('link_hash', sa.LargeBinary(length=32), nullable=False),
    sa.ForeignKeyConstraint(['digest_id'], ['ledger_digests.id'], name=op.f('fk_ledger_digest_heads_digest_id_ledger_digests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('digest_id', 'entity_id', name=op.f('pk_ledger_digest_heads'))
    )
    op.create_table('audit_chunks',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.UUID(), nullable=False),
    sa.Column('chunk_no', sa.Integer(), nullable=False),
    sa.Column('entity_type', sa.String(length=16), nullable=False),
    sa.Column('low_id', sa.UUID(), nullable=False),
    sa.Column('high_id', sa.UUID(), nullable=False),
    sa.Column('cursor', sa.UUID(), nullable=True),
    sa.Column('done', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('counters', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['audit_runs.id'], name=op.f('fk_audit_chunks_run_id_audit_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_chunks')),
    sa.UniqueConstraint('run_id', 'chunk_no', name=op.f('uq_audit_chunks_run_id_chunk_no'))
    )
    op.create_table('audit_findings',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('run_id', sa.UUID(), nullable=False),
    sa.Column('entity_type', sa.String(length=16), nullable=True),
    sa.Column('entity_id', sa.UUID(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('rule_id', sa.String(length=32), nullable=True),
    sa.Column('detail', sa.Text(), server_default='', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['audit_runs.id'], name=op.f('fk_audit_findings_run_id_audit_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_findings'))
    )
    op.create_index(op.f('ix_audit_findings_run_id_entity_id'), 'audit_findings', ['run_id', 'entity_id'], unique=False)
    op.create_index(op.f('ix_audit_findings_run_id_id'), 'audit_findings', ['run_id', 'id'], unique=False)


def downgrade() -> None:
    refuse_to_discard(
        revision,
        'audit_runs',
        'audit_chunks',
        'audit_findings',
        'ledger_digests',
        'ledger_digest_heads',
        'scheduled_fires',
        'certificate_sequences',
    )
    op.drop_index(op.f('ix_audit_findings_run_id_id'), table_name='audit_findings')
    op.drop_index(op.f('ix_audit_findings_run_id_entity_id'), table_name='audit_findings')
    op.drop_table('audit_findings')
    op.drop_table('audit_chunks')
    op.drop_table('ledger_digest_heads')
    op.drop_table('audit_runs')
    op.drop_table('scheduled_fires')
    op.drop_index(op.f('ix_ledger_digests_as_of'), table_name='ledger_digests')
    op.drop_table('ledger_digests')
    op.drop_table('certificate_sequences')
