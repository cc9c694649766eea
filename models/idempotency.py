"""Idempotency keys for creating POSTs (IETF draft "The Idempotency-Key HTTP Header").

The key row and what it made are committed in one transaction. A concurrent duplicate's
INSERT waits on the first request's uncommitted row, then sees it: so 50 concurrent
duplicates create exactly one job (or entity), and each gets the original back. The same
key with a different payload is refused. Keys expire after a configurable TTL and are
scoped to the API key that used them.

A job's key row names its job (``job_id``). A registry entity's row names nothing: the
entity's id is derived from the row itself (:func:`entity_id_for`, over its owner, key and
``created_at``), and the entity is inserted with that id in the same transaction. So the
row finds the entity it made without a column of its own; a key claimed again once
expired has a new ``created_at``, so it makes a new entity with a new id.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import DateTime, ForeignKey, LargeBinary, String, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, CreatedAt
from models.errors import Conflict, IdempotencyKeyReused, InvalidInput

MAX_KEY_LENGTH = 255


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[CreatedAt]
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


def validate_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters", field="Idempotency-Key")
    return key


@dataclass(frozen=True)
class KeyClaim:
    """A key's row as a claim found it: ``replayed`` when it was already there (same
    fingerprint), else reserved by this transaction."""

    replayed: bool
    job_id: uuid.UUID | None
    created_at: dt.datetime


def claim_key(session: Session, *, owner: str, key: str, fingerprint: bytes, ttl_seconds: int) -> uuid.UUID | None:
    """Reserve the key for a new job (returns None), or return the job it already names.

    Raises ``IdempotencyKeyReused`` when the key was used for a different request.
    """
    claim = _claim(session, owner=owner, key=key, fingerprint=fingerprint, ttl_seconds=ttl_seconds)
    return claim.job_id if claim.replayed else None


# Entity ids derived from key rows live under their own UUIDv5 namespace.
ENTITY_ID_NAMESPACE = uuid.UUID("8f0f6f0e-5b0a-4b8e-9d55-6a2b0c1f3e71")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class EntityClaim:
    entity_id: uuid.UUID
    replayed: bool


def claim_key_for_entity(session: Session, *, owner: str, key: str, fingerprint: bytes,
                         ttl_seconds: int) -> EntityClaim:
    """Reserve the key for a new entity, or find the one it already made: either way the
    entity's id (:func:`entity_id_for`). A new entity must be inserted with that id in this
    transaction. Raises ``IdempotencyKeyReused`` when the key was used for a different request.
    """
    claim = _claim(session, owner=owner, key=key, fingerprint=fingerprint, ttl_seconds=ttl_seconds)
    return EntityClaim(entity_id_for(owner=owner, key=key, created_at=claim.created_at), claim.replayed)


def entity_id_for(*, owner: str, key: str, created_at: dt.datetime) -> uuid.UUID:
    """The id of the entity a key row made: a UUIDv5 of the row's primary key and its
    ``created_at`` (whole microseconds since the epoch, as PostgreSQL stores it)."""
    micros = (created_at - EPOCH) // dt.timedelta(microseconds=1)
    return uuid.uuid5(ENTITY_ID_NAMESPACE, f"{owner}\x00{key}\x00{micros}")


def _claim(session: Session, *, owner: str, key: str, fingerprint: bytes, ttl_seconds: int) -> KeyClaim:
    """Insert the key's row, or read the live one holding it.

    The row that made the INSERT conflict can be gone by the SELECT that reads it: beat's
    :func:`purge_expired_keys` may delete it in between, because its ``now()`` is later
    than this transaction's. The key is then free, so the claim is made once more, and
    that INSERT succeeds unless another request claimed the key first.
    """
    for _ in range(2):
        created_at = _insert_key(session, owner=owner, key=key, fingerprint=fingerprint, ttl_seconds=ttl_seconds)
        if created_at is not None:
            return KeyClaim(replayed=False, job_id=None, created_at=created_at)
        row = session.execute(
            select(IdempotencyKey.request_hash, IdempotencyKey.job_id, IdempotencyKey.created_at)
            .where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
        ).one_or_none()
        if row is not None:
            if bytes(row.request_hash) != fingerprint:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different request", field="Idempotency-Key")
            return KeyClaim(replayed=True, job_id=row.job_id, created_at=row.created_at)
    raise Conflict("the Idempotency-Key changed hands while it was claimed; retry the request", field="Idempotency-Key")


def _insert_key(session: Session, *, owner: str, key: str, fingerprint: bytes,
                ttl_seconds: int) -> dt.datetime | None:
    """Insert the key row, replacing an expired one; its ``created_at``, or None when a live
    row holds the key."""
    session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.owner == owner, IdempotencyKey.key == key, IdempotencyKey.expires_at < func.now()))
    inserted = session.execute(
        insert(IdempotencyKey)
        .values(owner=owner, key=key, request_hash=fingerprint,
                expires_at=func.now() + dt.timedelta(seconds=ttl_seconds))
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.created_at)
    ).first()
    return inserted.created_at if inserted is not None else None


def bind_key(session: Session, *, owner: str, key: str, job_id: uuid.UUID) -> None:
    session.execute(update(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key).values(job_id=job_id))


def purge_expired_keys(session: Session) -> int:
    return session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < func.now())).rowcount or 0
