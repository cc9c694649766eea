"""Beat's schedule. Exactly one beat process runs it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import schedule

from models.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        # Recovery shares the default queue with the jobs. Its messages outlive a backlog of
        # up to PLANT_REQUEUE_AFTER_SECONDS (60 s): expiring after one interval (5 s), they were
        # all dropped whenever the queue ran that far behind, and dead workers' jobs waited
        # until it caught up. The ones that pile up meanwhile are cheap, idempotent sweeps.
        "requeue-stale-jobs": {
            "task": "plant.maintenance.requeue_stale_jobs",
            "schedule": settings.requeue_interval_seconds,
            "options": {"expires": max(settings.requeue_interval_seconds, settings.requeue_after_seconds)},
        },
        # Jobs started by beat go through plant.schedule.fire, which records the
        # (schedule, tick slot) pair first: a second beat's tick finds it taken. Ticks fall on
        # the interval's boundaries (UTC midnight for a day; relative=True), which is what
        # tasks.audit.fire_slot rounds a late fire back to.
        "full-audit": {
            "task": "plant.schedule.fire",
            "schedule": schedule(timedelta(seconds=settings.audit_interval_seconds), relative=True),
            "args": ("full-audit", "audit.run", {"verify_signatures": "heads"}, settings.audit_interval_seconds),
        },
        "purge-idempotency-keys": {
            "task": "plant.maintenance.purge_idempotency_keys",
            "schedule": 3600.0,
            "options": {"expires": 3600.0},
        },
        "ledger-digest": {
            "task": "plant.ledger.store_digest",
            "schedule": settings.digest_interval_seconds,
            "options": {"expires": settings.digest_interval_seconds},
        },
    }
