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
    MIDNIGHT + dt.timedelta(hours=13),  # sent late by a beat restarted after missing midnight
    MIDNIGHT + dt.timedelta(hours=23, minutes=58),
    MIDNIGHT - dt.timedelta(seconds=2),  # a worker whose clock is two seconds behind beat's
])
def test_a_fire_claims_its_own_tick_s_slot_however_late_it_runs(handled_at) -> None:
    assert fire_slot(handled_at.timestamp(), DAY) == MIDNIGHT


def test_a_late_fire_does_not_take_the_next_tick_s_slot() -> None:
    """Rounding down from a tick at 23:30 gave a fire run at 00:15 the next day's slot, and
    that day's tick was then skipped; ticks now fall on midnight."""
    late = fire_slot((MIDNIGHT + dt.timedelta(hours=13)).timestamp(), DAY)
    next_day = fire_slot((MIDNIGHT + dt.timedelta(days=1, seconds=1)).timestamp(), DAY)
    assert late == MIDNIGHT and next_day == MIDNIGHT + dt.timedelta(days=1)


@pytest.mark.parametrize("interval", [DAY, 3600.0, 6 * 3600.0, 5400.0, 2 * DAY, 1800.0])
@pytest.mark.parametrize("since_last_run", [dt.timedelta(0), dt.timedelta(minutes=17, seconds=11)])
def test_beat_ticks_the_scheduled_audit_on_its_interval_s_multiples(interval, since_last_run) -> None:
    """Whatever the interval and whenever beat started: celery's relative=True rounds only to
    the minute, hour or day, so a 6-hour schedule started at 10:17 ticked at 16:00."""
    schedule = beat_schedule(load_settings(audit_interval_seconds=interval))["full-audit"]["schedule"]
    now = schedule.now()
    last_run = now - since_last_run
    tick = now + schedule.remaining_estimate(last_run)  # in the past when due already
    assert abs(tick.timestamp() - round(tick.timestamp() / interval) * interval) < 0.01, tick
    assert last_run < tick <= last_run + dt.timedelta(seconds=interval)  # the first multiple after the last run
    assert fire_slot(tick.timestamp() + 1.5, interval) == dt.datetime.fromtimestamp(round(tick.timestamp()), dt.UTC)


def test_a_tick_missed_while_beat_was_down_runs_once_when_it_is_back() -> None:
    schedule = beat_schedule(load_settings(audit_interval_seconds=3600.0))["full-audit"]["schedule"]
    now = schedule.now()
    due, next_check = schedule.is_due(now - dt.timedelta(hours=5))
    assert due and 0 < next_check <= 3600
    assert not schedule.is_due(now)[0]


def test_the_schedule_survives_beat_s_schedule_file() -> None:
    import pickle

    schedule = beat_schedule(load_settings(audit_interval_seconds=21_600.0))["full-audit"]["schedule"]
    again = pickle.loads(pickle.dumps(schedule))
    assert type(again) is type(schedule) and again.run_every == schedule.run_every


@pytest.mark.parametrize("broker_down", [False, True])
def test_a_scheduled_job_is_published_once_or_left_in_the_outbox(worker_sessions, broker_down) -> None:
    """Published at once, its row says so, so beat's outbox pass does not send it again; if
    the broker is down, the row is left for that pass."""
    from models.jobs import Job
    from tasks.audit import schedule_fire
    from tests.conftest import SentTasks

    beat = SentTasks(broker_down=broker_down)
    fired = type(schedule_fire._get_current_object()).run(beat, "test-fire", "diagnostics.sleep", {"seconds": 0}, 1e9)
    assert beat.sent == ([] if broker_down else [("plant.diagnostics.sleep", [fired["job_id"]], "default", 0.0)])
    with worker_sessions() as session:
        job = session.get(Job, uuid.UUID(fired["job_id"]))
        assert (job.enqueued_at is None) is broker_down
        assert job.requested_by == "beat:test-fire"  # no API key asked for it: beat's schedule did
    again = type(schedule_fire._get_current_object()).run(beat, "test-fire", "diagnostics.sleep", {"seconds": 0}, 1e9)
    assert again["skipped"] == "already fired"  # one slot per 31 years: the two calls cannot straddle one


def test_recovery_messages_go_to_their_own_queue_and_outlive_a_wait_for_a_free_worker() -> None:
    """Expiring after one 5 s interval, every recovery message was dropped while the workers
    were that far behind; and on the default queue, recovery waited behind every job. They never
    expire now (an expiry is dated by beat's clock and judged by the worker's:
    tests/test_sweep_clocks_backlog_reads_kind_claims_and_broker_refusals.py); beat's say they are scheduled, to skip when piled up."""
    from tasks.celery_app import MAINTENANCE_QUEUE, create_celery

    settings = load_settings(requeue_interval_seconds=5.0, requeue_after_seconds=60.0)
    schedule = beat_schedule(settings)
    entry = schedule["requeue-stale-jobs"]
    assert entry["schedule"] == 5.0 and "expires" not in entry.get("options", {})
    assert entry["kwargs"] == {"scheduled": True}
    router = create_celery(settings).amqp.router
    queues = {name: router.route(dict(entry.get("options", {})), entry["task"])["queue"].name
              for name, entry in schedule.items()}
    assert queues == {"requeue-stale-jobs": MAINTENANCE_QUEUE, "purge-idempotency-keys": MAINTENANCE_QUEUE,
                      "full-audit": "default", "ledger-digest": "default"}


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
