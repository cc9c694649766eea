"""The signed, linked, append-only history of every governed entity.

Each create or update appends one ``entity_versions`` row::

    content      = RFC 8785 canonical bytes of the entity's governed fields
    content_hash = SHA-256(content)
    link_hash    = SHA-256(LINK_DOMAIN || u16 len(type) || type || entity_id (16 bytes)
                           || u64 version || prev_link (32 bytes) || content_hash)
    signature    = sign(link_hash) with the key named by ``kid``

``prev_link`` is the previous version's ``link_hash`` (32 zero bytes for version 1), so
deleting, reordering or editing any version breaks every later link. Verification
hashes the stored bytes and never re-serializes stored JSON. The database refuses
UPDATE, DELETE and TRUNCATE on the table (triggers enabled ALWAYS, so they fire even
under ``session_replication_role = replica``), and ``UNIQUE(entity_id, version)`` and
``UNIQUE(entity_id, prev_link)`` refuse forks. Appends to one entity are serialized by
the caller holding the entity row's lock.

Here: the table, the link layout, appending versions and reading them back. Checking a
chain is :mod:`models.chain_verification`; checking versions a sealed retired key signed
against its seal digest is :mod:`models.seal_check`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import BigInteger, DateTime, Identity, Integer, LargeBinary, String, UniqueConstraint, func, insert, select
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.canonical import canonical_bytes, strict_json_loads
from models.entities import GovernedEntity, governed_content
from models.signing import KeyRing

GENESIS_LINK = bytes(32)
LINK_DOMAIN = b"plant.entity-link.v1\x00"


class EntityVersion(Base):
    __tablename__ = "entity_versions"
    __table_args__ = (
        UniqueConstraint("entity_id", "version"),
        UniqueConstraint("entity_id", "prev_link"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    version: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    content_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    prev_link: Mapped[bytes] = mapped_column(LargeBinary(32))
    link_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    kid: Mapped[str] = mapped_column(String(128))
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    actor: Mapped[str] = mapped_column(String(255))
    # Stamped at INSERT, not at the transaction's start, after sharing the ledger's versions lock
    # (migration 0008): models.ledger.versions_held relies on both.
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.entity_version_stamp())


def link_hash(entity_type: str, entity_id: uuid.UUID, version: int, prev_link: bytes, content_hash: bytes) -> bytes:
    """SHA-256 over the fixed binary layout documented in the module docstring."""
    return hashlib.sha256(link_prefix(entity_type, entity_id) + link_rest(version, prev_link, content_hash)).digest()


# The layout in two parts, so that verification can hash an entity's prefix once.
_U64 = struct.Struct(">Q")


def link_prefix(entity_type: str, entity_id: uuid.UUID) -> bytes:
    """The part of ``link_hash``'s layout before the version: domain, type and id."""
    kind = entity_type.encode("ascii")
    return LINK_DOMAIN + struct.pack(">H", len(kind)) + kind + entity_id.bytes


def link_rest(version: int, prev_link: bytes, content_hash: bytes) -> bytes:
    return _U64.pack(version) + prev_link + content_hash


def append_version(
    session: Session,
    *,
    entity: GovernedEntity,
    actor: str,
    keyring: KeyRing,
    content: dict | None = None,
    pending: list[EntityVersion] | None = None,
) -> EntityVersion:
    """Append the entity's current governed content as its next version and advance its head.

    The caller must hold the entity row lock (``SELECT ... FOR UPDATE``) when the entity
    already exists; a concurrent append would otherwise hit a fork guard. ``content`` is
    the entity's governed content when the caller already built it. The version row goes
    into the session, or into ``pending`` for a bulk caller that writes many at once with
    :func:`insert_versions`.
    """
    content = canonical_bytes(content if content is not None else governed_content(entity))
    content_hash = hashlib.sha256(content).digest()
    prev = entity.head_link_hash or GENESIS_LINK
    version = entity.version + 1
    link = link_hash(entity.entity_type_value.value, entity.id, version, prev, content_hash)
    kid, signature = keyring.sign(link)
    row = EntityVersion(
        entity_type=entity.entity_type_value.value,
        entity_id=entity.id,
        version=version,
        content=content,
        content_hash=content_hash,
        prev_link=prev,
        link_hash=link,
        kid=kid,
        signature=signature,
        actor=actor,
    )
    if pending is None:
        session.add(row)
    else:
        pending.append(row)
    entity.version = version
    entity.head_link_hash = link
    return row


def insert_versions(session: Session, rows: list[EntityVersion]) -> None:
    """Write version rows in one executemany, not through the unit of work.

    The flush would INSERT ... RETURNING every row's generated id (nobody reads it) as one
    statement of thousands of parameters; parsing that in the driver cost more than the
    inserts themselves in a 500-agent batch.
    """
    if rows:
        columns = [c.key for c in EntityVersion.__table__.columns if c.key not in ("id", "created_at")]
        session.execute(insert(EntityVersion.__table__), [{c: getattr(row, c) for c in columns} for row in rows])


def signer_kids(session: Session, *, limit: int = 5) -> list[str]:
    """Up to ``limit`` of the kids that signed the registry's versions (none: an empty registry)."""
    return list(session.scalars(select(EntityVersion.kid).distinct().order_by(EntityVersion.kid).limit(limit)))


@dataclass(frozen=True)
class ChainFinding:
    code: str
    version: int | None
    detail: str


VERSIONS_SQL = (
    "SELECT entity_type, entity_id, version, content, content_hash, prev_link, link_hash, kid, signature "
    "FROM entity_versions WHERE entity_id = ANY(%s) ORDER BY entity_id, version"
)


def versions_by_entity(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """Plain rows grouped by entity, in version order.

    The audit's hottest read (every version of every entity): it goes straight to
    psycopg in binary format, which skips decoding hex for each bytea column.
    """
    grouped: dict[uuid.UUID, list[Any]] = defaultdict(list)
    connection = session.connection().connection.driver_connection
    with connection.cursor(binary=True, row_factory=namedtuple_row) as cursor:
        # fetchall builds the rows in one call; iterating the cursor costs a Python step per row.
        for row in cursor.execute(VERSIONS_SQL, [ids]).fetchall():
            grouped[row.entity_id].append(row)
    return grouped


def records_a_deletion(content: bytes) -> bool:
    """Whether a version's content has a top-level ``deleted_at``; unreadable content counts as live."""
    return recorded_deletion(content) is not None


def recorded_deletion(content: bytes) -> Any:
    """A version's top-level ``deleted_at`` (as its content spells it), or None: for live content,
    and for content that does not read (which counts as live). Parsed, never byte-searched: a
    nested ``"deleted_at":null`` (in ``attributes``) sorts before the top-level member."""
    try:
        document = strict_json_loads(content)  # the parse for signed JSON: a repeated member is refused
    except ValueError:
        return None
    return document.get("deleted_at") if isinstance(document, dict) else None


def history(session: Session, *, entity_id: uuid.UUID) -> list[EntityVersion]:
    return list(session.scalars(select(EntityVersion).where(EntityVersion.entity_id == entity_id).order_by(EntityVersion.version)))
