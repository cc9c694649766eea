"""Tables of the compliance audit and the ledger digest.

An ``audit_runs`` row belongs to one ``audit.run`` job. Its scope is split into
``audit_chunks`` (an entity type and an id range each) that workers process in
parallel; a chunk's ``cursor`` and ``counters`` are its checkpoint, committed together
with the findings of each batch, so a retried chunk resumes exactly where it stopped.
``ledger_digests`` keeps signed digests of every entity's head, with their leaves in
``ledger_digest_heads`` so a later audit can say which entity rolled back or changed.
``ledger_digests`` is append-only (triggers, migration 0013): a row changes only in the
transaction that stores it; its leaf rows may be pruned.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, ForeignKeyConstraint, Identity, Index, Integer, LargeBinary, String, Text, UniqueConstraint, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Timestamp, UUIDPk


class AuditRun(Base):
    __tablename__ = "audit_runs"

    id: Mapped[UUIDPk]
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    entities_total: Mapped[int] = mapped_column(Integer, server_default="0")
    chunks_total: Mapped[int] = mapped_column(Integer, server_default="0")
    chunks_done: Mapped[int] = mapped_column(Integer, server_default="0")
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[CreatedAt]
    finished_at: Mapped[Timestamp | None]
    # Plant's signatures over the run's plan and its close (models.audit_record), migration 0015.
    plan_signed: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    close_signed: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    # The job attempt that last put the run's pending chunks on the queue (migration 0024):
    # ``models.audit_chunks.keep_waiting_audits_leased`` renews only runs whose chunks wait there.
    # 0: none of its chunks is known to wait (planned, not yet published; or a chunk's retries
    # spent). NULL: planned by a release before 0024, which published without recording it.
    chunks_published_attempt: Mapped[int | None] = mapped_column(Integer)


class AuditRunUnsigned(Base):
    """The runs already finished when Plant began to sign its audit record (migration 0015),
    frozen by triggers: their closes carry no signature to check."""

    __tablename__ = "audit_runs_unsigned"

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_runs.id"), primary_key=True)


class AuditChunk(Base):
    __tablename__ = "audit_chunks"
    __table_args__ = (UniqueConstraint("run_id", "chunk_no"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_runs.id", ondelete="CASCADE"))
    chunk_no: Mapped[int] = mapped_column(Integer)
    entity_type: Mapped[str] = mapped_column(String(16))
    low_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    high_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    cursor: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    done: Mapped[bool] = mapped_column(Boolean, server_default="false")
    counters: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    checkpoint_signed: Mapped[dict[str, str] | None] = mapped_column(JSONB)  # models.audit_record


class AuditCheckpoint(Base):
    """Each checkpoint Plant signed for a chunk, by step (migration 0015; triggers refuse
    UPDATE, DELETE and TRUNCATE): a chunk's checkpoint must be its latest, so an older one
    Plant signed cannot be written back."""

    __tablename__ = "audit_checkpoints"

    chunk_id: Mapped[int] = mapped_column(ForeignKey("audit_chunks.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)


class AuditFinding(Base):
    __tablename__ = "audit_findings"
    __table_args__ = (
        Index(None, "run_id", "id"), Index(None, "run_id", "entity_id"),
        ForeignKeyConstraint(["chunk_id", "step"], ["audit_checkpoints.chunk_id", "audit_checkpoints.step"]),
        CheckConstraint("(chunk_id IS NULL) = (step IS NULL)", name="checkpoint_whole"),
        CheckConstraint("id BETWEEN 1 AND 9007199254740991", name="id_signable"),  # canonical JSON's integers
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_runs.id", ondelete="CASCADE"))
    entity_type: Mapped[str | None] = mapped_column(String(16))
    entity_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    version: Mapped[int | None] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    rule_id: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[CreatedAt]
    # The checkpoint whose batch wrote it (migration 0016); NULL when the run's start or close did.
    chunk_id: Mapped[int | None] = mapped_column(BigInteger)
    step: Mapped[int | None] = mapped_column(Integer)


class LedgerDigest(Base):
    __tablename__ = "ledger_digests"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    as_of: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    entity_count: Mapped[int] = mapped_column(Integer)
    heads_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    kid: Mapped[str] = mapped_column(String(128))
    signature: Mapped[str] = mapped_column(Text)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The transaction id on every leaf row as written, and a signature over it (by the
    # digest's key): see models.ledger_trust.leaves_statement. NULL for digests stored before.
    leaves_xmin: Mapped[str | None] = mapped_column(String(20))
    leaves_attestation: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Leaf rows kept whatever newer digests come (a key seal's digest; every digest stored
    # before migration 0011); others go once PLANT_DIGEST_LEAVES_KEPT newer ones exist.
    keep_leaves: Mapped[bool] = mapped_column(Boolean, server_default="false")
    created_at: Mapped[CreatedAt]


class _DigestHeadColumns:
    """One entity's head as a stored digest keeps it."""

    digest_id: Mapped[int] = mapped_column(ForeignKey("ledger_digests.id", ondelete="CASCADE"), primary_key=True)
    entity_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    link_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class LedgerDigestHead(_DigestHeadColumns, Base):
    """A leaf: a live entity's head, covered by the digest's signed ``heads_root``."""

    __tablename__ = "ledger_digest_heads"


class LedgerDigestTombstone(_DigestHeadColumns, Base):
    """A soft-deleted entity's head (the version recording its deletion), covered by the
    ``tombstones_root`` a stored digest's document signs (type ``v2``, migration 0018)."""

    __tablename__ = "ledger_digest_tombstones"


class ScheduledFire(Base):
    """One row per (schedule entry, fire time): two beats cannot both enqueue a tick."""

    __tablename__ = "scheduled_fires"

    schedule: Mapped[str] = mapped_column(String(64), primary_key=True)
    fire_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[CreatedAt]




class SignedExport(Base):
    """A finished run's report as Plant signed it on its first export, once per key: its
    SHA-256, the detached JWS (handed out again on every later export, so a randomised
    PS256 signature is made once) and the SHA-256 of the signature's bytes, which sealing
    the key lists (:mod:`models.key_seals`), so the report still verifies afterwards."""

    __tablename__ = "signed_exports"

    kid: Mapped[str] = mapped_column(String(128), primary_key=True)
    document_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    jws: Mapped[str] = mapped_column(Text)
    signature_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[CreatedAt]


class SignedExportsBegan(Base):
    """One row: when ``signed_exports`` began recording (migration 0010). A key that signed
    anything before then may have handed out documents no seal can list."""

    __tablename__ = "signed_exports_began"
    __table_args__ = (CheckConstraint("one", name="one_row"),)

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    began_at: Mapped[CreatedAt]


class LedgerDigestsV2Began(Base):
    """One row: when Plant began storing v2 digests (migration 0018), guarded against change.
    A v1 digest dated later is a published one planted as stored (``models.digest_check``)."""

    __tablename__ = "ledger_digests_v2_began"
    __table_args__ = (CheckConstraint("one", name="one_row"),)  # and began_at loadable, as every time (migration 0016)

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    began_at: Mapped[CreatedAt]


class KeySealSignature(Base):
    """One signature (its SHA-256) that a key's seal lists; the seal file commits to the whole
    list by count and root (:mod:`models.key_seals`), so a row added here later is noticed."""

    __tablename__ = "key_seal_signatures"

    kid: Mapped[str] = mapped_column(String(128), primary_key=True)
    signature_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
