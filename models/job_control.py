"""What a client asks of jobs beyond creating and reading one: a page of them, and a cancel.

:func:`list_jobs` pages through jobs newest first, leaving out of each item a JSON member
too long for a list. :func:`request_cancel` ends a queued job (or one whose attempt stopped
reporting) at once and asks a running one to stop at its next checkpoint. The worker's side of
a job's life (claim, progress, outcome) is :mod:`models.job_lifecycle`'s. Functions flush;
callers commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Text, case, cast as sql_cast, func, select
from sqlalchemy.orm import Session

from models.entity_input import nul_refused
from models.errors import JobCancelled, JobNotCancellable, NotFound
from models.job_results import result_when_ended
from models.jobs import RECORD_COLUMNS, Job, JobStatus
from models.pagination import Page, keyset_query, page_of

_JOBS = Job.__table__.c


# A listed job's params, result or error whose JSON text (as PostgreSQL writes jsonb) is longer
# is left out of its list item, which says so (``abbreviated``); GET /jobs/{id} shows it in full.
# A bulk assignment's params hold up to 25,000 ids (about 1 MB): 40 of them made a 39 MB page.
LISTED_JSON_BYTES = 16_384
LISTED_JSON = ("params", "result", "error")


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    kind: str | None = None,
    page_size: int = 50,
    page_token: str | None = None,
) -> Page[Any]:
    """Newest first, keyset-paginated on (created_at, id): rows of the :class:`JobRecord`
    columns and, for each of ``LISTED_JSON``, ``<name>_bytes``, the length of its JSON text.
    A member longer than ``LISTED_JSON_BYTES`` is None in the row: a page holds at most
    ``page_size`` × 3 × 16 KiB of them, however large the jobs.

    The page is found on its keys alone (the index on ``created_at, id``, with a filter); the
    lengths are computed in the outer query, for the page's rows only, however the planner
    finds them: the long members never leave the database."""
    if kind is not None and "\x00" in kind:  # text cannot hold it: the database's refusal would name no field
        raise nul_refused("kind")
    keys = select(_JOBS.id, _JOBS.created_at)
    if status is not None:
        keys = keys.where(Job.status == status)
    if kind is not None:
        keys = keys.where(Job.kind == kind)
    page = keyset_query(keys, Job, page_size=page_size, page_token=page_token).subquery()
    sizes = {name: func.octet_length(sql_cast(_JOBS[name], Text)) for name in LISTED_JSON}
    listed = select(
        *(case((sizes[c.name] <= LISTED_JSON_BYTES, c)).label(c.name) if c.name in LISTED_JSON else c
          for c in RECORD_COLUMNS),
        *(size.label(f"{name}_bytes") for name, size in sizes.items()),
    ).join_from(Job, page, page.c.id == _JOBS.id).order_by(_JOBS.created_at.desc(), _JOBS.id.desc())
    return page_of(list(session.execute(listed)), page_size)


def request_cancel(session: Session, *, job_id: uuid.UUID, by: str | None = None) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next checkpoint. ``by``
    (who asks: ``api-key:<id>``) is recorded in ``cancelled_by`` by the first request that
    cancels the job or asks it to stop.

    A running job whose lease has expired has no live attempt to reach a checkpoint (its
    worker died or stalled), so it is cancelled at once too; should that attempt write
    again, its attempt number no longer owns the row and the write is refused
    (:class:`StaleAttempt`). Cancelling twice is harmless. A finished job raises
    :class:`JobNotCancellable`.
    """
    job = _locked_job(session, job_id, for_update=False)
    if job is None:
        raise NotFound(f"no job with id {job_id}", id=str(job_id))
    now = session.scalar(select(func.now()))
    if job.status == JobStatus.RUNNING.value and job.lease_expires_at is not None and job.lease_expires_at < now:
        # Ending it takes the job from its attempt: first wait for a bulk batch of that
        # attempt still in flight (check_attempt), then look again.
        job = _locked_job(session, job_id, for_update=True)
        assert job is not None  # the row is locked: nothing deleted it
    if job.status not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.CANCELLED.value):
        raise JobNotCancellable(f"job {job_id} already {job.status}", id=str(job_id), job_status=job.status)
    if job.status != JobStatus.CANCELLED.value and job.cancel_requested_at is None and job.cancelled_by is None:
        job.cancelled_by = by
    if job.status == JobStatus.QUEUED.value:
        _cancel_now(session, job, now, "cancelled before it started")
    elif job.status == JobStatus.RUNNING.value:
        if job.lease_expires_at is not None and job.lease_expires_at < now:
            _cancel_now(session, job, now,
                        f"cancelled while attempt {job.attempts} was not reporting (its lease had expired)")
        elif job.cancel_requested_at is None:
            job.cancel_requested_at = now
    session.flush()
    return job


def _locked_job(session: Session, job_id: uuid.UUID, *, for_update: bool) -> Job | None:
    """The job row locked (FOR UPDATE, else FOR NO KEY UPDATE), as it is now: not an older
    copy this session may hold."""
    locked = select(Job).where(Job.id == job_id).with_for_update(key_share=not for_update)
    return session.execute(locked.execution_options(populate_existing=True)).scalar_one_or_none()


def _cancel_now(session: Session, job: Job, now: dt.datetime | None, detail: str) -> None:
    """End the job ``cancelled``: no attempt runs it (queued, or its lease expired), and its
    row is held, so the work recorded so far is all it did (``models.job_results``)."""
    job.status = JobStatus.CANCELLED.value
    job.finished_at = now
    job.cancel_requested_at = job.cancel_requested_at or now
    job.lease_expires_at = None
    job.error = JobCancelled(detail).problem()
    result = result_when_ended(session, job_id=job.id, kind=job.kind, reported=job.result)
    if result != job.result:
        job.result = result
