"""Builds the Celery app from ``Settings``: JSON only, three queues, limits, events.

The worker entry point (``worker.app``) and the API (which only publishes) each call
:func:`create_celery`, so both speak the same configuration.
"""

from __future__ import annotations

from urllib.parse import urlparse

from celery import Celery
from kombu import Queue

from models.settings import Settings
from tasks.broker import TRANSPORT_PATH

DEFAULT_QUEUE = "default"
AUDIT_QUEUE = "audit"
# Beat's maintenance (job recovery, purges) on a queue of its own, which the default
# workers also consume: a backlog of jobs on ``default`` would otherwise hold recovery up
# behind it, and recovery is what republishes the jobs of dead workers.
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (DEFAULT_QUEUE, AUDIT_QUEUE, MAINTENANCE_QUEUE)  # each needs a worker consuming it
TASK_MODULES = ["tasks.diagnostics", "tasks.maintenance", "tasks.registry_jobs", "tasks.audit"]


# How messages are delivered and observed; the benchmark's bare Celery baseline reuses it.
DELIVERY: dict[str, bool] = {
    # Every task is idempotent (it claims its job row first), so late acks only ever
    # turn a crash into a harmless redelivery.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    # Workers send task events (received, started, succeeded, ...) for Flower, in batches
    # (worker/consumer.py): sent one tick at a time, as Celery does, they cost about a fifth
    # of a sleep(0) job's worker CPU (docs/benchmarks.md, stops 13 and 31). The API
    # sends no task-sent event: it would be a second broker write per job, and what it
    # tells (jobs waiting for a worker) the jobs table already shows, in the API and in
    # /metrics (plant_jobs_queued, plant_jobs_queued_oldest_age_seconds).
    "worker_send_task_events": True,
    "task_send_sent_event": False,
}


# How long one read from the broker may wait. kombu's Redis transport hands redis-py
# socket_timeout=None (wait for ever) unless told otherwise, so a Redis that took the connection
# and never answered (frozen or paused, a network dropping its packets, a NAT that forgot the
# connection) held whoever waited on a reply for good: the API's job submissions, and a worker's
# or beat's whole process (tests/test_frozen_redis_connections.py). Only a reply awaited right after
# a command is bounded: a worker's BRPOP (which Redis answers within kombu's 1 s poll) and its
# pub/sub subscription (remote control, idle for long) are read once readable, so an idle
# subscription never times out; kombu's own checks (health_check_interval, 25 s) drop either
# when it stops answering. A read that times out drops its connection; the next command, or the
# worker's reconnection, makes a fresh one. With no socket_connect_timeout given, redis-py
# bounds a connect by the same value.
# The API only publishes and asks the workers (/health): 2 s.
API_BROKER_SOCKET_TIMEOUT_SECONDS = 2.0


def create_celery(settings: Settings, *, socket_timeout: float | None = None) -> Celery:
    """``socket_timeout``: how long one read from the broker may wait; by default
    ``PLANT_BROKER_READ_TIMEOUT_SECONDS`` (10 s), for workers and beat: their event-loop
    commands (heartbeats and task events, acks, kombu's unacked sweep) and beat's publishes.
    Far above any reply a healthy Redis gives, a fork's stall included, well below what would
    let a worker sit silent: it then reconnects within about twice this. The same value is
    the interval of kombu's checks of a worker's long-lived connections: a BRPOP whose reply
    is overdue by its 1 s poll plus this, or a subscription that missed two PINGs, is dropped
    and made again (kombu's default, 25 s, let a frozen connection stop a worker consuming for
    up to 51 s; 10 s bounds it at 21 s); redis-py also PINGs a pooled connection idle this
    long before using it."""
    app = Celery("plant", broker=settings.redis_url, include=TASK_MODULES)
    transport_options: dict[str, float] = {
        "visibility_timeout": settings.job_hard_time_limit + 300,
        "socket_timeout": socket_timeout or settings.broker_read_timeout_seconds,
        "health_check_interval": settings.broker_read_timeout_seconds,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,  # outcomes live in the jobs table, not a result backend
        task_default_queue=DEFAULT_QUEUE,
        task_queues=tuple(Queue(queue) for queue in QUEUES),
        task_routes={"plant.maintenance.*": {"queue": MAINTENANCE_QUEUE}},
        **DELIVERY,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_hard_time_limit,
        broker_connection_retry_on_startup=True,
        # kombu's Redis transport with one client object per channel (tasks/broker.py).
        broker_transport=TRANSPORT_PATH if urlparse(settings.redis_url).scheme == "redis" else None,
        broker_transport_options=transport_options,
        # Publishing must not hang an API request when Redis is away; beat republishes.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        broker_connection_timeout=2,
        timezone="UTC",
        enable_utc=True,
    )
    return app
