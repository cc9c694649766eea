"""Record which attempt of an audit job published its run's chunks:
``audit_runs.chunks_published_attempt``.

A running audit's batches renew the leases of the audits published after it whose chunks
wait behind its own on the one audit worker. Nothing told an audit whose chunks wait from
one whose worker died after its plan committed and before it published them: no message
of it is left anywhere, yet its lease was renewed until every audit ahead of it finished.
``plant.audit.run`` now records its attempt here once its chunks are on the queue, and
only a run whose chunks the job's current attempt published is kept leased. A run planned
since starts at 0 (nothing published yet); NULL, what this migration gives every run already
there, marks one an earlier release planned (in flight at the upgrade, or planned by a worker
a rolling rollout had not replaced yet), kept leased as that release kept it.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('audit_runs', sa.Column('chunks_published_attempt', sa.Integer(), nullable=True))


def downgrade() -> None:
    # Only the record of a running audit's last publish goes: no one's data (a run without
    # it is left to its lease, and the sweep republishes it).
    op.drop_column('audit_runs', 'chunks_published_attempt')
