"""Idempotency keys for job-creating POSTs (IETF draft "The Idempotency-Key HTTP Header").

The key row and the job it names are committed in one transaction. A concurrent
duplicate's INSERT waits on the first request's uncommitted row, then sees it: so 50
concurrent duplicates create exactly one job, and each gets the original job back. The
same key with a different payload is refused. Keys expire after a configurable TTL and
are scoped to the API key that used them.
"""

from __future__ import annotations

import datetime as dt
import uuid

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


def claim_key(session: Session, *, owner: str, key: str, fingerprint: bytes, ttl_seconds: int) -> uuid.UUID | None:
    """Reserve the key for a new job (returns None), or return the job it already names.

    Raises ``IdempotencyKeyReused`` when the key was used for a different request.

    The row that made the INSERT conflict can be gone by the SELECT that reads it: beat's
    :func:`purge_expired_keys` may delete it in between, because its ``now()`` is later
    than this transaction's. The key is then free, so the claim is made once more, and
    that INSERT succeeds unless another request claimed the key first.
    """
    for _ in range(2):
        if _insert_key(session, owner=owner, key=key, fingerprint=fingerprint, ttl_seconds=ttl_seconds):
            return None
        row = session.execute(
            select(IdempotencyKey.request_hash, IdempotencyKey.job_id)
            .where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
        ).one_or_none()
        if row is not None:
            if bytes(row.request_hash) != fingerprint:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different request", field="Idempotency-Key")
            return row.job_id
    raise Conflict("the Idempotency-Key changed hands while it was claimed; retry the request", field="Idempotency-Key")


def _insert_key(session: Session, *, owner: str, key: str, fingerprint: bytes, ttl_seconds: int) -> bool:
    """Insert the key row, replacing an expired one; False when a live row holds the key."""
    session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.owner == owner, IdempotencyKey.key == key, IdempotencyKey.expires_at < func.now()))
    inserted = session.execute(
        insert(IdempotencyKey)
        .values(owner=owner, key=key, request_hash=fingerprint,
                expires_at=func.now() + dt.timedelta(seconds=ttl_seconds))
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    ).first()
    return inserted is not None


def bind_key(session: Session, *, owner: str, key: str, job_id: uuid.UUID) -> None:
    session.execute(update(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key).values(job_id=job_id))


def purge_expired_keys(session: Session) -> int:
    return session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < func.now())).rowcount or 0
