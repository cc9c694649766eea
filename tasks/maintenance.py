"""Periodic maintenance scheduled by beat: recover jobs (and close the audit runs of jobs
that ended without them, and fire a scheduled audit's tick that beat never got out), purge
expired idempotency keys (hourly; copies that piled up return at once: ``tasks.beat_runs``).

Each recovery sweep that completes leaves a mark in Redis that lapses on its own
(:func:`mark_sweep`): ``/health`` reads it to say whether beat and the maintenance queue's
consumers are keeping recovery going. A lapsing key, not a time: no clocks of two hosts compared.
A sweep that fails leaves its error's type the same way (:func:`note_failed_sweep`), which
``/health`` names when no mark is left."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from celery import Celery, shared_task
from sqlalchemy.exc import SQLAlchemyError

from models.audit_close import close_runs_apart
from models.db import transaction
from models.idempotency import purge_expired_keys
from models.job_recovery import QueuedJobRef, claim_lost_messages, claim_unpublished, rescue_expired, uncount_republishes
from models.settings import Settings
from tasks import runtime
from tasks.audit import FULL_AUDIT, fire_overdue_tick
from tasks.beat_runs import beat_run
from tasks.dispatch import publish_jobs

log = logging.getLogger(__name__)

OUTBOX_MIN_AGE = dt.timedelta(seconds=2)  # give the API its own chance to publish first
SWEEP_MARK_KEY = "plant:recovery:swept"  # holds its lifetime in ms; present: a sweep completed within it
SWEEP_FAILED_KEY = "plant:recovery:failed"  # the type of the latest failed sweep's error, for as long as a mark
PURGE_ENTRY, PURGE_INTERVAL_SECONDS = "purge-idempotency-keys", 3600.0  # beat's schedule entry (worker.schedule)


def sweep_mark_lifetime_seconds(settings: Settings) -> float:
    """How long a sweep's mark lasts: twice the larger of the interval and
    PLANT_REQUEUE_AFTER_SECONDS (busy workers may hold a sweep's message that long before a slot
    frees), so one late sweep is no alarm and two missed ones are. 120 s by default."""
    return 2 * max(settings.requeue_interval_seconds, settings.requeue_after_seconds)


def mark_sweep(settings: Settings) -> None:
    """Record that a sweep completed. Failing to is logged: it must not fail the sweep."""
    _record(SWEEP_MARK_KEY, int(sweep_mark_lifetime_seconds(settings) * 1000), settings)


def note_failed_sweep(settings: Settings, error: BaseException) -> None:
    """Record that a sweep failed, as its error's type only (``/health`` is public and shows it:
    the text, which can name hosts and users, stays in the worker's log), for as long as a mark
    lasts: with no mark, ``/health`` names it rather than ask whether beat runs."""
    _record(SWEEP_FAILED_KEY, type(error).__name__, settings)


def _record(key: str, value: str | int, settings: Settings) -> None:
    try:
        runtime.redis_client().set(key, value, px=int(sweep_mark_lifetime_seconds(settings) * 1000))
    except Exception as exc:  # noqa: BLE001 - the sweep's outcome stands; /health will say so
        log.warning("could not record the recovery sweep's outcome in Redis: %s", type(exc).__name__)


def sweep_mark_age_ms(lifetime_ms: bytes | None, remaining_ms: int) -> int | None:
    """How long ago the last sweep completed, from its mark's value (its lifetime) and Redis's
    PTTL of it (what remains), both Redis's clock; None with no mark (never, or lapsed)."""
    if lifetime_ms is None or remaining_ms < 0:
        return None
    return max(int(lifetime_ms) - remaining_ms, 0)


