"""Plant signs its own audit record: a run's plan, each chunk's checkpoint, and the close.

Migration 0014 keeps a finished run as it was closed, but a running run takes UPDATEs
(Plant's own checkpoints and close). Someone with plain SQL write access could close a
running run with a summary of their own, move a chunk's cursor past entities it never
read, or insert a run that never ran, and Plant would sign the report on its first
export. Now the worker signs each of those records with the ledger's key as it writes
them (``models.audit_record``), checks a checkpoint before it resumes from it, checks
the plan and every checkpoint when it closes the run, and the export checks the close.

- ``audit_runs.plan_signed``, ``audit_runs.close_signed`` and
  ``audit_chunks.checkpoint_signed``: ``{"kid", "signature"}``, NULL until written.
- ``audit_checkpoints``: every checkpoint step Plant signed, per chunk; triggers enabled
  ALWAYS refuse UPDATE, DELETE and TRUNCATE, so a chunk's checkpoint must be its latest and
  an older signed one cannot be written back.
- ``audit_findings`` refuses an INSERT for a finished run (a trigger enabled ALWAYS that reads
  the run by its schema-qualified name, with its search_path pinned, so no temporary table
  can stand in): a finding added after the close would change a signed run, or pass
  unnoticed in the report of a run closed before this migration.
- ``audit_runs_unsigned``: the runs already finished here, never closed with a signature,
  frozen: triggers enabled ALWAYS refuse INSERT, UPDATE, DELETE and TRUNCATE, so no run can
  be added to it later to pass as one of them. A run still running here has no signed plan
  or checkpoints: its next chunk step fails its job with ``audit-record-invalid``, and its
  close says so; run the audit again.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID
from models.migrate import refuse_to_discard

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_runs", sa.Column("plan_signed", JSONB(), nullable=True))
    op.add_column("audit_runs", sa.Column("close_signed", JSONB(), nullable=True))
    op.add_column("audit_chunks", sa.Column("checkpoint_signed", JSONB(), nullable=True))
    op.create_table(
        "audit_checkpoints",
        sa.Column("chunk_id", sa.BigInteger(), sa.ForeignKey("audit_chunks.id"), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON audit_checkpoints "
        "FOR EACH ROW EXECUTE FUNCTION plant_append_only_refuse()"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION plant_append_only_refuse()"
    )
    for trigger in ("audit_checkpoints_no_update_delete", "audit_checkpoints_no_truncate"):
        op.execute(f"ALTER TABLE audit_checkpoints ENABLE ALWAYS TRIGGER {trigger}")
    schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(
        f"""
        CREATE FUNCTION audit_findings_refuse_after_close() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, {schema}, pg_temp AS $$
        DECLARE
            closed timestamptz;
        BEGIN
            -- Key-share, as the foreign key does, but before the row goes in, and whatever the
            -- run holds: a close in flight (FOR UPDATE) is waited for and the run read again,
            -- so no finding slips in behind it.
            SELECT finished_at INTO closed FROM {schema}.audit_runs WHERE id = NEW.run_id FOR KEY SHARE;
            IF closed IS NOT NULL THEN
                RAISE EXCEPTION 'audit_findings is append-only: a finding for a finished run refused'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_findings_no_insert_after_close BEFORE INSERT ON audit_findings "
        "FOR EACH ROW EXECUTE FUNCTION audit_findings_refuse_after_close()"
    )
    op.execute("ALTER TABLE audit_findings ENABLE ALWAYS TRIGGER audit_findings_no_insert_after_close")
    op.create_table(
        "audit_runs_unsigned",
        sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("audit_runs.id"), primary_key=True),
    )
    op.execute("INSERT INTO audit_runs_unsigned (run_id) SELECT id FROM audit_runs WHERE finished_at IS NOT NULL")
    op.execute(
        "CREATE TRIGGER audit_runs_unsigned_frozen BEFORE INSERT OR UPDATE OR DELETE ON audit_runs_unsigned "
        "FOR EACH ROW EXECUTE FUNCTION plant_append_only_refuse()"
    )
    op.execute(
        "CREATE TRIGGER audit_runs_unsigned_no_truncate BEFORE TRUNCATE ON audit_runs_unsigned "
        "FOR EACH STATEMENT EXECUTE FUNCTION plant_append_only_refuse()"
    )
    for trigger in ("audit_runs_unsigned_frozen", "audit_runs_unsigned_no_truncate"):
        op.execute(f"ALTER TABLE audit_runs_unsigned ENABLE ALWAYS TRIGGER {trigger}")


def downgrade() -> None:
    refuse_to_discard(
        revision,
        'audit_checkpoints',
        'audit_runs_unsigned',
        'audit_runs WHERE plan_signed IS NOT NULL OR close_signed IS NOT NULL',
        'audit_chunks WHERE checkpoint_signed IS NOT NULL',
    )
    op.execute("DROP TRIGGER audit_findings_no_insert_after_close ON audit_findings")
    op.execute("DROP FUNCTION audit_findings_refuse_after_close()")
    op.drop_table("audit_runs_unsigned")
    op.drop_table("audit_checkpoints")
    op.drop_column("audit_chunks", "checkpoint_signed")
    op.drop_column("audit_runs", "close_signed")
    op.drop_column("audit_runs", "plan_signed")
