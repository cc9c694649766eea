"""The Celery app object that ``celery -A worker.app`` finds, plus signals and schedule.

``app`` is built lazily on first attribute access (PEP 562), so importing this module
reads no environment and opens no connection.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
from functools import cache
from typing import Any

from celery import Celery, Task
import psutil
from celery.signals import beat_init, celeryd_init, setup_logging, task_postrun, task_prerun, worker_process_init, worker_shutting_down

from models.errors import SigningKeyError
from models.logging_setup import bind_log_context, configure_logging, reset_log_context
from models.settings import warn_of_unknown_variables
from tasks import runtime
from tasks.audit import CHUNK_TASK
from tasks.celery_app import create_celery
from tasks.dispatch import JOB_ROUTES
from worker.schedule import beat_schedule

log = logging.getLogger(__name__)

CONSUMER_PATH = "worker.consumer:Consumer"

# Tasks whose first argument is a job id.
JOB_TASKS = frozenset({route.task_name for route in JOB_ROUTES.values()} | {CHUNK_TASK})


@cache
def build_app() -> Celery:
    settings = runtime.settings()
    app = create_celery(settings)
    app.conf.beat_schedule = beat_schedule(settings)
    # Celery's consumer, publishing task events in batches (worker/consumer.py).
    app.conf.worker_consumer = CONSUMER_PATH
    return app


HANDBACK_SIGNAL = signal.SIGUSR2  # billiard uses SIGUSR1 for soft time limits


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    runtime.reset_after_fork()
    signal.signal(HANDBACK_SIGNAL, lambda *_: runtime.shutdown_requested.set())
    # Everything alive now (the imported modules, the app) lives as long as the process:
    # frozen, the cyclic GC stops walking it on every full collection. That walk was 18 %
    # of an audit's CPU and is 7 % with the freeze (docs/benchmarks.md), and it no longer
    # writes to pages shared with the parent, so they stay shared.
    gc.freeze()


@worker_shutting_down.connect
def _ask_pool_to_hand_back_jobs(**_: Any) -> None:
    """Warm shutdown: tell every pool process to hand its running job back."""
    runtime.shutdown_requested.set()  # the solo/threads pools run tasks in this process
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.send_signal(HANDBACK_SIGNAL)


@celeryd_init.connect  # early, so even the worker's start-up warnings are structured
@setup_logging.connect
def _structured_logging(**_: Any) -> None:
    """Worker and beat log like the API (JSON unless PLANT_LOG_FORMAT=console).

    Connecting ``setup_logging`` stops Celery from installing its own handlers; the level
    is PLANT_LOG_LEVEL, not ``--loglevel``.
    """
    settings = runtime.settings()
    configure_logging(settings.log_format, settings.log_level)


@celeryd_init.connect  # after the logging hook above: the warning is logged like the rest
@beat_init.connect
def _name_unknown_variables(**_: Any) -> None:
    """A worker's or beat's start: one warning naming each PLANT_* variable nothing reads."""
    warn_of_unknown_variables()


RECOVERY_SWEEP = "requeue-stale-jobs"  # worker.schedule's entry


@beat_init.connect
def _sweep_as_beat_starts(sender: Any = None, **_: Any) -> None:
    """Send one recovery sweep as beat starts, not an interval later (Celery runs an interval
    entry first when a whole interval has passed): jobs lost or left unpublished while beat was
    down are recovered at once, and ``/health``'s beat check, which reads the mark a completed
    sweep leaves, is up as soon as a worker has taken it. A send that fails is logged; the
    schedule sends the next."""
    entry = beat_schedule(runtime.settings())[RECOVERY_SWEEP]
    try:
        # routed by the app's task_routes
        sender.app.send_task(entry["task"], kwargs=entry.get("kwargs"), **entry.get("options", {}))
    except Exception as exc:  # noqa: BLE001 - the schedule's own sweeps follow
        log.warning("could not send a recovery sweep as beat starts: %s: %s", type(exc).__name__, exc)


@celeryd_init.connect
def _note_main_process(**_: Any) -> None:
    """Pool processes inherit it: one whose signing key was sealed asks it to stop (tasks.runtime)."""
    runtime.note_worker_main_process()


@celeryd_init.connect  # after the logging hook above, so the refusal is logged like the rest
def _refuse_to_start_without_usable_signing_keys(**_: Any) -> None:
    """Load the signing keys before consuming anything. Keys that cannot be used (a malformed
    or unreadable key or seal, or a seal naming the key that would sign) would otherwise fail
    every job the worker takes, for good; the API refuses to start on them the same way.
    Celery logs and swallows an exception from a signal handler, so this exits instead."""
    try:
        runtime.keyring()
    except Exception as exc:  # noqa: BLE001 - whatever stops the keys loading stops the worker
        detail = exc.detail if isinstance(exc, SigningKeyError) else f"{type(exc).__name__}: {exc}"
        log.critical("plant worker refuses to start: %s", detail)
        raise SystemExit(f"plant worker refuses to start: {detail}") from exc


# task id -> the log-context token to restore when that task ends (one per pool thread).
_task_log_tokens: dict[str, Any] = {}


@task_prerun.connect
def _bind_task_log_context(task_id: str, task: Task, args: tuple[Any, ...] = (), **_: Any) -> None:
    job_id = str(args[0]) if task.name in JOB_TASKS and args else None
    _task_log_tokens[task_id] = bind_log_context(task_id=task_id, job_id=job_id)


@task_postrun.connect
def _unbind_task_log_context(task_id: str, **_: Any) -> None:
    token = _task_log_tokens.pop(task_id, None)
    if token is not None:
        reset_log_context(token)


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return build_app()
    raise AttributeError(name)
