"""Every certificate id Plant issued, kept: ``issued_certificates``.

The next certificate number was read from ``certificate_sequences`` and the skills' rows,
both plain rows: with the counter deleted and the last certificate cleared from its skill's
row through SQL, Plant signed the same certificate id into a second chain. Each id Plant
issues is now also a row here, in the certification's transaction, and the table refuses
UPDATE, DELETE and TRUNCATE (triggers enabled ALWAYS, as on ``entity_versions``): the next
number comes after the highest kept for the code, and the primary key refuses an id twice.
The rows are filled from the chains: every certificate a skill version signed.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06
"""

import json
import re

import sqlalchemy as sa
from alembic import op

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

TABLE = "issued_certificates"
ISSUED = re.compile(r"SKILL-([A-Z][A-Z0-9]{0,7})-([0-9]{1,9})")


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column('certificate_id', sa.Text(), nullable=False),
        sa.Column('industry_code', sa.String(length=8), nullable=False),
        sa.Column('number', sa.BigInteger(), nullable=False),
        sa.Column('skill_id', sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint('certificate_id', name=op.f('pk_issued_certificates')),
        sa.UniqueConstraint('industry_code', 'number', name=op.f('uq_issued_certificates_industry_code_number')),
    )
    # Every certificate id the chains hold (one skill per id: the earliest version's, should an
    # id have been signed twice before this table existed). Read in Python: a version row
    # INSERTed through SQL may hold bytes that are no JSON, or JSON nested deeper than the parser
    # recurses (Plant signs no such content), and must not stop the upgrade.
    bind = op.get_bind()
    issued: dict[tuple[str, int], tuple[str, object]] = {}  # (code, number): (id, skill)
    rows = bind.execute(sa.text(
        "SELECT entity_id, content FROM entity_versions WHERE entity_type = 'skill' "
        "AND position(convert_to('\"certificate_id\"', 'UTF8') IN content) > 0 ORDER BY id"))
    for skill_id, content in rows:
        try:
            certificate = json.loads(bytes(content)).get("certificate")
        except (ValueError, AttributeError, RecursionError):
            continue
        certificate_id = certificate.get("certificate_id") if isinstance(certificate, dict) else None
        if isinstance(certificate_id, str) and (match := ISSUED.fullmatch(certificate_id)):
            issued.setdefault((match.group(1), int(match.group(2))), (certificate_id, skill_id))
    if issued:
        op.bulk_insert(sa.table(TABLE, sa.column("certificate_id"), sa.column("industry_code"), sa.column("number"),
                                sa.column("skill_id")),
                       [{"certificate_id": c, "industry_code": code, "number": n, "skill_id": s}
                        for (code, n), (c, s) in issued.items()])
    op.execute(f"CREATE TRIGGER {TABLE}_no_update_delete BEFORE UPDATE OR DELETE ON {TABLE} "
               "FOR EACH ROW EXECUTE FUNCTION plant_append_only_refuse()")
    op.execute(f"CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
               "FOR EACH STATEMENT EXECUTE FUNCTION plant_append_only_refuse()")
    for trigger in ("no_update_delete", "no_truncate"):
        op.execute(f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {TABLE}_{trigger}")


def downgrade() -> None:
    # Nothing is lost: every row is a certificate a skill version signed (the upgrade reads them
    # back from the chains).
    op.drop_table(TABLE)
