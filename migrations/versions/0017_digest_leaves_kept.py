"""Keep a digest's leaf rows as store_digest wrote them, and a key seal's for good.

A key seal's digest decides what a retired key signed before its seal, in every write, audit
and restore, and its leaf rows are taken only if they hash to the root the seal file names
(``models.seal_check.sealed_leaves``). Someone with plain SQL access could still edit, add or
delete one row and so make every version the sealed key signed suspect, with no key at all.
Now, with triggers enabled ALWAYS (they fire under session_replication_role = replica too),
``ledger_digest_heads`` refuses UPDATE and TRUNCATE, an INSERT into a signed digest's leaves
(store_digest writes them while its row is the unsigned placeholder), and a DELETE that takes
a row of a digest that keeps its leaves (``keep_leaves``, a seal's mark); leaf pruning deletes
the other digests' rows as before. INSERT and DELETE are checked once per statement, over its
rows (a transition table): a check per row cost pruning 3 to 5 times its own time. The checks
read the digests in the trigger's own schema and pin their search_path, so a temporary table
of the same name cannot answer for them.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

TRIGGERS = ("ledger_digest_heads_no_update", "ledger_digest_heads_kept_no_delete", "ledger_digest_heads_signed_no_insert",
            "ledger_digest_heads_no_truncate")


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION ledger_digest_heads_refuse_change() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            RAISE EXCEPTION 'ledger_digest_heads is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    # Checked once per statement, over its rows (transition tables, both named ``touched``): an
    # INSERT may not add to a signed digest, a DELETE may not take from a kept one.
    op.execute(
        """
        CREATE FUNCTION ledger_digest_heads_refuse_touching() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            refused bigint;
        BEGIN
            EXECUTE format('SELECT min(t.digest_id) FROM touched t JOIN %I.ledger_digests d ON d.id = t.digest_id WHERE %s',
                           TG_TABLE_SCHEMA, CASE TG_OP WHEN 'INSERT' THEN 'd.signature <> ''''' ELSE 'd.keep_leaves' END)
                INTO refused;
            IF refused IS NOT NULL THEN
                RAISE EXCEPTION 'ledger_digest_heads is append-only: % of digest %''s leaves refused (%)', TG_OP, refused,
                    CASE TG_OP WHEN 'INSERT' THEN 'it is signed' ELSE 'it keeps them' END
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ledger_digest_heads_signed_no_insert AFTER INSERT ON ledger_digest_heads "
        "REFERENCING NEW TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION ledger_digest_heads_refuse_touching()"
    )
    op.execute(
        "CREATE TRIGGER ledger_digest_heads_no_update BEFORE UPDATE ON ledger_digest_heads "
        "FOR EACH ROW EXECUTE FUNCTION ledger_digest_heads_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER ledger_digest_heads_kept_no_delete AFTER DELETE ON ledger_digest_heads "
        "REFERENCING OLD TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION ledger_digest_heads_refuse_touching()"
    )
    op.execute(
        "CREATE TRIGGER ledger_digest_heads_no_truncate BEFORE TRUNCATE ON ledger_digest_heads "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_digest_heads_refuse_change()"
    )
    for trigger in TRIGGERS:
        op.execute(f"ALTER TABLE ledger_digest_heads ENABLE ALWAYS TRIGGER {trigger}")


def downgrade() -> None:
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON ledger_digest_heads")
    op.execute("DROP FUNCTION ledger_digest_heads_refuse_touching()")
    op.execute("DROP FUNCTION ledger_digest_heads_refuse_change()")
