"""Keep the vector of what a skill's text reads as: ``skills.reading_embedding``.

The duplicate gate compares a skill with the certified ones by vector, and since stop 44 also
as its text reads (``models.lookalikes.skeleton``: Cyrillic ``о`` read as ``o``, fullwidth
letters as ASCII ones). It found candidates only by the certified skills' stored vectors, which
are of their written texts: a look-alike spelling certified first is far from a plain copy
certified after it, and the copy passed. The vector of each skill's skeleton, where that is not
its text (NULL otherwise, so every ASCII skill keeps a NULL), is now stored beside its
embedding and searched too. It is derived data, like ``embedding``: not signed, only a way to
find candidates, each confirmed from signed text.

No row is filled here, as a migration has no embedder: ``plant db upgrade`` fills the column
where it is NULL after the migrations (``models.registry.fill_reading_vectors``, reading only the
skills whose text holds a character beyond ASCII). Until then, for a skill a release before this
one writes during the rollout (the next upgrade fills it), and for one whose text such a release
changes (its vector stays that of the old text until ``plant entity restore`` or a write by this
release), the audit shows the skill's ``embedding-mismatch``. Adding a nullable column rewrites no
row.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('skills', sa.Column('reading_embedding', Vector(384), nullable=True))


def downgrade() -> None:
    # Only the derived reading vectors go: the gate finds candidates by the written texts again.
    op.drop_column('skills', 'reading_embedding')
