"""Beat's schedule. Exactly one beat process runs it."""

from __future__ import annotations

from typing import Any

from models.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "requeue-stale-jobs": {
            "task": "plant.maintenance.requeue_stale_jobs",
            "schedule": settings.requeue_interval_seconds,
            "options": {"expires": settings.requeue_interval_seconds},
        },
    }
