"""Which Celery task runs which job kind, on which queue, and how a job is published.

A message carries only the job id; the row carries the params. Callers publish only
after the transaction that created the row has committed, so a worker never looks
for a row that is not there yet. A failed publish is logged, not raised: the job row
is the source of truth, and beat's requeue task republishes jobs that sit queued.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.db import single_statement
from models.job_lifecycle import mark_unpublished

from tasks.celery_app import AUDIT_QUEUE, DEFAULT_QUEUE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRoute:
    task_name: str
    queue: str


JOB_ROUTES: dict[str, JobRoute] = {
    "diagnostics.sleep": JobRoute("plant.diagnostics.sleep", DEFAULT_QUEUE),
    "skill.certify": JobRoute("plant.skill.certify", DEFAULT_QUEUE),
    "agent.assign_team": JobRoute("plant.agent.assign_team", DEFAULT_QUEUE),
    "agents.assign_teams": JobRoute("plant.agents.assign_teams", DEFAULT_QUEUE),
    "audit.run": JobRoute("plant.audit.run", AUDIT_QUEUE),
}


# The job kind each job task runs, by the task's name: a task claims only jobs of its kind
# (tasks.runner.run_job), so the kind is written once, here, not again by each task.
KIND_BY_TASK: dict[str, str] = {route.task_name: kind for kind, route in JOB_ROUTES.items()}


def route_for(kind: str) -> JobRoute:
    return JOB_ROUTES[kind]


BROKER_ERRORS = (KombuError, RedisError, OSError)


def publish_job(app: Celery, *, job_id: uuid.UUID, kind: str) -> bool:
    """Send the job's message. Returns False (and logs) when the broker is unreachable, or
    when this code knows no task for the job's kind (a row left by a newer release, say):
    one such job must not stop a recovery sweep from publishing the others."""
    try:
        return _send(app, job_id=job_id, kind=kind)
    except BROKER_ERRORS as exc:
        log.warning("publish of job %s failed, beat will republish it: %s", job_id, exc)
        return False


@dataclass(frozen=True)
class Published:
    """What :func:`publish_jobs` sent: how many messages went, and the jobs the broker refused
    (the first refused, and every one after it, which was not tried)."""

    count: int
    refused: list[uuid.UUID]


def publish_jobs(app: Celery, jobs: list[tuple[uuid.UUID, str]]) -> Published:
    """Send each (job id, kind)'s message, as :func:`publish_job`, but none after the first the
    broker refuses: each would wait as long for the broker (three tries of up to a read timeout).
    The jobs left are stamped as published: the lost-message sweep publishes them."""
    published = 0
    for sent, (job_id, kind) in enumerate(jobs):
        try:
            published += _send(app, job_id=job_id, kind=kind)
        except BROKER_ERRORS as exc:
            log.warning("publish of job %s failed; it and the %d after it are left to the lost-message sweep: %s",
                        job_id, len(jobs) - sent - 1, exc)
            return Published(published, [left for left, _ in jobs[sent:]])
    return Published(published, [])


def _send(app: Celery, *, job_id: uuid.UUID, kind: str) -> bool:
    route = JOB_ROUTES.get(kind)
    if route is None:
        log.error("job %s has kind %r, which this release runs no task for; it stays queued", job_id, kind)
        return False
    # No queue declaration: Celery publishes to a named queue through the default
    # (anonymous) exchange, which kombu's Redis transport delivers straight to the
    # queue's list, declared or not. Asking kombu to declare it anyway cost about
    # 100 µs a publish, even cached: it copies the queue to bind it each time
    # (docs/benchmarks.md, stop 31). The workers declare their queues when they start.
    app.send_task(route.task_name, args=[str(job_id)], queue=route.queue, retry=True, declare=[])
    return True


def publish_or_leave_in_outbox(app: Celery, sessions: sessionmaker[Session], *, job_id: uuid.UUID, kind: str) -> bool:
    """Publish a job created with ``to_publish`` (stamped as sent) right after its commit; if
    the broker is unreachable, put it back in the outbox, which beat publishes from."""
    if publish_job(app, job_id=job_id, kind=kind):
        return True
    try:
        with single_statement(sessions) as connection:
            mark_unpublished(connection, job_id=job_id)
    except SQLAlchemyError as exc:
        # The job is committed, stamped as sent: the lost-message sweep publishes it. Raising
        # here answered 503 for an accepted job, and a client retrying without an
        # Idempotency-Key then started a second one.
        log.warning("job %s could not be put back in the outbox either; the lost-message sweep will publish it: %s",
                    job_id, exc)
    return False
