"""Each audit finding names the checkpoint that wrote it, so the close can tell Plant's from any other.

Migration 0015 signs a run's plan, each chunk's checkpoint and the close, but a finding
INSERTed through SQL into a *running* run was counted and signed with the close as if
Plant had written it: a made-up ``chain-broken`` on a healthy skill made it non-compliant
in a report Plant signed. Now:

- ``audit_findings.chunk_id`` and ``audit_findings.step`` name the chunk and the checkpoint
  step (``audit_checkpoints``, foreign key) whose batch wrote the finding; both NULL for a
  finding written when the run started (seal problems, a digest's findings, an incremental
  run's) or by its close.
- Each signed checkpoint carries the count and a hash chain of its chunk's findings, step by
  step; the signed plan carries the count and hash of those written at the start
  (``models.audit_record``). The close checks both before it counts anything: a finding no
  signature covers is left out of the counts and reported as ``audit-record-invalid``.

A run still running here has checkpoints and a plan signed without those hashes: its next
chunk step fails its job with ``audit-record-invalid``, and its close says so; run the audit
again. Runs already closed keep their close signature, which never covered these columns.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_findings", sa.Column("chunk_id", sa.BigInteger(), nullable=True))
    op.add_column("audit_findings", sa.Column("step", sa.Integer(), nullable=True))
    op.create_foreign_key(op.f("fk_audit_findings_chunk_id_audit_checkpoints"), "audit_findings", "audit_checkpoints",
                          ["chunk_id", "step"], ["chunk_id", "step"])
    op.create_check_constraint(op.f("ck_audit_findings_checkpoint_whole"), "audit_findings",
                               "(chunk_id IS NULL) = (step IS NULL)")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_audit_findings_checkpoint_whole"), "audit_findings", type_="check")
    op.drop_constraint(op.f("fk_audit_findings_chunk_id_audit_checkpoints"), "audit_findings", type_="foreignkey")
    op.drop_column("audit_findings", "step")
    op.drop_column("audit_findings", "chunk_id")
