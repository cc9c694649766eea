"""The full table metadata: importing this module registers every mapped table.

Alembic's ``env.py`` and the drift check read :data:`metadata` from here.
"""

from models import api_keys, audit_tables, certificates, chain, entities, idempotency, jobs, repair  # noqa: F401  (registers the tables)
from models.base import Base

metadata = Base.metadata
