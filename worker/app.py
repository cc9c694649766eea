"""The Celery app object that ``celery -A worker.app`` finds, plus signals and schedule.

``app`` is built lazily on first attribute access (PEP 562), so importing this module
reads no environment and opens no connection.
"""

from __future__ import annotations

import contextlib
import signal
from functools import cache
from typing import Any

from celery import Celery
import psutil
from celery.signals import worker_process_init, worker_shutting_down

from tasks import runtime
from tasks.celery_app import create_celery
from worker.schedule import beat_schedule


@cache
def build_app() -> Celery:
    settings = runtime.settings()
    app = create_celery(settings)
    app.conf.beat_schedule = beat_schedule(settings)
    return app


HANDBACK_SIGNAL = signal.SIGUSR2  # billiard uses SIGUSR1 for soft time limits


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    runtime.reset_after_fork()
    signal.signal(HANDBACK_SIGNAL, lambda *_: runtime.shutdown_requested.set())


@worker_shutting_down.connect
def _ask_pool_to_hand_back_jobs(**_: Any) -> None:
    """Warm shutdown: tell every pool process to hand its running job back."""
    runtime.shutdown_requested.set()  # the solo/threads pools run tasks in this process
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.send_signal(HANDBACK_SIGNAL)


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return build_app()
    raise AttributeError(name)