def swept_lately(settings: Settings) -> bool:
    """Whether a sweep completed within a tenth of an interval, by the age of its mark: its
    lifetime less what remains of it, both Redis's (as ``/health`` reads it). Sweeps that piled up
    behind busy workers run back to back, milliseconds apart; one beat sent on time finds the last
    completed about an interval ago, less the time that one took. A mark that cannot be read says
    no: the sweep runs."""
    try:
        lifetime_ms, remaining_ms = runtime.redis_client().pipeline(transaction=False).get(
            SWEEP_MARK_KEY).pttl(SWEEP_MARK_KEY).execute()
    except Exception as exc:  # noqa: BLE001 - better a sweep too many than none
        log.warning("could not read the recovery sweep's mark in Redis: %s", type(exc).__name__)
        return False
    age_ms = sweep_mark_age_ms(lifetime_ms, remaining_ms)
    return age_ms is not None and age_ms < settings.requeue_interval_seconds * 1000 / 10


@shared_task(name="plant.maintenance.requeue_stale_jobs", bind=True)
def requeue_stale_jobs(self, scheduled: bool = False) -> dict[str, Any]:  # noqa: ANN001 - Celery task self
    """Publish the outbox, republish lost messages, rescue jobs of dead workers; then close
    the audit run of every audit job that has ended (this sweep, say) without closing it, and
    fire the scheduled audit's current tick if it is overdue (``tasks.audit.fire_overdue_tick``).
    A ``scheduled`` sweep (beat's) that finds one completed within a tenth of an interval returns
    at once: it piled up behind busy workers. A sweep that fails leaves its error's type for
    ``/health`` (:func:`note_failed_sweep`)."""
    settings = runtime.settings()
    if scheduled and swept_lately(settings):
        return {"skipped": "a recovery sweep completed within a tenth of an interval"}
    try:
        return _sweep(self.app, settings)
    except Exception as exc:
        note_failed_sweep(settings, exc)
        raise


def _sweep(app: Celery, settings: Settings) -> dict[str, Any]:
    older_than = dt.timedelta(seconds=settings.requeue_after_seconds)
    with transaction(runtime.session_factory()) as session:
        unpublished = claim_unpublished(session, min_age=OUTBOX_MIN_AGE)
        lost = claim_lost_messages(session, older_than=older_than)
        rescue = rescue_expired(
            session, max_attempts=settings.job_max_attempts, base=settings.retry_backoff_base_seconds,
            cap=settings.retry_backoff_cap_seconds, older_than=older_than,
        )
    refs = unpublished + lost + rescue.republish
    published = publish_jobs(app, [(ref.job_id, ref.kind) for ref in refs])
    _uncount_refused_republishes(lost, published.refused)
    runs_closed = close_runs_apart(runtime.session_factory(), keyring=runtime.keyring())  # after the recovery, never in its way
    fired = fire_overdue_tick(app, runtime.session_factory(), FULL_AUDIT, settings.audit_interval_seconds)
    mark_sweep(settings)
    return {"unpublished": len(unpublished), "lost": len(lost), "rescued": len(rescue.republish),
            "failed": rescue.failed, "cancelled": rescue.cancelled, "published": published.count,
            "runs_closed": runs_closed, "fired": [FULL_AUDIT.schedule] if fired else []}


def _uncount_refused_republishes(lost: list[QueuedJobRef], refused: list[uuid.UUID]) -> None:
    """Lost messages the broker refused to take again do not double the wait before the next try
    (``models.job_recovery.uncount_republishes``). Failing to say so is logged: it must not fail the sweep."""
    left = {ref.job_id for ref in lost} & set(refused)
    if not left:
        return
    try:
        with transaction(runtime.session_factory()) as session:
            uncount_republishes(session, job_ids=sorted(left))
    except SQLAlchemyError as exc:
        log.warning("could not take back the republishes the broker refused: %s", type(exc).__name__)


@shared_task(name="plant.maintenance.purge_idempotency_keys")
def purge_idempotency_keys(scheduled: bool = False) -> dict[str, Any]:
    """Delete expired idempotency keys; beat sends it hourly. A ``scheduled`` copy (beat's) that
    finds another run started or completed within a tenth of an hour returns at once
    (:func:`tasks.beat_runs.beat_run`); one sent otherwise always runs."""
    with beat_run(PURGE_ENTRY, PURGE_INTERVAL_SECONDS, scheduled=scheduled) as due:
        if not due:
            return {"skipped": "a purge ran within a tenth of an interval"}
        with transaction(runtime.session_factory()) as session:
            return {"purged": purge_expired_keys(session)}
