"""The governed registry: entities, the signed version chain and its append-only guard.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import op
import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql
from models.migrate import refuse_to_discard

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('entity_versions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('entity_type', sa.String(length=16), nullable=False),
    sa.Column('entity_id', sa.UUID(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('content_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('prev_link', sa.LargeBinary(length=32), nullable=False),
    sa.Column('link_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('kid', sa.String(length=128), nullable=False),
    sa.Column('signature', sa.LargeBinary(), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_entity_versions')),
    sa.UniqueConstraint('entity_id', 'prev_link', name=op.f('uq_entity_versions_entity_id_prev_link')),
    sa.UniqueConstraint('entity_id', 'version', name=op.f('uq_entity_versions_entity_id_version')),
    sa.UniqueConstraint('link_hash', name=op.f('uq_entity_versions_link_hash'))
    )
    op.create_table('industries',
    sa.Column('status', sa.String(length=32), server_default='active', nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('code', sa.String(length=8), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('embedding', Vector(384), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('external_key', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), server_default='0', nullable=False),
    sa.Column('head_link_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('constitution_l0', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('constitution_l1', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('tags', sa.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('attributes', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('governance_notes', sa.Text(), nullable=True),
    sa.Column('governance_agent_id', sa.UUID(), nullable=True),
    sa.Column('parent_id', sa.UUID(), nullable=True),
    sa.Column('entity_type', sa.String(length=16), server_default='industry', nullable=False),
    sa.CheckConstraint("code ~ '^[A-Z][A-Z0-9]{1,7}$'", name=op.f('ck_industries_code_format')),
    sa.CheckConstraint("entity_type = 'industry'", name=op.f('ck_industries_entity_type_fixed')),
    sa.CheckConstraint("status IN ('active', 'retired')", name=op.f('ck_industries_status_valid')),
    sa.CheckConstraint('version >= 0', name=op.f('ck_industries_version_non_negative')),
    sa.ForeignKeyConstraint(['parent_id'], ['industries.id'], name=op.f('fk_industries_parent_id_industries')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_industries')),
    sa.UniqueConstraint('code', name=op.f('uq_industries_code')),
    sa.UniqueConstraint('external_key', name=op.f('uq_industries_external_key')),
    sa.UniqueConstraint('name', name=op.f('uq_industries_name'))
    )
    op.create_index('ix_industries_embedding_hnsw', 'industries', ['embedding'], unique=False, postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.create_table('job_roles',
    sa.Column('status', sa.String(length=32), server_default='active', nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('seniority', sa.String(length=16), nullable=False),
    sa.Column('industry_id', sa.UUID(), nullable=True),
    sa.Column('embedding', Vector(384), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('external_key', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), server_default='0', nullable=False),
    sa.Column('head_link_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('constitution_l0', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('constitution_l1', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('tags', sa.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('attributes', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('governance_notes', sa.Text(), nullable=True),
    sa.Column('governance_agent_id', sa.UUID(), nullable=True),
    sa.Column('parent_id', sa.UUID(), nullable=True),
    sa.Column('entity_type', sa.String(length=16), server_default='job_role', nullable=False),
    sa.CheckConstraint("entity_type = 'job_role'", name=op.f('ck_job_roles_entity_type_fixed')),
    sa.CheckConstraint("seniority IN ('junior', 'mid', 'senior')", name=op.f('ck_job_roles_seniority_valid')),
    sa.CheckConstraint("status IN ('active', 'retired')", name=op.f('ck_job_roles_status_valid')),
    sa.CheckConstraint('version >= 0', name=op.f('ck_job_roles_version_non_negative')),
    sa.ForeignKeyConstraint(['industry_id'], ['industries.id'], name=op.f('fk_job_roles_industry_id_industries')),
    sa.ForeignKeyConstraint(['parent_id'], ['job_roles.id'], name=op.f('fk_job_roles_parent_id_job_roles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_roles')),
    sa.UniqueConstraint('external_key', name=op.f('uq_job_roles_external_key')),
    sa.UniqueConstraint('name', name=op.f('uq_job_roles_name'))
    )
    op.create_index('ix_job_roles_embedding_hnsw', 'job_roles', ['embedding'], unique=False, postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.create_index(op.f('ix_job_roles_industry_id'), 'job_roles', ['industry_id'], unique=False)
    op.create_table('skills',
    sa.Column('status', sa.String(length=32), server_default='draft', nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('skill_key', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('industry_id', sa.UUID(), nullable=True),
    sa.Column('certificate', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('embedding', Vector(384), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('external_key', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), server_default='0', nullable=False),
    sa.Column('head_link_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('constitution_l0', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('constitution_l1', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('tags', sa.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('attributes', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('governance_notes', sa.Text(), nullable=True),
    sa.Column('governance_agent_id', sa.UUID(), nullable=True),
    sa.Column('parent_id', sa.UUID(), nullable=True),
    sa.Column('entity_type', sa.String(length=16), server_default='skill', nullable=False),
    sa.CheckConstraint("category IN ('technical', 'soft_skill', 'domain_expertise', 'certification')", name=op.f('ck_skills_category_valid')),
    sa.CheckConstraint("entity_type = 'skill'", name=op.f('ck_skills_entity_type_fixed')),
    sa.CheckConstraint("skill_key ~ '^[a-z0-9]+(-[a-z0-9]+)*$'", name=op.f('ck_skills_skill_key_slug')),
    sa.CheckConstraint("status IN ('draft', 'pending_certification', 'certified', 'rejected', 'retired')", name=op.f('ck_skills_status_valid')),
    sa.CheckConstraint('version >= 0', name=op.f('ck_skills_version_non_negative')),
    sa.ForeignKeyConstraint(['industry_id'], ['industries.id'], name=op.f('fk_skills_industry_id_industries')),
    sa.ForeignKeyConstraint(['parent_id'], ['skills.id'], name=op.f('fk_skills_parent_id_skills')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_skills')),
    sa.UniqueConstraint('external_key', name=op.f('uq_skills_external_key')),
    sa.UniqueConstraint('name', name=op.f('uq_skills_name')),
    sa.UniqueConstraint('skill_key', name=op.f('uq_skills_skill_key'))
    )
    op.create_index('ix_skills_category_status', 'skills', ['category', 'status'], unique=False)
    op.create_index('ix_skills_embedding_hnsw', 'skills', ['embedding'], unique=False, postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.create_index(op.f('ix_skills_industry_id'), 'skills', ['industry_id'], unique=False)
    op.create_table('job_role_skills',
    sa.Column('job_role_id', sa.UUID(), nullable=False),
    sa.Column('skill_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['job_role_id'], ['job_roles.id'], name=op.f('fk_job_role_skills_job_role_id_job_roles'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['skill_id'], ['skills.id'], name=op.f('fk_job_role_skills_skill_id_skills'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('job_role_id', 'skill_id', name=op.f('pk_job_role_skills'))
    )
    op.create_index(op.f('ix_job_role_skills_skill_id'), 'job_role_skills', ['skill_id'], unique=False)
    op.create_table('teams',
    sa.Column('status', sa.String(length=32), server_default='active', nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('job_role_id', sa.UUID(), nullable=False),
    sa.Column('industry_id', sa.UUID(), nullable=True),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.Column('embedding', Vector(384), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('external_key', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), server_default='0', nullable=False),
    sa.Column('head_link_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('constitution_l0', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('constitution_l1', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('tags', sa.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('attributes', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('governance_notes', sa.Text(), nullable=True),
    sa.Column('governance_agent_id', sa.UUID(), nullable=True),
    sa.Column('parent_id', sa.UUID(), nullable=True),
    sa.Column('entity_type', sa.String(length=16), server_default='team', nullable=False),
    sa.CheckConstraint("entity_type = 'team'", name=op.f('ck_teams_entity_type_fixed')),
    sa.CheckConstraint("status IN ('active', 'retired')", name=op.f('ck_teams_status_valid')),
    sa.CheckConstraint('capacity >= 1', name=op.f('ck_teams_capacity_positive')),
    sa.CheckConstraint('version >= 0', name=op.f('ck_teams_version_non_negative')),
    sa.ForeignKeyConstraint(['industry_id'], ['industries.id'], name=op.f('fk_teams_industry_id_industries')),
    sa.ForeignKeyConstraint(['job_role_id'], ['job_roles.id'], name=op.f('fk_teams_job_role_id_job_roles')),
    sa.ForeignKeyConstraint(['parent_id'], ['teams.id'], name=op.f('fk_teams_parent_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_teams')),
    sa.UniqueConstraint('external_key', name=op.f('uq_teams_external_key')),
    sa.UniqueConstraint('name', name=op.f('uq_teams_name'))
    )
    op.create_index('ix_teams_embedding_hnsw', 'teams', ['embedding'], unique=False, postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.create_index(op.f('ix_teams_industry_id'), 'teams', ['industry_id'], unique=False)
    op.create_index(op.f('ix_teams_job_role_id'), 'teams', ['job_role_id'], unique=False)
    op.create_table('agents',
    sa.Column('status', sa.String(length=32), server_default='active', nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('job_role_id', sa.UUID(), nullable=True),
    sa.Column('industry_id', sa.UUID(), nullable=True),
    sa.Column('team_id', sa.UUID(), nullable=True),
    sa.Column('embedding', Vector(384), nullable=True),
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('external_key', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), server_default='0', nullable=False),
    sa.Column('head_link_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('constitution_l0', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('constitution_l1', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('tags', sa.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('attributes', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('governance_notes', sa.Text(), nullable=True),
    sa.Column('governance_agent_id', sa.UUID(), nullable=True),
    sa.Column('parent_id', sa.UUID(), nullable=True),
    sa.Column('entity_type', sa.String(length=16), server_default='agent', nullable=False),
    sa.CheckConstraint("entity_type = 'agent'", name=op.f('ck_agents_entity_type_fixed')),
    sa.CheckConstraint("status IN ('active', 'suspended', 'retired')", name=op.f('ck_agents_status_valid')),
    sa.CheckConstraint('version >= 0', name=op.f('ck_agents_version_non_negative')),
    sa.ForeignKeyConstraint(['industry_id'], ['industries.id'], name=op.f('fk_agents_industry_id_industries')),
    sa.ForeignKeyConstraint(['job_role_id'], ['job_roles.id'], name=op.f('fk_agents_job_role_id_job_roles')),
    sa.ForeignKeyConstraint(['parent_id'], ['agents.id'], name=op.f('fk_agents_parent_id_agents')),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_agents_team_id_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agents')),
    sa.UniqueConstraint('external_key', name=op.f('uq_agents_external_key')),
    sa.UniqueConstraint('name', name=op.f('uq_agents_name'))
    )
    op.create_index('ix_agents_embedding_hnsw', 'agents', ['embedding'], unique=False, postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.create_index(op.f('ix_agents_industry_id'), 'agents', ['industry_id'], unique=False)
    op.create_index(op.f('ix_agents_job_role_id'), 'agents', ['job_role_id'], unique=False)
    op.create_index(op.f('ix_agents_team_id'), 'agents', ['team_id'], unique=False)
    op.create_table('agent_skills',
    sa.Column('agent_id', sa.UUID(), nullable=False),
    sa.Column('skill_id', sa.UUID(), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_agent_skills_agent_id_agents'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['skill_id'], ['skills.id'], name=op.f('fk_agent_skills_skill_id_skills'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('agent_id', 'skill_id', name=op.f('pk_agent_skills'))
    )
    op.create_index(op.f('ix_agent_skills_skill_id'), 'agent_skills', ['skill_id'], unique=False)

    # Every entity's governance agent is an agent; deferred, so a self-governing steward
    # and the entities it governs can be created in one transaction.
    op.create_foreign_key(op.f('fk_industries_governance_agent_id_agents'), 'industries', 'agents', ['governance_agent_id'], ['id'], deferrable=True, initially='DEFERRED')
    op.create_foreign_key(op.f('fk_job_roles_governance_agent_id_agents'), 'job_roles', 'agents', ['governance_agent_id'], ['id'], deferrable=True, initially='DEFERRED')
    op.create_foreign_key(op.f('fk_skills_governance_agent_id_agents'), 'skills', 'agents', ['governance_agent_id'], ['id'], deferrable=True, initially='DEFERRED')
    op.create_foreign_key(op.f('fk_teams_governance_agent_id_agents'), 'teams', 'agents', ['governance_agent_id'], ['id'], deferrable=True, initially='DEFERRED')
    op.create_foreign_key(op.f('fk_agents_governance_agent_id_agents'), 'agents', 'agents', ['governance_agent_id'], ['id'], deferrable=True, initially='DEFERRED')
    # The history is append-only, enforced by the database itself. ENABLE ALWAYS makes
    # the triggers fire even under session_replication_role = replica.
    op.execute(
        """
        CREATE FUNCTION entity_versions_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'entity_versions is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER entity_versions_no_update_delete BEFORE UPDATE OR DELETE ON entity_versions "
        "FOR EACH ROW EXECUTE FUNCTION entity_versions_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER entity_versions_no_truncate BEFORE TRUNCATE ON entity_versions "
        "FOR EACH STATEMENT EXECUTE FUNCTION entity_versions_refuse_change()"
    )
    op.execute("ALTER TABLE entity_versions ENABLE ALWAYS TRIGGER entity_versions_no_update_delete")
    op.execute("ALTER TABLE entity_versions ENABLE ALWAYS TRIGGER entity_versions_no_truncate")


