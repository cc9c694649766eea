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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import BigInteger, DateTime, Identity, Integer, LargeBinary, String, UniqueConstraint, func, select
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.canonical import canonical_bytes
from models.entities import EntityType, GovernedEntity, governed_content
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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def link_hash(entity_type: str, entity_id: uuid.UUID, version: int, prev_link: bytes, content_hash: bytes) -> bytes:
    """SHA-256 over the fixed binary layout documented in the module docstring."""
    kind = entity_type.encode("ascii")
    layout = (
        LINK_DOMAIN
        + struct.pack(">H", len(kind))
        + kind
        + entity_id.bytes
        + struct.pack(">Q", version)
        + prev_link
        + content_hash
    )
    return hashlib.sha256(layout).digest()


def append_version(session: Session, *, entity: GovernedEntity, actor: str, keyring: KeyRing) -> EntityVersion:
    """Append the entity's current governed content as its next version and advance its head.

    The caller must hold the entity row lock (``SELECT ... FOR UPDATE``) when the entity
    already exists; a concurrent append would otherwise hit a fork guard.
    """
    content = canonical_bytes(governed_content(entity))
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
    session.add(row)
    entity.version = version
    entity.head_link_hash = link
    return row


@dataclass(frozen=True)
class ChainFinding:
    code: str
    version: int | None
    detail: str


@dataclass(frozen=True)
class ChainVerification:
    entity_type: str
    entity_id: uuid.UUID
    versions: int
    findings: list[ChainFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_versions(rows: Iterable[EntityVersion], *, keyring: KeyRing) -> tuple[int, list[ChainFinding]]:
    """Check one entity's versions, given in version order: numbering, links, hashes, signatures."""
    findings: list[ChainFinding] = []
    expected_prev, count = GENESIS_LINK, 0
    for count, row in enumerate(rows, start=1):
        if row.version != count:
            findings.append(ChainFinding("version-gap", row.version, f"expected version {count}"))
        if bytes(row.prev_link) != expected_prev:
            findings.append(ChainFinding("broken-link", row.version, "prev_link does not match the previous link"))
        if hashlib.sha256(bytes(row.content)).digest() != bytes(row.content_hash):
            findings.append(ChainFinding("content-hash-mismatch", row.version, "content does not hash to content_hash"))
        recomputed = link_hash(row.entity_type, row.entity_id, row.version, bytes(row.prev_link), bytes(row.content_hash))
        if recomputed != bytes(row.link_hash):
            findings.append(ChainFinding("link-hash-mismatch", row.version, "link_hash does not match its inputs"))
        if not keyring.verify(row.kid, bytes(row.signature), bytes(row.link_hash)):
            findings.append(ChainFinding("bad-signature", row.version, f"signature does not verify with kid {row.kid}"))
        expected_prev = bytes(row.link_hash)
    return count, findings


def history(session: Session, *, entity_id: uuid.UUID) -> list[EntityVersion]:
    return list(session.scalars(select(EntityVersion).where(EntityVersion.entity_id == entity_id).order_by(EntityVersion.version)))


def verify_entity(session: Session, *, entity: GovernedEntity, keyring: KeyRing) -> ChainVerification:
    """Verify the entity's chain and that the row still equals its head version."""
    rows = history(session, entity_id=entity.id)
    count, findings = verify_versions(rows, keyring=keyring)
    entity_type = EntityType(entity.entity_type_value).value
    if not rows:
        findings.append(ChainFinding("no-history", None, "entity has no versions"))
        return ChainVerification(entity_type, entity.id, 0, findings)
    head = rows[-1]
    if entity.version != head.version or entity.head_link_hash != bytes(head.link_hash):
        findings.append(ChainFinding("head-mismatch", head.version, "entity head does not point at its last version"))
    if canonical_bytes(governed_content(entity)) != bytes(head.content):
        findings.append(ChainFinding("row-content-mismatch", head.version, "entity row differs from its head version"))
    return ChainVerification(entity_type, entity.id, count, findings)
