"""The ``jobs`` table: one row per unit of background work and its whole lifecycle.

Status moves ``queued -> running -> succeeded | failed | cancelled``. The row holds the
parameters (the Celery message carries only the id), progress, the outcome, the worker
that holds it and its lease, and ``attempts``, which doubles as a fencing token. Of those
attempts, ``handbacks`` ended by handing the job back unfailed (a worker shutting down, a
lease lapsing between a bulk job's batches); only the others count against
``PLANT_JOB_MAX_ATTEMPTS``. ``requested_by`` names who asked for the job (the API's
``api-key:<id>``, beat's ``beat:<schedule>``); the chain versions the job writes carry
actor ``job:<id>``, so the two together trace a version to the key behind it.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any, Protocol

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Timestamp, UpdatedAt, UUIDPk


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
_STATUS_SQL = ", ".join(f"'{s.value}'" for s in JobStatus)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_SQL})", name="status_valid"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        CheckConstraint("handbacks >= 0 AND handbacks <= attempts", name="handbacks_within_attempts"),
        CheckConstraint("republishes >= 0", name="republishes_non_negative"),
        CheckConstraint("progress_done >= 0", name="progress_done_non_negative"),
        Index(None, "created_at", "id"),
        Index(None, "status", "created_at", "id"),
        Index(None, "kind", "created_at", "id"),
        # The requeue scan only ever looks at queued rows.
        Index("ix_jobs_queued_enqueued_at", "enqueued_at", postgresql_where=text("status = 'queued'")),
        # The outbox dispatcher's scan: committed jobs never published.
        Index("ix_jobs_unpublished", "created_at", postgresql_where=text("status = 'queued' AND enqueued_at IS NULL")),
        Index("ix_jobs_running_lease", "lease_expires_at", postgresql_where=text("status = 'running'")),
    )

    id: Mapped[UUIDPk]
    kind: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(32), server_default="default")
    status: Mapped[str] = mapped_column(String(16), server_default=JobStatus.QUEUED.value)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    progress_done: Mapped[int] = mapped_column(Integer, server_default="0")
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    handbacks: Mapped[int] = mapped_column(Integer, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[Timestamp | None]
    cancel_requested_at: Mapped[Timestamp | None]
    # Stamped when the job was (or, set in the INSERT, is about to be) published.
    # NULL: the outbox still has to publish it.
    enqueued_at: Mapped[Timestamp | None]
    # Times the lost-message sweep published it again since it was last queued: each doubles
    # the wait before the next (models.job_recovery.claim_lost_messages).
    republishes: Mapped[int] = mapped_column(Integer, server_default="0")
    # Who asked for the job: NULL for rows older than migration 0019 and jobs other code inserts.
    requested_by: Mapped[str | None] = mapped_column(Text)
    # Who asked to cancel it (the API's ``api-key:<id>``), by the first cancel request; NULL for
    # jobs not cancelled on request and for cancels older than migration 0022.
    cancelled_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]
    # When it last entered the queue: created, or released for a retry or handed back by its
    # attempt (models.job_recovery); a republish of a lost message leaves it, as the job was
    # queued all along. The backlog gauge counts a job's wait from it (models.metrics.queue_backlog).
    queued_at: Mapped[CreatedAt]
    started_at: Mapped[Timestamp | None]
    finished_at: Mapped[Timestamp | None]
    updated_at: Mapped[UpdatedAt]

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)


class JobRecord(Protocol):
    """A job as clients see it: a :class:`Job`, or a row of these columns (faster to read)."""

    id: uuid.UUID
    kind: str
    status: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    progress_done: int
    progress_total: int | None
    progress_message: str | None
    attempts: int
    requested_by: str | None
    cancelled_by: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


RECORD_COLUMNS = tuple(Job.__table__.c[name] for name in JobRecord.__annotations__)


# The most agents one bulk assignment plan reads: the ids a request may list, and the unassigned
# agents an ``all_unassigned`` plan takes (the first by id). Each costs about 3 KB of float64
# embedding and more in the solver: every unassigned agent of a large registry exhausted the worker.
# Here, not in models.bulk_plan, so the web process can name it without loading NumPy.
MAX_BULK_AGENTS = 25_000


class BulkAssignmentMove(Base):
    """What a bulk assignment job did with one agent, across all its attempts: each batch
    records its agents in its own transaction, so a job retried part-way still reports the
    agents its earlier attempts seated (the next attempt plans only what is left). The
    latest word on an agent wins; ``similarity`` is that of its seat (placed only). ``team_id``
    is that seat for a placed agent, and for one not placed the team the plan saw it in (None:
    unseated), by which a retry tells an agent another write moved since."""

    __tablename__ = "bulk_assignment_moves"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    agent_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    agent_name: Mapped[str] = mapped_column(String(255))
    placed: Mapped[bool] = mapped_column(Boolean)
    team_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    similarity: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