def downgrade() -> None:
    refuse_to_discard(
        revision,
        'entity_versions',
        'industries',
        'skills',
        'job_roles',
        'teams',
        'agents',
        'agent_skills',
        'job_role_skills',
    )
    op.drop_constraint(op.f('fk_industries_governance_agent_id_agents'), 'industries', type_='foreignkey')
    op.drop_constraint(op.f('fk_job_roles_governance_agent_id_agents'), 'job_roles', type_='foreignkey')
    op.drop_constraint(op.f('fk_skills_governance_agent_id_agents'), 'skills', type_='foreignkey')
    op.drop_constraint(op.f('fk_teams_governance_agent_id_agents'), 'teams', type_='foreignkey')
    op.drop_constraint(op.f('fk_agents_governance_agent_id_agents'), 'agents', type_='foreignkey')
    op.drop_index(op.f('ix_agent_skills_skill_id'), table_name='agent_skills')
    op.drop_table('agent_skills')
    op.drop_index(op.f('ix_agents_team_id'), table_name='agents')
    op.drop_index(op.f('ix_agents_job_role_id'), table_name='agents')
    op.drop_index(op.f('ix_agents_industry_id'), table_name='agents')
    op.drop_index('ix_agents_embedding_hnsw', table_name='agents', postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.drop_table('agents')
    op.drop_index(op.f('ix_teams_job_role_id'), table_name='teams')
    op.drop_index(op.f('ix_teams_industry_id'), table_name='teams')
    op.drop_index('ix_teams_embedding_hnsw', table_name='teams', postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.drop_table('teams')
    op.drop_index(op.f('ix_job_role_skills_skill_id'), table_name='job_role_skills')
    op.drop_table('job_role_skills')
    op.drop_index(op.f('ix_skills_industry_id'), table_name='skills')
    op.drop_index('ix_skills_embedding_hnsw', table_name='skills', postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.drop_index('ix_skills_category_status', table_name='skills')
    op.drop_table('skills')
    op.drop_index(op.f('ix_job_roles_industry_id'), table_name='job_roles')
    op.drop_index('ix_job_roles_embedding_hnsw', table_name='job_roles', postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.drop_table('job_roles')
    op.drop_index('ix_industries_embedding_hnsw', table_name='industries', postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.drop_table('industries')
    op.drop_table('entity_versions')
    op.execute("DROP FUNCTION IF EXISTS entity_versions_refuse_change()")
