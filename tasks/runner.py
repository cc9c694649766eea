"""The job wrapper every job task uses: claim, run, record the outcome.

Claiming (queued -> running, attempts + 1) happens in its own committed transaction
before any work, and the outcome is written by the same attempt afterwards. A row that
is already terminal, or held by another live attempt, makes the task a no-op, so a
redelivered message is harmless. Progress goes through a sink that commits each
checkpoint, renews the lease and turns a requested cancel into ``JobCancelled``.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from models.db import transaction
from models.errors import InternalJobError, JobCancelled, JobTimedOut, PlantError, StaleAttempt
from models.job_lifecycle import JobClaim, claim_job, finish_job, report_progress
from models.jobs import JobStatus
from models.progress import ProgressSink
from models.registry import WriteContext
from tasks import runtime

log = logging.getLogger(__name__)

JobHandler = Callable[[JobClaim, ProgressSink], dict[str, Any] | None]

# A handler returns ``CONTINUES`` when it handed the work to other tasks (an audit's
# chunks), which finish the job themselves.
CONTINUES = None


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RowProgress:
    """A ``ProgressSink`` that writes to the job row in its own short transaction."""

    def __init__(self, claim: JobClaim) -> None:
        self.claim = claim

    def __call__(self, done: int, total: int | None, message: str | None = None) -> None:
        with transaction(runtime.session_factory()) as session:
            cancel_requested = report_progress(
                session,
                claim=self.claim,
                done=done,
                total=total,
                message=message,
                lease_seconds=runtime.settings().job_lease_seconds,
            )
        if cancel_requested:
            raise JobCancelled("cancelled on request")


def write_context(claim: JobClaim) -> WriteContext:
    """Registry writes made by a job are attributed to it (``job:<id>``) in the chain."""
    return WriteContext(actor=f"job:{claim.job_id}", keyring=runtime.keyring(), embedder=runtime.embedder())


def run_job(job_id: str, handler: JobHandler) -> dict[str, Any]:
    """Run one attempt of the job; returns a small JSON summary for Celery's logs."""
    with transaction(runtime.session_factory()) as session:
        claim = claim_job(
            session,
            job_id=uuid.UUID(job_id),
            worker=worker_identity(),
            lease_seconds=runtime.settings().job_lease_seconds,
        )
    if claim is None:
        return {"job_id": job_id, "skipped": "not claimable"}
    status, result, error = _execute(claim, handler)
    if status is JobStatus.RUNNING:
        return {"job_id": job_id, "status": "running", "continues": True}
    try:
        with transaction(runtime.session_factory()) as session:
            finish_job(session, claim=claim, status=status, result=result, error=error)
    except StaleAttempt:
        log.warning("job %s attempt %s was superseded; outcome dropped", job_id, claim.attempt)
        return {"job_id": job_id, "skipped": "superseded"}
    return {"job_id": job_id, "status": status.value}


def _execute(claim: JobClaim, handler: JobHandler) -> tuple[JobStatus, dict | None, dict | None]:
    try:
        result = handler(claim, RowProgress(claim))
        return (JobStatus.RUNNING, None, None) if result is CONTINUES else (JobStatus.SUCCEEDED, result, None)
    except JobCancelled as exc:
        return JobStatus.CANCELLED, None, exc.problem()
    except SoftTimeLimitExceeded:
        return JobStatus.FAILED, None, JobTimedOut(f"attempt {claim.attempt} hit the soft time limit").problem()
    except PlantError as exc:
        return JobStatus.FAILED, None, exc.problem()
    except Exception as exc:  # noqa: BLE001 - every failure must land in the row
        log.exception("job %s failed unexpectedly", claim.job_id)
        return JobStatus.FAILED, None, InternalJobError(f"{type(exc).__name__}: {exc}").problem()
