"""Record when a job last entered the queue: ``jobs.queued_at``.

``plant_jobs_queued_oldest_age_seconds`` counted a queued job's wait from its creation: an
audit that ran an hour and was handed back (its worker shut down at a deploy), or retried,
showed an hour of backlog the moment it was queued again, and an alert on queue wait fired
at every such deploy. No column held the time a job last entered the queue: ``enqueued_at``
is restamped by each republish of a lost message, ``updated_at`` by every write. A job is
queued when it is created, and again when an attempt hands it back or releases it for a retry;
each sets this column.

Every queued row already there gets its ``created_at``, the time the gauge counted from until
now (an upgrade must not make a backlog look younger than it was measured a moment before);
the others keep the upgrade's time, which nothing reads (the gauge reads queued rows, and a job
queued again is stamped then). The column comes with a stored default, so adding it rewrites no
row, and only the queued rows are updated: the jobs table only grows, and the migration holds
it locked against submissions and claims while it runs. Like every time Plant stores, it must be
one Python can load (migration 0016): adding that check reads the table once (no write). It is
not added NOT VALID, which would read nothing: alembic's ``check`` reflects such a constraint
with an option SQLAlchemy cannot place, and warns on every comparison of the schema.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('queued_at', sa.DateTime(timezone=True), server_default=sa.func.now(),
                                    nullable=False))
    op.execute("UPDATE jobs SET queued_at = created_at WHERE status = 'queued'")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT ck_jobs_queued_at_loadable CHECK (queued_at BETWEEN "
               "'0001-01-02 00:00:00+00'::timestamptz AND '9999-12-30 00:00:00+00'::timestamptz)")


def downgrade() -> None:
    # Only the time a job last entered the queue goes: the gauge counts from creation again.
    op.drop_constraint('ck_jobs_queued_at_loadable', 'jobs')
    op.drop_column('jobs', 'queued_at')
