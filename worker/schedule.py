"""Beat's schedule. Exactly one beat process runs it."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

from celery.beat import BeatLazyFunc
from celery.schedules import schedstate, schedule

from models.settings import Settings
from tasks.audit import DIGEST_ENTRY, FULL_AUDIT
from tasks.maintenance import PURGE_ENTRY, PURGE_INTERVAL_SECONDS


class on_boundaries(schedule):  # noqa: N801 - named like celery's schedule classes
    """Ticks at every multiple of the interval since the epoch (UTC: midnight for a day, the
    top of the hour for an hour, 00:00, 06:00, ... for six hours), whenever beat started;
    celery's ``relative=True`` rounds to the minute, hour or day only. A tick missed while
    beat was down runs once when it is back."""

    def __init__(self, run_every: timedelta, relative: bool = False, nowfun: Any = None, app: Any = None) -> None:
        super().__init__(run_every, relative=False, nowfun=nowfun, app=app)

    def next_tick_after(self, moment: float) -> float:
        step = self.run_every.total_seconds()
        return (math.floor(moment / step) + 1) * step

    def remaining_estimate(self, last_run_at: Any) -> timedelta:
        now = self.maybe_make_aware(self.now()).timestamp()
        return timedelta(seconds=self.next_tick_after(self.maybe_make_aware(last_run_at).timestamp()) - now)

    def is_due(self, last_run_at: Any) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining > 0:
            return schedstate(is_due=False, next=remaining)
        now = self.maybe_make_aware(self.now()).timestamp()
        return schedstate(is_due=True, next=self.next_tick_after(now) - now)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        # Recovery goes to the maintenance queue (tasks.celery_app routes plant.maintenance.*
        # there), which the default workers consume beside their jobs: a backlog of jobs no
        # longer holds it up. Its messages never expire: Celery dates an expiry by the sender's
        # clock and drops the message by the worker's, so a worker a minute ahead of beat
        # dropped every sweep. Those that pile up while every worker slot is busy each return at
        # once when a sweep completed within a tenth of an interval (`scheduled`, judged by Redis's
        # clock alone: tasks.maintenance.swept_lately).
        "requeue-stale-jobs": {
            "task": "plant.maintenance.requeue_stale_jobs",
            "schedule": settings.requeue_interval_seconds,
            "kwargs": {"scheduled": True},
        },
        # Jobs started by beat go through plant.schedule.fire, which records the
        # (schedule, tick slot) pair first: a second beat's tick finds it taken. Ticks fall on
        # the interval's boundaries, the slots tasks.audit.fire_slot maps a fire to. A tick
        # whose fire never claimed its slot (beat could not send it) is fired by the recovery
        # sweep once overdue (tasks.audit.fire_overdue_tick).
        FULL_AUDIT.schedule: {
            "task": "plant.schedule.fire",
            "schedule": on_boundaries(timedelta(seconds=settings.audit_interval_seconds)),
            # The last argument is beat's clock as it sends (celery evaluates a BeatLazyFunc then):
            # the fire names the tick it was sent for, however long it waits for a worker.
            "args": (FULL_AUDIT.schedule, FULL_AUDIT.kind, FULL_AUDIT.params, settings.audit_interval_seconds,
                     BeatLazyFunc(time.time)),
        },
        # The hourly purge and digest carry no expiry either, for the same reason (a worker more
        # than an interval ahead of beat dropped every one). Copies that piled up behind busy
        # workers each return at once while another run's key holds in Redis, for a tenth of an
        # interval from its start and from its end (Redis's clock alone: tasks.beat_runs). Only
        # beat's (`scheduled`): a digest or purge sent otherwise always runs.
        PURGE_ENTRY: {
            "task": "plant.maintenance.purge_idempotency_keys",
            "schedule": PURGE_INTERVAL_SECONDS,
            "kwargs": {"scheduled": True},
        },
        DIGEST_ENTRY: {
            "task": "plant.ledger.store_digest",
            "schedule": settings.digest_interval_seconds,
            "kwargs": {"scheduled": True},
        },
    }
