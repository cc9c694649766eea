"""Periodic maintenance tasks scheduled by beat."""

from __future__ import annotations

import datetime as dt

from celery import shared_task

from models.db import transaction
from models.job_lifecycle import claim_stale_queued
from tasks import runtime
from tasks.dispatch import publish_job


@shared_task(name="plant.maintenance.requeue_stale_jobs", bind=True)
def requeue_stale_jobs(self) -> dict[str, int]:  # noqa: ANN001 - Celery task self
    """Republish jobs that sat queued past the threshold (their message was lost)."""
    older_than = dt.timedelta(seconds=runtime.settings().requeue_after_seconds)
    with transaction(runtime.session_factory()) as session:
        stale = claim_stale_queued(session, older_than=older_than)
    published = sum(publish_job(self.app, job_id=ref.job_id, kind=ref.kind) for ref in stale)
    return {"stale": len(stale), "published": published}
