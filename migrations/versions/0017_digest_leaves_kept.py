"""Keep a digest's leaf rows as store_digest wrote them, and a key seal's for good.

A key seal's digest decides what a retired key signed before its seal, in every write, audit
and restore, and its leaf rows are taken only if they hash to the root the seal file names
(``models.chain.sealed_leaves``). Someone with plain UPDATE or DELETE on
``ledger_digest_heads`` could still edit one row and so make every version the sealed key
signed suspect, with no key at all. Now, with triggers enabled ALWAYS (they fire under
session_replication_role = replica too), ``ledger_digest_heads`` refuses UPDATE and
TRUNCATE, and DELETE of a row whose digest keeps its leaves (``keep_leaves``, a seal's mark);
leaf pruning deletes the other digests' rows as before. The function reads the digest in the
trigger's own schema and pins its search_path, so a temporary table of the same name cannot
answer for it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION ledger_digest_heads_refuse_change() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            kept boolean;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                EXECUTE format('SELECT keep_leaves FROM %I.ledger_digests WHERE id = $1', TG_TABLE_SCHEMA)
                    INTO kept USING OLD.digest_id;
                IF kept IS NOT TRUE THEN
                    RETURN OLD;  -- pruning an unkept digest's leaves
                END IF;
            END IF;
            RAISE EXCEPTION 'ledger_digest_heads is append-only (a kept digest''s rows too): % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ledger_digest_heads_no_update_delete BEFORE UPDATE OR DELETE ON ledger_digest_heads "
        "FOR EACH ROW EXECUTE FUNCTION ledger_digest_heads_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER ledger_digest_heads_no_truncate BEFORE TRUNCATE ON ledger_digest_heads "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_digest_heads_refuse_change()"
    )
    op.execute("ALTER TABLE ledger_digest_heads ENABLE ALWAYS TRIGGER ledger_digest_heads_no_update_delete")
    op.execute("ALTER TABLE ledger_digest_heads ENABLE ALWAYS TRIGGER ledger_digest_heads_no_truncate")


def downgrade() -> None:
    op.execute("DROP TRIGGER ledger_digest_heads_no_truncate ON ledger_digest_heads")
    op.execute("DROP TRIGGER ledger_digest_heads_no_update_delete ON ledger_digest_heads")
    op.execute("DROP FUNCTION ledger_digest_heads_refuse_change()")
