"""Make ``ledger_digests`` append-only, like the chain.

Someone who could DELETE the newest digest through SQL (or UPDATE it, say its ``as_of``)
made the incremental audit and the tampering check compare against an older one, so a
rollback or a deletion between the two went unreported. The table now refuses DELETE and
TRUNCATE, and UPDATE of any row but one the current transaction wrote: ``store_digest``
inserts a placeholder row (the leaf rows need its id), then fills in its signed columns
and leaf attestation, and ``plant signing-keys seal`` marks its digest ``keep_leaves``,
all before they commit. Once a digest's transaction commits, its row never changes.
The triggers are enabled ALWAYS, so they fire even under session_replication_role =
replica. Leaf pruning deletes ``ledger_digest_heads`` rows only, which stays allowed.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A row version whose writer (xmin) is still in progress is visible only to that
    # writer, so an UPDATE may go ahead only when pg_xact_status calls the row's writer
    # "in progress": it is this transaction, or one of its subtransactions. xmin holds
    # the low 32 bits of the writer's id; the full id is the one nearest this
    # transaction's. An id that cannot be placed (a row frozen 2**31 transactions ago)
    # is refused like any other.
    op.execute(
        """
        CREATE FUNCTION ledger_digests_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            writer bigint;
            near bigint;
            status text;
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                SELECT xmin::text::bigint INTO writer FROM ledger_digests WHERE id = OLD.id;
                near := pg_current_xact_id()::text::bigint;
                IF writer IS NOT NULL THEN
                    writer := near + ((writer - near % 4294967296 + 2147483648) % 4294967296 + 4294967296)
                        % 4294967296 - 2147483648;
                    BEGIN
                        status := pg_xact_status(writer::text::xid8);
                    EXCEPTION WHEN invalid_parameter_value THEN
                        status := NULL;
                    END;
                    IF status = 'in progress' THEN
                        RETURN NEW;
                    END IF;
                END IF;
            END IF;
            RAISE EXCEPTION 'ledger_digests is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ledger_digests_no_update_delete BEFORE UPDATE OR DELETE ON ledger_digests "
        "FOR EACH ROW EXECUTE FUNCTION ledger_digests_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER ledger_digests_no_truncate BEFORE TRUNCATE ON ledger_digests "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_digests_refuse_change()"
    )
    op.execute("ALTER TABLE ledger_digests ENABLE ALWAYS TRIGGER ledger_digests_no_update_delete")
    op.execute("ALTER TABLE ledger_digests ENABLE ALWAYS TRIGGER ledger_digests_no_truncate")


def downgrade() -> None:
    op.execute("DROP TRIGGER ledger_digests_no_truncate ON ledger_digests")
    op.execute("DROP TRIGGER ledger_digests_no_update_delete ON ledger_digests")
    op.execute("DROP FUNCTION ledger_digests_refuse_change()")
