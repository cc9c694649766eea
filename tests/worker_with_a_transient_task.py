"""A Celery app for ``celery -A tests.worker_with_a_transient_task worker``: Plant's worker app
(``worker.app``: its tasks, signals and consumer) with one task more, whose job code raises a
``TransientJobError`` on a job's first attempt, as job code whose dependency did not answer
would. Used by tests/test_transient_job_errors_raised_by_job_code.py only: the retry it causes goes back
through the broker to the job kind's own task, which Plant's worker runs."""

from __future__ import annotations

from typing import Any

from celery import Task

from models.errors import TransientJobError
from models.job_lifecycle import JobClaim
from models.progress import ProgressSink
from tasks.runner import run_job
from worker.app import build_app

TASK = "tests.review.unavailable_on_first_attempt"
app = build_app()


def _unavailable_on_first_attempt(claim: JobClaim, progress: ProgressSink) -> dict[str, Any]:
    if claim.attempt == 1:
        raise TransientJobError("the embedding service did not answer")
    return {"attempt": claim.attempt}


@app.task(name=TASK, bind=True)
def unavailable_on_first_attempt(self: Task, job_id: str) -> dict[str, Any]:
    return run_job(self, job_id, _unavailable_on_first_attempt)
