"""Beat's ticks and the slots scheduled fires claim: one job per tick, none skipped.

A scheduled job goes through ``plant.schedule.fire``, which claims its tick's slot in
``scheduled_fires`` (``tests/test_e2e_work.py`` fires one tick twice). Here: the slot a fire
claims is its own tick's even when the fire waited in a busy queue or ran on a host whose
clock lags beat's, and beat ticks on the slot boundaries.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from models.settings import load_settings
from tasks.audit import fire_slot
from worker.schedule import beat_schedule

DAY = 86_400.0
MIDNIGHT = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


@pytest.mark.parametrize("handled_at", [
    MIDNIGHT,
    MIDNIGHT + dt.timedelta(minutes=45),  # waited 45 minutes behind busy workers
    MIDNIGHT + dt.timedelta(hours=11, minutes=59),
    MIDNIGHT - dt.timedelta(seconds=2),  # a worker whose clock is two seconds behind beat's
])
def test_a_fire_claims_its_own_tick_s_slot_however_late_it_runs(handled_at) -> None:
    assert fire_slot(handled_at.timestamp(), DAY) == MIDNIGHT


def test_a_late_fire_does_not_take_the_next_tick_s_slot() -> None:
    """Rounding down gave a fire run at 00:15 for yesterday's 23:30 tick today's slot, and
    today's tick was then skipped; ticks now fall on midnight and a fire rounds to the nearest."""
    yesterdays_late = fire_slot((MIDNIGHT + dt.timedelta(minutes=15)).timestamp(), DAY)
    todays = fire_slot((MIDNIGHT + dt.timedelta(days=1, seconds=1)).timestamp(), DAY)
    assert yesterdays_late == MIDNIGHT and todays == MIDNIGHT + dt.timedelta(days=1)


@pytest.mark.parametrize("interval, since_last_run", [
    (DAY, dt.timedelta(hours=13, minutes=37, seconds=11)),
    (3600.0, dt.timedelta(minutes=20, seconds=3)),
])
def test_beat_ticks_the_scheduled_audit_on_its_interval_s_boundaries(interval, since_last_run) -> None:
    entry = beat_schedule(load_settings(audit_interval_seconds=interval))["full-audit"]
    schedule = entry["schedule"]
    assert schedule.relative and schedule.run_every == dt.timedelta(seconds=interval)
    now = schedule.now()
    tick = now + schedule.remaining_estimate(now - since_last_run)
    assert round(tick.timestamp()) % interval == 0, tick  # midnight UTC, or the top of the hour
    assert fire_slot(tick.timestamp() + 1.5, interval) == dt.datetime.fromtimestamp(round(tick.timestamp()), dt.UTC)


@pytest.mark.parametrize("broker_down", [False, True])
def test_a_scheduled_job_is_published_once_or_left_in_the_outbox(worker_sessions, broker_down) -> None:
    """Published at once, its row says so, so beat's outbox pass does not send it again; if
    the broker is down, the row is left for that pass."""
    from models.jobs import Job
    from tasks.audit import schedule_fire
    from tests.conftest import SentTasks

    beat = SentTasks(broker_down=broker_down)
    fired = type(schedule_fire._get_current_object()).run(beat, "test-fire", "diagnostics.sleep", {"seconds": 0}, 3600.0)
    assert beat.sent == ([] if broker_down else [("plant.diagnostics.sleep", [fired["job_id"]], "default", 0.0)])
    with worker_sessions() as session:
        job = session.get(Job, uuid.UUID(fired["job_id"]))
        assert (job.enqueued_at is None) is broker_down
    assert type(schedule_fire._get_current_object()).run(beat, "test-fire", "diagnostics.sleep", {"seconds": 0}, 3600.0)["skipped"] == "already fired"


def test_recovery_messages_outlive_a_backlog_on_the_queue_they_share_with_jobs() -> None:
    """Expiring after one 5 s interval, every recovery message was dropped while the default
    queue ran more than 5 s behind, and dead workers' jobs waited for the backlog to clear."""
    settings = load_settings(requeue_interval_seconds=5.0, requeue_after_seconds=60.0)
    entry = beat_schedule(settings)["requeue-stale-jobs"]
    assert entry["schedule"] == 5.0 and entry["options"]["expires"] == 60.0


def test_a_job_of_a_kind_this_release_does_not_know_does_not_stop_a_recovery_sweep(worker_sessions) -> None:
    from models.db import transaction
    from models.job_lifecycle import create_job
    from tasks.maintenance import requeue_stale_jobs
    from tests.conftest import SentTasks

    with transaction(worker_sessions) as session:
        unknown = create_job(session, kind="report.render", params={})  # a newer release's kind, say
        known = create_job(session, kind="diagnostics.sleep", params={"seconds": 0})
        session.execute(__import__("sqlalchemy").text(
            "UPDATE jobs SET created_at = now() - interval '1 minute' WHERE id IN (:a, :b)"), {"a": unknown.id, "b": known.id})
    beat = SentTasks()
    outcome = type(requeue_stale_jobs._get_current_object()).run(beat)
    assert outcome["unpublished"] == 2 and outcome["published"] == 1
    assert [args for _, args, _, _ in beat.sent] == [[str(known.id)]]
