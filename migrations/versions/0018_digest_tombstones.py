"""Each stored digest also keeps the heads of the deleted entities, signed: its tombstones.

A digest's leaves hold live entities only, so once a digest had checked an entity's signed
deletion, no later digest remembered it. Someone who could lift the chain's guard deleted
the deletion version and marked the row live again at its previous head: the next digest
found an entity it did not hold, checked its chain from the genesis, found it whole and
attested it. Now ``ledger_digest_tombstones`` keeps, beside each digest's leaves, one row
per soft-deleted entity (its head: the version that records its deletion), and the digest's
signed document (type ``plant.ledger-digest.v2``) carries their count and RFC 6962 root
(``tombstone_count``, ``tombstones_root``). A digest checks each head against the trusted
digest's leaf or tombstone (``models.digest_check``), so an entity brought back to life is
held back. Digests stored before this (type ``v1``) keep no tombstone; no SQL edit can make
a later one pass as such without its key.

The table is guarded like ``ledger_digest_heads`` (migration 0017): no UPDATE or TRUNCATE, no
INSERT into a signed digest's, no DELETE from a kept digest's; the two trigger functions now
name the table they refuse for.

``ledger_digests_v2_began`` holds one row, the time of this upgrade, and refuses UPDATE, DELETE
and TRUNCATE. Plant stores no v1 digest after it, so a v1 document dated later is a published
one (``GET /ledger/digest`` signs v1 over the heads as the rows name them) planted through SQL,
never a base (``models.digest_check.planted``). Stop beat and the workers before upgrading: a
worker still on older code stores v1 digests, which are then not trusted.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from models.migrate import refuse_to_discard

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

TABLE = "ledger_digest_tombstones"
TRIGGERS = {
    f"{TABLE}_signed_no_insert": "AFTER INSERT ON {table} REFERENCING NEW TABLE AS touched FOR EACH STATEMENT "
                                 "EXECUTE FUNCTION ledger_digest_heads_refuse_touching()",
    f"{TABLE}_no_update": "BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION ledger_digest_heads_refuse_change()",
    f"{TABLE}_kept_no_delete": "AFTER DELETE ON {table} REFERENCING OLD TABLE AS touched FOR EACH STATEMENT "
                               "EXECUTE FUNCTION ledger_digest_heads_refuse_touching()",
    f"{TABLE}_no_truncate": "BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION ledger_digest_heads_refuse_change()",
}

BEGAN = "ledger_digests_v2_began"
BEGAN_TRIGGERS = {
    f"{BEGAN}_no_update_delete": "BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION ledger_digest_heads_refuse_change()",
    f"{BEGAN}_no_truncate": "BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION ledger_digest_heads_refuse_change()",
}
EARLIEST, LATEST = "'0001-01-02 00:00:00+00'::timestamptz", "'9999-12-30 00:00:00+00'::timestamptz"  # as migration 0016's


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("digest_id", sa.BigInteger(), nullable=False),
        sa.Column("entity_id", sa.UUID(), nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("link_hash", sa.LargeBinary(length=32), nullable=False),
        sa.ForeignKeyConstraint(["digest_id"], ["ledger_digests.id"], name=op.f(f"fk_{TABLE}_digest_id_ledger_digests"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest_id", "entity_id", name=op.f(f"pk_{TABLE}")),
    )
    # Migration 0017's functions, naming the table whose trigger called them.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION ledger_digest_heads_refuse_change() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION ledger_digest_heads_refuse_touching() RETURNS trigger LANGUAGE plpgsql
        SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            refused bigint;
        BEGIN
            EXECUTE format('SELECT min(t.digest_id) FROM touched t JOIN %I.ledger_digests d ON d.id = t.digest_id WHERE %s',
                           TG_TABLE_SCHEMA, CASE TG_OP WHEN 'INSERT' THEN 'd.signature <> ''''' ELSE 'd.keep_leaves' END)
                INTO refused;
            IF refused IS NOT NULL THEN
                RAISE EXCEPTION '% is append-only: % of digest %''s rows refused (%)', TG_TABLE_NAME, TG_OP, refused,
                    CASE TG_OP WHEN 'INSERT' THEN 'it is signed' ELSE 'it keeps them' END
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    for name, definition in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition.format(table=TABLE)}")
        op.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {name}")
    op.create_table(
        BEGAN,
        sa.Column("one", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("began_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("one", name=op.f(f"ck_{BEGAN}_one_row")),
        sa.CheckConstraint(f"began_at BETWEEN {EARLIEST} AND {LATEST}", name=op.f(f"ck_{BEGAN}_began_at_loadable")),
        sa.PrimaryKeyConstraint("one", name=op.f(f"pk_{BEGAN}")),
    )
    op.execute(f"INSERT INTO {BEGAN} DEFAULT VALUES")
    for name, definition in BEGAN_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition.format(table=BEGAN)}")
        op.execute(f"ALTER TABLE {BEGAN} ENABLE ALWAYS TRIGGER {name}")


def downgrade() -> None:
    # A v2 digest is trusted by no code before this migration: every later digest would check from an older one.
    refuse_to_discard(revision, TABLE, "ledger_digests WHERE document ->> 'type' = 'plant.ledger-digest.v2'")
    op.drop_table(TABLE)  # its triggers go with it; the functions stay migration 0017's to drop
    op.drop_table(BEGAN)
