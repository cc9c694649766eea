"""Task for the ``diagnostics.sleep`` job kind."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import Task, shared_task

from models.diagnostics import sleep_in_steps
from models.job_lifecycle import JobClaim
from models.progress import ProgressSink
from tasks.runner import run_job


def _sleep(claim: JobClaim, progress: ProgressSink) -> dict[str, Any]:
    params = claim.params
    return asdict(sleep_in_steps(seconds=float(params["seconds"]), steps=int(params["steps"]), progress=progress))


@shared_task(name="plant.diagnostics.sleep", bind=True)
def diagnostics_sleep(self: Task, job_id: str) -> dict[str, Any]:
    return run_job(self, job_id, _sleep)
