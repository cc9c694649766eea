"""Make ``ledger_digests`` append-only, like the chain.

Someone who could DELETE the newest digest through SQL (or UPDATE it, say its ``as_of``)
made the incremental audit and the tampering check compare against an older one, so a
rollback or a deletion between the two went unreported. The table now refuses DELETE and
TRUNCATE, and any UPDATE but two: ``store_digest`` inserts an unsigned placeholder row
(the leaf rows need its id) and then fills in its signed columns and its leaf attestation,
and ``plant signing-keys seal`` marks its digest ``keep_leaves``. Once signed and attested,
a digest's columns never change but for that mark.
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
    # What an UPDATE may do: fill in the unsigned placeholder row (signature still '') that
    # store_digest inserts first; then, once, its leaf attestation (a signature over the leaf
    # rows' transaction id: a forged one is not trusted, the leaves are re-hashed); or set
    # keep_leaves and change nothing else (a seal marks its digest; keeping leaves longer
    # hides nothing). Each is what an INSERT could do anyway; the columns are compared as
    # jsonb text, where 5 and 5.0 differ. The function reads no table and pins its
    # search_path, so a temporary table or function of the same name cannot answer. An
    # INSERT may not date a digest after now() (store_digest stamps now() itself): one dated
    # in the future would stay the latest for good, and no UPDATE can move it back.
    op.execute(
        """
        CREATE FUNCTION ledger_digests_refuse_change() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                IF NEW.as_of > now() THEN
                    RAISE EXCEPTION 'ledger_digests: a digest as of % is dated after now: INSERT refused', NEW.as_of
                        USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END IF;
            IF TG_OP = 'UPDATE' THEN
                IF OLD.signature = '' AND NEW.as_of = OLD.as_of THEN
                    RETURN NEW;
                END IF;
                IF NEW.keep_leaves
                        AND (to_jsonb(NEW) - 'keep_leaves')::text = (to_jsonb(OLD) - 'keep_leaves')::text THEN
                    RETURN NEW;
                END IF;
                IF OLD.leaves_attestation IS NULL AND OLD.leaves_xmin IS NULL
                        AND (to_jsonb(NEW) - 'leaves_xmin' - 'leaves_attestation')::text
                            = (to_jsonb(OLD) - 'leaves_xmin' - 'leaves_attestation')::text THEN
                    RETURN NEW;
                END IF;
            END IF;
            RAISE EXCEPTION 'ledger_digests is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ledger_digests_no_update_delete BEFORE INSERT OR UPDATE OR DELETE ON ledger_digests "
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
