"""Keep the audit record and the registry's rows: what a signed report is built from.

A report is signed when it is first exported, over what ``audit_runs`` and
``audit_findings`` hold then. Someone with plain SQL write access could delete a finished
run's findings and rewrite its summary, and Plant would sign the doctored report. And an
entity row deleted through SQL left its chain unread by a full audit with no digest to
compare against. Now, with triggers enabled ALWAYS (as on ``entity_versions``, so they
fire under session_replication_role = replica too):

- ``audit_findings`` and ``signed_exports`` refuse UPDATE, DELETE and TRUNCATE;
- ``audit_runs`` refuses DELETE and TRUNCATE, and UPDATE of a finished run (its
  ``finished_at`` set): a running run still takes its chunk counts and its close;
- the entity tables refuse DELETE and TRUNCATE (entities are deleted by a signed version
  that sets ``deleted_at``; nothing in Plant deletes a row).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

KEPT = ("audit_findings", "signed_exports")  # no UPDATE, DELETE or TRUNCATE
ENTITY_TABLES = ("industries", "skills", "job_roles", "teams", "agents")  # no DELETE or TRUNCATE


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION plant_append_only_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION audit_runs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND OLD.finished_at IS NULL THEN
                RETURN NEW;  -- a running run: chunk counts, and its close
            END IF;
            RAISE EXCEPTION 'audit_runs is append-only once a run is finished: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    for table in KEPT:
        _guard(table, f"{table}_no_update_delete", "BEFORE UPDATE OR DELETE", "plant_append_only_refuse")
    _guard("audit_runs", "audit_runs_no_update_delete", "BEFORE UPDATE OR DELETE", "audit_runs_refuse_change")
    for table in ENTITY_TABLES:
        _guard(table, f"{table}_no_delete", "BEFORE DELETE", "plant_append_only_refuse")
    for table in (*KEPT, "audit_runs", *ENTITY_TABLES):
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION plant_append_only_refuse()")
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate")


def _guard(table: str, name: str, when: str, function: str) -> None:
    op.execute(f"CREATE TRIGGER {name} {when} ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()")
    op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")


def downgrade() -> None:
    for table in (*KEPT, "audit_runs", *ENTITY_TABLES):
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
    for table in ENTITY_TABLES:
        op.execute(f"DROP TRIGGER {table}_no_delete ON {table}")
    for table in (*KEPT, "audit_runs"):
        op.execute(f"DROP TRIGGER {table}_no_update_delete ON {table}")
    op.execute("DROP FUNCTION audit_runs_refuse_change()")
    op.execute("DROP FUNCTION plant_append_only_refuse()")
