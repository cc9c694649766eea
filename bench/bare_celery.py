"""The pipeline baseline: a bare Celery app with one no-op task (``celery -A bench.bare_celery``).

Celery's defaults plus what any JSON-only deployment sets: JSON serialization, no result
backend (results ignored). The broker is ``REDIS_URL`` (the harness gives it its own
Redis database). The task records its completion with one atomic Redis round trip
(INCR a counter and stamp the time), so the benchmark knows when the last task ran
without a result backend; that is the whole "work".

``plant_delivery=True`` (``BENCH_BARE_PLANT_DELIVERY=1`` for the worker) adds Plant's
delivery settings (late acks, prefetch 1, task events) to tell Celery's cost of those
apart from Plant's own.
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Any

import redis
from celery import Celery, shared_task

from models.settings import load_settings
from tasks.celery_app import DELIVERY

TASK_NAME = "bench.noop"
DONE_KEY = "bench:done"
DONE_AT_KEY = "bench:done_at"


def create_bare_celery(broker_url: str, *, plant_delivery: bool = False) -> Celery:
    app = Celery("bare", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    broker_connection_retry_on_startup=True)
    if plant_delivery:
        app.conf.update(**DELIVERY)
    return app


@cache
def _completions() -> redis.Redis:
    return redis.Redis.from_url(load_settings().redis_url)


@shared_task(name=TASK_NAME)
def noop(_: int) -> None:
    pipe = _completions().pipeline(transaction=True)
    pipe.incr(DONE_KEY)
    pipe.set(DONE_AT_KEY, repr(time.time()))
    pipe.execute()


@cache
def build_app() -> Celery:
    return create_bare_celery(load_settings().redis_url, plant_delivery=os.environ.get("BENCH_BARE_PLANT_DELIVERY") == "1")


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return build_app()
    raise AttributeError(name)
