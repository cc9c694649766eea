"""The Celery app object that ``celery -A worker.app`` finds, plus signals and schedule.

``app`` is built lazily on first attribute access (PEP 562), so importing this module
reads no environment and opens no connection.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from tasks import runtime
from tasks.celery_app import create_celery
from worker.schedule import beat_schedule


@cache
def build_app() -> Celery:
    settings = runtime.settings()
    app = create_celery(settings)
    app.conf.beat_schedule = beat_schedule(settings)
    return app


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    runtime.reset_after_fork()


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return build_app()
    raise AttributeError(name)
